"""The model's layers on our Triton kernels (interpreter on CPU) against the PyTorch paths:
layer by layer, a short training run, torch.compile over a U-Net block, and the strict mode."""
import os

import pytest
import torch

from conftest import DEVICE
from fastaudio.config import UNetConfig
from fastaudio.models.unet import ResnetBlock1d, UNet1d
from fastaudio.models.vae import DecoderBlock, ResidualUnit
from fastaudio.nn import attention as NA
from fastaudio.nn import dispatch
from fastaudio.nn.conv import SamePadConv1d, TrimConvTranspose1d
from fastaudio.nn.norm import GroupNorm

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                                reason="needs CUDA or the Triton interpreter")


def _both(module, *inputs, grads=True):
    """Outputs (and input/parameter grads) of ``module`` on the torch path and the Triton path,
    on the test device (inputs drawn on the CPU)."""
    results = []
    module.to(DEVICE)
    for mode in ("torch", "triton"):
        dispatch.set_kernel_mode(mode)
        module.zero_grad(set_to_none=True)
        xs = [x.detach().clone().to(DEVICE).requires_grad_(x.is_floating_point()) for x in inputs]
        out = module(*xs)
        g = []
        if grads:
            ramp = torch.linspace(0, 1, out.numel(), device=out.device).view_as(out)
            out.backward(torch.ones_like(out) * 0.1 + ramp)
            g = [x.grad for x in xs if x.grad is not None] + \
                [p.grad for p in module.parameters() if p.grad is not None]
        results.append((out.detach(), g))
    dispatch.set_kernel_mode(None)
    return results


def _close(a, b, tol=1e-4):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale


@pytest.mark.parametrize("make, shape", [
    (lambda: ResidualUnit(6, 3), (2, 6, 50)),              # Snake, k7 dilated conv, k1 conv + residual
    (lambda: DecoderBlock(8, 4, 4), (1, 8, 9)),             # Snake, WN transposed conv, residual units
    (lambda: SamePadConv1d(5, 7, kernel_size=5, stride=2), (2, 5, 33)),
    (lambda: TrimConvTranspose1d(6, 4, kernel_size=8, stride=4), (2, 6, 7)),
])
def test_layers_match_on_both_paths(make, shape):
    torch.manual_seed(0)
    module = make()
    (ref, ref_g), (out, out_g) = _both(module, torch.randn(*shape))
    _close(out, ref)
    assert len(ref_g) == len(out_g)
    for a, b in zip(out_g, ref_g):
        _close(a, b)


def test_resnet_block_film_and_residual_on_kernels():
    torch.manual_seed(0)
    block = ResnetBlock1d(8, 12, num_groups=4, mapping_features=16)
    x, mapping = torch.randn(2, 8, 24), torch.randn(2, 16)
    (ref, rg), (out, og) = _both(block, x, mapping)
    _close(out, ref)
    for a, b in zip(og, rg):
        _close(a, b)
    assert dispatch.path_counts[("group_norm", "triton")] > 0 and dispatch.path_counts[("conv1d", "triton")] > 0


