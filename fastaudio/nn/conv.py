"""1-D convolutions: plain, weight-normalised (DAC), and the U-Net's length-preserving padding.

``conv1d`` and ``conv_transpose1d`` have Triton implicit-GEMM kernels (bias and residual in the
epilogue) that ``FASTAUDIO_KERNELS=triton`` selects (a conv1d input that is channels-last in memory
takes the channels-last kernel, kernels/conv1d_cl.py); ``auto`` runs ``F.pad`` + ``F.conv1d`` + add
(cuDNN) everywhere (why: docs/benchmarking.md#convolutions). Parameter
names follow the torch modules they replace (``weight``, ``bias``; ``weight_g``/``weight_v`` for
weight norm) so reference checkpoints load unchanged. Weight norm is folded away for inference
with :func:`fold_weight_norm`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dispatch import autocast_dtype, use_triton

Padding = Union[int, Tuple[int, int]]


def _pair(padding: Padding) -> Tuple[int, int]:
    if isinstance(padding, int):
        return padding, padding
    left, right = padding
    return int(left), int(right)


def _channels_last_kernel(x: Tensor) -> bool:
    """Whether the Triton path takes the channels-last implicit GEMM (kernels/conv1d_cl.py): for
    inputs already channels-last in memory, in eager mode (under torch.compile the conv runs as
    conv1d.py's custom op, whatever the layout)."""
    return x.dim() == 3 and x.shape[1] > 1 and x.stride(1) == 1 and x.shape[0] <= 65535 and \
        not torch.compiler.is_compiling()  # (its batch is grid axis 1: larger ones go to conv1d.py)


def _triton_reason(x, weight, bias, stride, padding, dilation, residual) -> Optional[str]:
    try:
        if _channels_last_kernel(x):
            from fastaudio.kernels.conv1d_cl import conv1d_cl_reason as reason
        else:
            from fastaudio.kernels.conv1d import conv1d_unsupported_reason as reason
    except ImportError as e:
        return f"Triton kernels unavailable ({e})"
    return reason(x, weight, bias, stride, padding, dilation, residual)


# Inductor prepacks a convolution's weights for oneDNN (and fuses the conv with its pointwise
# neighbours) only when weights are frozen constants and the conv is 4-D or 5-D: a conv1d is never
# packed. The frozen CPU compile (fastaudio/compiled.py) therefore traces every conv as a conv2d
# over (N, C, 1, L); the arithmetic is the same. Read while tracing; dynamo guards on it.
_CONVS_AS_2D = False


@contextlib.contextmanager
def convs_as_2d() -> Iterator[None]:
    """Within this block the torch path runs convs as (N, C, 1, L) conv2d (see above)."""
    global _CONVS_AS_2D
    previous, _CONVS_AS_2D = _CONVS_AS_2D, True
    try:
        yield
    finally:
        _CONVS_AS_2D = previous


# oneDNN's (N, C, L) convolutions reorder activations to and from its blocked layout on every
# call; on channels-last 4-D tensors it runs its NHWC kernels directly. For eager CPU inference
# the torch path can therefore run each conv as a conv2d over channels-last (N, C, 1, L) memory
# and hand back the (N, C, L) view of it, whose channels-last strides elementwise ops keep, so
# the next conv finds its input already in that layout. Measured on the Oobleck decoder (SAO
# Small, 11.9 s, 2-core x86): bf16 8.1 -> 3.6 s (same output bits), fp32 10.5 -> 6.6-8.4 s
# (docs/benchmarking.md#cpu-fast-paths). Not for torch.compile: inductor picks layouts itself.
_CONVS_CHANNELS_LAST = False


@contextlib.contextmanager
def convs_channels_last(enabled: bool = True) -> Iterator[None]:
    """Within this block the torch path runs convs on channels-last (N, C, 1, L) memory (when
    ``enabled``; otherwise the block runs unchanged)."""
    global _CONVS_CHANNELS_LAST
    previous, _CONVS_CHANNELS_LAST = _CONVS_CHANNELS_LAST, _CONVS_CHANNELS_LAST or enabled
    try:
        yield
    finally:
        _CONVS_CHANNELS_LAST = previous


def eager_cpu_inference(x: Tensor) -> bool:
    """Where channels-last convs apply: CPU tensors, no gradients (activation checkpointing would
    recompute outside the block), not while torch.compile traces (inductor picks layouts)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and \
        not torch.compiler.is_compiling()


def _as_2d(x: Tensor) -> Tensor:
    """(N, C, L) -> (N, C, 1, L), channels-last in memory under convs_channels_last (a no-op
    copy-wise when the previous conv left it so)."""
    x = x.unsqueeze(2)
    return x.contiguous(memory_format=torch.channels_last) if _CONVS_CHANNELS_LAST else x


def conv1d_torch(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
                 padding: Padding = 0, dilation: int = 1,
                 residual: Optional[Tensor] = None) -> Tensor:
    left, right = _pair(padding)
    if left != right:
        x, left = F.pad(x, (left, right)), 0
    if _CONVS_AS_2D or _CONVS_CHANNELS_LAST:
        y = F.conv2d(_as_2d(x), weight.unsqueeze(2), bias, (1, stride), (0, left),
                     (1, dilation)).squeeze(2)
    else:
        y = F.conv1d(x, weight, bias, stride, left, dilation)
    return y if residual is None else y + residual


def conv_transpose1d_torch(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                           stride: int = 1, padding: int = 0) -> Tensor:
    if _CONVS_AS_2D or _CONVS_CHANNELS_LAST:
        return F.conv_transpose2d(_as_2d(x), weight.unsqueeze(2), bias, (1, stride),
                                  (0, padding)).squeeze(2)
    return F.conv_transpose1d(x, weight, bias, stride, padding)


# auto takes cuDNN for every conv and transposed conv on CUDA (the reason logged for that path);
# FASTAUDIO_KERNELS=triton still forces the Triton kernels. Why: docs/benchmarking.md#convolutions.
CONV_AUTO_TORCH = ("auto on CUDA: cuDNN measured 1.4-5.2x faster than the Triton conv at two U-Net "
                   "shapes on an H100")


def conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
           padding: Padding = 0, dilation: int = 1, residual: Optional[Tensor] = None) -> Tensor:
    """Conv1d (+ bias + residual) with zero padding ``padding`` = int or (left, right)."""
    cast = autocast_dtype(x.device.type)
    if cast is not None:  # what autocast would do to F.conv1d, done for the kernel too
        x, weight = x.to(cast), weight.to(cast)
        bias = None if bias is None else bias.to(cast)
        residual = None if residual is None else residual.to(cast)
    if use_triton("conv1d", x.is_cuda,
                  lambda: _triton_reason(x, weight, bias, stride, padding, dilation, residual),
                  auto_torch_reason=CONV_AUTO_TORCH):
        if _channels_last_kernel(x):
            from fastaudio.kernels.conv1d_cl import conv1d_channels_last
            return conv1d_channels_last(x, weight, bias, stride, _pair(padding), dilation,
                                        residual, checked=True)
        from fastaudio.kernels.conv1d import conv1d as conv1d_triton
        return conv1d_triton(x, weight, bias, stride=stride, padding=_pair(padding),
                             dilation=dilation, residual=residual)
    return conv1d_torch(x, weight, bias, stride, padding, dilation, residual)


def _transposed_reason(x, weight, bias, stride, padding) -> Optional[str]:
    try:
        from fastaudio.kernels.conv1d import conv_transpose1d_unsupported_reason
    except ImportError as e:
        return f"Triton kernels unavailable ({e})"
    return conv_transpose1d_unsupported_reason(x, weight, bias, stride, padding)


def conv_transpose1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: int = 1,
                     padding: int = 0) -> Tensor:
    """ConvTranspose1d (weight (C_in, C_out, K)): cuDNN under ``auto``, our Triton kernel when forced."""
    cast = autocast_dtype(x.device.type)
    if cast is not None:
        x, weight = x.to(cast), weight.to(cast)
        bias = None if bias is None else bias.to(cast)
    if use_triton("conv_transpose1d", x.is_cuda,
                  lambda: _transposed_reason(x, weight, bias, stride, padding),
                  auto_torch_reason=CONV_AUTO_TORCH):
        from fastaudio.kernels.conv1d import conv_transpose1d as conv_transpose1d_triton
        return conv_transpose1d_triton(x, weight, bias, stride=stride, padding=padding)
    return conv_transpose1d_torch(x, weight, bias, stride, padding)


class SamePadConv1d(nn.Conv1d):
    """The U-Net's conv: pads so that the output has ceil(L / stride) frames.

    audio-diffusion-pytorch pads ``kernel_eff - stride`` in total, the extra frame on the left,
    plus whatever the last window needs on the right; we compute the same (left, right).
    """

    def padding_for(self, length: int) -> Tuple[int, int]:
        k = (self.kernel_size[0] - 1) * self.dilation[0] + 1
        s = self.stride[0]
        total = k - s
        frames = math.ceil((length - k + total) / s) + 1
        extra = (frames - 1) * s + (k - total) - length
        right = total // 2
        return total - right, right + extra

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return conv1d(x, self.weight, self.bias, self.stride[0], self.padding_for(x.shape[-1]),
                      self.dilation[0], residual)


class TrimConvTranspose1d(nn.ConvTranspose1d):
    """The U-Net's upsampler: a transposed conv trimmed of ``kernel - stride`` frames."""

    def forward(self, x: Tensor) -> Tensor:
        total = self.kernel_size[0] - self.stride[0]
        right = total // 2
        left = total - right
        if left == right:  # even trims (factors 2 and 4): the padding argument does it for free
            return conv_transpose1d(x, self.weight, self.bias, self.stride[0], left)
        y = conv_transpose1d(x, self.weight, self.bias, self.stride[0], 0)
        return y[..., left: y.shape[-1] - right]


# ---------------------------------------------------------------------------------------------
# Weight norm (DAC): weight = g · v / ‖v‖, the norm over every dim but 0, as
# torch.nn.utils.weight_norm(dim=0) computes it.
# ---------------------------------------------------------------------------------------------

def _norm_except_dim0(v: Tensor) -> Tensor:
    return v.norm(2, dim=tuple(range(1, v.dim())), keepdim=True)


class _WeightNormMixin:
    """Holds ``weight_g``/``weight_v`` until folded into a plain ``weight``.

    Loading accepts all three layouts a checkpoint may use: ``weight_g``/``weight_v`` (old
    torch.nn.utils.weight_norm, what stable-audio-tools checkpoints contain),
    ``parametrizations.weight.original0/1`` (torch.nn.utils.parametrizations), and a folded
    ``weight`` (converted exactly: g = ‖w‖, v = w).
    """

    folded: bool

    def _init_weight_norm(self) -> None:
        w = self.weight.detach()
        del self.weight
        self.weight_v = nn.Parameter(w.clone())
        self.weight_g = nn.Parameter(_norm_except_dim0(w).clone())
        self.folded = False

    def current_weight(self) -> Tensor:
        if self.folded:
            return self.weight
        return self.weight_g * (self.weight_v / _norm_except_dim0(self.weight_v))

    @torch.no_grad()
    def fold_weight_norm(self) -> None:
        if self.folded:
            return
        w = self.current_weight().detach().clone()
        del self.weight_g, self.weight_v
        self.weight = nn.Parameter(w, requires_grad=False)
        self.folded = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        g_key, v_key, w_key = prefix + "weight_g", prefix + "weight_v", prefix + "weight"
        p0, p1 = prefix + "parametrizations.weight.original0", prefix + "parametrizations.weight.original1"
        if p0 in state_dict and p1 in state_dict:
            state_dict[g_key] = state_dict.pop(p0)
            state_dict[v_key] = state_dict.pop(p1)
        if self.folded and g_key in state_dict and v_key in state_dict:
            g, v = state_dict.pop(g_key), state_dict.pop(v_key)
            if g.shape == self.weight.shape[:1] + (1,) * (self.weight.dim() - 1) and v.shape == self.weight.shape:
                state_dict[w_key] = g * (v / _norm_except_dim0(v))
            else:
                error_msgs.append(f"size mismatch for {prefix}weight_g/weight_v: checkpoint "
                                  f"{tuple(g.shape)}/{tuple(v.shape)}, model weight {tuple(self.weight.shape)}")
                return
        elif not self.folded and w_key in state_dict and g_key not in state_dict:
            w = state_dict.pop(w_key)
            state_dict[v_key] = w
            state_dict[g_key] = _norm_except_dim0(w)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class WNConv1d(_WeightNormMixin, nn.Conv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        return conv1d(x, self.current_weight(), self.bias, self.stride[0], self.padding[0],
                      self.dilation[0], residual)


class WNConvTranspose1d(_WeightNormMixin, nn.ConvTranspose1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: Tensor) -> Tensor:
        if self.output_padding[0] or self.dilation[0] != 1:  # not used by the DAC decoder
            return F.conv_transpose1d(x, self.current_weight(), self.bias, self.stride[0],
                                      self.padding[0], self.output_padding[0], 1, self.dilation[0])
        return conv_transpose1d(x, self.current_weight(), self.bias, self.stride[0], self.padding[0])


def fold_weight_norm(module: nn.Module) -> int:
    """Fold every weight-normalised conv under ``module``; returns how many were folded."""
    count = 0
    for m in module.modules():
        if isinstance(m, _WeightNormMixin) and not m.folded:
            m.fold_weight_norm()
            count += 1
    return count
