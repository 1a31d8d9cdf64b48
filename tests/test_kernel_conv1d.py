"""Triton conv1d / conv_transpose1d (kernels/conv1d.py) against the PyTorch reference.

fp32 is judged against an fp64 reference; bf16 by the three-way rule
``|out - ref| <= 2 * |torch_bf16 - ref| + atol`` where ``ref`` is the fp64 conv of the same
bf16-rounded inputs and ``torch_bf16`` is F.conv1d (and its autograd) on the bf16 tensors.
Forward and backward share one random grad_output per case. Outputs are NaN-poisoned by the
launchers under the interpreter, so a skipped tile fails the comparison.
"""
import zlib

import pytest
import torch
import torch.nn.functional as F

from fastaudio.kernels import conv1d as C
from fastaudio.kernels._common import KernelInputError

# (B, C_in, C_out, L, K, stride, padding, dilation)
CONV_CASES = {
    "minimal_k1": (1, 1, 1, 1, 1, 1, 0, 1),
    "odd_channels_13_29": (2, 13, 29, 37, 3, 1, 1, 1),
    "L_not_block_multiple": (3, 8, 12, 133, 3, 1, 1, 1),
    "L_lt_K_padded": (2, 5, 7, 3, 7, 1, 3, 1),
    "channels_over_one_block": (1, 40, 36, 50, 3, 1, 1, 1),
    # U-Net: ResNet k3, 1x1 skip, downsample k=2f+1 stride f, first level k3 (factor 1)
    "unet_k1_skip": (2, 24, 16, 64, 1, 1, 0, 1),
    "unet_down_k5_s2": (2, 16, 24, 64, 5, 2, 2, 1),
    "unet_down_k9_s4": (2, 16, 24, 64, 9, 4, 4, 1),
    # VAE: ResidualUnit k7 dilations 1/3/9, encoder strided k=2s stride s padding ceil(s/2)
    "vae_k7_d1": (2, 8, 8, 100, 7, 1, 3, 1),
    "vae_k7_d3": (2, 8, 8, 100, 7, 1, 9, 3),
    "vae_k7_d9_L300": (2, 8, 8, 300, 7, 1, 27, 9),
    "vae_in_2ch": (2, 2, 16, 90, 7, 1, 3, 1),
    "vae_out_2ch": (2, 16, 2, 90, 7, 1, 3, 1),
    "vae_enc_k8_s4_p2": (2, 8, 16, 64, 8, 4, 2, 1),
    "vae_enc_k16_s8_p4": (2, 8, 16, 128, 16, 8, 4, 1),
    # asymmetric (left, right) padding, as the U-Net's strided convs use it
    "asym_k5_s2_p2_1": (2, 16, 24, 65, 5, 2, (2, 1), 1),
    "asym_k5_s2_p2_3": (2, 16, 24, 64, 5, 2, (2, 3), 1),
    "asym_k3_p0_4": (2, 6, 10, 20, 3, 1, (0, 4), 1),
    # dilation and stride together (phases of dgrad that no tap reaches)
    "dil2_s2": (2, 5, 7, 40, 3, 2, 3, 2),
    "dil3_s3_asym": (2, 5, 7, 41, 3, 3, (0, 5), 3),
    "k1_s2": (2, 5, 7, 40, 1, 2, 0, 1),
}
BF16_CASES = ["odd_channels_13_29", "unet_down_k5_s2", "vae_k7_d9_L300", "vae_enc_k8_s4_p2",
              "asym_k5_s2_p2_1", "L_lt_K_padded"]

