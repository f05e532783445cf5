"""The inbox folder: which dropped files are ready, claiming one for a run, filing it away.

Folders (all beside each other unless given; defaults for `inbox="data/inbox"`):

    data/inbox/                 files are dropped here
    data/inbox/.claimed/<run>/  a file being processed, moved here by the run that owns it
    data/processed/             done (even if some rows failed: its results say which)
    data/rejected/              unusable, with `<name>.reason.txt` beside it
    data/results/<stem>-<UTC timestamp>/   results.parquet, results.csv, results.xlsx, validation.html,
                                and needs_attention.xlsx/.csv when rows need a person (the processed
                                file then has a `<name>.reason.txt` beside it that names them)

A file is taken only when it is ready: not a temporary name (`~$*`, `.*`, `*.part`,
`*.partial`, `*.tmp`, `*.crdownload`, `*~`), not a symlink, and unchanged in size and
modification time for `settle_seconds` (a file still being copied keeps changing). A run
waits for a young file up to `settle_seconds` rather than leaving it for the next poll.

Claiming is one `os.rename` of `inbox/<name>` into `inbox/.claimed/<run id>/<name>`: on one
filesystem a rename is atomic, so when two runs (on two workers) race for a file exactly one
rename succeeds, and the loser sees FileNotFoundError and moves on. `.claimed` lives inside
the inbox so that the rename never crosses filesystems. A claim whose flow run has ended
(crashed, cancelled, its worker killed) without moving the file on is put back into the inbox
by the next run, so nothing is lost; the durable ledger makes sending it again safe.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

TEMP_PATTERNS = ("~$*", ".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*~")
CLAIMED_DIR = ".claimed"
REASON_SUFFIX = ".reason.txt"
DEFAULT_SETTLE_SECONDS = 10.0
RECHECK_SECONDS = 1.0  # the second look, even for a file that is old already

Signature = tuple[int, int]  # (size, mtime_ns)


# -- folders ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxLayout:
    inbox: Path
    claimed: Path
    processed: Path
    rejected: Path
    results: Path

    @classmethod
    def of(
        cls,
        inbox: str | os.PathLike,
        processed: str | os.PathLike | None = None,
        rejected: str | os.PathLike | None = None,
        results: str | os.PathLike | None = None,
    ) -> InboxLayout:
        """The layout around `inbox`; processed/, rejected/ and results/ default to its siblings."""
        box = Path(inbox)
        root = box.parent
        return cls(
            inbox=box,
            claimed=box / CLAIMED_DIR,
            processed=Path(processed) if processed else root / "processed",
            rejected=Path(rejected) if rejected else root / "rejected",
            results=Path(results) if results else root / "results",
        )

    def create(self) -> None:
        for folder in (self.inbox, self.claimed, self.processed, self.rejected, self.results):
            folder.mkdir(parents=True, exist_ok=True)


# -- which files are ready ----------------------------------------------------------------------


def is_temporary(name: str) -> bool:
    """A name that says "not finished yet" (or hidden): never picked up."""
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in TEMP_PATTERNS)


def snapshot(inbox: Path) -> dict[str, Signature]:
    """name -> (size, mtime_ns) of each candidate file directly in the inbox."""
    found: dict[str, Signature] = {}
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return found
    for entry in entries:
        if is_temporary(entry.name) or entry.is_symlink():
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # claimed by someone else between listing and looking
            continue
        found[entry.name] = (st.st_size, st.st_mtime_ns)
    return found


def ready_files(
    inbox: Path,
    settle_seconds: float = DEFAULT_SETTLE_SECONDS,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[str], list[str]]:
    """(ready, still settling): ready files have kept their size and mtime for `settle_seconds`.

    Two looks: the second comes when the youngest file would be `settle_seconds` old (at most
    `settle_seconds` later), and at least RECHECK_SECONDS after the first so that a copy that
    preserves an old mtime is still seen growing. Ready = same signature in both looks and
    last modified at least `settle_seconds` ago.
    """
    settle = max(0.0, float(settle_seconds))
    first = snapshot(inbox)
    if not first:
        return [], []
    now = clock()
    youngest_age = min(now - mtime / 1e9 for _, mtime in first.values())
    wait = min(settle, max(min(RECHECK_SECONDS, settle), settle - youngest_age))
    if wait > 0:
        sleep(wait)
    second = snapshot(inbox)
    now = clock()
    ready, settling = [], []
    for name in sorted(first):
        signature = second.get(name)
        if signature is None:
            continue  # gone: taken by another run, or deleted
        if signature == first[name] and now - signature[1] / 1e9 >= settle:
            ready.append(name)
        else:
            settling.append(name)
    settling.extend(sorted(set(second) - set(first)))
    return ready, settling


# -- claiming and finishing ---------------------------------------------------------------------


def new_claim_token(run_id: str | None = None) -> str:
    """The claim folder's name: the flow run id (so a later run can ask whether it ended)."""
    return run_id or f"local-{uuid.uuid4().hex[:12]}"


