"""FLOPs of one U-Net forward, counted exactly (``torch.utils.flop_counter``) on the meta device.

Used by the benchmarks for MFU and for the share of the attention core (QKᵀ and PV, the part that
grows with the square of the duration) - numbers users need to see how cost grows with length.
"""
from __future__ import annotations

import functools
from typing import Dict


@functools.lru_cache(maxsize=64)
def unet_flops(preset: str, frames: int, batch: int = 1, context_groups: int = 1,
               cached_context_kv: bool = False) -> Dict[str, float]:
    """{"total": FLOPs, "attention_core": FLOPs of the attention products} of one forward of the
    preset's U-Net on (batch, latent_dim, frames) with ``context_groups`` contexts per item
    (2 under classifier-free guidance: the context-free prefix runs once, unless the preset has
    ``unet.use_pooled_context``); ``cached_context_kv``: the cross-attention keys/values come
    precomputed, as the sampler passes them, so their projections are not counted; nothing is
    allocated."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models.stable_audio import build_model
    from .nn import attention as NA
    from .nn import dispatch
    model = build_model(preset, device="meta")
    cfg = model.config
    x = torch.empty(batch, cfg.vae.latent_dim, frames, device="meta")
    ctx = torch.empty(batch * context_groups, cfg.unet.context_embedding_max_length,
                      cfg.unet.context_embedding_features, device="meta")
    # meta tensors take the PyTorch paths; the math of SDPA on meta is batched matmuls (aten.bmm),
    # which nothing else in the U-Net uses (linears are mm/addmm, convolutions convolution)
    kv = None
    if cached_context_kv and cfg.unet.context_embedding_features:
        kv = torch.empty(*ctx.shape[:2], model.unet.context_kv_features, device="meta")
    dispatch.set_kernel_mode("torch")
    NA.set_attention_backend("sdpa")
    try:
        with FlopCounterMode(display=False) as counter:
            model.unet(x, torch.zeros(batch, device="meta"), ctx, None, kv)
    finally:
        dispatch.set_kernel_mode(None)
        NA.set_attention_backend(None)
    per_op = {str(k): float(v) for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for k, v in per_op.items() if k == "aten.bmm" or "scaled_dot_product" in k)
    return {"total": float(counter.get_total_flops()), "attention_core": attention}
