"""Attention backends and the Triton FlashAttention kernels against the math reference.

Forward and backward (one shared random grad_output for dq, dk, dv) in fp32 against fp64, and in
bf16/fp16 by the three-way rule max|out - ref_fp32| <= 2 * max|torch_lowp - ref_fp32| + 1e-3
(max over elements, as flash-attention's tests apply it). The
shapes are the U-Net's scaled down (the interpreter runs ~ms per program step): head dims 64, 80
(split 64 + 16 in the kernel), 40 (split 32 + 16, tail masked), 24 (padded to 32) and 8, lengths
that are not multiples of the 32-row interpreter block (37, 79, 150), Lq = 1, 79 context keys with
ragged padding masks in both modes, a batch item with every key masked. GPU-only backends
(flash_attn, xformers) run in the same tests and skip with the reason where they are unavailable.
"""
import itertools
import logging
import re

import pytest
import torch

from fastaudio.kernels import attention as K
from fastaudio.nn import attention as NA
from fastaudio.nn import dispatch
from fastaudio.nn.dispatch import KernelUnavailableError

ALL_BACKENDS = ["sdpa", "triton", "math", "flash_attn", "xformers"]
GPU_ONLY = {"flash_attn", "xformers"}

# id: (B, H, Lq, Lk, D, mask, mask_mode)
CASES = {
    "self-d64-L37": (1, 2, 37, 37, 64, None, "zero"),
    "self-d80-L150": (1, 1, 150, 150, 80, None, "zero"),
    "cross-d80-79keys-zero": (2, 1, 33, 79, 80, "ragged", "zero"),
    "cross-d64-79keys-neginf-empty": (2, 1, 33, 79, 64, "ragged+empty", "neg_inf"),
    "cross-d40-neginf-random": (2, 1, 40, 21, 40, "random", "neg_inf"),
    "q1-d24-79keys-zero": (2, 2, 1, 79, 24, "ragged", "zero"),
}
BF16_CASES = ["self-d64-L37", "cross-d80-79keys-zero", "cross-d64-79keys-neginf-empty",
              "q1-d24-79keys-zero"]


@pytest.fixture(autouse=True)
def _default_backend_setting(monkeypatch):
    monkeypatch.delenv("FASTAUDIO_ATTENTION", raising=False)
    monkeypatch.delenv("FASTAUDIO_STRICT", raising=False)
    NA.set_attention_backend(None)
    yield
    NA.set_attention_backend(None)


def make_mask(kind, B, Lk, device, gen):
    if kind is None:
        return None
    if kind == "random":
        return torch.rand(B, Lk, generator=gen).lt(0.6).to(device)
    # Padding masks as the tokenizer makes them: the first n tokens of each prompt are kept.
    lengths = [Lk - 22, 5][:B]
    if kind == "ragged+empty":
        lengths[-1] = 0
    mask = torch.zeros(B, Lk, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask.to(device)


def make_inputs(case, device, dtype, seed=0):
    B, H, Lq, Lk, D, mask_kind, mode = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=gen, dtype=torch.float64)
               for L in (Lq, Lk, Lk))
    do = torch.randn(B, H, Lq, D, generator=gen, dtype=torch.float64)
    mask = make_mask(mask_kind, B, Lk, device, gen)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(q), cast(k), cast(v), cast(do), mask, mode


def skip_unless_serves(backend, q, k, v, mask, mode):
    reason = NA.unsupported_reason(backend, q, k, v, mask, mode)
    if reason is not None:
        if backend in GPU_ONLY:
            pytest.skip(f"{backend}: {reason}")
        pytest.fail(f"{backend} should serve this input here but says: {reason}")


def forward_backward(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), dq, dk, dv


