"""Number conditioning for Stable Audio Open: ``seconds_start`` and ``seconds_total``.

The same computation as stable-audio-tools 0.0.19's ``NumberConditioner`` (conditioners.py)
and its ``NumberEmbedder`` (adp.py):

    v  = clamp(float(x), min_val, max_val)
    u  = (v − min_val) / (max_val − min_val)                  in [0, 1]
    f  = u · w · 2π            (w: 128 learned frequencies)
    e  = Linear(257 → dim)([u, sin f, cos f])                  (B, 1, dim), mask ones (B, 1)

Parameter names are the reference's, so a checkpoint's
``conditioner.conditioners.<id>.embedder.embedding.0.weights`` / ``.1.weight`` / ``.1.bias``
load once ``conditioner.conditioners.<id>.`` is stripped. The reference also gives every
conditioner a ``proj_out``; for numbers it is always ``nn.Identity`` (input and output width are
both ``output_dim``), which holds no tensors, so it is left out here.

Values outside [min_val, max_val] are clamped, as the reference does (a 600 s request to a model
trained up to 512 s is embedded as 512 s). What the reference would silently turn into nonsense
is an error here: a value that is not a number (``"ten"``, ``None``, ``True``) or is not finite
(NaN passes straight through ``clamp`` into the embedding; ±inf would be clamped to a bound that
nobody asked for).
"""
from __future__ import annotations

import math
import numbers
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import FastAudioError

Numbers = Union[Sequence[float], Tensor]


class NumberConditioningError(FastAudioError, ValueError):
    """A value given to a number conditioner that is not a finite number."""


class FourierFeatures(nn.Module):
    """The reference's ``LearnedPositionalEmbedding``: x → [x, sin(2π·x·w), cos(2π·x·w)].

    The parameter keeps the reference's name ``weights`` (plural) for checkpoint loading; the
    product is formed in the reference's order, ``x · w · 2 · π``, so float32 results agree
    bit for bit."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise NumberConditioningError(f"Fourier feature width must be even, got {dim}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: Tensor) -> Tensor:  # x: (N,) → (N, dim + 1)
        x = x.unsqueeze(-1)
        freqs = x * self.weights.unsqueeze(0) * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1)


class NumberEmbedder(nn.Module):
    """``embedding = Sequential(FourierFeatures(dim), Linear(dim + 1, features))`` as adp.py's
    NumberEmbedder/TimePositionalEmbedding, so the keys are ``embedding.0.weights`` and
    ``embedding.1.{weight,bias}``."""

    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        self.features = features
        self.embedding = nn.Sequential(FourierFeatures(dim), nn.Linear(dim + 1, features))

    def forward(self, x: Tensor) -> Tensor:  # any shape → shape + (features,)
        shape = x.shape
        return self.embedding(x.reshape(-1)).view(*shape, self.features)


def _as_floats(name: str, values: Numbers) -> List[float]:
    """Python floats from a sequence of numbers (or a tensor), each checked on its own so the
    error names the offending entry."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().reshape(-1).tolist()
    elif isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise NumberConditioningError(
            f"{name}: expected one number per batch item (a list or tensor), got {values!r}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, Tensor) and v.numel() == 1:
            v = v.item()
        # bool is a numbers.Real in Python, but True seconds is a caller's bug, not a duration
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise NumberConditioningError(f"{name}[{i}] must be a number, got {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise NumberConditioningError(f"{name}[{i}] must be finite, got {v}")
        out.append(v)
    if not out:
        raise NumberConditioningError(f"{name}: no values (the batch is empty)")
    return out


class NumberConditioner(nn.Module):
    """Numbers → (embeddings (B, 1, output_dim), mask ones (B, 1)), as the reference's."""

    def __init__(self, output_dim: int, min_val: float = 0, max_val: float = 1, name: str = "number"):
        super().__init__()
        if not (math.isfinite(min_val) and math.isfinite(max_val)) or max_val <= min_val:
            raise NumberConditioningError(
                f"{name}: need finite min_val < max_val, got [{min_val}, {max_val}]")
        self.output_dim = output_dim
        self.min_val, self.max_val = min_val, max_val
        self.name = name  # the conditioner id, for error messages
        self.embedder = NumberEmbedder(features=output_dim)

    def forward(self, values: Numbers, device=None) -> Tuple[Tensor, Tensor]:
        if device is None:
            device = self.embedder.embedding[1].weight.device
        # float32 like the reference's torch.tensor(list of floats); clamp and normalise in it
        x = torch.tensor(_as_floats(self.name, values), dtype=torch.float32, device=device)
        x = x.clamp(self.min_val, self.max_val)
        x = (x - self.min_val) / (self.max_val - self.min_val)
        x = x.to(self.embedder.embedding[1].weight.dtype)
        embeds = self.embedder(x).unsqueeze(1)
        return embeds, torch.ones(embeds.shape[0], 1, device=device)

    def extra_repr(self) -> str:
        return f"{self.name}: [{self.min_val}, {self.max_val}] → {self.output_dim}"
