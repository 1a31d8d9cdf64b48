"""The sampling loop on static buffers, eager or captured once in a CUDA graph and replayed.

A step is the whole denoiser call (U-Net with guidance) plus the solver update
``x ← a·x + b·D + c·D₁ + d·D₂ + e·z``. Everything it reads lives in static device buffers:
the latents, the two previous denoised estimates, the step's noise, and a 6-float coefficient
row (σ, a, b, c, d, e) copied device-to-device from a table built on the host before the loop.
So one capture serves every step of every call with the same latent shape, dtype and guidance
settings: nothing in the loop synchronises with the host. The eager path runs the very same step function on the same
buffers, which is why graph and eager results agree.

SDE noise is drawn outside the graph into the static noise buffer from the caller's seeded
generator, in the same order as the eager samplers draw it.
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from ..profiling import nvtx_range
from .samplers import Step

log = logging.getLogger("fastaudio.diffusion")

Denoiser = Callable[[Tensor, Tensor], Tensor]


def capture_graph(fn: Callable[[], object], warmup: int = 2, pool=None) -> "torch.cuda.CUDAGraph":
    """Run ``fn`` ``warmup`` times on a side stream (allocator, cuDNN and Triton autotuning happen
    there, never inside the capture), then capture one call as a CUDA graph. ``pool``: a graph
    memory pool shared with other captures."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        fn()
    return graph


class StepRunner:
    """Runs plan steps on static buffers; ``capture()`` records one step as a CUDA graph."""

    def __init__(self, denoiser: Denoiser, x_like: Tensor):
        self.denoiser = denoiser
        self.batch = x_like.shape[0]
        self.x = torch.zeros_like(x_like)
        self.d1 = torch.zeros_like(x_like)
        self.d2 = torch.zeros_like(x_like)
        self.noise = torch.zeros_like(x_like)
        self.denoised = torch.zeros_like(x_like)
        self.row = torch.zeros(6, device=x_like.device, dtype=torch.float32)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.guided = None  # the guided model a cached capture refreshes with set_conditioning

    def _step(self) -> None:
        sigma = self.row[0].expand(self.batch)
        den = self.denoiser(self.x, sigma)
        r = self.row.to(self.x.dtype)
        new = r[1] * self.x + r[2] * den + r[3] * self.d1 + r[4] * self.d2 + r[5] * self.noise
        self.d2.copy_(self.d1)
        self.d1.copy_(den)
        self.denoised.copy_(den)
        self.x.copy_(new)

    def capture(self, warmup: int = 2, pool=None) -> None:
        """Warm up on a side stream (allocator, cuDNN and Triton autotuning), then capture.
        ``pool``: a graph memory pool shared with other captures (only one replays at a time,
        and everything that outlives a replay lives in the static buffers)."""
        if not self.x.is_cuda:
            raise RuntimeError("CUDA graphs need CUDA tensors")
        # a harmless warm-up row (sigma 1, x kept); the side stream waits for this copy
        self.row.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0]))
        self.graph = capture_graph(self._step, warmup, pool)

    def _draw_noise(self, generator) -> None:
        """The step's noise: from one generator for the whole batch, or one per item (item i's
        noise then depends on its own seed only)."""
        if isinstance(generator, (list, tuple)):
            for i, g in enumerate(generator):
                torch.randn(self.x.shape[1:], generator=g, device=self.x.device, dtype=self.x.dtype,
                            out=self.noise[i])
        else:
            torch.randn(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype,
                        out=self.noise)

    def run(self, x0: Tensor, plan: List[Step],
            generator: Union[None, torch.Generator, Sequence[torch.Generator]] = None,
            callback=None, progress=None) -> Tensor:
        table = torch.tensor([s.row() for s in plan], dtype=torch.float32).to(self.x.device)
        self.x.copy_(x0)
        self.d1.zero_()
        self.d2.zero_()
        self.noise.zero_()
        for i, step in enumerate(plan):
            with nvtx_range(f"step {i}"):
                self.row.copy_(table[i], non_blocking=True)
                if step.e:
                    self._draw_noise(generator)
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()
            if callback is not None:  # copies: the static buffers change at the next step
                callback({"x": self.x.clone(), "i": i, "sigma": step.sigma, "sigma_hat": step.sigma,
                          "denoised": self.denoised.clone()})
            if progress is not None:
                progress.update(1)
        return self.x.clone()  # the static buffer is overwritten by the next call


class GraphCache:
    """One captured StepRunner per (latent shape, dtype, guidance settings); all share one graph
    memory pool, so several cached captures cost the activations of one."""

    def __init__(self, max_entries: int = 4):
        self.entries: dict = {}
        self.max_entries = max_entries
        self.pool = None

    def shared_pool(self):
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        return self.pool

    def get(self, key, make: Callable[[], StepRunner]) -> StepRunner:
        runner = self.entries.get(key)
        if runner is None:
            if len(self.entries) >= self.max_entries:
                self.entries.pop(next(iter(self.entries)))
            runner = make()
            self.entries[key] = runner
        return runner
