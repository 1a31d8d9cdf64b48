"""The channels-last conv1d forward (kernels/conv1d_cl.py) against fp64 references.

Every case of test_kernel_conv1d.py runs here with x in channels-last memory, forward and backward
(the backward is conv1d.py's stride-generic kernels, now fed channels-last tensors), fp32 against
fp64 and bf16/fp16 by the three-way rule. The launcher fills its output with NaN under the
interpreter, so a skipped tile fails. Also: the weight pack follows in-place updates, (B, C, L)
memory inputs are served correctly, the int64 offset path, one launch per forward, and errors.
"""
import pytest
import torch
import torch.nn.functional as F

from fastaudio.kernels import _common
from fastaudio.kernels import conv1d as C
from fastaudio.kernels import conv1d_cl as CL
from fastaudio.kernels._common import KernelInputError
from test_kernel_conv1d import (BF16_CASES, CONV_CASES, _assert_fp32_close, _assert_three_way,
                                _conv_inputs, _gen, _leaves, _randn)


def _cl(t):
    """A leaf with the same values, channels-last in memory (rank-3 tensors only)."""
    if t is None or t.dim() != 3 or t.shape[1] == 1:
        return t
    out = t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(t.requires_grad)
    assert CL.is_channels_last(out)
    return out


def _run_cl(leaves, kwargs, go, residual_cl=True):
    x, w, b = leaves[:3]
    r = leaves[3] if len(leaves) > 3 else None
    xc = _cl(x)
    rc = _cl(r) if residual_cl else r
    out = CL.conv1d_channels_last(xc, w, b, residual=rc, **kwargs)
    if out.shape[1] > 1:
        assert out.stride(1) == 1, "the output is channels-last in memory"
    out.backward(go.to(out.dtype))
    grads = [xc.grad, w.grad, None if b is None else b.grad, None if rc is None else rc.grad]
    return [out.detach()] + grads


def _run_ref(leaves, kwargs, go):
    out = C.conv1d_ref(*leaves[:3], **kwargs, residual=leaves[3] if len(leaves) > 3 else None)
    out.backward(go.to(out.dtype))
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("has_bias,has_res", [(True, True), (False, False)])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv1d_cl_fp32(name, has_bias, has_res, device):
    tensors, kw, go = _conv_inputs(name, has_bias, has_res)
    ref = _run_ref(_leaves(tensors, torch.float64, "cpu"), kw, go)
    leaves = _leaves(tensors, torch.float32, device)
    got = _run_cl(leaves, kw, go.to(device), residual_cl=(len(name) % 2 == 0))
    for what, a, b in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, ref):
        if b is not None:
            _assert_fp32_close(a, b, f"{name} {what}")


LOWP_CASES = ([(n, torch.bfloat16) for n in BF16_CASES]
              + [("odd_channels_13_29", torch.float16), ("vae_k7_d3", torch.float16)])


@pytest.mark.parametrize("name,dtype", LOWP_CASES)
def test_conv1d_cl_low_precision(name, dtype, device):
    tensors, kw, go = _conv_inputs(name, True, True)
    tensors = [t.to(dtype) for t in tensors]  # exact in every wider dtype
    go = go.to(dtype)
    ref = _run_ref(_leaves(tensors, torch.float64, "cpu"), kw, go.double())

    def torch_conv(x, w, b, stride, padding, dilation, residual):
        pl, pr = (padding, padding) if isinstance(padding, int) else padding
        return F.conv1d(F.pad(x, (pl, pr)), w, b, stride, 0, dilation) + residual

    lp_leaves = _leaves(tensors, dtype, "cpu")
    lp_out = torch_conv(*lp_leaves[:3], **kw, residual=lp_leaves[3])
    lp_out.backward(go)
    lp = [lp_out.detach()] + [t.grad for t in lp_leaves]
    got = _run_cl(_leaves(tensors, dtype, device), kw, go.to(device))
    assert got[0].dtype == dtype
    for what, a, t, r in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, lp, ref):
        _assert_three_way(a, t, r, f"{name} {what}", torch.finfo(dtype).eps)


