"""Snake activations, dispatched to Triton or PyTorch.

* Snake (descript-audio-codec's Snake1d, the SA1.0 VAE): ``y = x + 1/(α + 1e-9) · sin²(α·x)``.
* SnakeBeta (stable-audio-tools' SnakeBeta, the Oobleck VAE of Stable Audio Open):
  ``y = x + 1/(β' + 1e-9) · sin²(α'·x)`` with α' = exp(α), β' = exp(β) (``alpha_logscale``).

One α (and β) per channel. At the VAE decoder's last stages this runs over ~5 G elements for
95 s of audio, so it is memory-bound: the Triton kernel does the forward and the backward (dx
and the parameter gradients) in one pass each.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .dispatch import autocast_dtype, use_triton


_kernel = None  # fastaudio.kernels.snake once imported (a module lookup per call saved)


def _kernels():
    """The kernel module, or the reason it cannot be imported (triton missing)."""
    global _kernel
    if _kernel is None:
        try:
            from fastaudio.kernels import snake as module
        except ImportError as e:
            return f"Triton kernels unavailable ({e})"
        _kernel = module
    return _kernel


def _triton_reason(x, alpha) -> Optional[str]:
    k = _kernels()
    return k if isinstance(k, str) else k.snake_unsupported_reason(x, alpha)


def snake_torch(x: Tensor, alpha: Tensor) -> Tensor:
    alpha = alpha.reshape(1, -1, 1)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
    # inference: the same ops in place on one temporary instead of four (on a CPU this chain is
    # memory-bound: ~20 % of the decoder's time at the top stages)
    y = torch.mul(alpha, x)
    return y.sin_().square_().mul_((alpha + 1e-9).reciprocal()).add_(x)


def snake(x: Tensor, alpha: Tensor) -> Tensor:
    if autocast_dtype(x.device.type) is not None:
        alpha = alpha.to(x.dtype)
    if use_triton("snake", x.is_cuda, lambda: _triton_reason(x, alpha)):
        return _kernel.snake(x, alpha, checked=True)  # use_triton checked the input, once
    return snake_torch(x, alpha)


class Snake1d(nn.Module):
    """Parameter ``alpha`` of shape (1, C, 1), initialised to 1, as in descript-audio-codec."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return snake(x, self.alpha)


# ---------------------------------------------------------------------------------------------
# SnakeBeta
# ---------------------------------------------------------------------------------------------
_EPS = 1e-9  # stable-audio-tools' no_div_by_zero, added to β' before taking its reciprocal


def _beta_triton_reason(x, alpha, beta) -> Optional[str]:
    k = _kernels()
    return k if isinstance(k, str) else k.snake_beta_unsupported_reason(x, alpha, beta, "beta")


def snake_beta_linear_torch(x: Tensor, alpha: Tensor, inv_beta: Tensor) -> Tensor:
    """``x + inv_beta · sin²(alpha·x)`` with per-channel alpha and inv_beta in linear scale.

    The same ops, in the same order, as stable-audio-tools' snake_beta, so fp32 results match
    it bit for bit."""
    alpha, inv_beta = alpha.reshape(1, -1, 1), inv_beta.reshape(1, -1, 1)
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad or inv_beta.requires_grad):
        return x + inv_beta * torch.sin(x * alpha).pow(2)
    # inference: in place on one temporary, as snake_torch does
    y = torch.mul(x, alpha)
    return y.sin_().square_().mul_(inv_beta).add_(x)


def snake_beta_linear_params(alpha: Tensor, beta: Tensor, log_scale: bool) -> Tuple[Tensor, Tensor]:
    """(α', 1/(β' + 1e-9)): the frequency and divisor the kernels take, from the parameters.

    Differentiable: gradients of the kernel's outputs flow back to log-scale parameters."""
    if log_scale:
        alpha, beta = torch.exp(alpha), torch.exp(beta)
    return alpha, (beta + _EPS).reciprocal()


def snake_beta(x: Tensor, alpha: Tensor, beta: Tensor, log_scale: bool = True) -> Tensor:
    """SnakeBeta on x (B, C, N) with parameters alpha, beta of shape (C,) (or (1, C, 1))."""
    if use_triton("snake_beta", x.is_cuda, lambda: _beta_triton_reason(x, alpha, beta)):
        # One launch each way: the kernel takes the parameters as stored (log scale or not),
        # takes the exponentials and the reciprocal per channel itself and applies their chain
        # rule in its backward. It computes in fp32 and writes x.dtype: the parameters keep
        # their precision. use_triton checked the input, once.
        param = _kernel.PARAM_LOG if log_scale else _kernel.PARAM_BETA
        return _kernel.snake_beta(x, alpha, beta, param=param, checked=True)
    freq, inv_beta = snake_beta_linear_params(alpha, beta, log_scale)
    if autocast_dtype(x.device.type) is not None:  # else fp32 parameters would promote y to fp32
        freq, inv_beta = freq.to(x.dtype), inv_beta.to(x.dtype)
    return snake_beta_linear_torch(x, freq, inv_beta)


class SnakeBeta1d(nn.Module):
    """stable-audio-tools' SnakeBeta: parameters ``alpha`` and ``beta`` of shape (C,), zeros
    (that is, α' = β' = 1) when ``alpha_logscale``, else ``alpha`` (the initial value) each.

    :meth:`fold_log_scale` takes the exponentials once for inference, as weight-norm folding
    does for the convs. The state dict always holds the reference's representation (log scale
    when ``alpha_logscale``), folded or not, so checkpoints load and save the same either way.
    """

    def __init__(self, in_features: int, alpha: float = 1.0, alpha_trainable: bool = True,
                 alpha_logscale: bool = True):
        super().__init__()
        self.in_features = in_features
        self.alpha_logscale = alpha_logscale
        init = torch.zeros(in_features) if alpha_logscale else torch.ones(in_features)
        self.alpha = nn.Parameter(init * alpha, requires_grad=alpha_trainable)
        self.beta = nn.Parameter(init.clone() * alpha, requires_grad=alpha_trainable)
        self.log_scale_folded = False  # alpha/beta hold exp(·) of the log-scale values

    def forward(self, x: Tensor) -> Tensor:
        return snake_beta(x, self.alpha, self.beta,
                          log_scale=self.alpha_logscale and not self.log_scale_folded)

    @torch.no_grad()
    def fold_log_scale(self) -> bool:
        """Replace log-scale alpha, beta by their exponentials (inference); True if it folded."""
        if not self.alpha_logscale or self.log_scale_folded:
            return False
        self.alpha.copy_(self.alpha.exp())
        self.beta.copy_(self.beta.exp())
        self.alpha.requires_grad_(False)
        self.beta.requires_grad_(False)
        self.log_scale_folded = True
        return True

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.log_scale_folded:  # back to the reference's log scale
            for name in ("alpha", "beta"):
                destination[prefix + name] = destination[prefix + name].detach().log()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if self.log_scale_folded:  # checkpoints hold log-scale values: fold them on the way in
            for name in ("alpha", "beta"):
                if prefix + name in state_dict:
                    state_dict[prefix + name] = state_dict[prefix + name].exp()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, alpha_logscale={self.alpha_logscale}, "
                f"log_scale_folded={self.log_scale_folded}")


def fold_snake_log_scale(module: nn.Module) -> int:
    """Fold every log-scale SnakeBeta under ``module``; returns how many were folded."""
    return sum(m.fold_log_scale() for m in module.modules() if isinstance(m, SnakeBeta1d))
