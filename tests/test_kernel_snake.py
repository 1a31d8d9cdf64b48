"""Snake kernels (kernels/snake.py) against their PyTorch references: descript-audio-codec's
Snake1d, and SnakeBeta (stable-audio-tools', the Oobleck VAE's) with its separate divisor.

Judge: an fp64 evaluation of the reference. Rule (flash-attention's, on max-norms):
    max|kernel − ref64| ≤ 2·max|torch_lowp − ref64| + atol
where torch_lowp is the reference run by PyTorch in the test dtype and
atol = ATOL_REL[dtype] · max(1, max|ref64|). Under the interpreter the launchers fill every
output with NaN first, and every compared tensor must be finite, so a kernel that skips elements
fails.
"""
import pytest
import torch

from conftest import DEVICE
from fastaudio.kernels import _common
from fastaudio.kernels import snake as sk
from fastaudio.kernels._common import KernelInputError
from fastaudio.kernels.snake import snake, snake_ref, snake_unsupported_reason

# fp32: a few fp32 ulps of the largest value; bf16/fp16: half an ulp of the largest value, the
# error an exact kernel makes when it rounds its output.
ATOL_REL = {torch.float32: 1e-6, torch.bfloat16: 2.0 ** -9, torch.float16: 2.0 ** -12}


def assert_3way(out, ref, lowp, dtype, name):
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == lowp.dtype, f"{name}: dtype {out.dtype} != {lowp.dtype}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (an element was not written?)"
    err = (out.double() - ref).abs().max().item()
    base = (lowp.double() - ref).abs().max().item()
    atol = ATOL_REL[dtype] * max(1.0, ref.abs().max().item())
    assert err <= 2 * base + atol, f"{name}: max err {err:.3g} > 2·{base:.3g} + {atol:.3g}"


