"""One machine or many: torchrun's environment, DDP/FSDP wrapping, rank-0 helpers.

The same ``fastaudio train`` command runs single-process (no process group) or under
``torchrun --nproc_per_node N`` (NCCL on CUDA, gloo on CPU). The global batch is split evenly
across ranks and gradients are averaged, so N processes take the same steps as one process
over the same global batch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import FastAudioError

log = logging.getLogger("fastaudio.train")


class DistributedError(FastAudioError, RuntimeError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"--device {device}: no CUDA device is available")
        if world > 1 or dev.index is None:  # one GPU per process under torchrun
            dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("process group: rank %d of %d (%s)", rank, world, backend)
    return Dist(rank, world, local, dev)


def shutdown(d: Dist, ok: bool = True) -> None:
    """Leave the process group; the barrier only after success (a failed rank must not wait for
    peers stuck in a collective)."""
    if d.enabled and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if not d.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / d.world


def wrap(module: nn.Module, d: Dist, strategy: str, find_unused: bool = False) -> nn.Module:
    """DDP (default under torchrun) or FSDP2 (``fully_shard``, for the 907 M U-Net).

    ``find_unused``: some parameters may receive no gradient in a step (a frozen encoder); DDP
    then has to search the graph every step, so it is only asked for where it is needed."""
    if not d.enabled:
        return module
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [d.device.index] if d.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=find_unused)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError as e:
            raise DistributedError(f"FSDP2 (fully_shard) is not available in this torch: {e}") from None
        for child in module.modules():
            if child.__class__.__name__ in ("TransformerBlock", "ResnetBlock1d"):
                fully_shard(child)
        fully_shard(module)
        return module
    raise DistributedError(f"unknown strategy {strategy!r} (auto, ddp, fsdp)")


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module.module, nn.Module) else module
