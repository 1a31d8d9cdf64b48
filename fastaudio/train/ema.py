"""Exponential moving average of the trained parameters (the weights that get exported).

``decay_t = min(decay, (1 + t) / (10 + t))``: early steps follow the model closely, so a short run
still exports sensible weights. Kept in fp32 regardless of the training precision.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow: Dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in module.named_parameters()}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = self.current_decay(step)
        for name, p in module.named_parameters():
            s = self.shadow.get(name)
            if s is None:
                continue
            s.lerp_(p.detach().float(), 1 - d)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Full tensors (under FSDP every rank must call this: shards are gathered)."""
        return {k: _full(v).clone() for k, v in self.shadow.items()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k, s in self.shadow.items():
            s.copy_(_like(state[k], s))


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(full: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``shard`` is (an FSDP DTensor shard, or a plain tensor)."""
    if hasattr(shard, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor
        return distribute_tensor(full.to(shard.device), shard.device_mesh, shard.placements)
    return full