# (B, C_in, C_out, L, K, stride, padding, output_padding, dilation); weight is (C_in, C_out, K)
TCONV_CASES = {
    "unet_up_f2_k4_s2": (2, 16, 12, 20, 4, 2, 0, 0, 1),
    "unet_up_f4_k8_s4": (2, 16, 12, 20, 8, 4, 0, 0, 1),
    "vae_dec_k8_s4_p2": (2, 16, 8, 21, 8, 4, 2, 0, 1),
    "vae_dec_k16_s8_p4": (2, 16, 8, 20, 16, 8, 4, 0, 1),
    "out_pad_dil": (2, 7, 5, 21, 3, 2, 1, 1, 2),
    "minimal": (1, 1, 1, 1, 1, 1, 0, 0, 1),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 is judged against fp64: no TF32 on a GPU (the launcher follows cuDNN's flag)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


def _gen(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _conv_inputs(name, has_bias, has_res):
    B, Ci, Co, L, K, s, p, d = CONV_CASES[name]
    g = _gen(f"{name}-{has_bias}-{has_res}")
    pl, pr = (p, p) if isinstance(p, int) else p
    L_out = C.conv1d_out_length(L, K, s, pl, pr, d)
    x = _randn(g, B, Ci, L)
    w = _randn(g, Co, Ci, K, scale=(Ci * K) ** -0.5)
    b = _randn(g, Co) if has_bias else None
    r = _randn(g, B, Co, L_out) if has_res else None
    go = _randn(g, B, Co, L_out)
    return (x, w, b, r), dict(stride=s, padding=p, dilation=d), go


def _leaves(tensors, dtype, device):
    return [None if t is None
            else t.detach().to(device=device, dtype=dtype, copy=True).requires_grad_()
            for t in tensors]


def _run(fn, leaves, kwargs, go):
    out = fn(*leaves[:3], **kwargs, **({"residual": leaves[3]} if len(leaves) > 3 else {}))
    out.backward(go.to(out.dtype))
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


def _assert_fp32_close(got, ref, what):
    got, ref = got.double().cpu(), ref.double().cpu()
    # fp32 accumulation over <= a few hundred terms: observed errors stay below 3e-7 x scale;
    # 2e-6 leaves room for another summation order (GPU) without hiding a wrong tap or tile.
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=2e-6 * scale, msg=lambda m: f"{what}: {m}")


def _assert_three_way(got, torch_lp, ref, what, eps=2.0 ** -7):
    got, torch_lp, ref = (t.double().cpu() for t in (got, torch_lp, ref))
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    atol = eps * max(ref.abs().max().item(), 1e-6)  # one ulp (of the dtype) of the largest value
    err, bound = (got - ref).abs(), 2 * (torch_lp - ref).abs() + atol
    bad = err > bound
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} elements exceed the "
                           f"three-way bound; worst excess {(err - bound).max().item():.3e}")


@pytest.mark.parametrize("has_bias,has_res", [(True, True), (False, False)])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv1d_fp32(name, has_bias, has_res, device):
    tensors, kw, go = _conv_inputs(name, has_bias, has_res)
    ref = _run(C.conv1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go)
    got = _run(C.conv1d, _leaves(tensors, torch.float32, device), kw, go.to(device))
    for what, a, b in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, ref):
        if b is not None:
            _assert_fp32_close(a, b, f"{name} {what}")


LOWP_CASES = ([(n, torch.bfloat16) for n in BF16_CASES]
              + [("odd_channels_13_29", torch.float16), ("vae_enc_k8_s4_p2", torch.float16)])


@pytest.mark.parametrize("name,dtype", LOWP_CASES)
def test_conv1d_low_precision(name, dtype, device):
    tensors, kw, go = _conv_inputs(name, True, True)
    tensors = [None if t is None else t.to(dtype) for t in tensors]  # exact in every wider dtype
    go = go.to(dtype)
    ref = _run(C.conv1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go.double())

    def torch_conv(x, w, b, stride, padding, dilation, residual):
        pl, pr = (padding, padding) if isinstance(padding, int) else padding
        return F.conv1d(F.pad(x, (pl, pr)), w, b, stride, 0, dilation) + residual

    lp = _run(torch_conv, _leaves(tensors, dtype, "cpu"), kw, go)
    got = _run(C.conv1d, _leaves(tensors, dtype, device), kw, go.to(device))
    assert got[0].dtype == dtype
    for what, a, t, r in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, lp, ref):
        _assert_three_way(a, t, r, f"{name} {what}", torch.finfo(dtype).eps)


