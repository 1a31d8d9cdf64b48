"""The U-Net (SA1.0 family) as a guided model (see :mod:`fastaudio.diffusion.guidance`).

One batched pass over contexts [cond; uncond] (the learned null context, or a negative prompt
whose padded tokens are replaced by the null context) with x given once, so the U-Net runs its
context-free prefix (input block, first level, first self-attention) a single time (not with
``unet.use_pooled_context``: there every block depends on the context). Like the reference, both
halves use the prompt's context mask. ``scale == 1`` runs the conditional model alone. The
cross-attention keys and values of the batched context are computed once per prompt
(``UNet1d.context_keys_values``), not at every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from ..diffusion.guidance import combine_guidance
from .unet import UNet1d


@dataclass
class UNetConditioning:
    """A prompt's conditioning for the U-Net: context (B, T, D) and its mask (B, T) bool, and
    optionally a negative prompt's."""
    context: Tensor
    mask: Optional[Tensor] = None
    negative_context: Optional[Tensor] = None
    negative_mask: Optional[Tensor] = None


def uncond_context(unet: UNet1d, context: Tensor, negative_context: Optional[Tensor] = None,
                   negative_mask: Optional[Tensor] = None) -> Tensor:
    """The context of the unconditional half: null context, or the negative prompt's."""
    null = unet.null_context(context.shape[0], context.shape[1]).to(context.dtype)
    if negative_context is None:
        return null
    if negative_mask is None:
        return negative_context
    return torch.where(negative_mask.to(torch.bool).unsqueeze(-1), negative_context, null)


class GuidedUNet:
    """``v(x, t)`` of the U-Net under classifier-free guidance.

    The batched context, its mask and its cross-attention keys/values live in buffers that
    :meth:`set_conditioning` overwrites in place. ``forward`` (default: the U-Net) is called as
    ``forward(x, t, context, mask, context_kv)``, UNet1d.forward's signature, e.g. a
    ``torch.compile`` of the U-Net. Inference only.
    """

    def __init__(self, unet: UNet1d, cond: UNetConditioning, cfg_scale: float,
                 cfg_rescale: float = 0.0, forward: Optional[Callable[..., Tensor]] = None):
        self.unet = unet
        self.forward = forward if forward is not None else unet
        self.scale = float(cfg_scale)
        self.rescale = float(cfg_rescale)
        self.dtype = next(unet.parameters()).dtype
        self.context, self.mask = self._batched(cond)
        self.context_kv = self._keys_values(self.context)

    @torch.no_grad()
    def _keys_values(self, context: Tensor) -> Optional[Tensor]:
        return self.unet.context_keys_values(context) if self.unet.context_kv_features else None

    def _batched(self, cond: UNetConditioning):
        context = cond.context.to(self.dtype)
        mask = cond.mask
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        mask = mask.to(torch.bool)
        if self.scale == 1.0:
            return context, mask
        uncond = uncond_context(self.unet, context, cond.negative_context, cond.negative_mask)
        return torch.cat([context, uncond.to(self.dtype)], 0), torch.cat([mask, mask], 0)

    @torch.no_grad()
    def set_conditioning(self, cond: UNetConditioning) -> None:
        ctx, mask = self._batched(cond)
        if ctx.shape != self.context.shape:
            raise ValueError(f"conditioning shape {tuple(ctx.shape)} differs from the captured "
                             f"{tuple(self.context.shape)}")
        self.context.copy_(ctx)
        self.mask.copy_(mask)
        if self.context_kv is not None:
            self.context_kv.copy_(self._keys_values(ctx))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        x_in, t_in = x.to(self.dtype), t.float()  # t stays fp32 (see UNet1d.check_inputs)
        out = self.forward(x_in, t_in, self.context, self.mask, self.context_kv).to(x.dtype)
        if self.scale == 1.0:
            return out
        # x once, context [cond; uncond]: the U-Net widens at its first cross-attention
        cond, uncond = out.chunk(2, 0)
        return combine_guidance(cond, uncond, self.scale, self.rescale)
