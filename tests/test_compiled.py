"""execution="compile" on a CPU: frozen weights, convs traced as conv2d (fastaudio/compiled.py).

Against the eager modules (the independent reference): the frozen graph computes what eager
computes, follows weights changed in place after compilation, and two models of the same class
compiled in one process each keep their own weights."""
import pytest
import torch

from fastaudio import build_model
from fastaudio.compiled import FrozenCompiled, compile_for_inference
from fastaudio.nn.conv import conv1d_torch, conv_transpose1d_torch, convs_as_2d


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, (2, 1), 1, 4),
                                                        (1, 9, 3, 7), (4, (3, 4), 1, 9)])
def test_conv_as_2d_matches_conv1d(stride, padding, dilation, k):
    g = torch.Generator().manual_seed(stride * 10 + k)
    x = torch.randn(2, 5, 37, generator=g, dtype=torch.float64)
    w = torch.randn(7, 5, k, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    expected = conv1d_torch(x, w, b, stride, padding, dilation)
    with convs_as_2d():
        got = conv1d_torch(x, w, b, stride, padding, dilation)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,padding", [(2, 1), (4, 0), (8, 4)])
def test_conv_transpose_as_2d_matches(stride, padding):
    g = torch.Generator().manual_seed(stride)
    x = torch.randn(2, 6, 11, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, 2 * stride, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    expected = torch.nn.functional.conv_transpose1d(x, w, b, stride, padding)
    with convs_as_2d():
        got = conv_transpose1d_torch(x, w, b, stride, padding)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _decoder(seed):
    model = build_model("tiny", seed=seed)
    model.vae.fold_weight_norm()
    return model.vae.decoder.eval().requires_grad_(False), model.config.vae.decoder.latent_dim


@pytest.mark.slow
@torch.no_grad()
def test_frozen_compile_matches_eager_and_follows_new_weights():
    torch._dynamo.reset()
    (a, latent_dim), (b, _) = _decoder(0), _decoder(1)
    z = torch.randn(1, latent_dim, 9)
    fa, fb = compile_for_inference(a), compile_for_inference(b)
    assert isinstance(fa, FrozenCompiled)
    ya, yb = fa(z), fb(z)  # the second model of the same class keeps its own weights
    torch.testing.assert_close(ya, a(z), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(yb, b(z), rtol=1e-4, atol=1e-5)
    assert (ya - yb).abs().max() > 1e-3
    a.load_state_dict(b.state_dict())  # in place: same addresses, new values
    # the weights really are frozen into the graph: without the wrapper's check it is wrong
    # (measured: neither the old nor the new weights' output - some stay baked in)
    with torch._inductor.config.patch(freezing=True), convs_as_2d():
        assert (fa._compiled(z) - b(z)).abs().max() > 1e-3
    torch.testing.assert_close(fa(z), b(z), rtol=1e-4, atol=1e-5)

    for p in a.parameters():  # changed in place again, then a *new* wrapper: dynamo's cache
        p.mul_(0.5)           # outlives wrappers, the record of what was frozen must too
    torch.testing.assert_close(FrozenCompiled(a)(z), a(z), rtol=1e-4, atol=1e-5)

    conv = next(m for m in a.modules() if isinstance(m, torch.nn.Conv1d))
    conv.bias = torch.nn.Parameter(conv.bias + 0.25)  # a parameter swapped for another
    torch.testing.assert_close(fa(z), a(z), rtol=1e-4, atol=1e-5)

    with torch.enable_grad():  # inference only: gradients are off inside, results unchanged
        out = fa(z.clone().requires_grad_(True))
    assert not out.requires_grad
    torch.testing.assert_close(out, a(z), rtol=1e-4, atol=1e-5)
