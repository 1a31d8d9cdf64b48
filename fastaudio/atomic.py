"""Atomic file writes: write a temporary file beside the target, flush it to disk, then rename.

A reader (or a crash) never sees a half-written file, and a file already at the target path
stays intact until the new one is complete.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


# Read once, at import (in the main thread): the umask is process-wide, and toggling it while
# worker threads create files or start processes would race with them.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success it replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # keep the extension last so writers that infer a format from the name still work
    stem, ext = os.path.splitext(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