def _tconv_inputs(name):
    B, Ci, Co, L, K, s, p, op, d = TCONV_CASES[name]
    g = _gen("t-" + name)
    x = _randn(g, B, Ci, L)
    w = _randn(g, Ci, Co, K, scale=(Ci * K / s) ** -0.5)
    b = _randn(g, Co)
    L_out = C.conv_transpose1d_out_length(L, K, s, p, op, d)
    go = _randn(g, B, Co, L_out)
    return (x, w, b), dict(stride=s, padding=p, output_padding=op, dilation=d), go


@pytest.mark.parametrize("name", list(TCONV_CASES))
def test_conv_transpose1d_fp32(name, device):
    tensors, kw, go = _tconv_inputs(name)
    ref = _run(C.conv_transpose1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go)
    got = _run(C.conv_transpose1d, _leaves(tensors, torch.float32, device), kw, go.to(device))
    for what, a, b in zip(("out", "dx", "dweight", "dbias"), got, ref):
        _assert_fp32_close(a, b, f"{name} {what}")


@pytest.mark.parametrize("name", ["unet_up_f4_k8_s4", "vae_dec_k16_s8_p4"])
def test_conv_transpose1d_bf16(name, device):
    tensors, kw, go = _tconv_inputs(name)
    tensors = [t.to(torch.bfloat16) for t in tensors]
    go = go.to(torch.bfloat16)
    ref = _run(C.conv_transpose1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go.double())
    lp = _run(F.conv_transpose1d, _leaves(tensors, torch.bfloat16, "cpu"), kw, go)
    got = _run(C.conv_transpose1d, _leaves(tensors, torch.bfloat16, device), kw, go.to(device))
    for what, a, t, r in zip(("out", "dx", "dweight", "dbias"), got, lp, ref):
        _assert_three_way(a, t, r, f"{name} {what}", torch.finfo(torch.bfloat16).eps)


def test_partial_grads_and_strided_views(device):
    """Only dx (frozen weight) or only dweight; non-contiguous x, stride-0 grad from .sum()."""
    g = _gen("partial")
    base = _randn(g, 2, 45, 6).float()                     # (B, L, C): x is a transposed view
    w = _randn(g, 9, 6, 5, scale=0.2).float()
    b = _randn(g, 9).float()
    x_ref = base.double().transpose(1, 2).requires_grad_()
    C.conv1d_ref(x_ref, w.double(), b.double(), 2, (2, 1)).sum().backward()

    x = base.to(device).transpose(1, 2).requires_grad_()
    C.conv1d(x, w.to(device), b.to(device), 2, (2, 1)).sum().backward()
    _assert_fp32_close(x.grad, x_ref.grad, "dx only")

    w_ref = w.double().requires_grad_()
    C.conv1d_ref(base.double().transpose(1, 2), w_ref, None, 2, (2, 1)).sum().backward()
    wt = w.to(device).requires_grad_()
    C.conv1d(base.to(device).transpose(1, 2), wt, None, 2, (2, 1)).sum().backward()
    _assert_fp32_close(wt.grad, w_ref.grad, "dweight only")


@pytest.mark.parametrize("name", ["vae_enc_k8_s4_p2", "asym_k5_s2_p2_1", "dil3_s3_asym"])
def test_conv1d_int64_offsets(name, device, monkeypatch):
    """The int64 in-item offset path (items of >= 2**31 elements) on small tensors."""
    monkeypatch.setattr(C, "_FORCE_OFF64", True)
    tensors, kw, go = _conv_inputs(name, True, True)
    ref = _run(C.conv1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go)
    got = _run(C.conv1d, _leaves(tensors, torch.float32, device), kw, go.to(device))
    for what, a, b in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, ref):
        _assert_fp32_close(a, b, f"{name} {what} (int64 offsets)")


