"""Multi-row statements: one `INSERT … VALUES (…), (…), …` per batch of rows, not one execute per row.

Why not `executemany`: the database driver lets go of the GIL around every row it executes,
and in a process of busy sending threads each hand-back costs the ledger's single writer a
wait for the GIL that every sender waiting on that commit then shares (measured in
docs/performance.md). One statement per batch hands the GIL back once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s"}
MAX_PARAMETERS = 30_000  # per statement: under SQLite's 32,766 and PostgreSQL's 65,535


def placeholder(paramstyle: str) -> str:
    """The driver's positional placeholder (`?` for SQLite, `%s` for psycopg)."""
    return PLACEHOLDER[paramstyle]


class RowsStatement:
    """`{head} VALUES (…), … {tail}` for any number of rows of `width` values, its text built once per row count."""

    def __init__(self, head: str, width: int, mark: str, tail: str = "") -> None:
        self.head = head
        self.tail = tail
        self.width = width
        self.batch = max(1, MAX_PARAMETERS // width)
        self._row = f"({', '.join([mark] * width)})"
        self._texts: dict[int, str] = {}

    def text(self, rows: int) -> str:
        sql = self._texts.get(rows)
        if sql is None:
            values = ", ".join([self._row] * rows)
            sql = self._texts[rows] = f"{self.head} VALUES {values}{' ' + self.tail if self.tail else ''}"
        return sql

    def batches(self, rows: Sequence[Sequence], *tail_values) -> Iterator[tuple[str, tuple]]:
        """(text, parameters) per `batch` rows: the rows' values in order, then `tail_values` (the tail's own)."""
        for start in range(0, len(rows), self.batch):
            part = rows[start : start + self.batch]
            yield self.text(len(part)), (*(value for row in part for value in row), *tail_values)

    def execute(self, cursor, rows: Sequence[Sequence]) -> None:
        """Run the statement over `rows` on a DBAPI cursor, one execute per batch."""
        for text, values in self.batches(rows):
            cursor.execute(text, values)
