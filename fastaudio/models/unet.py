"""The Stable Audio 1.0 U-Net: audio-diffusion-pytorch's UNetCFG1d as stable-audio-tools
configures it (907 M parameters at SA1.0 size).

Module and parameter names are the reference's (``to_in.block.block1.groupnorm``,
``downsamples.0.transformer.blocks.0.attention.to_q`` …) so its checkpoints load by stripping
the ``model.model.`` prefix. The compute runs through fastaudio.nn: GroupNorm + FiLM + SiLU fused,
the ResNet residual passed to the conv (added in its epilogue on the Triton path), attention
through the backend dispatcher.

Shapes: x (B, in_channels, L) with L a multiple of prod(factors) (16 for SA1.0);
t (B,) in [0, 1]; context (B, 79, 768); context_mask (B, 79) bool, True keeps.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UNetConfig
from ..nn.attention import attention
from ..nn.conv import SamePadConv1d, TrimConvTranspose1d
from ..nn.norm import GroupNorm
from ..errors import FastAudioError


class UNetInputError(FastAudioError, ValueError):
    """Inputs of the wrong shape or dtype for the U-Net."""


# ---------------------------------------------------------------------------------------------
# ResNet blocks
# ---------------------------------------------------------------------------------------------

def to_batch(x: Tensor, batch: int) -> Tensor:
    """``x`` repeated block-wise up to ``batch`` rows (``[x; x; …]``), or ``x`` itself.

    The U-Net may be called with one latent batch and k context batches stacked (classifier-free
    guidance: [cond; uncond] over the same x). Everything before the first cross-attention is
    the same for every context group, so it runs once on the small batch; the first op that
    meets a larger batch (cross-attention, a skip concatenation, FiLM) widens its input here."""
    if x.shape[0] == batch:
        return x
    return x.repeat(batch // x.shape[0], *([1] * (x.dim() - 1)))


class ConvBlock1d(nn.Module):
    """GroupNorm → (FiLM) → SiLU → conv k3, the norm, FiLM and SiLU in one fused op."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.groupnorm = GroupNorm(num_groups, in_channels)
        self.project = SamePadConv1d(in_channels, out_channels, kernel_size=3)

    def forward(self, x: Tensor, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                residual: Optional[Tensor] = None) -> Tensor:
        return self.project(self.groupnorm(x, scale, shift, silu=True), residual=residual)


class MappingToScaleShift(nn.Module):
    def __init__(self, features: int, channels: int):
        super().__init__()
        self.to_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(features, channels * 2))

    def forward(self, mapping: Tensor) -> Tuple[Tensor, Tensor]:
        scale, shift = self.to_scale_shift(mapping).chunk(2, dim=1)
        return scale, shift  # (B, C) each


class ResnetBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_groups: int,
                 mapping_features: Optional[int]):
        super().__init__()
        self.block1 = ConvBlock1d(in_channels, out_channels, num_groups)
        self.use_mapping = mapping_features is not None
        if self.use_mapping:
            self.to_scale_shift = MappingToScaleShift(mapping_features, out_channels)
        self.block2 = ConvBlock1d(out_channels, out_channels, num_groups)
        self.to_out = (SamePadConv1d(in_channels, out_channels, kernel_size=1)
                       if in_channels != out_channels else nn.Identity())

    def forward(self, x: Tensor, mapping: Optional[Tensor] = None) -> Tensor:
        h = self.block1(x)
        scale = shift = None
        if self.use_mapping:
            scale, shift = self.to_scale_shift(to_batch(mapping, x.shape[0]))
        return self.block2(h, scale, shift, residual=self.to_out(x))


class Patcher(nn.Module):
    """The U-Net's input block (patch size 1: a ResNet block with one group)."""

    def __init__(self, in_channels: int, out_channels: int, mapping_features: Optional[int]):
        super().__init__()
        self.block = ResnetBlock1d(in_channels, out_channels, 1, mapping_features)

    def forward(self, x: Tensor, mapping: Optional[Tensor]) -> Tensor:
        return self.block(x, mapping)


# ---------------------------------------------------------------------------------------------
# Transformer
# ---------------------------------------------------------------------------------------------

class AttentionOut(nn.Module):
    """Holds the output projection under the reference's name (``attention.to_out``)."""

    def __init__(self, mid_features: int, out_features: int):
        super().__init__()
        self.to_out = nn.Linear(mid_features, out_features)