@pytest.mark.parametrize("prefetch", [False, True])
def test_other_tilings(prefetch, device, monkeypatch):
    """Small tiles (more tile edges, more loop steps) with and without the register prefetch."""
    if not C.INTERPRET:
        pytest.skip("configs are autotuned on GPUs")
    monkeypatch.setattr(C._conv1d_fwd_kernel, "configs", [C._cfg(16, 64, 16, 4, 1, prefetch)])
    monkeypatch.setattr(C._conv1d_dgrad_kernel, "configs", [C._cfg(16, 64, 16, 4, 1, prefetch)])
    monkeypatch.setattr(C._conv1d_wgrad_kernel, "configs", [C._cfg(16, 16, 32, 4, 1, prefetch)])
    for name in ("odd_channels_13_29", "unet_down_k9_s4", "dil3_s3_asym"):
        tensors, kw, go = _conv_inputs(name, True, True)
        ref = _run(C.conv1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go)
        got = _run(C.conv1d, _leaves(tensors, torch.float32, device), kw, go.to(device))
        for what, a, b in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, ref):
            _assert_fp32_close(a, b, f"{name} {what} (prefetch={prefetch})")
    tensors, kw, go = _tconv_inputs("vae_dec_k8_s4_p2")
    ref = _run(C.conv_transpose1d_ref, _leaves(tensors, torch.float64, "cpu"), kw, go)
    got = _run(C.conv_transpose1d, _leaves(tensors, torch.float32, device), kw, go.to(device))
    for what, a, b in zip(("out", "dx", "dweight", "dbias"), got, ref):
        _assert_fp32_close(a, b, f"transposed {what} (prefetch={prefetch})")


def test_wgrad_split_k_matches(device):
    """A long reduction is split into several fp32 partial slabs; the sum must not change."""
    g = _gen("splitk")
    x, go = _randn(g, 2, 4, 700).float(), _randn(g, 2, 5, 700).float()
    if C.INTERPRET:
        assert C._wgrad_split(2, 5, 4, 3, 700, torch.device("cpu"))[0] > 1
    dw = C._launch_wgrad(go.to(device), x.to(device), 3, 1, 1, 1)
    ref = torch.nn.grad.conv1d_weight(x.double(), (5, 4, 3), go.double(), 1, 1, 1)
    _assert_fp32_close(dw, ref, "split-K dweight")


def test_outputs_are_poisoned_under_interpreter():
    if C.INTERPRET:
        assert C.POISON_OUTPUTS
        assert torch.isnan(C._new_output((2, 3), torch.bfloat16, "cpu")).all()


def _ok_args(device):
    return dict(x=torch.randn(2, 4, 16, device=device), weight=torch.randn(6, 4, 3, device=device),
                bias=torch.randn(6, device=device), stride=1, padding=1, dilation=1,
                residual=torch.randn(2, 6, 16, device=device))


# Each change is a function of the device so the same table serves CPU (interpreter) and CUDA.
REASON_CASES = {
    "device": (lambda d: dict(x=torch.randn(2, 4, 16, device="meta")), "tensor on meta"),
    "dtype": (lambda d: dict(x=torch.randn(2, 4, 16, dtype=torch.float64, device=d)),
              "torch.float64 is not supported"),
    "mixed_dtypes": (lambda d: dict(bias=torch.randn(6, dtype=torch.bfloat16, device=d)),
                     "mixed dtypes"),
    "x_rank": (lambda d: dict(x=torch.randn(4, 16, device=d)), "rank 2"),
    "weight_rank": (lambda d: dict(weight=torch.randn(6, 4, device=d)), "rank 2"),
    "channels": (lambda d: dict(weight=torch.randn(6, 5, 3, device=d)), "channel mismatch"),
    "bias_shape": (lambda d: dict(bias=torch.randn(5, device=d)), "bias shape"),
    "residual_shape": (lambda d: dict(residual=torch.randn(2, 6, 15, device=d)), "residual shape"),
    "too_short": (lambda d: dict(padding=0, weight=torch.randn(6, 4, 17, device=d), residual=None),
                  "output length"),
    "padding_triple": (lambda d: dict(padding=(1, 2, 3)),
                       "padding must be an int or a (left, right) pair"),
    "negative_padding": (lambda d: dict(padding=(-1, 1)), "negative padding"),
    "stride_0": (lambda d: dict(stride=0), "stride must be >= 1"),
    "float_dilation": (lambda d: dict(dilation=1.5), "dilation must be an int"),
}