@pytest.mark.slow
def test_short_training_run_has_the_same_loss_curve():
    """A one-level U-Net, 3 AdamW steps from the same seed, kernels vs references."""
    cfg = UNetConfig(in_channels=4, channels=16, multipliers=[1, 2], factors=[2], num_blocks=[1],
                     attentions=[0, 0], resnet_groups=4, context_embedding_features=8,
                     context_embedding_max_length=4)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 4, 16, generator=g), torch.rand(2, generator=g), torch.randn(2, 4, 16, generator=g))
               for _ in range(3)]
    curves = {}
    for mode in ("torch", "triton"):
        dispatch.set_kernel_mode(mode)
        torch.manual_seed(0)
        unet = UNet1d(cfg).to(DEVICE)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-2)
        ctx = torch.zeros(2, 4, 8, device=DEVICE)
        losses = []
        for x, t, target in batches:
            x, t, target = x.to(DEVICE), t.to(DEVICE), target.to(DEVICE)
            loss = (unet(x, t, ctx) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves[mode] = losses
    dispatch.set_kernel_mode(None)
    # fp32 kernels vs cuDNN/ATen differ only in summation order: measured < 1e-6 relative
    assert curves["torch"][0] > curves["torch"][-1]  # it did learn
    for a, b in zip(curves["triton"], curves["torch"]):
        assert abs(a - b) <= 1e-4 * abs(b), curves


@pytest.mark.slow
def test_unet_block_compiles_with_the_kernels_inside():
    torch.manual_seed(0)
    block = ResnetBlock1d(8, 8, num_groups=4, mapping_features=16).to(DEVICE)
    x, mapping = torch.randn(2, 8, 16).to(DEVICE), torch.randn(2, 16).to(DEVICE)
    dispatch.set_kernel_mode("triton")
    try:
        eager = block(x, mapping)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        out = compiled(x, mapping)
        out.sum().backward()
    finally:
        dispatch.set_kernel_mode(None)
    _close(out.detach(), eager.detach())


def test_strict_mode_names_why_and_auto_logs_the_path(caplog):
    norm = GroupNorm(2, 4).double().to(DEVICE)
    dispatch.set_kernel_mode("triton")
    with pytest.raises(dispatch.KernelUnavailableError, match="group_norm.*float64"):
        norm(torch.randn(1, 4, 8, dtype=torch.float64, device=DEVICE))
    dispatch.set_kernel_mode("auto")
    caplog.set_level("INFO", logger="fastaudio.kernels")
    for _ in range(3):
        GroupNorm(2, 4)(torch.randn(1, 4, 8))
    lines = [r.message for r in caplog.records if "group_norm" in r.message]
    assert len(lines) == 1 and "torch path" in lines[0]  # logged once …
    assert dispatch.path_counts[("group_norm", "torch")] == 3  # … counted every time
    with pytest.raises(ValueError, match="FASTAUDIO_KERNELS"):
        os.environ["FASTAUDIO_KERNELS"] = "fastest"
        try:
            dispatch.set_kernel_mode(None)
            dispatch.kernel_mode()
        finally:
            del os.environ["FASTAUDIO_KERNELS"]


def test_attention_backend_setting_reaches_the_unet():
    cfg = UNetConfig(in_channels=4, channels=32, multipliers=[1, 1], factors=[2], num_blocks=[1],
                     attentions=[0, 1], attention_heads=2, attention_multiplier=2, resnet_groups=4,
                     context_embedding_features=8, context_embedding_max_length=5)
    torch.manual_seed(0)
    unet = UNet1d(cfg).to(DEVICE)
    x, t, ctx = (a.to(DEVICE) for a in (torch.randn(1, 4, 8), torch.rand(1), torch.randn(1, 5, 8)))
    mask = torch.tensor([[True, True, False, True, True]], device=DEVICE)
    NA.set_attention_backend("math")
    ref = unet(x, t, ctx, mask)
    NA.set_attention_backend("triton")
    try:
        out = unet(x, t, ctx, mask)
    finally:
        NA.set_attention_backend(None)
    _close(out.detach(), ref.detach())
    assert dispatch.path_counts[("attention", "triton")] > 0


def test_auto_takes_the_measured_faster_torch_path_and_says_why(caplog, monkeypatch):
    """An op given auto_torch_reason (the convs: cuDNN measured ahead of our conv on an H100):
    auto on CUDA takes PyTorch without asking the kernel, logs the reason once, and strict mode
    accepts it (the preferred path is not a fallback); FASTAUDIO_KERNELS=triton still forces it."""
    asked = []

    def reason():
        asked.append(1)
        return None

    why = "auto on CUDA: measured faster"
    caplog.set_level("INFO", logger="fastaudio.kernels")
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    dispatch.set_kernel_mode("auto")
    assert not dispatch.use_triton("op_x", True, reason, auto_torch_reason=why)
    assert not dispatch.use_triton("op_x", True, reason, auto_torch_reason=why)
    assert asked == [] and dispatch.path_counts[("op_x", "torch")] == 2
    assert [r.message for r in caplog.records if "op_x" in r.message] == [f"op_x: torch path ({why})"]
    assert dispatch.use_triton("op_y", True, reason)  # without it, auto takes the kernel
    dispatch.set_kernel_mode("triton")
    assert dispatch.use_triton("op_x", True, reason, auto_torch_reason=why)


def test_both_convs_ask_for_the_torch_path_under_auto(monkeypatch):
    """nn.conv's conv1d and conv_transpose1d hand the measured reason to the dispatcher (GroupNorm
    and Snake do not: each won one of its two measured shapes)."""
    from fastaudio.nn import conv, norm, snake
    seen = {}

    def spy(op, is_cuda, reason_fn, auto_torch_reason=None):
        seen[op] = auto_torch_reason
        return False

    for module in (conv, norm, snake):
        monkeypatch.setattr(module, "use_triton", spy)
    conv.conv1d(torch.randn(1, 2, 8), torch.randn(3, 2, 3), padding=1)
    conv.conv_transpose1d(torch.randn(1, 2, 8), torch.randn(2, 3, 4), stride=2)
    GroupNorm(2, 4)(torch.randn(1, 4, 8))
    snake.snake(torch.randn(1, 4, 8), torch.ones(1, 4, 1))
    assert seen["conv1d"] == seen["conv_transpose1d"] == conv.CONV_AUTO_TORCH
    assert "H100" in conv.CONV_AUTO_TORCH
    assert seen["group_norm"] is None and seen["snake"] is None
