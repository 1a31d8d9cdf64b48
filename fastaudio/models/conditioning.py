"""Text and timing conditioning: prompts, seconds_start, seconds_total → (B, 79, 768) context.

The context is the CLAP text features (77 tokens, second-to-last layer, with their attention
mask) followed by one token each for seconds_start and seconds_total, from two
``Embedding(513, 768)`` tables indexed by whole seconds clamped to [0, 512] as the reference does.
Seconds are rounded like the training crops: start down, total up.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .clap import CLAP
from ..errors import FastAudioError

Seconds = Union[float, int, Sequence[Union[float, int]], Tensor]


class ConditioningError(FastAudioError, ValueError):
    """Prompts or seconds that cannot be conditioned on."""


class IntEmbedder(nn.Module):
    """One timing table; the parameter is named as stable-audio-tools' IntConditioner's."""

    def __init__(self, min_val: int, max_val: int, dim: int):
        super().__init__()
        self.min_val, self.max_val = min_val, max_val
        self.int_embedder = nn.Embedding(max_val - min_val + 1, dim)

    def forward(self, ints: Tensor) -> Tensor:
        idx = ints.clamp(self.min_val, self.max_val) - self.min_val
        return self.int_embedder(idx).unsqueeze(1)  # (B, 1, dim)


def _seconds_list(name: str, value: Seconds, batch: int, round_up: bool) -> List[int]:
    if isinstance(value, Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    values = list(value) if isinstance(value, (list, tuple)) else [value] * batch
    if len(values) != batch:
        raise ConditioningError(f"{name}: {len(values)} values for a batch of {batch}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ConditioningError(f"{name} must be a number of seconds, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ConditioningError(f"{name} must be finite, got {v}")
        if v < 0:
            raise ConditioningError(f"{name} must be >= 0 seconds, got {v:g}")
        out.append(math.ceil(v) if round_up else math.floor(v))
    return out


def assemble_context(text: Tensor, text_mask: Tensor, seconds_start: Tensor, seconds_total: Tensor
                     ) -> Tuple[Tensor, Tensor]:
    """The diffusion context, for training and inference alike: text tokens (B, T, D) then one
    token each for seconds_start and seconds_total (B, 1, D), cast to the text's dtype; the mask
    (B, T + 2) bool keeps every timing token."""
    context = torch.cat([text, seconds_start.to(text.dtype), seconds_total.to(text.dtype)], dim=1)
    ones = torch.ones(text.shape[0], 2, dtype=torch.bool, device=text_mask.device)
    return context, torch.cat([text_mask.to(torch.bool), ones], dim=1)


class Conditioner(nn.Module):
    """Owns the CLAP model (its text tower conditions the U-Net) and the timing tables."""

    def __init__(self, cfg: ModelConfig, tokenizer=None):
        super().__init__()
        c = cfg.conditioning
        self.clap = CLAP(cfg.clap, tokenizer)
        text_dim = cfg.clap.text.hidden_size
        self.prompt_proj = nn.Linear(text_dim, c.cond_dim) if text_dim != c.cond_dim else nn.Identity()
        self.seconds_start = IntEmbedder(c.seconds_min, c.seconds_max, c.cond_dim)
        self.seconds_total = IntEmbedder(c.seconds_min, c.seconds_max, c.cond_dim)
        # Set by load_model when the text tower's weights could not be loaded (a
        # stable-audio-tools checkpoint comes without its CLAP): prompts then raise instead of
        # conditioning on random features.
        self.text_encoder_missing: Optional[str] = None

    @property
    def context_length(self) -> int:
        return self.clap.config.text.max_length + 2

    def timing_ids(self, seconds_start: Seconds, seconds_total: Seconds, batch: int
                   ) -> Tuple[Tensor, Tensor]:
        start = _seconds_list("seconds_start", seconds_start, batch, round_up=False)
        total = _seconds_list("seconds_total", seconds_total, batch, round_up=True)
        device = self.seconds_start.int_embedder.weight.device
        return (torch.tensor(start, dtype=torch.long, device=device),
                torch.tensor(total, dtype=torch.long, device=device))

    def forward(self, prompts: Union[str, Sequence[str]], seconds_start: Seconds,
                seconds_total: Seconds) -> Tuple[Tensor, Tensor]:
        """Returns context (B, 79, cond_dim) and its mask (B, 79) bool (True keeps)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ConditioningError("no prompts given")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ConditioningError(f"prompt {i} must be a string, got {type(p).__name__}")
        if self.text_encoder_missing:
            raise ConditioningError(self.text_encoder_missing)
        start_ids, total_ids = self.timing_ids(seconds_start, seconds_total, len(prompts))
        text, text_mask = self.clap.text_features(prompts)
        return assemble_context(self.prompt_proj(text), text_mask, self.seconds_start(start_ids),
                                self.seconds_total(total_ids))
