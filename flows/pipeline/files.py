"""Writing files so that a crash never leaves a complete-looking one, and messages about files."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: Path, write: Callable[[str], object]) -> None:
    """`write(tmp)` into a temporary file beside `target`, flush it to disk, rename it into place.

    The file gets the permissions of any file this process creates (0666 less the umask), as
    `open()` gives: mkstemp's 0600 would keep the results from the analyst who dropped the file.
    """
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp")  # O_EXCL: never another's file
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def one_line(error: object, limit: int = 200) -> str:
    """An error's message as one short line (no traceback, no class-name noise)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