class Attention(nn.Module):
    """Pre-norm multi-head attention. For self-attention k and v come from ``norm_context(x)``,
    exactly as the reference computes them (it normalises the context even when it is x)."""

    def __init__(self, features: int, num_heads: int, head_features: int,
                 context_features: Optional[int] = None):
        super().__init__()
        mid = num_heads * head_features
        ctx = context_features if context_features is not None else features
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(features)
        self.norm_context = nn.LayerNorm(ctx)
        self.to_q = nn.Linear(features, mid, bias=False)
        self.to_kv = nn.Linear(ctx, mid * 2, bias=False)
        self.attention = AttentionOut(mid, features)

    def keys_values(self, context: Tensor) -> Tensor:
        """Keys and values side by side: (B, tokens, 2·heads·head_features)."""
        return self.to_kv(self.norm_context(context))

    def forward(self, x: Tensor, context: Optional[Tensor] = None,
                context_mask: Optional[Tensor] = None, keys_values: Optional[Tensor] = None) -> Tensor:
        """``keys_values``: ``self.keys_values(context)`` computed beforehand (cross-attention
        over a context that stays the same across calls, see UNet1d.context_keys_values)."""
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(self.norm(x))
        kv = self.keys_values(context) if keys_values is None else keys_values
        k, v = kv.chunk(2, dim=-1)
        h = self.num_heads
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, key_padding_mask=context_mask, mask_mode="zero")
        out = out.transpose(1, 2).reshape(b, n, -1)
        return self.attention.to_out(out)


class TransformerBlock(nn.Module):
    def __init__(self, features: int, num_heads: int, head_features: int, multiplier: int,
                 context_features: Optional[int]):
        super().__init__()
        self.attention = Attention(features, num_heads, head_features)
        self.use_cross_attention = bool(context_features)
        if self.use_cross_attention:
            self.cross_attention = Attention(features, num_heads, head_features, context_features)
        # this block's columns of UNet1d.context_keys_values (set by UNet1d)
        self.kv_columns: Optional[Tuple[int, int]] = None
        self.feed_forward = nn.Sequential(nn.Linear(features, features * multiplier), nn.GELU(),
                                          nn.Linear(features * multiplier, features))

    def forward(self, x: Tensor, context: Optional[Tensor], context_mask: Optional[Tensor],
                context_kv: Optional[Tensor] = None) -> Tensor:
        x = x + self.attention(x)
        if self.use_cross_attention:
            x = to_batch(x, context.shape[0])  # shared prefix ends here (see to_batch)
            kv = None
            if context_kv is not None:
                if self.kv_columns is None:
                    raise UNetInputError("context_kv needs the block inside a UNet1d (which assigns "
                                         "each block its columns)")
                kv = context_kv[..., self.kv_columns[0]:self.kv_columns[1]]
            x = x + self.cross_attention(x, context, context_mask, kv)
        return x + self.feed_forward(x)


class Transformer1d(nn.Module):
    """GroupNorm(32) → 1×1 conv → blocks over (B, L, C) → 1×1 conv; no outer residual."""

    def __init__(self, num_layers: int, channels: int, num_heads: int, multiplier: int,
                 context_features: Optional[int]):
        super().__init__()
        head_features = channels // num_heads
        # Indices match the reference's Sequential (GroupNorm, Conv1d, Rearrange).
        self.to_in = nn.Sequential(GroupNorm(32, channels, eps=1e-6),
                                   SamePadConv1d(channels, channels, kernel_size=1))
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, num_heads, head_features, multiplier, context_features)
            for _ in range(num_layers))
        self.to_out = nn.Sequential(nn.Identity(), SamePadConv1d(channels, channels, kernel_size=1))

    def forward(self, x: Tensor, context: Optional[Tensor], context_mask: Optional[Tensor],
                context_kv: Optional[Tensor] = None) -> Tensor:
        x = self.to_in[1](self.to_in[0](x)).transpose(1, 2)
        for block in self.blocks:
            x = block(x, context, context_mask, context_kv)
        return self.to_out[1](x.transpose(1, 2))


# ---------------------------------------------------------------------------------------------
# U-Net levels
# ---------------------------------------------------------------------------------------------

class DownsampleBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, factor: int, kernel_multiplier: int,
                 num_layers: int, num_groups: int, num_transformer_blocks: int, cfg: UNetConfig,
                 mapping_features: Optional[int]):
        super().__init__()
        self.downsample = SamePadConv1d(in_channels, out_channels,
                                        kernel_size=factor * kernel_multiplier + 1, stride=factor)
        self.blocks = nn.ModuleList(
            ResnetBlock1d(out_channels, out_channels, num_groups, mapping_features)
            for _ in range(num_layers))
        self.use_transformer = num_transformer_blocks > 0
        if self.use_transformer:
            self.transformer = Transformer1d(num_transformer_blocks, out_channels, cfg.attention_heads,
                                             cfg.attention_multiplier, cfg.context_embedding_features)

    def forward(self, x, mapping, context, context_mask, context_kv=None) -> Tuple[Tensor, List[Tensor]]:
        x = self.downsample(x)
        skips = []
        for block in self.blocks:
            x = block(x, mapping)
            skips.append(x)
        if self.use_transformer:
            x = self.transformer(x, context, context_mask, context_kv)
            skips.append(x)
        return x, skips


class UpsampleBlock1d(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, factor: int, num_layers: int,
                 num_groups: int, num_transformer_blocks: int, skip_scale: float, use_nearest: bool,
                 cfg: UNetConfig, mapping_features: Optional[int]):
        super().__init__()
        self.skip_scale = skip_scale
        self.blocks = nn.ModuleList(
            ResnetBlock1d(in_channels * 2, in_channels, num_groups, mapping_features)
            for _ in range(num_layers))
        self.use_transformer = num_transformer_blocks > 0
        if self.use_transformer:
            self.transformer = Transformer1d(num_transformer_blocks, in_channels, cfg.attention_heads,
                                             cfg.attention_multiplier, cfg.context_embedding_features)
        if factor == 1:
            self.upsample = SamePadConv1d(in_channels, out_channels, kernel_size=3)
        elif use_nearest:
            self.upsample = nn.Sequential(nn.Upsample(scale_factor=factor, mode="nearest"),
                                          SamePadConv1d(in_channels, out_channels, kernel_size=3))
        else:
            self.upsample = TrimConvTranspose1d(in_channels, out_channels, kernel_size=2 * factor,
                                                stride=factor)

    def forward(self, x, skips: List[Tensor], mapping, context, context_mask, context_kv=None) -> Tensor:
        for block in self.blocks:
            skip = to_batch(skips.pop(), x.shape[0])
            x = block(torch.cat([x, skip * self.skip_scale if self.skip_scale != 1.0 else skip], 1),
                      mapping)
        if self.use_transformer:
            x = self.transformer(x, context, context_mask, context_kv)
        return self.upsample(x)


class BottleneckBlock1d(nn.Module):
    def __init__(self, channels: int, num_groups: int, num_transformer_blocks: int, cfg: UNetConfig,
                 mapping_features: Optional[int]):
        super().__init__()
        self.pre_block = ResnetBlock1d(channels, channels, num_groups, mapping_features)
        self.use_transformer = num_transformer_blocks > 0
        if self.use_transformer:
            self.transformer = Transformer1d(num_transformer_blocks, channels, cfg.attention_heads,
                                             cfg.attention_multiplier, cfg.context_embedding_features)
        self.post_block = ResnetBlock1d(channels, channels, num_groups, mapping_features)

    def forward(self, x, mapping, context, context_mask, context_kv=None) -> Tensor:
        x = self.pre_block(x, mapping)
        if self.use_transformer:
            x = self.transformer(x, context, context_mask, context_kv)
        return self.post_block(x, mapping)


