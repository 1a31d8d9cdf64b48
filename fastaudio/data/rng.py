"""Per-sample random streams derived from (seed, epoch, index), never from global RNG state.

Every random choice a dataset makes for one sample (its crop, its prompt) comes from a
``random.Random`` seeded by a hash of ``(seed, epoch, index, stream)``. So two processes, a
DataLoader worker and the main process, or a run resumed from a checkpoint all make the same
choices for the same sample, whatever order the samples are drawn in. Separate named streams
keep the choices independent: changing the prompt style does not move the crops.
"""
from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from the parts' text (stable across processes and Python versions,
    unlike ``hash()``, which is salted per process for strings)."""
    text = "\x1f".join(repr(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def sample_rng(seed: int, epoch: int, index: int, stream: str) -> random.Random:
    """The random stream ``stream`` ("crop", "prompt", …) of sample ``index`` in ``epoch``."""
    return random.Random(derive_seed("fastaudio.data", int(seed), int(epoch), int(index), stream))
