"""The corpus's file writes: atomic, with the mode any new file gets (fastaudio.atomic)."""
from __future__ import annotations

from ..atomic import atomic_path, atomic_write_bytes

public_atomic_path = atomic_path  # the corpus's name for it


def write_bytes(path: str, data: bytes) -> None:
    atomic_write_bytes(path, data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
