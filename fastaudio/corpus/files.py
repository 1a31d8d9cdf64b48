"""Atomic writes with ordinary permissions.

``fastaudio.atomic.atomic_path`` creates its temporary file with ``mkstemp``, mode 0600, and
the rename keeps that mode; a corpus is read by other programs (and users), so its files get
the mode the umask gives any new file.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from ..atomic import atomic_path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


# read once, at import (in the main thread): umask is process-wide, and changing it for a moment
# while worker threads start processes or create files would race with them
_UMASK = _read_umask()


@contextmanager
def public_atomic_path(path: str) -> Iterator[str]:
    """``atomic_path``, with the file's mode set to 0666 less the umask before the rename."""
    with atomic_path(path) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)


def write_bytes(path: str, data: bytes) -> None:
    with public_atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
