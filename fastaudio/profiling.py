"""NVTX ranges and per-stage timing for users who profile the pipeline kernel by kernel.

``nvtx_range`` marks text encoding, every sampler step and decoding in Nsight Systems; on a
machine without CUDA it costs nothing. ``StageTimer`` measures wall time per stage, with one
device synchronisation at each stage boundary (never inside the sampling loop).
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterator

import torch


def _nvtx_usable() -> bool:
    return torch.cuda.is_available()


@contextlib.contextmanager
def nvtx_range(name: str) -> Iterator[None]:
    if not _nvtx_usable():
        yield
        return
    torch.cuda.nvtx.range_push(name)
    try:
        yield
    finally:
        torch.cuda.nvtx.range_pop()


class StageTimer:
    """``with timer.stage("sampling"): ...`` records seconds per stage in ``timer.seconds``."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seconds: Dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        with nvtx_range(name):
            yield
        self._sync()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.seconds.values())