@pytest.mark.parametrize("case", list(REASON_CASES))
def test_conv1d_unsupported_reasons(case, device):
    change, expected = REASON_CASES[case]
    args = {**_ok_args(device), **change(device)}
    reason = C.conv1d_unsupported_reason(**args)
    assert reason is not None and expected in reason, reason
    with pytest.raises(KernelInputError, match="cannot serve") as info:
        C.conv1d(**args)
    assert expected in str(info.value)


def test_reason_none_and_launcher_raises(device):
    args = _ok_args(device)
    assert C.conv1d_unsupported_reason(**args) is None
    w_bad = torch.randn(6, 5, 3, device=device)
    with pytest.raises(KernelInputError, match="channel mismatch"):
        torch.ops.fastaudio.conv1d_fwd(args["x"], w_bad, None, None, 1, 1, 1, 1)
    x = torch.randn(2, 4, 8, device=device)
    assert C.conv_transpose1d_unsupported_reason(x, torch.randn(4, 3, 4, device=device),
                                                 None, 2) is None
    assert "channel mismatch" in C.conv_transpose1d_unsupported_reason(
        x, torch.randn(5, 3, 4, device=device), None, 2)
    assert "output_padding" in C.conv_transpose1d_unsupported_reason(
        x, torch.randn(4, 3, 4, device=device), None, 2, 0, 2)
    with pytest.raises(KernelInputError, match="cannot serve"):
        C.conv_transpose1d(x, torch.randn(4, 3, 4, device=device), None, 2, 0, 2)


def test_torch_compile_fullgraph(device):
    """Dynamo traces conv1d and conv_transpose1d (fwd + bwd) without graph breaks."""
    torch._dynamo.reset()
    g = _gen("compile")
    x = _randn(g, 2, 6, 33).float().to(device)
    w = _randn(g, 8, 6, 5, scale=0.2).float().to(device)
    b = _randn(g, 8).float().to(device)
    r = _randn(g, 2, 8, 16).float().to(device)
    wt = _randn(g, 8, 6, 4, scale=0.2).float().to(device)

    def f(x, w, b, r, wt):
        y = C.conv1d(x, w, b, stride=2, padding=(2, 1), residual=r)
        return C.conv_transpose1d(torch.tanh(y), wt, None, stride=2).square().sum()

    leaves = [t.clone().requires_grad_() for t in (x, w, b, r, wt)]
    eager = f(*leaves)
    eager.backward()
    cleaves = [t.clone().requires_grad_() for t in (x, w, b, r, wt)]
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*cleaves)
    out.backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, e in zip(cleaves, leaves):
        torch.testing.assert_close(a.grad, e.grad, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_custom_op_opcheck(device):
    g = _gen("opcheck")
    x, w = _randn(g, 2, 3, 10).float().to(device), _randn(g, 4, 3, 3).float().to(device)
    b, r = _randn(g, 4).float().to(device), _randn(g, 2, 4, 5).float().to(device)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.fastaudio.conv1d_fwd.default, (x, w, b, r, 2, 1, 0, 1),
                          test_utils=tests)
    go = _randn(g, 2, 4, 5).float().to(device)
    torch.library.opcheck(torch.ops.fastaudio.conv1d_bwd.default,
                          (go, x, w, 2, 1, 0, 1, True, True, False), test_utils=tests)
    xt, wt = _randn(g, 2, 4, 6).float().to(device), _randn(g, 4, 3, 8).float().to(device)
    torch.library.opcheck(torch.ops.fastaudio.conv_transpose1d_fwd.default,
                          (xt, wt, None, 4, 2, 0, 1), test_utils=tests)
    got = _randn(g, 2, 3, 24).float().to(device)
    torch.library.opcheck(torch.ops.fastaudio.conv_transpose1d_bwd.default,
                          (got, xt, wt, 4, 2, 1, True, True, True), test_utils=tests)