class LearnedPositionalEmbedding(nn.Module):
    """Learned Fourier features of t: [t, sin 2πwt, cos 2πwt] (2·half + 1 features)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, t: Tensor) -> Tensor:
        t = t.float().unsqueeze(-1)
        freqs = t * self.weights.float().unsqueeze(0) * 2 * math.pi
        return torch.cat([t, freqs.sin(), freqs.cos()], dim=-1)


class FixedEmbedding(nn.Module):
    """The learned null context for classifier-free guidance (79 × 768 for SA1.0)."""

    def __init__(self, max_length: int, features: int):
        super().__init__()
        self.max_length = max_length
        self.embedding = nn.Embedding(max_length, features)

    def forward(self, batch: int, length: int) -> Tensor:
        if length > self.max_length:
            raise UNetInputError(f"context of {length} tokens exceeds the {self.max_length} "
                                 "the null context has")
        w = self.embedding.weight[:length]
        return w.unsqueeze(0).expand(batch, -1, -1)


# ---------------------------------------------------------------------------------------------
# The U-Net
# ---------------------------------------------------------------------------------------------

class UNet1d(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        ch, mult = cfg.channels, cfg.multipliers
        n = len(mult) - 1
        mapping = ch * 4 if cfg.use_context_time else None
        self.mapping_features = mapping
        if cfg.use_context_time:
            self.to_mapping = nn.Sequential(nn.Linear(mapping, mapping), nn.GELU(),
                                            nn.Linear(mapping, mapping), nn.GELU())
            self.to_time = nn.Sequential(
                nn.Sequential(LearnedPositionalEmbedding(ch), nn.Linear(ch + 1, mapping)), nn.GELU())
        if cfg.use_pooled_context:
            self.to_features = nn.Sequential(
                nn.Linear(cfg.context_embedding_features, mapping), nn.GELU())
        self.to_in = Patcher(cfg.in_channels, ch * mult[0], mapping)
        self.downsamples = nn.ModuleList(
            DownsampleBlock1d(ch * mult[i], ch * mult[i + 1], cfg.factors[i],
                              cfg.kernel_multiplier_downsample, cfg.num_blocks[i], cfg.resnet_groups,
                              cfg.attentions[i], cfg, mapping)
            for i in range(n))
        self.bottleneck = BottleneckBlock1d(ch * mult[-1], cfg.resnet_groups, cfg.attentions[-1],
                                            cfg, mapping)
        skip_scale = 2 ** -0.5 if cfg.use_skip_scale else 1.0
        self.upsamples = nn.ModuleList(
            UpsampleBlock1d(ch * mult[i + 1], ch * mult[i], cfg.factors[i],
                            cfg.num_blocks[i] + (1 if cfg.attentions[i] else 0), cfg.resnet_groups,
                            cfg.attentions[i], skip_scale, cfg.use_nearest_upsample, cfg, mapping)
            for i in reversed(range(n)))
        self.to_out = Patcher(ch * mult[0], cfg.in_channels, mapping)
        self.fixed_embedding = FixedEmbedding(cfg.context_embedding_max_length,
                                              cfg.context_embedding_features)
        self.length_multiple = math.prod(cfg.factors)
        # columns of context_keys_values() per cross-attention block, in module order
        self.context_kv_features = 0
        for block in self.cross_attention_blocks():
            width = block.cross_attention.to_kv.out_features
            block.kv_columns = (self.context_kv_features, self.context_kv_features + width)
            self.context_kv_features += width

    def cross_attention_blocks(self) -> List[TransformerBlock]:
        return [m for m in self.modules() if isinstance(m, TransformerBlock) and m.use_cross_attention]

    def context_keys_values(self, context: Tensor) -> Tensor:
        """Every cross-attention layer's keys and values of ``context``, side by side:
        (B, tokens, context_kv_features). They depend on the context alone, so a sampler whose
        prompt stays fixed computes them once and passes them to every step
        (``forward(..., context_kv=)``) instead of projecting the context again at each (with
        guidance the projections are 3.4 % of the small preset's FLOPs at its 11.9 s window, but
        only 0.3 % of SA1.0's at 95 s: a gain for small models and short windows)."""
        blocks = self.cross_attention_blocks()
        if not blocks:
            raise UNetInputError("this U-Net has no cross-attention layers")
        return torch.cat([b.cross_attention.keys_values(context) for b in blocks], dim=-1)

    @torch.no_grad()
    def scale_initial_weights(self, factor: float = 0.5) -> None:
        """The reference multiplies every parameter by 0.5 after initialisation."""
        for p in self.parameters():
            p.mul_(factor)

    def time_mapping(self, t: Tensor, pooled_context: Optional[Tensor] = None) -> Tensor:
        """The FiLM mapping of t: Fourier features and their projection in fp32 (t precision
        matters, the cost is a (B, 257) matmul), the MLP in the model's dtype. With
        ``use_pooled_context`` the projected mean context is added before the MLP."""
        features, project = self.to_time[0]
        h = F.gelu(F.linear(features(t), project.weight.float(), project.bias.float()))
        h = h.to(self.to_mapping[0].weight.dtype)
        if pooled_context is not None:
            pooled = self.to_features(pooled_context.to(h.dtype))
            h = to_batch(h, pooled.shape[0]) + pooled
        return self.to_mapping(h)

    @torch.no_grad()
    def zero_pooled_context(self) -> None:
        """Start the pooled-context path at zero (GELU(0) = 0), so that a model trained without
        it gives the same output until fine-tuning teaches the path something."""
        nn.init.zeros_(self.to_features[0].weight)
        nn.init.zeros_(self.to_features[0].bias)

    @staticmethod
    def pool_context(context: Tensor, context_mask: Optional[Tensor]) -> Tensor:
        """Mean over the tokens the mask keeps (all tokens without a mask), in fp32."""
        ctx = context.float()
        if context_mask is None:
            return ctx.mean(1)
        keep = context_mask.to(ctx.dtype).unsqueeze(-1)
        return (ctx * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    def null_context(self, batch: int, length: int) -> Tensor:
        return self.fixed_embedding(batch, length)

    def check_inputs(self, x: Tensor, t: Tensor, context: Optional[Tensor],
                     context_mask: Optional[Tensor], context_kv: Optional[Tensor] = None) -> Tensor:
        cfg = self.config
        if x.dim() != 3 or x.shape[1] != cfg.in_channels:
            raise UNetInputError(f"x must be (batch, {cfg.in_channels}, length), got {tuple(x.shape)}")
        if x.shape[-1] % self.length_multiple:
            raise UNetInputError(f"latent length {x.shape[-1]} must be a multiple of "
                                 f"{self.length_multiple} (the U-Net downsamples by that much)")
        b = x.shape[0]
        # t stays fp32 whatever the model dtype: in bf16 the first steps of a 100-step schedule
        # (t ≈ 0.996…1) would collapse onto two values
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise UNetInputError(f"t must be a scalar or ({b},), got {tuple(t.shape)}")
        if context_kv is not None and not self.context_kv_features:
            raise UNetInputError("context_kv given to a U-Net without cross-attention layers")
        if cfg.context_embedding_features:
            if context is None:
                raise UNetInputError("context is required (use null_context() for none)")
            if context.dim() != 3 or context.shape[0] % b or \
                    context.shape[2] != cfg.context_embedding_features:
                raise UNetInputError(f"context must be ({b}·k, tokens, {cfg.context_embedding_features}) "
                                     f"(k context groups over the same x), got {tuple(context.shape)}")
            if context_mask is not None and context_mask.shape != context.shape[:2]:
                raise UNetInputError(f"context_mask must be {tuple(context.shape[:2])}, got "
                                     f"{tuple(context_mask.shape)}")
            want = (*context.shape[:2], self.context_kv_features)
            if context_kv is not None and tuple(context_kv.shape) != want:
                raise UNetInputError(f"context_kv must be {want} (context_keys_values(context)), "
                                     f"got {tuple(context_kv.shape)}")
            # the cache must be what context_keys_values(context) gives here (under autocast the
            # projections' dtype differs from the context's, so only the device is checked then)
            device = x.device.type  # the meta device (FLOP counting) has no autocast to ask
            autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
            if context_kv is not None and (context_kv.device != context.device or
                                           (not autocast and context_kv.dtype != context.dtype)):
                raise UNetInputError(f"context_kv is {context_kv.dtype} on {context_kv.device}, the "
                                     f"context {context.dtype} on {context.device}: compute it from "
                                     "this context with context_keys_values")
        return t

    def forward(self, x: Tensor, t: Tensor, context: Optional[Tensor] = None,
                context_mask: Optional[Tensor] = None, context_kv: Optional[Tensor] = None) -> Tensor:
        """The v-prediction for latents ``x`` at diffusion time ``t``.

        ``context`` may stack k groups of ``x``'s batch (rows ``[g·B, (g+1)·B)`` are group g): the
        result is then ``(k·B, …)``, equal to calling with ``x`` repeated k times, but the layers
        before the first cross-attention run once (classifier-free guidance uses this) - except
        with ``use_pooled_context``, where every layer's FiLM depends on the context group.
        ``context_kv``: ``context_keys_values(context)`` computed beforehand, for a context that
        serves many calls (the result is the same)."""
        t = self.check_inputs(x, t, context, context_mask, context_kv)
        if context_mask is not None:
            context_mask = context_mask.to(torch.bool)
        pooled = None
        if self.config.use_pooled_context:
            pooled = self.pool_context(context, context_mask)
            # the mapping now differs per context group: everything runs on the wide batch
            x = to_batch(x, context.shape[0])
        mapping = self.time_mapping(t, pooled) if self.config.use_context_time else None
        x = self.to_in(x, mapping)
        skips_list: List = [x]
        for down in self.downsamples:
            x, skips = down(x, mapping, context, context_mask, context_kv)
            skips_list.append(skips)
        x = self.bottleneck(x, mapping, context, context_mask, context_kv)
        for up in self.upsamples:
            x = up(x, skips_list.pop(), mapping, context, context_mask, context_kv)
        x = x + to_batch(skips_list.pop(), x.shape[0])
        out = self.to_out(x, mapping)
        return out if context is None else to_batch(out, context.shape[0])