def test_real_shape_scaled_down_unet_and_vae(device):
    """A U-Net ResNet conv (k3, 160 channels: several C_in blocks and C_out tiles) and a VAE
    dilated conv (k7, d9) over a length that is not a tile multiple, inference path (no grad)."""
    for (B, Ci, Co, L, K, d) in [(2, 160, 96, 203, 3, 1), (1, 48, 48, 517, 7, 9)]:
        g = _gen(f"real-{Ci}-{K}")
        x, w = _randn(g, B, Ci, L), _randn(g, Co, Ci, K, scale=(Ci * K) ** -0.5)
        b, r = _randn(g, Co), _randn(g, B, Co, L)
        want = C.conv1d_ref(x, w, b, 1, d * (K // 2), d, r)
        with torch.no_grad():
            got = CL.conv1d_channels_last(CL.to_channels_last(x.float().to(device)),
                                          w.float().to(device), b.float().to(device), 1,
                                          d * (K // 2), d, r.float().to(device))
        _assert_fp32_close(got, want, f"k{K} C{Ci}->{Co} L{L}")


def test_contiguous_input_and_inference_path(device):
    """(B, C, L)-memory inputs are served through their strides; no-grad calls give the same
    values as the autograd path (both are one kernel)."""
    tensors, kw, _ = _conv_inputs("vae_k7_d3", True, True)
    x, w, b, r = (t.float().to(device) for t in tensors)
    want = C.conv1d_ref(x.double(), w.double(), b.double(), residual=r.double(), **kw)
    with torch.no_grad():
        plain = CL.conv1d_channels_last(x, w, b, residual=r, **kw)
    graded = CL.conv1d_channels_last(x, w.clone().requires_grad_(), b, residual=r, **kw)
    _assert_fp32_close(plain, want, "contiguous x")
    assert torch.equal(plain, graded.detach())


def test_weight_pack_follows_in_place_updates(device):
    """The (K, C_out, C_in) pack is cached per weight version: an optimiser-style in-place update
    must be seen by the next call (a stale pack would give the old weights' output)."""
    tensors, kw, _ = _conv_inputs("channels_over_one_block", True, False)
    x, w, b = (t.float().to(device) for t in tensors[:3])
    x = CL.to_channels_last(x)
    w = torch.nn.Parameter(w)
    with torch.no_grad():
        first = CL.conv1d_channels_last(x, w, b, **kw)
        assert CL.packed_weight(w) is CL.packed_weight(w), "the pack is reused while unchanged"
        w.mul_(-0.5)
        second = CL.conv1d_channels_last(x, w, b, **kw)
    _assert_fp32_close(second, C.conv1d_ref(x.double(), w.double(), b.double(), **kw),
                       "after update")
    assert not torch.allclose(first, second)


def test_int64_offsets_path(device, monkeypatch):
    """OFF64 (items of >= 2**31 elements) forced on a small case: same results."""
    monkeypatch.setattr(C, "_FORCE_OFF64", True)
    tensors, kw, go = _conv_inputs("asym_k5_s2_p2_1", True, True)
    ref = _run_ref(_leaves(tensors, torch.float64, "cpu"), kw, go)
    got = _run_cl(_leaves(tensors, torch.float32, device), kw, go.to(device))
    for what, a, b in zip(("out", "dx", "dweight", "dbias", "dresidual"), got, ref):
        _assert_fp32_close(a, b, f"OFF64 {what}")


def test_one_launch_per_forward():
    tensors, kw, _ = _conv_inputs("odd_channels_13_29", True, True)
    x, w, b, r = (t.float() for t in tensors)
    with _common.launch_census(CL, C) as log, torch.no_grad():
        CL.conv1d_channels_last(CL.to_channels_last(x), w, b, residual=r, **kw)
    assert [n for _, n in log] == ["_conv1d_cl_fwd_kernel"]


def test_errors_name_the_problem():
    x = torch.randn(1, 6, 20)
    with pytest.raises(KernelInputError, match="channel mismatch"):
        CL.conv1d_channels_last(x, torch.randn(4, 5, 3))
    with pytest.raises(KernelInputError, match="residual shape"):
        CL.conv1d_channels_last(x, torch.randn(4, 6, 3), residual=torch.randn(1, 4, 7))
    with pytest.raises(KernelInputError, match="dtype"):
        CL.conv1d_channels_last(x.double(), torch.randn(4, 6, 3).double())


def test_nn_layer_routes_by_memory_layout():
    """FASTAUDIO_KERNELS=triton: nn.conv.conv1d sends a channels-last input to this kernel and a
    (B, C, L)-memory input to conv1d.py's, with the same values (and the U-Net's asymmetric
    padding and residual passed through)."""
    from fastaudio.nn import conv as nn_conv
    from fastaudio.nn import dispatch
    tensors, kw, _ = _conv_inputs("asym_k5_s2_p2_3", True, True)
    x, w, b, r = (t.float() for t in tensors)
    dispatch.set_kernel_mode("triton")
    try:
        with _common.launch_census(CL, C) as log, torch.no_grad():
            y_cl = nn_conv.conv1d(CL.to_channels_last(x), w, b, residual=r, **kw)
            y_plain = nn_conv.conv1d(x, w, b, residual=r, **kw)
    finally:
        dispatch.set_kernel_mode(None)
    assert [n for _, n in log] == ["_conv1d_cl_fwd_kernel", "_conv1d_fwd_kernel"]
    want = C.conv1d_ref(x.double(), w.double(), b.double(), residual=r.double(), **kw)
    _assert_fp32_close(y_cl, want, "channels-last through nn")
    _assert_fp32_close(y_plain, want, "contiguous through nn")


def test_inference_mode_weights(device):
    """Weights made under torch.inference_mode carry no version counter: packed per call."""
    tensors, kw, _ = _conv_inputs("vae_k7_d3", True, False)
    x, w, b = (t.float().to(device) for t in tensors[:3])
    with torch.inference_mode():
        w_inf, x_inf = w.clone(), CL.to_channels_last(x.clone())
        got = CL.conv1d_channels_last(x_inf, w_inf, b, **kw)
    _assert_fp32_close(got, C.conv1d_ref(x.double(), w.double(), b.double(), **kw), "inference_mode")


def test_output_is_not_a_view_and_packs_die_with_their_weights(device):
    """The output is allocated channels-last (not a transposed view), so an in-place residual add
    after the conv keeps autograd working; the cached pack goes when its weight is freed."""
    import gc
    tensors, kw, go = _conv_inputs("channels_over_one_block", True, False)
    x, w, b = (t.float().to(device) for t in tensors[:3])
    xc = CL.to_channels_last(x).requires_grad_()
    y = CL.conv1d_channels_last(xc, w, b, **kw)
    assert y._base is None and y.stride(1) == 1
    y += 1.0  # a view returned by an autograd.Function would raise here
    y.backward(go.float().to(device))
    x_ref = x.double().requires_grad_()
    C.conv1d_ref(x_ref, w.double(), b.double(), **kw).backward(go)
    _assert_fp32_close(xc.grad, x_ref.grad, "dx after an in-place add")
    before = len(CL._PACKS)
    w2 = w.clone()
    with torch.no_grad():
        CL.conv1d_channels_last(xc, w2, b, **kw)
    assert len(CL._PACKS) == before + 1
    del w2
    gc.collect()
    assert len(CL._PACKS) == before
