"""The Stable Audio Open diffusion transformer: stable-audio-tools 0.0.19's DiffusionTransformer.

Latents x (B, io_channels, L) and a diffusion time t (B,) in [0, 1] give the model output
(v, or the rectified-flow velocity) of the same shape. Conditioning:

* ``cross_attn_cond`` (B, T, cond_token_dim): tokens every layer cross-attends to (T5 output,
  already multiplied by its mask, plus the timing tokens), through ``to_cond_embed`` (an MLP that
  keeps their width unless ``project_cond_tokens``).
* ``global_embed`` (B, global_cond_dim): through ``to_global_embed``, added to the timestep
  embedding and prepended as one token (``global_cond_type="prepend"``).

Like the reference, the DiT ignores cross-attention masks (it sets them to None: the tokens are
zero where masked) and the unconditional half of classifier-free guidance keeps the prompt's
global embedding (``negative_global_embed`` is accepted and, as there, unused).

SAO 1.0: io 64, embed 1536, depth 24, 24 heads, cond tokens 768 unprojected, global 1536:
1,056,828,544 parameters. SAO Small: embed 1024, depth 16, 8 heads, projected tokens, global 768,
``attn_kwargs={"qk_norm": "ln"}``: 340,879,488.

:class:`GuidedDiT` is the per-generation guided model the samplers call: conditioning batched
once, cross-attention keys/values computed once, every step free of host synchronisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..diffusion.guidance import combine_guidance
from ..errors import FastAudioError
from .transformer import ContinuousTransformer, TransformerConfigError

OBJECTIVES = ("v", "rectified_flow", "rf_denoiser")


class DiTConfigError(FastAudioError, ValueError):
    """A DiffusionTransformer option (or option value) that fastaudio does not implement."""


class DiTInputError(FastAudioError, ValueError):
    """Inputs the DiT cannot take (shapes, conditioning it was built without, unsupported
    forward arguments)."""


class FourierFeatures(nn.Module):
    """``[cos(2π t Wᵀ), sin(2π t Wᵀ)]`` with a fixed random W (the timestep features)."""

    def __init__(self, in_features: int, out_features: int, std: float = 1.0):
        super().__init__()
        if out_features % 2:
            raise DiTConfigError(f"FourierFeatures: out_features={out_features} must be even")
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features) * std)

    def forward(self, x: Tensor) -> Tensor:
        f = 2 * math.pi * x @ self.weight.T
        return torch.cat([f.cos(), f.sin()], dim=-1)


def _mlp(dim_in: int, dim_out: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out, bias=bias), nn.SiLU(),
                         nn.Linear(dim_out, dim_out, bias=bias))


class DiffusionTransformer(nn.Module):
    """The reference's DiffusionTransformer: same constructor arguments and defaults, same
    parameter names (``model.model.`` stripped from an SAO checkpoint loads with strict=True).

    Refused with DiTConfigError: ``transformer_type`` other than "continuous_transformer",
    ``global_cond_type="adaLN"``, ``timestep_cond_type="input_concat"`` (which the reference
    cannot run: it expands the (B, 1, D) embedding over the length axis), and the transformer
    options fastaudio.models.transformer.check_options lists."""

    def __init__(self, io_channels: int = 32, patch_size: int = 1, embed_dim: int = 768,
                 cond_token_dim: int = 0, project_cond_tokens: bool = True,
                 global_cond_dim: int = 0, project_global_cond: bool = True,
                 input_concat_dim: int = 0, prepend_cond_dim: int = 0, depth: int = 12,
                 num_heads: int = 8, transformer_type: str = "continuous_transformer",
                 global_cond_type: str = "prepend", timestep_cond_type: str = "global",
                 timestep_embed_dim: Optional[int] = None, diffusion_objective: str = "v",
                 **kwargs):
        super().__init__()
        if transformer_type != "continuous_transformer":
            raise DiTConfigError(f"DiffusionTransformer: transformer_type={transformer_type!r} is "
                                 "not supported (only 'continuous_transformer')")
        if global_cond_type != "prepend":
            raise DiTConfigError(f"DiffusionTransformer: global_cond_type={global_cond_type!r} is "
                                 "not supported (only 'prepend')")
        if timestep_cond_type != "global":
            raise DiTConfigError(f"DiffusionTransformer: timestep_cond_type={timestep_cond_type!r} "
                                 "is not supported (only 'global'; the reference's input_concat "
                                 "path cannot run)")
        if timestep_embed_dim not in (None, embed_dim):
            raise DiTConfigError(f"DiffusionTransformer: timestep_embed_dim={timestep_embed_dim} "
                                 "is not supported (with timestep_cond_type='global' the "
                                 "timestep embedding is embed_dim wide)")
        if diffusion_objective not in OBJECTIVES:
            raise DiTConfigError(f"DiffusionTransformer: diffusion_objective="
                                 f"{diffusion_objective!r} is not one of {', '.join(OBJECTIVES)}")
        if embed_dim % num_heads:
            raise DiTConfigError(f"DiffusionTransformer: embed_dim={embed_dim} is not a multiple "
                                 f"of num_heads={num_heads}")
        if patch_size < 1:
            raise DiTConfigError(f"DiffusionTransformer: patch_size={patch_size} must be >= 1")
        for name in ("dim_heads", "dim_in", "dim_out", "cross_attend", "global_cond_dim"):
            if name in kwargs:  # the DiT sets these itself (the reference raises TypeError)
                raise DiTConfigError(f"DiffusionTransformer: transformer option {name} is set by "
                                     "the DiT and cannot be passed")

        self.io_channels = io_channels
        self.embed_dim = embed_dim
        self.cond_token_dim = cond_token_dim
        self.global_cond_dim = global_cond_dim
        self.prepend_cond_dim = prepend_cond_dim
        self.input_concat_dim = input_concat_dim
        self.patch_size = patch_size
        self.transformer_type = transformer_type
        self.global_cond_type = global_cond_type
        self.timestep_cond_type = timestep_cond_type
        self.diffusion_objective = diffusion_objective

        timestep_features_dim = 256
        self.timestep_features = FourierFeatures(1, timestep_features_dim)
        self.to_timestep_embed = _mlp(timestep_features_dim, embed_dim, bias=True)
        cond_embed_dim = 0
        if cond_token_dim > 0:
            cond_embed_dim = embed_dim if project_cond_tokens else cond_token_dim
            self.to_cond_embed = _mlp(cond_token_dim, cond_embed_dim, bias=False)
        if global_cond_dim > 0:
            global_embed_dim = embed_dim if project_global_cond else global_cond_dim
            if global_embed_dim != embed_dim:  # it is added to the timestep embedding
                raise DiTConfigError(
                    f"DiffusionTransformer: project_global_cond=False needs global_cond_dim == "
                    f"embed_dim, got {global_cond_dim} and {embed_dim}")
            self.to_global_embed = _mlp(global_cond_dim, global_embed_dim, bias=False)
        if prepend_cond_dim > 0:
            self.to_prepend_embed = _mlp(prepend_cond_dim, embed_dim, bias=False)

        dim_in = io_channels + input_concat_dim
        try:
            self.transformer = ContinuousTransformer(
                dim=embed_dim, depth=depth, dim_heads=embed_dim // num_heads,
                dim_in=dim_in * patch_size, dim_out=io_channels * patch_size,
                cross_attend=cond_token_dim > 0, cond_token_dim=cond_embed_dim, **kwargs)
        except TransformerConfigError as e:
            raise DiTConfigError(f"DiffusionTransformer: {e}") from None
        self.preprocess_conv = nn.Conv1d(dim_in, dim_in, 1, bias=False)
        nn.init.zeros_(self.preprocess_conv.weight)
        self.postprocess_conv = nn.Conv1d(io_channels, io_channels, 1, bias=False)
        nn.init.zeros_(self.postprocess_conv.weight)

    # -----------------------------------------------------------------------------------------
    # Conditioning that stays fixed over a generation
    # -----------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to: the first parameter's, as the reference reads it."""
        return self.timestep_features.weight.dtype

    def context_keys_values(self, cross_attn_cond: Tensor) -> Tensor:
        """Every cross-attention's keys and values of the conditioning tokens (B, T,
        cond_token_dim): (layers, 2, B, heads, T, head_dim), for ``forward(context_kv=...)``."""
        if self.cond_token_dim <= 0:
            raise DiTInputError("this DiT was built without cross-attention (cond_token_dim=0)")
        tokens = self.to_cond_embed(cross_attn_cond.to(self.dtype))
        return self.transformer.context_keys_values(tokens)

    # -----------------------------------------------------------------------------------------
    # One pass
    # -----------------------------------------------------------------------------------------
    def _check(self, x: Tensor, t: Tensor, cross_attn_cond, global_embed, prepend_cond,
               input_concat_cond) -> None:
        if x.dim() != 3 or x.shape[1] != self.io_channels:
            raise DiTInputError(f"x must be (B, {self.io_channels}, L), got {tuple(x.shape)}")
        if x.shape[2] % self.patch_size:
            raise DiTInputError(f"x length {x.shape[2]} is not a multiple of patch_size "
                                f"{self.patch_size}")
        if tuple(t.shape) != (x.shape[0],):
            raise DiTInputError(f"t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        for name, value, dim in (("cross_attn_cond", cross_attn_cond, self.cond_token_dim),
                                 ("global_embed", global_embed, self.global_cond_dim),
                                 ("prepend_cond", prepend_cond, self.prepend_cond_dim),
                                 ("input_concat_cond", input_concat_cond, self.input_concat_dim)):
            if value is None:
                continue
            if dim <= 0:
                raise DiTInputError(f"{name} given to a DiT built without it")
            channels = value.shape[1] if name == "input_concat_cond" else value.shape[-1]
            if channels != dim:
                raise DiTInputError(f"{name} has {channels} channels, the DiT takes {dim}")

    def _forward(self, x: Tensor, t: Tensor, cross_attn_cond: Optional[Tensor] = None,
                 context_kv: Optional[Tensor] = None, input_concat_cond: Optional[Tensor] = None,
                 global_embed: Optional[Tensor] = None, prepend_cond: Optional[Tensor] = None,
                 use_checkpointing: bool = False) -> Tensor:
        """The model on one batch, no guidance (all inputs already in the model's dtype)."""
        context = self.to_cond_embed(cross_attn_cond) if cross_attn_cond is not None else None
        if global_embed is not None:
            global_embed = self.to_global_embed(global_embed)
        prepend = self.to_prepend_embed(prepend_cond) if prepend_cond is not None else None
        if input_concat_cond is not None:
            if input_concat_cond.shape[2] != x.shape[2]:
                input_concat_cond = F.interpolate(input_concat_cond, (x.shape[2],), mode="nearest")
            x = torch.cat([x, input_concat_cond], dim=1)

        timestep_embed = self.to_timestep_embed(self.timestep_features(t[:, None]))
        global_embed = timestep_embed if global_embed is None else global_embed + timestep_embed
        # the global embedding rides as the last prepended token
        token = global_embed.unsqueeze(1)
        prepend = token if prepend is None else torch.cat([prepend, token], dim=1)

        x = self.preprocess_conv(x) + x
        x = x.transpose(1, 2)  # (B, L, C)
        p = self.patch_size
        if p > 1:  # (B, L, C) -> (B, L/p, C·p), channel-major within a patch
            B, L, C = x.shape
            x = x.reshape(B, L // p, p, C).transpose(2, 3).reshape(B, L // p, C * p)
        out = self.transformer(x, prepend_embeds=prepend, context=context, context_kv=context_kv,
                               use_checkpointing=use_checkpointing)
        out = out.transpose(1, 2)[:, :, prepend.shape[1]:]  # (B, C·p, L/p), prepended dropped
        if p > 1:
            B, Cp, Lp = out.shape
            out = out.reshape(B, Cp // p, p, Lp).transpose(2, 3).reshape(B, Cp // p, Lp * p)
        return self.postprocess_conv(out) + out

    def forward(self, x: Tensor, t: Tensor, cross_attn_cond: Optional[Tensor] = None,
                cross_attn_cond_mask: Optional[Tensor] = None,
                negative_cross_attn_cond: Optional[Tensor] = None,
                negative_cross_attn_mask: Optional[Tensor] = None,
                input_concat_cond: Optional[Tensor] = None, global_embed: Optional[Tensor] = None,
                negative_global_embed: Optional[Tensor] = None,
                prepend_cond: Optional[Tensor] = None, prepend_cond_mask: Optional[Tensor] = None,
                cfg_scale: float = 1.0, cfg_dropout_prob: float = 0.0,
                cfg_interval: Sequence[float] = (0, 1), causal: bool = False,
                scale_phi: float = 0.0, mask: Optional[Tensor] = None, return_info: bool = False,
                exit_layer_ix: Optional[int] = None, context_kv: Optional[Tensor] = None,
                use_checkpointing: bool = False) -> Tensor:
        """The reference's forward: x (B, io, L), t (B,) -> (B, io, L) in the model's dtype.

        With ``cfg_scale != 1`` and cross-attention (or prepend) conditioning: one pass over
        [cond; uncond] (uncond: zero tokens, or ``negative_cross_attn_cond`` with the tokens its
        mask drops zeroed), ``uncond + s·(cond − uncond)``, rescaled by ``scale_phi``
        (``φ·out·std(cond)/std(out) + (1−φ)·out``, std over channels). Guidance applies when
        sigma(t[0]) lies in ``cfg_interval``, chosen on the device (torch.where), not in Python.
        ``cfg_dropout_prob`` (training, ``cfg_scale == 1``) zeroes each item's tokens with that
        probability. ``cross_attn_cond_mask``, ``prepend_cond_mask`` and ``negative_global_embed``
        are accepted and unused, as in the reference.

        ``context_kv`` (ours): precomputed :meth:`context_keys_values` in place of
        ``cross_attn_cond``, for a caller that batches and guides itself (GuidedDiT); it takes no
        guidance here. ``use_checkpointing`` recomputes each layer in backward."""
        if causal:
            raise DiTInputError("causal=True is not supported (nor by the reference)")
        if mask is not None:
            raise DiTInputError("mask is not supported (the reference accepts and ignores it)")
        if return_info or exit_layer_ix is not None:
            raise DiTInputError("return_info and exit_layer_ix are not supported")
        if context_kv is not None and (cross_attn_cond is not None or cfg_scale != 1.0
                                       or cfg_dropout_prob > 0.0):
            raise DiTInputError("context_kv replaces cross_attn_cond and takes no guidance nor "
                                "dropout: pass it alone, with cfg_scale=1")
        self._check(x, t, cross_attn_cond, global_embed, prepend_cond, input_concat_cond)
        dtype = self.dtype
        x, t = x.to(dtype), t.to(dtype)
        cast = lambda v: v.to(dtype) if v is not None else None  # noqa: E731
        cross_attn_cond, global_embed = cast(cross_attn_cond), cast(global_embed)
        negative_cross_attn_cond = cast(negative_cross_attn_cond)
        input_concat_cond, prepend_cond = cast(input_concat_cond), cast(prepend_cond)

        if cfg_dropout_prob > 0.0 and cfg_scale == 1.0:
            # the reference's draws, in its order (tokens, then prepend), so seeds agree
            cross_attn_cond = _drop(cross_attn_cond, cfg_dropout_prob)
            prepend_cond = _drop(prepend_cond, cfg_dropout_prob)

        if cfg_scale == 1.0 or (cross_attn_cond is None and prepend_cond is None):
            return self._forward(x, t, cross_attn_cond, context_kv, input_concat_cond,
                                 global_embed, prepend_cond, use_checkpointing)

        batch_cond = None
        if cross_attn_cond is not None:
            uncond = uncond_tokens(cross_attn_cond, negative_cross_attn_cond,
                                   negative_cross_attn_mask)
            batch_cond = torch.cat([cross_attn_cond, uncond], dim=0)
        batch_prepend = None
        if prepend_cond is not None:
            batch_prepend = torch.cat([prepend_cond, torch.zeros_like(prepend_cond)], dim=0)
        twice = lambda v: torch.cat([v, v], dim=0) if v is not None else None  # noqa: E731
        both = self._forward(twice(x), twice(t), batch_cond, None, twice(input_concat_cond),
                             twice(global_embed), batch_prepend, use_checkpointing)
        cond, uncond_out = both.chunk(2, dim=0)
        out = combine_guidance(cond, uncond_out, cfg_scale, scale_phi)
        # the reference guides only when sigma(t[0]) is in cfg_interval (a host-side test there)
        sigma = torch.sin(t[0] * math.pi / 2) if self.diffusion_objective == "v" else t[0]
        inside = (sigma >= cfg_interval[0]) & (sigma <= cfg_interval[1])
        return torch.where(inside, out, cond)


def _drop(tokens: Optional[Tensor], prob: float) -> Optional[Tensor]:
    if tokens is None:
        return None
    keep = torch.bernoulli(torch.full((tokens.shape[0], 1, 1), prob, device=tokens.device))
    return torch.where(keep.to(torch.bool), torch.zeros_like(tokens), tokens)


def uncond_tokens(tokens: Tensor, negative: Optional[Tensor] = None,
                  negative_mask: Optional[Tensor] = None) -> Tensor:
    """The unconditional half's tokens: zeros, or the negative prompt's with the tokens its mask
    drops zeroed."""
    null = torch.zeros_like(tokens)
    if negative is None:
        return null
    if negative.shape != tokens.shape:
        raise DiTInputError(f"negative_cross_attn_cond {tuple(negative.shape)} must match "
                            f"cross_attn_cond {tuple(tokens.shape)}")
    negative = negative.to(tokens.dtype)
    if negative_mask is None:
        return negative
    return torch.where(negative_mask.to(torch.bool).unsqueeze(2), negative, null)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance for the samplers
# ---------------------------------------------------------------------------------------------

@dataclass
class DiTConditioning:
    """What the sampler's guided model needs, per generation call."""
    cross_attn_cond: Optional[Tensor]   # (B, T, cond_token_dim)
    cross_attn_mask: Optional[Tensor]   # (B, T) bool; the DiT does not read it (see module doc)
    global_embed: Optional[Tensor]      # (B, global_cond_dim)
    negative_cross_attn_cond: Optional[Tensor] = None
    negative_cross_attn_mask: Optional[Tensor] = None


class GuidedDiT:
    """The DiT's output under classifier-free guidance, as a plain callable model(x, t) -> Tensor.

    Equal to ``dit(x, t, cross_attn_cond, ..., global_embed, cfg_scale=..., scale_phi=...)``
    with the default cfg_interval for t in [0, 1], but the conditioning is prepared once: the
    batched global embeddings [g; g] and the cross-attention keys/values of the batched tokens
    [cond; uncond] (:meth:`DiffusionTransformer.context_keys_values`) live in tensors that
    :meth:`set_conditioning` overwrites IN PLACE, so a CUDA graph captured over ``__call__``
    serves every later prompt with the same shapes. A step does no host synchronisation.

    ``forward`` (default: the DiT module) is called as
    ``forward(x, t, global_embed=Tensor | None, context_kv=Tensor | None) -> Tensor`` on the
    doubled batch, DiffusionTransformer.__call__'s keywords, e.g. ``torch.compile(dit)``.
    Guidance is combined in the model's dtype, as the reference does; the result is returned in
    x's dtype. Inference only: the keys/values are computed without gradients.
    """

    def __init__(self, dit: DiffusionTransformer, cond: DiTConditioning, cfg_scale: float,
                 cfg_rescale: float = 0.0, forward: Optional[Callable[..., Tensor]] = None):
        self.dit = dit
        self.forward = forward if forward is not None else dit
        self.scale = float(cfg_scale)
        self.rescale = float(cfg_rescale)
        # the reference guides only when there are tokens to drop
        self.guided = self.scale != 1.0 and cond.cross_attn_cond is not None
        self.global_embed, self.context_kv = self._prepare(cond)

    @torch.no_grad()
    def _prepare(self, cond: DiTConditioning):
        dtype = self.dit.dtype
        tokens = cond.cross_attn_cond
        global_embed = cond.global_embed.to(dtype) if cond.global_embed is not None else None
        if tokens is not None:
            tokens = tokens.to(dtype)
            if self.guided:
                uncond = uncond_tokens(tokens, cond.negative_cross_attn_cond,
                                       cond.negative_cross_attn_mask)
                tokens = torch.cat([tokens, uncond], dim=0)
        if self.guided and global_embed is not None:
            global_embed = torch.cat([global_embed, global_embed], dim=0)
        context_kv = self.dit.context_keys_values(tokens) if tokens is not None else None
        return global_embed, context_kv

    @torch.no_grad()
    def set_conditioning(self, cond: DiTConditioning) -> None:
        """Replace the prompt in place; ValueError if any shape differs from the captured ones."""
        global_embed, context_kv = self._prepare(cond)
        for name, old, new in (("global_embed", self.global_embed, global_embed),
                               ("cross-attention keys/values", self.context_kv, context_kv)):
            if (old is None) != (new is None) or (old is not None and old.shape != new.shape):
                shape = lambda v: None if v is None else tuple(v.shape)  # noqa: E731
                raise ValueError(f"conditioning {name} shape {shape(new)} differs from the "
                                 f"captured {shape(old)}")
        if global_embed is not None:
            self.global_embed.copy_(global_embed)
        if context_kv is not None:
            self.context_kv.copy_(context_kv)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.guided:
            out = self.forward(x, t, global_embed=self.global_embed, context_kv=self.context_kv)
            return out.to(x.dtype)
        both = self.forward(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0),
                            global_embed=self.global_embed, context_kv=self.context_kv)
        cond, uncond = both.chunk(2, dim=0)
        return combine_guidance(cond, uncond, self.scale, self.rescale).to(x.dtype)


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (buffers such as the rotary ``inv_freq`` not counted)."""
    return sum(p.numel() for p in module.parameters())
