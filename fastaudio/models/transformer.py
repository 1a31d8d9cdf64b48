"""stable-audio-tools' ContinuousTransformer (0.0.19), the body of the Stable Audio Open DiT.

Pre-norm blocks of self-attention (rotary positions on part of each head), optional
cross-attention to conditioning tokens, and a SwiGLU feed-forward. Module, parameter and buffer
names are the reference's (``layers.3.self_attn.to_qkv``, ``layers.3.ff.ff.0.proj``,
``rotary_pos_emb.inv_freq``, the norms' ``gamma``/``beta`` …), so a reference state_dict loads
with ``strict=True``. Attention runs through :func:`fastaudio.nn.attention.attention`.

What differs from the reference, and why:

* The cross-attention keys/values of a conditioning that stays fixed over a generation can be
  computed once (:meth:`ContinuousTransformer.context_keys_values`) and passed to every step
  as ``context_kv`` instead of the tokens.
* The rotary cos/sin table is built once per forward, not once per layer.
* Gradient checkpointing is off unless asked for (``use_checkpointing=True``); the reference
  defaults it on, which changes memory, not values.
* Options the Stable Audio Open checkpoints do not use are refused with
  :class:`TransformerConfigError` naming the option (see :func:`check_options`), never ignored.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..errors import FastAudioError
from ..nn.attention import attention

QK_NORMS = ("none", "l2", "ln", "dyt")


class TransformerConfigError(FastAudioError, ValueError):
    """A ContinuousTransformer option that fastaudio does not implement, or an impossible shape."""


# ---------------------------------------------------------------------------------------------
# Options: what the reference accepts, what we implement
# ---------------------------------------------------------------------------------------------

# option -> the only value we implement (the reference's default). The Stable Audio Open
# configs leave all of these at their defaults.
_FIXED_TRANSFORMER_OPTIONS = {
    "causal": False, "conformer": False, "use_sinusoidal_emb": False, "use_abs_pos_emb": False,
    "num_memory_tokens": 0, "sliding_window": None, "remove_norms": False, "add_rope": False,
    "layer_scale": False,
}
_FIXED_ATTN_OPTIONS = {"differential": False, "feat_scale": False}
_ATTN_OPTIONS = ("qk_norm",) + tuple(_FIXED_ATTN_OPTIONS)
_FF_OPTIONS = ("mult", "no_bias", "glu", "use_conv", "conv_kernel_size", "dim_out")
_NORM_OPTIONS = ("bias", "fix_scale", "force_fp32", "eps")


def _check_keys(group: str, given: dict, known) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TransformerConfigError(
            f"{group} option(s) {', '.join(unknown)} are not supported (supported: "
            f"{', '.join(known)})")


def check_options(options: dict, attn_kwargs: dict, ff_kwargs: dict, norm_kwargs: dict) -> None:
    """Raise TransformerConfigError for any option (or value) this implementation lacks.

    ``options`` are the ContinuousTransformer / TransformerBlock keyword arguments beyond the ones
    ContinuousTransformer names itself."""
    _check_keys("ContinuousTransformer", options, tuple(_FIXED_TRANSFORMER_OPTIONS)
                + ("abs_pos_emb_max_length",))
    for name, value in options.items():
        if name in _FIXED_TRANSFORMER_OPTIONS and value != _FIXED_TRANSFORMER_OPTIONS[name]:
            raise TransformerConfigError(
                f"ContinuousTransformer option {name}={value!r} is not supported (only "
                f"{_FIXED_TRANSFORMER_OPTIONS[name]!r})")
    if "abs_pos_emb_max_length" in options:  # only read by use_abs_pos_emb, which we refuse
        raise TransformerConfigError("ContinuousTransformer option abs_pos_emb_max_length is not "
                                     "supported (it only serves use_abs_pos_emb)")
    _check_keys("attn_kwargs", attn_kwargs, _ATTN_OPTIONS)
    qk_norm = attn_kwargs.get("qk_norm", "none")
    if qk_norm not in QK_NORMS:
        raise TransformerConfigError(f"attn_kwargs qk_norm={qk_norm!r} is not one of "
                                     f"{', '.join(QK_NORMS)}")
    for name, default in _FIXED_ATTN_OPTIONS.items():
        if attn_kwargs.get(name, default) != default:
            raise TransformerConfigError(f"attn_kwargs option {name}={attn_kwargs[name]!r} is not "
                                         f"supported (only {default!r})")
    _check_keys("ff_kwargs", ff_kwargs, _FF_OPTIONS)
    if ff_kwargs.get("glu", True) is not True:
        raise TransformerConfigError("ff_kwargs option glu=False is not supported (only the GLU "
                                     "feed-forward, glu=True)")
    if ff_kwargs.get("use_conv", False) is not False:
        raise TransformerConfigError("ff_kwargs option use_conv=True is not supported (only "
                                     "linear feed-forward layers)")
    if "conv_kernel_size" in ff_kwargs:
        raise TransformerConfigError("ff_kwargs option conv_kernel_size is not supported (it only "
                                     "serves use_conv)")
    if ff_kwargs.get("dim_out") is not None:
        raise TransformerConfigError("ff_kwargs option dim_out is not supported (the residual "
                                     "needs the feed-forward to return dim channels)")
    _check_keys("norm_kwargs", norm_kwargs, _NORM_OPTIONS)


# ---------------------------------------------------------------------------------------------
# Norms
# ---------------------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """LayerNorm with a ``gamma`` and a ``beta`` that are buffers unless trained (the reference's:
    bias-free by default, the zero ``beta`` still saved in the state_dict)."""

    def __init__(self, dim: int, bias: bool = False, fix_scale: bool = False,
                 force_fp32: bool = False, eps: float = 1e-5):
        super().__init__()
        if fix_scale:
            self.register_buffer("gamma", torch.ones(dim))
        else:
            self.gamma = nn.Parameter(torch.ones(dim))
        if bias:
            self.beta = nn.Parameter(torch.zeros(dim))
        else:
            self.register_buffer("beta", torch.zeros(dim))
        self.eps = eps
        self.force_fp32 = force_fp32

    def forward(self, x: Tensor) -> Tensor:
        if not self.force_fp32:
            return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, self.eps)
        out = F.layer_norm(x.float(), x.shape[-1:], self.gamma.float(), self.beta.float(), self.eps)
        return out.to(x.dtype)


class DynamicTanh(nn.Module):
    """``gamma · tanh(alpha · x) + beta`` (the ``qk_norm="dyt"`` option)."""

    def __init__(self, dim: int, init_alpha: float = 10.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1) * init_alpha)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * torch.tanh(self.alpha * x) + self.beta


# ---------------------------------------------------------------------------------------------
# Rotary positions
# ---------------------------------------------------------------------------------------------

class RotaryEmbedding(nn.Module):
    """Rotary position tables over the first ``2·ceil(dim/2)`` channels of each head.

    ``inv_freq`` is a saved buffer, as in the reference (its checkpoints carry it)."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    @property
    def rotated_channels(self) -> int:
        return 2 * self.inv_freq.shape[0]

    def cos_sin(self, seq_len: int) -> Tuple[Tensor, Tensor]:
        """(cos, sin), each (seq_len, rotated_channels / 2) in fp32: one half of the reference's
        duplicated ``cat(freqs, freqs)`` table, whose two halves are equal."""
        positions = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.float()[None, :]
        return freqs.cos(), freqs.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first ``2·cos.shape[-1]`` channels of ``x`` (..., L, D) by position, in fp32.

    ``x·cos + rotate_half(x)·sin`` written on the two halves (x1, x2): (x1·c − x2·s, x2·c + x1·s),
    the same products and sums as the reference, without materialising the rotated copy."""
    half = cos.shape[-1]
    rotated = x[..., :2 * half].float()
    x1, x2 = rotated[..., :half], rotated[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    if 2 * half == x.shape[-1]:
        return out
    return torch.cat((out, x[..., 2 * half:]), dim=-1)


# ---------------------------------------------------------------------------------------------
# Feed-forward
# ---------------------------------------------------------------------------------------------

class GLU(nn.Module):
    """``a · SiLU(gate)`` with (a, gate) one linear projection (SwiGLU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.silu(gate)


class FeedForward(nn.Module):
    """SwiGLU feed-forward; ``ff`` keeps the reference's four slots (GLU, Identity, Linear,
    Identity) so its parameters are named ``ff.0.proj`` and ``ff.2``."""

    def __init__(self, dim: int, mult: float = 4, no_bias: bool = False,
                 zero_init_output: bool = True):
        super().__init__()
        inner = int(dim * mult)
        out = nn.Linear(inner, dim, bias=not no_bias)
        if zero_init_output:
            nn.init.zeros_(out.weight)
            if out.bias is not None:
                nn.init.zeros_(out.bias)
        self.ff = nn.Sequential(GLU(dim, inner), nn.Identity(), out, nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(x)


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head attention: self-attention (fused ``to_qkv``) or, with ``dim_context``,
    cross-attention (``to_q`` + ``to_kv``). A context narrower than ``dim`` has fewer key/value
    heads, each shared by ``num_heads / kv_heads`` query heads (the reference's grouped-query
    attention, SA1.0's 768-wide T5 tokens against 1536 channels)."""

    def __init__(self, dim: int, dim_heads: int = 64, dim_context: Optional[int] = None,
                 zero_init_output: bool = True, qk_norm: str = "none",
                 differential: bool = False, feat_scale: bool = False):
        super().__init__()
        dim_kv = dim if dim_context is None else dim_context
        for name, width in (("dim", dim), ("dim_context", dim_kv)):
            if width % dim_heads:
                raise TransformerConfigError(f"Attention: {name}={width} is not a multiple of the "
                                             f"head dim {dim_heads}")
        self.dim, self.dim_heads = dim, dim_heads
        self.num_heads, self.kv_heads = dim // dim_heads, dim_kv // dim_heads
        if self.num_heads % self.kv_heads:
            raise TransformerConfigError(
                f"Attention: {self.num_heads} query heads cannot share {self.kv_heads} key/value "
                f"heads (dim_context={dim_kv}, head dim {dim_heads})")
        if dim_context is not None:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(dim_kv, dim_kv * 2, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        if zero_init_output:
            nn.init.zeros_(self.to_out.weight)
        if qk_norm not in QK_NORMS:
            raise TransformerConfigError(f"attn_kwargs qk_norm={qk_norm!r} is not one of "
                                         f"{', '.join(QK_NORMS)}")
        self.qk_norm = qk_norm
        if qk_norm == "ln":
            self.q_norm = nn.LayerNorm(dim_heads, elementwise_affine=True, eps=1.0e-6)
            self.k_norm = nn.LayerNorm(dim_heads, elementwise_affine=True, eps=1.0e-6)
        elif qk_norm == "dyt":
            self.q_norm = DynamicTanh(dim_heads)
            self.k_norm = DynamicTanh(dim_heads)
        if differential or feat_scale:
            raise TransformerConfigError("attn_kwargs options differential and feat_scale are not "
                                         "supported")

    def _norm(self, x: Tensor, which: str) -> Tensor:
        if self.qk_norm == "l2":
            return F.normalize(x, dim=-1)
        if self.qk_norm == "none":
            return x
        return getattr(self, which)(x).to(x.dtype)

    def _heads(self, x: Tensor, parts: int, heads: int) -> Tuple[Tensor, ...]:
        """(B, N, parts·heads·D) -> ``parts`` views (B, heads, N, D)."""
        return x.unflatten(-1, (parts, heads, self.dim_heads)).permute(2, 0, 3, 1, 4).unbind(0)

    def context_keys_values(self, context: Tensor) -> Tensor:
        """(2, B, num_heads, T, D): this cross-attention's keys (normed) and values of ``context``
        (B, T, dim_context), key/value heads already repeated for the query heads they serve."""
        k, v = self._heads(self.to_kv(context), 2, self.kv_heads)
        k = self._norm(k, "k_norm")
        if self.kv_heads != self.num_heads:
            share = self.num_heads // self.kv_heads
            k, v = k.repeat_interleave(share, dim=1), v.repeat_interleave(share, dim=1)
        return torch.stack((k, v))

    def forward(self, x: Tensor, context: Optional[Tensor] = None,
                rotary: Optional[Tuple[Tensor, Tensor]] = None,
                context_kv: Optional[Tensor] = None) -> Tensor:
        """x (B, N, dim) -> (B, N, dim). Self-attention unless this is a cross-attention, which
        takes ``context`` (B, T, dim_context) or its precomputed ``context_kv``; ``rotary`` is
        (cos, sin) from RotaryEmbedding.cos_sin (the reference rotates self-attention only)."""
        if hasattr(self, "to_qkv"):
            q, k, v = self._heads(self.to_qkv(x), 3, self.num_heads)
            k = self._norm(k, "k_norm")
        else:
            (q,) = self._heads(self.to_q(x), 1, self.num_heads)
            if context_kv is None:
                context_kv = self.context_keys_values(context)
            k, v = context_kv.unbind(0)
        q = self._norm(q, "q_norm")
        if rotary is not None:
            # q and k have the same length here, so the reference's length ratio is 1
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        out = attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

class TransformerBlock(nn.Module):
    """x + SelfAttn(norm x), [+ CrossAttn(norm x, context)], + FF(norm x)."""

    def __init__(self, dim: int, dim_heads: int = 64, cross_attend: bool = False,
                 dim_context: Optional[int] = None, zero_init_branch_outputs: bool = True,
                 attn_kwargs: Optional[dict] = None, ff_kwargs: Optional[dict] = None,
                 norm_kwargs: Optional[dict] = None):
        super().__init__()
        attn_kwargs, ff_kwargs, norm_kwargs = attn_kwargs or {}, ff_kwargs or {}, norm_kwargs or {}
        check_options({}, attn_kwargs, ff_kwargs, norm_kwargs)
        self.dim = dim
        self.dim_heads = min(dim_heads, dim)
        self.cross_attend = cross_attend
        self.pre_norm = LayerNorm(dim, **norm_kwargs)
        self.self_attn = Attention(dim, self.dim_heads, zero_init_output=zero_init_branch_outputs,
                                   **attn_kwargs)
        if cross_attend:
            self.cross_attend_norm = LayerNorm(dim, **norm_kwargs)
            self.cross_attn = Attention(dim, self.dim_heads, dim_context=dim_context,
                                        zero_init_output=zero_init_branch_outputs, **attn_kwargs)
        self.ff_norm = LayerNorm(dim, **norm_kwargs)
        # check_options admitted only mult and no_bias with a value other than the default
        self.ff = FeedForward(dim, mult=ff_kwargs.get("mult", 4),
                              no_bias=ff_kwargs.get("no_bias", False),
                              zero_init_output=zero_init_branch_outputs)

    def forward(self, x: Tensor, context: Optional[Tensor] = None,
                rotary: Optional[Tuple[Tensor, Tensor]] = None,
                context_kv: Optional[Tensor] = None) -> Tensor:
        x = x + self.self_attn(self.pre_norm(x), rotary=rotary)
        if self.cross_attend and (context is not None or context_kv is not None):
            x = x + self.cross_attn(self.cross_attend_norm(x), context=context,
                                    context_kv=context_kv)
        return x + self.ff(self.ff_norm(x))


class ContinuousTransformer(nn.Module):
    """project_in -> [prepended tokens; x] -> blocks -> project_out, on (B, N, dim_in).

    ``final_cross_attn_ix`` (-1: all) is the last layer that cross-attends; ``rotary_pos_emb``
    rotates max(dim_heads // 2, 32) channels of every self-attention head."""

    def __init__(self, dim: int, depth: int, *, dim_in: Optional[int] = None,
                 dim_out: Optional[int] = None, dim_heads: int = 64, cross_attend: bool = False,
                 cond_token_dim: Optional[int] = None, final_cross_attn_ix: int = -1,
                 global_cond_dim: Optional[int] = None, rotary_pos_emb: bool = True,
                 zero_init_branch_outputs: bool = True, attn_kwargs: Optional[dict] = None,
                 ff_kwargs: Optional[dict] = None, norm_kwargs: Optional[dict] = None, **options):
        super().__init__()
        attn_kwargs, ff_kwargs, norm_kwargs = attn_kwargs or {}, ff_kwargs or {}, norm_kwargs or {}
        check_options(options, attn_kwargs, ff_kwargs, norm_kwargs)
        if global_cond_dim is not None:
            raise TransformerConfigError("ContinuousTransformer option global_cond_dim (adaLN "
                                         "global conditioning) is not supported")
        self.dim, self.depth = dim, depth
        self.layers = nn.ModuleList()  # registered first: the reference's state_dict order
        self.project_in = (nn.Linear(dim_in, dim, bias=False) if dim_in is not None
                           else nn.Identity())
        self.project_out = (nn.Linear(dim, dim_out, bias=False) if dim_out is not None
                            else nn.Identity())
        if rotary_pos_emb:
            self.rotary_pos_emb = RotaryEmbedding(max(dim_heads // 2, 32))
            width = self.rotary_pos_emb.rotated_channels
            if width > min(dim_heads, dim):
                raise TransformerConfigError(
                    f"ContinuousTransformer: head dim {dim_heads} is narrower than the {width} "
                    f"channels rotary_pos_emb rotates (max(head_dim // 2, 32)); use a head dim of "
                    f"at least 32 or rotary_pos_emb=False")
        else:
            self.rotary_pos_emb = None
        self.final_cross_attn_ix = final_cross_attn_ix
        self.layers.extend(
            TransformerBlock(dim, dim_heads=dim_heads,
                             cross_attend=cross_attend and (final_cross_attn_ix == -1
                                                            or i <= final_cross_attn_ix),
                             dim_context=cond_token_dim,
                             zero_init_branch_outputs=zero_init_branch_outputs,
                             attn_kwargs=attn_kwargs, ff_kwargs=ff_kwargs, norm_kwargs=norm_kwargs)
            for i in range(depth))

    @property
    def cross_attention_layers(self) -> int:
        """How many layers (the first ones) cross-attend: the leading size of ``context_kv``."""
        return sum(layer.cross_attend for layer in self.layers)

    def context_keys_values(self, context: Tensor) -> Tensor:
        """(cross_attention_layers, 2, B, heads, T, head_dim): every cross-attention's keys and
        values of ``context`` (B, T, cond_token_dim), for ``forward(..., context_kv=...)``."""
        context = context.to(next(self.parameters()).dtype)
        return torch.stack([layer.cross_attn.context_keys_values(context)
                            for layer in self.layers if layer.cross_attend])

    def forward(self, x: Tensor, prepend_embeds: Optional[Tensor] = None,
                context: Optional[Tensor] = None, context_kv: Optional[Tensor] = None,
                use_checkpointing: bool = False) -> Tensor:
        """x (B, N, dim_in) -> (B, P + N, dim_out), P = prepended tokens (B, P, dim).
        Cross-attention reads ``context`` or its ``context_keys_values`` (not both)."""
        if context is not None and context_kv is not None:
            raise TransformerConfigError("pass context or context_kv, not both")
        x = self.project_in(x.to(next(self.parameters()).dtype))
        if prepend_embeds is not None:
            if prepend_embeds.shape[-1] != x.shape[-1]:
                raise TransformerConfigError(f"prepended tokens have {prepend_embeds.shape[-1]} "
                                             f"channels, the transformer {x.shape[-1]}")
            x = torch.cat((prepend_embeds, x), dim=-2)
        rotary = None
        if self.rotary_pos_emb is not None:  # one table for every layer
            rotary = self.rotary_pos_emb.cos_sin(x.shape[1])
        for i, layer in enumerate(self.layers):
            kv = context_kv[i] if context_kv is not None and layer.cross_attend else None
            if use_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, context, rotary, kv, use_reentrant=False)
            else:
                x = layer(x, context, rotary, kv)
        return self.project_out(x)