# ------------------------------------------------------------------------------------------------
# Numerics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_fp32_forward_backward_matches_fp64_reference(backend, case, device):
    q, k, v, do, mask, mode = make_inputs(case, device, torch.float32)
    skip_unless_serves(backend, q, k, v, mask, mode)
    got = forward_backward(lambda q, k, v: NA.attention(q, k, v, mask, backend=backend,
                                                        mask_mode=mode), q, k, v, do)
    ref = forward_backward(lambda q, k, v: K.attention_ref(q, k, v, mask, mode),
                           q.double(), k.double(), v.double(), do.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", BF16_CASES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_low_precision_three_way_rule(backend, case, dtype, device):
    q, k, v, do, mask, mode = make_inputs(case, device, dtype, seed=1)
    skip_unless_serves(backend, q, k, v, mask, mode)
    got = forward_backward(lambda q, k, v: NA.attention(q, k, v, mask, backend=backend,
                                                        mask_mode=mode), q, k, v, do)
    # Same low-precision values, computed in fp32 (the reference) and in the input dtype.
    ref = forward_backward(lambda q, k, v: K.attention_ref(q, k, v, mask, mode, upcast=True),
                           q.float(), k.float(), v.float(), do.float())
    low = forward_backward(lambda q, k, v: K.attention_ref(q, k, v, mask, mode, upcast=False),
                           q, k, v, do)
    for name, a, r, lo in zip(("out", "dq", "dk", "dv"), got, ref, low):
        assert a.dtype == dtype
        err = (a.float() - r).abs().max().item()
        bound = 2 * (lo.float() - r).abs().max().item() + 1e-3
        assert err <= bound, f"{name}: max error {err:.3g} > {bound:.3g} (2x torch {dtype} + 1e-3)"


@pytest.mark.parametrize("mode", ["zero", "neg_inf"])
def test_triton_split_dkdv_partials(mode, device, monkeypatch):
    """The dK/dV query-split path (cross-attention on a GPU with few key blocks), 3 splits over
    100 queries: two full ranges and one that owns nothing but must still write zeros."""
    monkeypatch.setattr(K, "DKDV_SPLITS_OVERRIDE", 3)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 1, 100, 80, generator=gen, dtype=torch.float64)
    k, v = torch.randn(2, 2, 1, 45, 80, generator=gen, dtype=torch.float64)
    do = torch.randn_like(q)
    mask = make_mask("ragged+empty", 2, 45, "cpu", gen).to(device)
    q, k, v, do = (t.to(device=device, dtype=torch.float32) for t in (q, k, v, do))
    got = forward_backward(lambda q, k, v: K.flash_attention(q, k, v, mask, mode), q, k, v, do)
    ref = forward_backward(lambda q, k, v: K.attention_ref(q, k, v, mask, mode),
                           q.double(), k.double(), v.double(), do.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_triton_unet_layouts_and_many_heads(device):
    """q as the U-Net makes it ((B, L, H, D) memory viewed as B, H, L, D), k and v as chunks of
    one projection; B*H = 64 programs per query block; head dim 8 (padded to the 16 of tl.dot)."""
    B, H, Lq, Lk, D = 4, 16, 3, 11, 8
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(B, Lq, H * D, generator=gen).to(device)
    kv = torch.randn(B, Lk, 2 * H * D, generator=gen).to(device)
    q = x.view(B, Lq, H, D).transpose(1, 2)
    k, v = (t.reshape(B, Lk, H, D).transpose(1, 2) for t in kv.chunk(2, dim=-1))
    do = torch.randn(B, H, Lq, D, generator=gen).to(device)
    got = forward_backward(lambda q, k, v: K.flash_attention(q, k, v), q, k, v, do)
    ref = forward_backward(lambda q, k, v: K.attention_ref(q, k, v), q.double(), k.double(),
                           v.double(), do.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
    out = got[0]
    assert out.transpose(1, 2).is_contiguous(), "output should be (B, Lq, H, D) in memory"
    assert got[1].stride() == q.stride(), "dq should keep q's layout"


def test_head_dim_split():
    assert K.head_dim_split(64) == (64, 0)
    assert K.head_dim_split(80) == (64, 16)   # not padded to 128
    assert K.head_dim_split(40) == (32, 16)   # tail of 8 masked inside 16
    assert K.head_dim_split(24) == (32, 0)    # 16 + 16 saves nothing over 32
    assert K.head_dim_split(8) == (16, 0)     # tl.dot needs K >= 16
    assert K.head_dim_split(96) == (64, 32)
    assert K.head_dim_split(104) == (128, 0)


def test_launcher_outputs_are_poisoned(device):
    if device == "cuda" and not K.POISON_OUTPUTS:
        pytest.skip("poisoning is on under the interpreter or with FASTAUDIO_POISON=1")
    q = torch.zeros(1, 1, 4, 16, device=device)
    assert K.POISON_OUTPUTS
    assert torch.isnan(K._new_output(q, q)).all() and torch.isnan(K._new_like(q)).all()


# ------------------------------------------------------------------------------------------------
# Mask semantics
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_zero_mode_is_stable_audio_tools_semantics(backend, device):
    q, k, v, _, mask, _ = make_inputs("cross-d80-79keys-zero", device, torch.float32, seed=5)
    skip_unless_serves(backend, q, k, v, mask, "zero")
    # stable-audio-tools: k, v = k * mask, v * mask; then plain softmax attention.
    keep = mask[:, None, :, None].double()
    k0, v0 = k.double() * keep, v.double() * keep
    p = torch.softmax(q.double() @ k0.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    expected = p @ v0
    zero = NA.attention(q, k, v, mask, backend=backend, mask_mode="zero")
    torch.testing.assert_close(zero.double(), expected, atol=2e-5, rtol=1e-4)
    neg = NA.attention(q, k, v, mask, backend=backend, mask_mode="neg_inf")
    assert (neg.double() - expected).abs().max() > 1e-2, "zero and neg_inf must differ when keys are masked"
    # neg_inf: attention over the kept keys only
    n = int(mask[0].sum())
    only_kept = torch.softmax(q[:1].double() @ k[:1, :, :n].double().transpose(-1, -2)
                              / q.shape[-1] ** 0.5, dim=-1) @ v[:1, :, :n].double()
    torch.testing.assert_close(neg[:1].double(), only_kept, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_neg_inf_all_masked_row_outputs_zero(backend, device):
    q, k, v, do, mask, _ = make_inputs("cross-d64-79keys-neginf-empty", device, torch.float32)
    skip_unless_serves(backend, q, k, v, mask, "neg_inf")
    out, dq, dk, dv = forward_backward(
        lambda q, k, v: NA.attention(q, k, v, mask, backend=backend, mask_mode="neg_inf"), q, k, v, do)
    assert not mask[1].any()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()
        assert torch.equal(g[1], torch.zeros_like(g[1]))


# ------------------------------------------------------------------------------------------------
# Dispatch
# ------------------------------------------------------------------------------------------------
def small(device, D=16, dtype=torch.float32):
    q = torch.randn(1, 2, 5, D, device=device, dtype=dtype)
    return q, q.clone(), q.clone()


def test_forced_unavailable_backend_raises_naming_why(device):
    q, k, v = small(device)  # fp32: flash-attn refuses it on every machine
    for name in ("flash_attn", "xformers"):
        reason = NA.unsupported_reason(name, q, k, v)
        if reason is None:
            continue  # xformers installed and usable on this GPU
        with pytest.raises(KernelUnavailableError, match=f"'{name}'.*{re.escape(reason)}"):
            NA.attention(q, k, v, backend=name)
    assert NA.unsupported_reason("flash_attn", q, k, v) is not None
    q, k, v = small(device, D=136)
    with pytest.raises(KernelUnavailableError, match="head dim 136"):
        NA.attention(q, k, v, backend="triton")


def test_setting_from_env_and_override(device, monkeypatch):
    q, k, v = small(device)
    monkeypatch.setenv("FASTAUDIO_ATTENTION", "flash_attn")
    with pytest.raises(KernelUnavailableError, match="FASTAUDIO_ATTENTION"):
        NA.attention(q, k, v)  # fp32: flash-attn cannot serve it anywhere
    monkeypatch.setenv("FASTAUDIO_ATTENTION", "fastest")
    with pytest.raises(ValueError, match="FASTAUDIO_ATTENTION"):
        NA.attention(q, k, v)
    monkeypatch.setenv("FASTAUDIO_ATTENTION", "math")
    NA.attention(q, k, v)
    assert dispatch.path_counts[("attention", "math")] == 1
    NA.set_attention_backend("sdpa")  # the override wins over the env var
    NA.attention(q, k, v)
    assert dispatch.path_counts[("attention", "sdpa")] == 1
    NA.attention(q, k, v, backend="math")  # an explicit backend wins over both
    assert dispatch.path_counts[("attention", "math")] == 2
    with pytest.raises(ValueError):
        NA.set_attention_backend("cudnn")


def test_auto_on_cpu_picks_sdpa_and_logs_once(caplog):
    q, k, v = small("cpu")
    with caplog.at_level(logging.INFO, logger="fastaudio.kernels"):
        NA.attention(q, k, v)
        NA.attention(q, k, v)
    assert dispatch.path_counts[("attention", "sdpa")] == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention:")]
    assert lines == ["attention: sdpa path (auto on CPU)"]


def test_available_backends_reports_every_backend():
    avail = NA.available_backends("cpu")
    assert set(avail) == set(NA.BACKENDS)
    assert avail["sdpa"] is None and avail["math"] is None
    assert avail["flash_attn"] is not None  # never on CPU: not installed or needs CUDA
    for name, reason in avail.items():
        assert reason is None or isinstance(reason, str) and reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="strict mode concerns CUDA fallbacks")
def test_strict_turns_cuda_fallback_into_error(monkeypatch):
    # A neg_inf mask puts Triton first; head dim 136 is beyond it, so auto would fall back.
    q = torch.randn(1, 2, 8, 136, device="cuda", dtype=torch.bfloat16)
    mask = torch.ones(1, 8, dtype=torch.bool, device="cuda")
    NA.attention(q, q, q, mask, mask_mode="neg_inf")  # falls back, and says so
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    with pytest.raises(KernelUnavailableError, match="head dim 136"):
        NA.attention(q, q, q, mask, mask_mode="neg_inf")


def test_malformed_inputs_are_value_errors():
    q, k, v = small("cpu")
    with pytest.raises(ValueError, match="mask_mode"):
        NA.attention(q, k, v, mask_mode="minus_inf")
    with pytest.raises(ValueError, match="key_padding_mask"):
        NA.attention(q, k, v, torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        NA.attention(q, k, v, torch.ones(1, 5))


@pytest.mark.slow
# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------
def test_flash_attention_traces_under_torch_compile(device):
    torch._dynamo.reset()
    q, k, v, do, mask, mode = make_inputs("cross-d40-neginf-random", device, torch.float32)

    def f(q, k, v):
        return K.flash_attention(q, k, v, mask, mask_mode=mode)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = forward_backward(compiled, q, k, v, do)
    want = forward_backward(f, q, k, v, do)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_dispatcher_traces_under_torch_compile():
    torch._dynamo.reset()
    q, k, v, do, mask, mode = make_inputs("cross-d80-79keys-zero", "cpu", torch.float32)

    def f(q, k, v):
        return NA.attention(q, k, v, mask, backend="sdpa", mask_mode=mode)

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(out, f(q, k, v))


def test_auto_on_cuda_puts_sdpa_before_triton_at_the_unets_head_dims():
    """The Triton kernel faulted in SA1.0 generation on an H100 (see fastaudio/nn/attention.py):
    auto takes SDPA first at head dims 64 and 80 (and 40, 128), bf16 and fp32, until explained."""
    from types import SimpleNamespace
    for D, dtype in itertools.product((40, 64, 80, 128), (torch.bfloat16, torch.float32)):
        q = SimpleNamespace(is_cuda=True, dtype=dtype, shape=(2, 16, 431, D))
        order = NA.auto_order(q)
        assert order.index("sdpa") < order.index("triton"), (D, dtype, order)
    mask = torch.ones(2, 79, dtype=torch.bool)
    assert NA.auto_order(q, mask, "neg_inf")[0] == "triton"  # the one backend that masks in-kernel


# ------------------------------------------------------------------------------------------------
# The forward kernel at every GPU block size, in guarded memory
# ------------------------------------------------------------------------------------------------
GUARD = 1024


def _guarded(n, fill):
    """A length-n view in the middle of a buffer whose ends hold ``fill``: an out-of-bounds read
    of q, k or v brings NaN into the output, an out-of-bounds write changes a guard."""
    buf = torch.full((n + 2 * GUARD,), fill)
    return buf, buf[GUARD:GUARD + n]


FWD_BLOCKS = sorted({(m, n) for m, n, _, _ in K._FWD_CANDIDATES["sm80"] + K._FWD_CANDIDATES["sm90"]})


@pytest.mark.parametrize("block", FWD_BLOCKS, ids=[f"{m}x{n}" for m, n in FWD_BLOCKS])
@pytest.mark.parametrize("case", [(80, 54, 79, True), (64, 150, 150, False)],
                         ids=["cross-d80-79keys-zero", "self-d64-L150"])
def test_forward_kernel_at_gpu_block_sizes_in_guarded_memory(case, block):
    """Under the interpreter the autotuner only ever runs one small block; the GPU configs run
    here directly on the U-Net's own strided views (q from a (B, L, H·D) projection, k and v
    chunks of one (B, Lk, 2·H·D) projection), surrounded by NaN guards."""
    if not K.INTERPRET:
        pytest.skip("calls the kernel with explicit block sizes: interpreter only")
    D, L, Lk, masked = case
    B, H = 2, 2
    gen = torch.Generator().manual_seed(sum(block) + D)
    _, qflat = _guarded(B * L * H * D, float("nan"))
    qflat.copy_(torch.randn(qflat.numel(), generator=gen))
    _, kvflat = _guarded(B * Lk * 2 * H * D, float("nan"))
    kvflat.copy_(torch.randn(kvflat.numel(), generator=gen))
    q = qflat.view(B, L, H, D).transpose(1, 2)
    k, v = (t.reshape(B, Lk, H, D).transpose(1, 2) for t in kvflat.view(B, Lk, 2 * H * D).chunk(2, -1))
    mask = None
    if masked:
        mask = torch.rand(B, Lk, generator=gen) < 0.7
        mask[:, 0] = True
    obuf, oflat = _guarded(B * L * H * D, float("nan"))
    lbuf, lflat = _guarded(B * H * L, float("nan"))
    o, lse = oflat.view(B, L, H, D).transpose(1, 2), lflat.view(B, H, L)
    da, db = K.head_dim_split(D)
    keep, smb, smn = K._mask_args(mask, q)
    bm, bn = block
    K._attn_fwd_kernel[(-(-L // bm), B * H)](
        q, k, v, keep, o, lse, D ** -0.5, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        smb, smn, H, L, Lk, K._bucket(L), K._bucket(Lk), HEAD_DIM=D, BLOCK_DA=da, BLOCK_DB=db,
        MASK_MODE=1 if masked else 0, UPCAST=True, DOT_PREC="ieee", BLOCK_M=bm, BLOCK_N=bn)
    ref = K.attention_ref(q.double(), k.double(), v.double(), mask, "zero")
    torch.testing.assert_close(o.double(), ref, atol=2e-5, rtol=1e-4)
    for buf in (obuf, lbuf):
        assert torch.isnan(buf[:GUARD]).all() and torch.isnan(buf[-GUARD:]).all(), "a guard was written"


def test_fault_probe_records_the_unets_calls_and_replays_them(tmp_path, monkeypatch):
    """benchmarks/attention_fault_probe.py, the GPU session's tool for the H100 fault: record the
    tiny U-Net's attention calls (shapes, strides, storage offsets, masks) on the SDPA path, then
    replay each through the Triton kernel (here: the interpreter) against the reference; a call
    whose views cannot be rebuilt makes replay fail."""
    import json
    import os
    import sys
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    sys.modules.pop("attention_fault_probe", None)
    import attention_fault_probe as probe
    calls = tmp_path / "calls.json"
    assert probe.main(["record", "--preset", "tiny", "--seconds", "1", "--out", str(calls)]) == 0
    recorded = json.loads(calls.read_text())
    assert any(c["mask"] is not None for c in recorded) and any(c["mask"] is None for c in recorded)
    assert any(c["k"]["stride"][2] != c["k"]["shape"][3] for c in recorded), "views, not copies"
    assert probe.main(["replay", str(calls)]) == 0
    recorded[0]["q"]["storage"] = 1  # too small for its view: the rebuild must fail loudly
    calls.write_text(json.dumps(recorded))
    assert probe.main(["replay", str(calls)]) == 1