def make_inputs(shape, dtype, alpha_shape, x_std=3.0, alpha_range=(0.05, 3.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    B, C, N = shape
    x = (torch.randn(B, C, N, generator=g) * x_std).to(dtype)
    lo, hi = alpha_range
    alpha = (lo + (hi - lo) * torch.rand(C, generator=g)).reshape(alpha_shape(C)).to(dtype)
    dy = torch.randn(B, C, N, generator=g).to(dtype)  # one shared grad_output
    # drawn on the CPU (the same numbers on every machine), run where the kernels run
    return x.to(DEVICE), alpha.to(DEVICE), dy.to(DEVICE)


def run(fn, x, alpha, dy, cast=None):
    x = (x if cast is None else x.to(cast)).detach().requires_grad_()
    alpha = (alpha if cast is None else alpha.to(cast)).detach().requires_grad_()
    y = fn(x, alpha)
    dx, dalpha = torch.autograd.grad(y, [x, alpha], dy.to(y.dtype))
    return y.detach(), dx, dalpha


def check(shape, dtype, alpha_shape, **kw):
    x, alpha, dy = make_inputs(shape, dtype, alpha_shape, **kw)
    out = run(snake, x, alpha, dy)
    ref = run(snake_ref, x, alpha, dy, cast=torch.float64)
    lowp = run(lambda x_, a_: snake_ref(x_, a_, upcast=False), x, alpha, dy)
    for name, o, r, lp in zip(("y", "dx", "dalpha"), out, ref, lowp):
        assert_3way(o, r, lp, dtype, name)
    assert out[2].shape == alpha.shape and out[2].dtype == alpha.dtype


ALPHA_SHAPES = {"alpha(1,C,1)": lambda C: (1, C, 1), "alpha(C,)": lambda C: (C,)}
SHAPES = [
    (1, 1, 1),       # minimal
    (2, 3, 5000),    # several forward tiles per row; backward: a full and a partial chunk
    (3, 7, 1037),    # odd C, N not a multiple of any block
    (1, 24, 8192),   # a VAE decoder stage, scaled down
]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The decoder-stage shape (the slowest in the interpreter) once in the fast subset (bf16, the
# production dtype); its other dtype / parameter-layout combinations run with the slow tests.
CASES = [pytest.param(shape, DTYPES[d], a, id=f"{shape}-{d}-{a}",
                      marks=pytest.mark.slow if shape == SHAPES[-1] and (d, a) != ("bf16", "alpha(C,)")
                      else ())
         for shape in SHAPES for d in DTYPES for a in ALPHA_SHAPES]


@pytest.mark.parametrize("shape,dtype,alpha_shape", CASES)
def test_forward_backward(shape, dtype, alpha_shape):
    check(shape, dtype, ALPHA_SHAPES[alpha_shape])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_small_alpha_and_large_arguments(dtype):
    """α near 0 (1/(α+1e-9) large, sin² tiny: cos-based sin² would cancel) and |α·x| ≫ π."""
    check((2, 4, 700), dtype, ALPHA_SHAPES["alpha(1,C,1)"], alpha_range=(1e-4, 1e-3))
    check((2, 4, 700), dtype, ALPHA_SHAPES["alpha(C,)"], x_std=30.0, alpha_range=(2.0, 8.0))


def test_mixed_dtypes():
    """bf16 activations with an fp32 α (autocast-style): output and dx in bf16, dα in fp32."""
    x, alpha, dy = make_inputs((2, 5, 900), torch.bfloat16, ALPHA_SHAPES["alpha(1,C,1)"])
    alpha = alpha.float()
    y, dx, dalpha = run(snake, x, alpha, dy)
    y_ref, dx_ref, dalpha_ref = run(snake_ref, x, alpha, dy, cast=torch.float64)
    assert y.dtype == dx.dtype == torch.bfloat16 and dalpha.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=2 ** -8, atol=1e-6)
    torch.testing.assert_close(dx.double(), dx_ref, rtol=2 ** -8, atol=1e-6)
    torch.testing.assert_close(dalpha.double(), dalpha_ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("grad_of", ["x", "alpha"])
def test_partial_gradients(grad_of):
    """Only one input needs a gradient: the other comes back None and is not computed."""
    x, alpha, dy = make_inputs((2, 3, 600), torch.float32, ALPHA_SHAPES["alpha(1,C,1)"])
    x = x.clone().requires_grad_(grad_of == "x")
    alpha = alpha.clone().requires_grad_(grad_of == "alpha")
    snake(x, alpha).backward(dy)
    _, dx_ref, dalpha_ref = run(snake_ref, x, alpha, dy, cast=torch.float64)
    if grad_of == "x":
        assert alpha.grad is None
        torch.testing.assert_close(x.grad.double(), dx_ref, rtol=1e-5, atol=1e-5)
    else:
        assert x.grad is None
        torch.testing.assert_close(alpha.grad.double(), dalpha_ref, rtol=1e-5, atol=1e-4)


def test_deterministic_dalpha():
    x, alpha, dy = make_inputs((2, 3, 9000), torch.float32, ALPHA_SHAPES["alpha(C,)"])
    first = sk.snake_backward(dy, x, alpha)
    second = sk.snake_backward(dy, x, alpha)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_non_contiguous_input():
    x, alpha, dy = make_inputs((2, 6, 300), torch.float32, ALPHA_SHAPES["alpha(1,C,1)"])
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, channels-last
    assert not x_t.is_contiguous() and snake_unsupported_reason(x_t, alpha) is None
    for a, b in zip(run(snake, x_t, alpha, dy), run(snake, x, alpha, dy)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_unsupported_reasons():
    x, alpha = torch.randn(2, 4, 10, device=DEVICE), torch.ones(1, 4, 1, device=DEVICE)
    assert snake_unsupported_reason(x, alpha) is None
    cases = [
        ((torch.randn(4, 10, device=DEVICE), alpha), "must be (B, C, N)"),
        ((x, torch.ones(1, 3, 1, device=DEVICE)), "alpha must be (4,) or (1, 4, 1)"),
        ((x, torch.ones(4, 1, device=DEVICE)), "alpha must be (4,) or (1, 4, 1)"),
        ((x.double(), alpha), "dtype torch.float64 is not supported"),
        ((x.to("meta"), alpha.to("meta")), "tensor on meta"),
        ((torch.randn(2, 4, 0, device=DEVICE), alpha), "empty input"),
    ]
    for (x_, a_), expected in cases:
        reason = snake_unsupported_reason(x_, a_)
        assert reason is not None and expected in reason, (expected, reason)
        with pytest.raises(KernelInputError, match="snake: "):
            snake(x_, a_)


def test_custom_ops_opcheck():
    """Schema, fake (meta) implementations and AOT dispatch agree with the real ops."""
    x, alpha, dy = make_inputs((2, 4, 100), torch.float32, ALPHA_SHAPES["alpha(1,C,1)"])
    torch.library.opcheck(torch.ops.fastaudio.snake_fwd, (x, alpha))
    torch.library.opcheck(torch.ops.fastaudio.snake_bwd, (dy, x, alpha, True, True))
    torch.library.opcheck(torch.ops.fastaudio.snake_bwd, (dy, x, alpha.reshape(-1), False, True))


def test_torch_compile_fullgraph():
    """torch.compile sees the custom ops without graph breaks, forward and backward."""
    torch._dynamo.reset()
    x, alpha, dy = make_inputs((2, 4, 300), torch.float32, ALPHA_SHAPES["alpha(1,C,1)"])

    def f(x_, a_):
        return snake(x_ * 0.5, a_) + 1.0

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = run(compiled, x, alpha, dy)
    eager = run(f, x, alpha, dy)
    for a, b in zip(out, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_poisoned_allocation():
    """The safety net the tests rely on: outputs start as NaN (the interpreter; conftest sets
    FASTAUDIO_POISON=1 on a GPU)."""
    assert _common.POISON
    assert torch.isnan(_common.alloc((3, 5), torch.bfloat16, DEVICE)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 333), (1, 24, 4099)])
def test_pytorch_path_in_place_inference_matches_reference(shape, dtype):
    """The CPU path's inference form (ops in place on one temporary) against fp64, and its
    training form (autograd) on the same inputs; the input is never modified."""
    from fastaudio.nn.snake import snake_torch
    x, alpha, dy = make_inputs(shape, dtype, lambda c: (1, c, 1), seed=sum(shape))
    x_before = x.clone()
    ref = snake_ref(x.double(), alpha.double())
    lowp = snake_ref(x, alpha, upcast=False)
    with torch.no_grad():
        out = snake_torch(x, alpha)
    assert torch.equal(x, x_before)
    assert_3way(out, ref, lowp, dtype, "inference")
    xg = x.clone().requires_grad_(True)
    train = snake_torch(xg, alpha)
    train.backward(dy)
    assert xg.grad is not None and torch.equal(train.detach(), out)


# ------------------------------------------------------------------------------------------------
# SnakeBeta (the Oobleck VAE's): the same kernels with a separate per-channel divisor inv_β
# ------------------------------------------------------------------------------------------------
from fastaudio.kernels.snake import (snake_beta, snake_beta_ref,  # noqa: E402
                                     snake_beta_unsupported_reason)


def make_beta_inputs(shape, dtype, alpha_shape, inv_shape, x_std=3.0, alpha_range=(0.05, 3.0),
                     inv_range=(0.2, 5.0), seed=0):
    x, alpha, dy = make_inputs(shape, dtype, alpha_shape, x_std, alpha_range, seed)
    g = torch.Generator().manual_seed(seed + 1)
    lo, hi = inv_range
    C = shape[1]
    inv = (lo + (hi - lo) * torch.rand(C, generator=g)).reshape(inv_shape(C)).to(dtype)
    return x, alpha, inv.to(DEVICE), dy


def run_beta(fn, x, alpha, inv, dy, cast=None):
    leaves = [(t if cast is None else t.to(cast)).detach().requires_grad_() for t in (x, alpha, inv)]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, dy.to(y.dtype))
    return (y.detach(),) + grads


def check_beta(shape, dtype, alpha_shape, inv_shape, **kw):
    x, alpha, inv, dy = make_beta_inputs(shape, dtype, alpha_shape, inv_shape, **kw)
    out = run_beta(snake_beta, x, alpha, inv, dy)
    ref = run_beta(snake_beta_ref, x, alpha, inv, dy, cast=torch.float64)
    lowp = run_beta(lambda *t: snake_beta_ref(*t, upcast=False), x, alpha, inv, dy)
    for name, o, r, lp in zip(("y", "dx", "dalpha", "dinv_beta"), out, ref, lowp):
        assert_3way(o, r, lp, dtype, name)
    assert out[2].shape == alpha.shape and out[2].dtype == alpha.dtype
    assert out[3].shape == inv.shape and out[3].dtype == inv.dtype


BETA_LAYOUTS = {"alpha3d-inv1d": ("alpha(1,C,1)", "alpha(C,)"),
                "alpha1d-inv3d": ("alpha(C,)", "alpha(1,C,1)")}
BETA_CASES = [pytest.param(shape, DTYPES[d], BETA_LAYOUTS[lay], id=f"{shape}-{d}-{lay}",
                           marks=pytest.mark.slow if shape == SHAPES[-1] and
                           (d, lay) != ("bf16", "alpha3d-inv1d") else ())
              for shape in SHAPES for d in ("fp32", "bf16") for lay in BETA_LAYOUTS]


@pytest.mark.parametrize("shape,dtype,shapes", BETA_CASES)
def test_snake_beta_forward_backward(shape, dtype, shapes):
    check_beta(shape, dtype, ALPHA_SHAPES[shapes[0]], ALPHA_SHAPES[shapes[1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_snake_beta_extreme_parameters(dtype):
    """Tiny α with a large divisor (SnakeBeta's log-scale parameters far below 0), and |α·x| ≫ π
    with a tiny divisor."""
    shapes = ALPHA_SHAPES["alpha(C,)"], ALPHA_SHAPES["alpha(C,)"]
    check_beta((2, 4, 700), dtype, *shapes, alpha_range=(1e-4, 1e-3), inv_range=(50.0, 500.0))
    check_beta((2, 4, 700), dtype, *shapes, x_std=30.0, alpha_range=(2.0, 8.0),
               inv_range=(1e-3, 1e-2))


@pytest.mark.parametrize("grad_of", ["x", "alpha", "inv_beta"])
def test_snake_beta_partial_gradients(grad_of):
    """Only one input needs a gradient: the others come back None."""
    x, alpha, inv, dy = make_beta_inputs((2, 3, 600), torch.float32, ALPHA_SHAPES["alpha(C,)"],
                                         ALPHA_SHAPES["alpha(C,)"])
    leaves = {"x": x.clone(), "alpha": alpha.clone(), "inv_beta": inv.clone()}
    leaves[grad_of].requires_grad_(True)
    snake_beta(leaves["x"], leaves["alpha"], leaves["inv_beta"]).backward(dy)
    ref = dict(zip(("x", "alpha", "inv_beta"),
                   run_beta(snake_beta_ref, x, alpha, inv, dy, cast=torch.float64)[1:]))
    for name, t in leaves.items():
        if name == grad_of:
            torch.testing.assert_close(t.grad.double(), ref[name], rtol=1e-5, atol=1e-4)
        else:
            assert t.grad is None


def test_snake_beta_deterministic_and_opcheck():
    x, alpha, inv, dy = make_beta_inputs((2, 3, 9000), torch.float32, ALPHA_SHAPES["alpha(C,)"],
                                         ALPHA_SHAPES["alpha(1,C,1)"])
    first = sk.snake_beta_backward(dy, x, alpha, inv)
    second = sk.snake_beta_backward(dy, x, alpha, inv)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    x, dy = x[..., :100], dy[..., :100]  # opcheck runs each op many times: keep it short
    P = sk.PARAM_INV_BETA
    torch.library.opcheck(torch.ops.fastaudio.snake_beta_fwd, (x, alpha, inv, P))
    torch.library.opcheck(torch.ops.fastaudio.snake_beta_bwd, (dy, x, alpha, inv, P, True, True, True))
    torch.library.opcheck(torch.ops.fastaudio.snake_beta_bwd,
                          (dy, x, alpha, inv, sk.PARAM_LOG, False, True, False))


def test_snake_beta_unsupported_reasons():
    x, a = torch.randn(2, 4, 10, device=DEVICE), torch.ones(4, device=DEVICE)
    assert snake_beta_unsupported_reason(x, a, a) is None
    cases = [
        ((x, a, torch.ones(3, device=DEVICE)), "inv_beta must be (4,) or (1, 4, 1)"),
        ((x, a, a.double()), "dtype torch.float64 is not supported"),
        ((x, torch.ones(5, device=DEVICE), a), "alpha must be (4,) or (1, 4, 1)"),
        ((x, a, a.to("meta")), "tensor on meta"),
    ]
    for args, expected in cases:
        reason = snake_beta_unsupported_reason(*args)
        assert reason is not None and expected in reason, (expected, reason)
        with pytest.raises(KernelInputError, match="snake_beta: "):
            snake_beta(*args)


def _reference_snake_beta(x, alpha, beta):
    """stable-audio-tools' SnakeBeta forward (log scale), written out in fp64."""
    a, b = alpha.double().exp().reshape(1, -1, 1), beta.double().exp().reshape(1, -1, 1)
    return x.double() + (1.0 / (b + 1e-9)) * torch.sin(x.double() * a).pow(2)


@pytest.mark.parametrize("mode", ["triton", "torch"])
def test_snake_beta_module_dispatch_and_log_scale_gradients(mode):
    """SnakeBeta1d through the dispatcher: output and gradients to x and the log-scale α, β
    against fp64, on each path, and the path taken is recorded."""
    from fastaudio.nn import dispatch
    from fastaudio.nn.snake import SnakeBeta1d
    dispatch.set_kernel_mode(mode)
    g = torch.Generator().manual_seed(3)
    act = SnakeBeta1d(5).to(DEVICE)
    with torch.no_grad():
        act.alpha.copy_((torch.rand(5, generator=g) * 2 - 1).to(DEVICE))
        act.beta.copy_((torch.rand(5, generator=g) * 2 - 1).to(DEVICE))
    x = (torch.randn(2, 5, 777, generator=g) * 2).to(DEVICE).requires_grad_()
    dy = torch.randn(2, 5, 777, generator=g).to(DEVICE)
    y = act(x)
    grads = torch.autograd.grad(y, [x, act.alpha, act.beta], dy)
    leaves = [t.detach().double().requires_grad_() for t in (x, act.alpha, act.beta)]
    y_ref = _reference_snake_beta(*leaves)
    grads_ref = torch.autograd.grad(y_ref, leaves, dy.double())
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-6, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert dispatch.path_counts[("snake_beta", mode)] >= 1


@pytest.mark.parametrize("param", ["beta", "log"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_snake_beta_raw_parameters(param, dtype):
    """The kernel takes β (or log α, log β) as stored and applies the reciprocal, the
    exponentials and their chain rule itself: output and gradients to the parameters as given,
    against fp64 (three-way rule)."""
    g = torch.Generator().manual_seed(7)
    C = 5
    x, _, dy = make_inputs((2, C, 900), dtype, ALPHA_SHAPES["alpha(C,)"], seed=7)
    if param == "log":
        p1, p2 = torch.rand(C, generator=g) * 2 - 1, torch.rand(C, generator=g) * 2 - 1
        mode = sk.PARAM_LOG
    else:
        p1, p2 = 0.2 + 2 * torch.rand(C, generator=g), 0.2 + 3 * torch.rand(C, generator=g)
        mode = sk.PARAM_BETA
    p1, p2 = p1.to(DEVICE, dtype), p2.to(DEVICE, dtype)

    def ref(x_, a_, b_, upcast=True):
        if param == "log":
            a_, b_ = a_.exp(), b_.exp()
        return snake_beta_ref(x_, a_, (b_ + 1e-9).reciprocal(), upcast=upcast)

    out = run_beta(lambda *t: snake_beta(*t, param=mode), x, p1, p2, dy)
    want = run_beta(ref, x, p1, p2, dy, cast=torch.float64)
    lowp = run_beta(lambda *t: ref(*t, upcast=False), x, p1, p2, dy)
    for name, o, r, lp in zip(("y", "dx", "dp1", "dp2"), out, want, lowp):
        assert_3way(o, r, lp, dtype, name)


# ------------------------------------------------------------------------------------------------
# Launch census and host path
# ------------------------------------------------------------------------------------------------
from launch_trace import ALLOCATIONS, census as _census  # noqa: E402


def census(fn):
    return _census(fn, sk)


@pytest.mark.parametrize("variant", ["snake", "snake_beta_log", "snake_beta_linear"])
def test_one_launch_each_way_through_the_layers(variant):
    """Snake1d and SnakeBeta1d (log-scale or not) through the dispatcher: one launch forward,
    one backward, and no ATen op but allocations in either (no exp / reciprocal / sum around the
    kernels: their per-channel work is done inside)."""
    from fastaudio.nn import dispatch
    from fastaudio.nn.snake import Snake1d, SnakeBeta1d
    dispatch.set_kernel_mode("triton")
    torch.manual_seed(0)
    layer = (Snake1d(6) if variant == "snake" else
             SnakeBeta1d(6, alpha_logscale=variant == "snake_beta_log")).to(DEVICE)
    x = (torch.randn(2, 6, 300) * 2).to(DEVICE).requires_grad_()
    y, log = census(lambda: layer(x))
    assert [n for k, n in log if k == "launch"] == ["_snake_fwd_kernel"]
    assert {n for k, n in log if k == "aten"} <= ALLOCATIONS, log
    _, log = census(lambda: y.backward(torch.ones_like(y)))
    assert [n for k, n in log if k == "launch"] == ["_snake_bwd_kernel"]
    between = [n for k, n in log if k == "aten"]
    # allocations (dx, the parameter gradients, the workspace) and autograd's own accumulation
    assert not {"aten.sum.dim_IntList", "aten.exp.default", "aten.reciprocal.default"} & set(between)
    with torch.no_grad():
        y2, log = census(lambda: layer(x))
    assert y2.grad_fn is None and [n for k, n in log if k == "launch"] == ["_snake_fwd_kernel"]
    aten = [n for k, n in log if k == "aten"]
    assert len(aten) == 1 and set(aten) <= ALLOCATIONS, aten


def test_arrival_counters_are_left_zeroed_and_dalpha_reduced_by_the_last_program(monkeypatch):
    """Several chunks and batch items per channel: the last-arriving program sums every partial
    (the interpreter runs programs in order; the GPU test below checks the concurrent case)."""
    monkeypatch.setattr(sk, "_BWD_CHUNK", 256)
    x, alpha, dy = make_inputs((3, 4, 1000), torch.float32, ALPHA_SHAPES["alpha(C,)"])
    _, dalpha = sk.snake_backward(dy, x, alpha)
    dalpha_ref = run(snake_ref, x, alpha, dy, cast=torch.float64)[2]
    torch.testing.assert_close(dalpha.double(), dalpha_ref, rtol=1e-5, atol=1e-4)
    assert all(int(b.abs().sum()) == 0 for b in sk._counters.values())


# The range reduction of the bf16/fp16 fast sine
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _sin2_probe_kernel(T_ptr, S2_ptr, SC_ptr, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < N
    t = tl.load(T_ptr + i, mask=m, other=0.0)
    s, c = sk._sin_cos(t, 2)
    tl.store(S2_ptr + i, s * s, mask=m)
    tl.store(SC_ptr + i, s * c, mask=m)


def _fast_sine_errors(t):
    s2 = torch.empty_like(t)
    sc = torch.empty_like(t)
    _sin2_probe_kernel[(triton.cdiv(t.numel(), 1024),)](t, s2, sc, t.numel(), BLOCK=1024)
    t64 = t.double()
    return ((s2.double() - torch.sin(t64) ** 2).abs().max().item(),
            (sc.double() - torch.sin(t64) * torch.cos(t64)).abs().max().item())


def test_fast_sine_range_reduction():
    """sin² and sin·cos of the reduced argument against torch's fp64 sin of the same fp32 value,
    over |t| up to 2e5 (α·x far beyond any Snake layer's), multiples of π/2 and their
    neighbours included. The interpreter evaluates it in numpy fp32 (no FMA contraction); the
    compiled accuracy is the GPU test below."""
    g = torch.Generator().manual_seed(0)
    near = torch.arange(-4000, 4001, dtype=torch.float64) * (torch.pi / 2)
    t = torch.cat([(torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1) * 2e5,
                   (torch.rand(20000, generator=g, dtype=torch.float64) * 2 - 1) * 50,
                   near, torch.nextafter(near.float(), torch.tensor(1e9)).double()]).float()
    err_s2, err_sc = _fast_sine_errors(t.to(DEVICE))
    assert err_s2 < 1e-6 and err_sc < 1e-6, (err_s2, err_sc)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="the compiled fast sine is judged on a GPU")
def test_fast_sine_accuracy_compiled_and_bf16_kernels_at_large_arguments():
    g = torch.Generator().manual_seed(1)
    t = ((torch.rand(1 << 20, generator=g) * 2 - 1) * 2e5).to(DEVICE)
    err_s2, err_sc = _fast_sine_errors(t)
    assert err_s2 < 2e-6 and err_sc < 2e-6, (err_s2, err_sc)
    check((2, 8, 50000), torch.bfloat16, ALPHA_SHAPES["alpha(C,)"], x_std=30.0,
          alpha_range=(2.0, 8.0))
    check((2, 8, 50000), torch.float16, ALPHA_SHAPES["alpha(C,)"], x_std=30.0,
          alpha_range=(2.0, 8.0))


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="concurrent programs need a GPU")
def test_last_arriver_reduction_is_deterministic_under_concurrency():
    """Hundreds of programs per channel finishing in any order: dα the same bits every time,
    equal to the fp64 reference, and the counters zeroed afterwards."""
    x, alpha, dy = make_inputs((3, 16, 1 << 20), torch.bfloat16, ALPHA_SHAPES["alpha(1,C,1)"])
    alpha = alpha.float()
    first = sk.snake_backward(dy, x, alpha)[1]
    for _ in range(5):
        assert torch.equal(sk.snake_backward(dy, x, alpha)[1], first)
    ref = run(snake_ref, x, alpha, dy, cast=torch.float64)[2]
    torch.testing.assert_close(first.double(), ref, rtol=1e-4, atol=1e-2)
    torch.cuda.synchronize()
    assert all(int(b.abs().sum()) == 0 for b in sk._counters.values())
