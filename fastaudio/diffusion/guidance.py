"""Classifier-free guidance: the contract between a diffusion backbone and the samplers.

A *guided model* is what the sampling loop (eager or one CUDA graph per shape) calls at every
step. Any backbone plugs in by providing one (the U-Net: :class:`fastaudio.models.unet_guidance.
GuidedUNet`; the DiT: :class:`fastaudio.models.dit.GuidedDiT`):

* ``guided(x, t) -> Tensor`` – the backbone's output (v, or the rectified-flow velocity) for
  latents ``x`` (B, C, L) at times ``t`` (B,), with guidance applied, in ``x``'s dtype;
* ``guided.set_conditioning(cond)`` – replace the prompt's conditioning *in place* (same shapes),
  so a CUDA graph captured over ``guided(x, t)`` serves every later prompt; raises ValueError
  when shapes differ.

The conditioning object is the backbone's own (built by its model's ``encode_conditioning``);
the samplers never look inside it. The objective's preconditioning (:class:`~.schedule.
VDenoiser`, :class:`~.rectified_flow.RFDenoiser`) wraps the guided model into ``denoiser(x,
sigma)``. What every backbone shares is how guided outputs are combined, below.
"""
from __future__ import annotations

from typing import Protocol

from torch import Tensor


class GuidedModel(Protocol):
    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...

    def set_conditioning(self, cond) -> None: ...


def combine_guidance(cond: Tensor, uncond: Tensor, scale: float, rescale: float = 0.0) -> Tensor:
    """``uncond + s·(cond − uncond)``, optionally rescaled towards the conditional output's
    spread: ``φ·out·std(cond)/std(out) + (1−φ)·out`` (std over channels, dim 1), as
    stable-audio-tools does for both of its backbones."""
    out = uncond + (cond - uncond) * scale
    if rescale:
        ratio = cond.std(dim=1, keepdim=True) / out.std(dim=1, keepdim=True)
        out = rescale * (out * ratio) + (1 - rescale) * out
    return out
