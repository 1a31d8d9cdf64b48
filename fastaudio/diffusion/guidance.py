"""Classifier-free guidance over the U-Net, as stable-audio-tools' UNetCFG1d computes it.

One batched pass over contexts [cond; uncond] (the learned null context, or a negative prompt
whose padded tokens are replaced by the null context) with x given once, so the U-Net runs its
context-free prefix (input block, first level, first self-attention) a single time (not with
``unet.use_pooled_context``: there every block depends on the context); then
``uncond + s·(cond − uncond)`` on the v-prediction, optionally rescaled:
``φ·out·std(cond)/std(out) + (1−φ)·out`` (std over channels).
Like the reference, both halves use the prompt's context mask. ``scale == 1`` runs the
conditional model alone. The cross-attention keys and values of the batched context are computed
once per prompt (``UNet1d.context_keys_values``), not at every step.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..models.unet import UNet1d
from .schedule import VDenoiser


def uncond_context(unet: UNet1d, context: Tensor, negative_context: Optional[Tensor] = None,
                   negative_mask: Optional[Tensor] = None) -> Tensor:
    """The context of the unconditional half: null context, or the negative prompt's."""
    null = unet.null_context(context.shape[0], context.shape[1]).to(context.dtype)
    if negative_context is None:
        return null
    if negative_mask is None:
        return negative_context
    return torch.where(negative_mask.to(torch.bool).unsqueeze(-1), negative_context, null)


class GuidedV:
    """``v(x, t)`` of the U-Net under classifier-free guidance.

    The batched context, its mask and its cross-attention keys/values live in buffers that
    :meth:`set_conditioning` overwrites in place, so a CUDA graph captured over this function
    serves every prompt of the same shape. ``forward`` (default: the U-Net) is called as
    ``forward(x, t, context, mask, context_kv)``, UNet1d.forward's signature, e.g. a
    ``torch.compile`` of the U-Net. Inference only: the keys/values are computed without
    gradients.
    """

    def __init__(self, unet: UNet1d, context: Tensor, context_mask: Optional[Tensor],
                 cfg_scale: float, cfg_rescale: float = 0.0,
                 negative_context: Optional[Tensor] = None, negative_mask: Optional[Tensor] = None,
                 forward: Optional[Callable[..., Tensor]] = None):
        self.unet = unet
        self.forward = forward if forward is not None else unet  # e.g. torch.compile(unet)
        self.scale = float(cfg_scale)
        self.rescale = float(cfg_rescale)
        self.dtype = next(unet.parameters()).dtype
        self.context, self.mask = self._batched(context, context_mask, negative_context, negative_mask)
        self.context_kv = self._keys_values(self.context)

    @torch.no_grad()
    def _keys_values(self, context: Tensor) -> Optional[Tensor]:
        return self.unet.context_keys_values(context) if self.unet.context_kv_features else None

    def _batched(self, context, context_mask, negative_context, negative_mask):
        context = context.to(self.dtype)
        if context_mask is None:
            context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = context_mask.to(torch.bool)
        if self.scale == 1.0:
            return context, context_mask
        uncond = uncond_context(self.unet, context, negative_context, negative_mask).to(self.dtype)
        return torch.cat([context, uncond], 0), torch.cat([context_mask, context_mask], 0)

    @torch.no_grad()
    def set_conditioning(self, context: Tensor, context_mask: Optional[Tensor],
                         negative_context: Optional[Tensor] = None,
                         negative_mask: Optional[Tensor] = None) -> None:
        ctx, mask = self._batched(context, context_mask, negative_context, negative_mask)
        if ctx.shape != self.context.shape:
            raise ValueError(f"conditioning shape {tuple(ctx.shape)} differs from the captured "
                             f"{tuple(self.context.shape)}")
        self.context.copy_(ctx)
        self.mask.copy_(mask)
        if self.context_kv is not None:
            self.context_kv.copy_(self._keys_values(ctx))

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        x_in, t_in = x.to(self.dtype), t.float()  # t stays fp32 (see UNet1d.check_inputs)
        if self.scale == 1.0:
            return self.forward(x_in, t_in, self.context, self.mask, self.context_kv).to(x.dtype)
        # x once, context [cond; uncond]: the U-Net runs its context-free prefix (input block,
        # first level, the first self-attention) on x alone and widens at the first cross-attention
        # (with unet.use_pooled_context the whole U-Net runs on the wide batch)
        both = self.forward(x_in, t_in, self.context, self.mask, self.context_kv)
        cond, uncond = both.to(x.dtype).chunk(2, 0)
        out = uncond + (cond - uncond) * self.scale
        if self.rescale:
            ratio = cond.std(dim=1, keepdim=True) / out.std(dim=1, keepdim=True)
            out = self.rescale * (out * ratio) + (1 - self.rescale) * out
        return out


def guided_denoiser(unet: UNet1d, context: Tensor, context_mask: Optional[Tensor],
                    cfg_scale: float, cfg_rescale: float = 0.0,
                    negative_context: Optional[Tensor] = None,
                    negative_mask: Optional[Tensor] = None) -> VDenoiser:
    """``denoiser(x, sigma)`` for the samplers: the VDenoiser over the guided v-prediction."""
    return VDenoiser(GuidedV(unet, context, context_mask, cfg_scale, cfg_rescale,
                             negative_context, negative_mask))