def claim(layout: InboxLayout, name: str, token: str) -> Path | None:
    """Move `inbox/name` into this run's claim folder; None if another run got it first."""
    folder = layout.claimed / token
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    try:
        os.rename(layout.inbox / name, target)  # atomic: exactly one racing rename succeeds
    except FileNotFoundError:
        return None
    return target


def claim_ready(layout: InboxLayout, names: Iterable[str], token: str, max_files: int | None = None) -> list[Path]:
    """Claim ready files in name order, up to `max_files`; those others took are skipped."""
    claimed: list[Path] = []
    for name in names:
        if max_files is not None and len(claimed) >= max_files:
            break
        path = claim(layout, name, token)
        if path is not None:
            claimed.append(path)
    _remove_if_empty(layout.claimed / token)
    return claimed


def stamp(moment: datetime | None = None) -> str:
    """A UTC timestamp for folder and file names: 20261130T180000Z."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def unique_path(folder: Path, stem: str, suffix: str = "", *, directory: bool = False) -> Path:
    """folder/stem+suffix, or folder/stem-2+suffix, ... whichever does not exist yet (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = folder / (f"{stem}{suffix}" if n == 1 else f"{stem}-{n}{suffix}")
        try:
            if directory:
                candidate.mkdir()
            else:
                with open(candidate, "x"):
                    pass  # reserve the name; the move below replaces this empty file
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free name for {stem}{suffix} in {folder}")


def results_dir(layout: InboxLayout, claimed: Path, when: str) -> Path:
    """data/results/<file stem>-<timestamp>/ (made unique, created)."""
    return unique_path(layout.results, f"{claimed.stem}-{when}", directory=True)


def finish(
    layout: InboxLayout,
    claimed: Path,
    *,
    rejected_because: str | None = None,
    when: str | None = None,
    attention: str | None = None,
) -> Path:
    """Move a claimed file to processed/, or to rejected/ with `<name>.reason.txt` beside it.

    `attention` (a processed file some of whose rows need a person) is written as the
    processed file's `<name>.reason.txt`.
    """
    when = when or stamp()
    folder = layout.rejected if rejected_because is not None else layout.processed
    target = unique_path(folder, f"{claimed.stem}-{when}", claimed.suffix)
    reason = target.with_name(target.name + REASON_SUFFIX)
    if rejected_because is not None:
        reason.write_text(
            f"{claimed.name} was not processed.\n{rejected_because.strip()}\n"
            f"(rejected at {when}; claimed as {claimed})\n",
            encoding="utf-8",
        )
    elif attention is not None:
        reason.write_text(
            f"{claimed.name} was processed, but some of its rows need attention.\n{attention.strip()}\n"
            f"(processed at {when})\n",
            encoding="utf-8",
        )
    shutil.move(str(claimed), str(target))  # a rename on one filesystem; copy + delete across
    _remove_if_empty(claimed.parent)
    return target


def release_orphans(layout: InboxLayout, is_finished: Callable[[str], bool]) -> list[Path]:
    """Put files back into the inbox from claim folders whose run has ended without moving them.

    `is_finished(token)` says whether the run that made the claim is over. A file whose name
    is back in the inbox already is returned under `<stem>-requeued-<token><suffix>`.
    """
    released: list[Path] = []
    if not layout.claimed.is_dir():
        return released
    for folder in sorted(p for p in layout.claimed.iterdir() if p.is_dir()):
        files = [p for p in folder.iterdir() if p.is_file()]
        if not files:
            _remove_if_empty(folder)
            continue
        try:
            if not is_finished(folder.name):
                continue
        except Exception:  # cannot tell: leave it, a later run asks again
            continue
        for path in files:
            target = put_back(layout, path)
            if target is not None:
                released.append(target)
        _remove_if_empty(folder)
    return released


def put_back(layout: InboxLayout, claimed: Path) -> Path | None:
    """Return a claimed file to the inbox (as `<stem>-requeued-<claim><suffix>` if its name is taken)."""
    target = layout.inbox / claimed.name
    if target.exists():
        target = layout.inbox / f"{claimed.stem}-requeued-{claimed.parent.name[:8]}{claimed.suffix}"
    try:
        os.rename(claimed, target)
    except FileNotFoundError:  # another run released it first
        return None
    _remove_if_empty(claimed.parent)
    return target


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()
