"""The U-Net: fidelity to stable-audio-tools' UNetCFG1d with the same weights, shapes, errors."""
import dataclasses
import math

import pytest
import torch

import reference_impl as R
from fastaudio.config import UNetConfig, preset
from fastaudio.models.unet import UNet1d, UNetInputError

CONFIGS = {
    "tiny": preset("tiny").unet,
    "no-attention-top-nearest": UNetConfig(
        in_channels=6, channels=32, multipliers=[1, 2, 1, 2], factors=[2, 1, 4],
        num_blocks=[1, 2, 1], attentions=[0, 1, 0, 2], attention_heads=4, attention_multiplier=2,
        resnet_groups=8, use_nearest_upsample=True, use_skip_scale=False,
        context_embedding_features=24, context_embedding_max_length=11),
    "odd-context": UNetConfig(
        in_channels=4, channels=64, multipliers=[1, 1, 1], factors=[4, 2], num_blocks=[1, 1],
        attentions=[1, 1, 1], attention_heads=4, attention_multiplier=3, resnet_groups=4,
        kernel_multiplier_downsample=4, context_embedding_features=40,
        context_embedding_max_length=9),
    # not SA1.0: the masked mean of the context also feeds the FiLM mapping (the small preset);
    # the reference's own `context_features` path with that mean as `features` is the reference
    "pooled-context": dataclasses.replace(preset("tiny").unet, use_pooled_context=True),
}


def _features(cfg: UNetConfig, ctx, mask):
    """The masked mean of the context, computed independently (float64), or None."""
    if not cfg.use_pooled_context:
        return None
    c = ctx.double()
    if mask is None:
        return c.mean(1).float()
    m = mask.double()[..., None]
    return ((c * m).sum(1) / m.sum(1)).float()


def _ref_call(ref, cfg, x, t, ctx, mask=None):
    kw = {} if mask is None else {"embedding_mask": mask}
    feats = _features(cfg, ctx, mask)
    if feats is not None:
        kw["features"] = feats
    return ref(x, t, embedding=ctx, **kw)


def _pair(cfg: UNetConfig):
    adp = R.adp()
    torch.manual_seed(0)
    ref = adp.UNetCFG1d(**R.unet_kwargs(cfg)).eval()
    with torch.no_grad():  # move every parameter away from its init (LayerNorm, GN affine …)
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = UNet1d(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_reference_unet(name):
    cfg = CONFIGS[name]
    ref, ours = _pair(cfg)
    mult = 1
    for f in cfg.factors:
        mult *= f
    b, length, n_ctx = 2, 3 * mult, cfg.context_embedding_max_length
    x = torch.randn(b, cfg.in_channels, length)
    t = torch.rand(b)
    ctx = torch.randn(b, n_ctx, cfg.context_embedding_features)
    mask = torch.ones(b, n_ctx, dtype=torch.bool)
    mask[0, n_ctx // 3: n_ctx - 2] = False  # ragged prompt mask; timing tokens kept
    with torch.no_grad():
        want = _ref_call(ref, cfg, x, t, ctx, mask)
        got = ours(x, t, ctx, mask)
        want_nomask = _ref_call(ref, cfg, x, t, ctx)
        got_nomask = ours(x, t, ctx)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    assert (got_nomask - want_nomask).abs().max() <= 1e-5 * want_nomask.abs().max()
    assert (want - want_nomask).abs().max() > 1e-3 * scale  # the mask mattered


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(CONFIGS) + ["bottleneck-only"])
@pytest.mark.parametrize("b,groups", [(1, 2), (2, 2), (2, 3)])
def test_shared_x_over_context_groups_equals_repeating_x(name, b, groups):
    """Guidance calls the U-Net with x once and k stacked contexts; the layers before the first
    cross-attention run once. The result must be the reference U-Net's on x repeated k times."""
    cfg = CONFIGS.get(name) or dataclasses.replace(CONFIGS["tiny"], attentions=[0, 0, 0, 0, 1])
    ref, ours = _pair(cfg)
    length, n_ctx = 2 * math.prod(cfg.factors), cfg.context_embedding_max_length
    x, t = torch.randn(b, cfg.in_channels, length), torch.rand(b)
    ctx = torch.randn(b * groups, n_ctx, cfg.context_embedding_features)
    mask = torch.rand(b * groups, n_ctx) > 0.3
    mask[:, -2:] = True
    with torch.no_grad():
        want = _ref_call(ref, cfg, x.repeat(groups, 1, 1), t.repeat(groups), ctx, mask)
        got = ours(x, t, ctx, mask)
        # the sampler's path: cross-attention keys/values of the context computed beforehand
        got_kv = ours(x, t, ctx, mask, ours.context_keys_values(ctx))
    assert got.shape == want.shape == (b * groups, cfg.in_channels, length)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (got_kv - want).abs().max() <= 1e-5 * want.abs().max()
    assert (want[:b] - want[-b:]).abs().max() > 1e-3 * want.abs().max()  # the groups differ


@pytest.mark.reference
def test_null_context_is_the_reference_fixed_embedding():
    cfg = CONFIGS["tiny"]
    ref, ours = _pair(cfg)
    ctx = torch.randn(3, 79, cfg.context_embedding_features)
    torch.testing.assert_close(ours.null_context(3, 79), ref.fixed_embedding(ctx))


@pytest.mark.parametrize("length", [16, 48, 112])
def test_any_length_multiple_of_16(length):
    cfg = preset("tiny").unet
    unet = UNet1d(cfg).eval()
    x = torch.randn(1, cfg.in_channels, length)
    with torch.no_grad():
        v = unet(x, torch.tensor([0.3]), unet.null_context(1, 79))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_bad_inputs_are_named():
    cfg = preset("tiny").unet
    unet = UNet1d(cfg).eval()
    ctx = unet.null_context(1, 79)
    with pytest.raises(UNetInputError, match="multiple of 16"):
        unet(torch.randn(1, cfg.in_channels, 40), torch.tensor([0.5]), ctx)
    with pytest.raises(UNetInputError, match="x must be"):
        unet(torch.randn(1, cfg.in_channels + 1, 32), torch.tensor([0.5]), ctx)
    with pytest.raises(UNetInputError, match="t must be"):
        unet(torch.randn(1, cfg.in_channels, 32), torch.rand(3), ctx)
    with pytest.raises(UNetInputError, match="context must be"):
        unet(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), torch.randn(1, 79, 5))
    with pytest.raises(UNetInputError, match="context must be"):  # 3 contexts over 2 items
        unet(torch.randn(2, cfg.in_channels, 32), torch.rand(2), unet.null_context(3, 79))
    with pytest.raises(UNetInputError, match="context is required"):
        unet(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), None)
    kv = unet.context_keys_values(ctx)
    assert kv.shape == (1, 79, unet.context_kv_features)
    with pytest.raises(UNetInputError, match="context_kv must be"):  # another context's length
        unet(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), ctx, None, kv[:, :40])
    with pytest.raises(UNetInputError, match="context_kv must be"):  # one layer's columns missing
        unet(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), ctx, None, kv[..., 8:])
    with pytest.raises(UNetInputError, match="context_kv is torch.float64"):
        unet(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), ctx, None, kv.double())
    no_cross = UNet1d(dataclasses.replace(cfg, attentions=[0] * len(cfg.attentions))).eval()
    with pytest.raises(UNetInputError, match="no cross-attention layers"):
        no_cross.context_keys_values(ctx)
    with pytest.raises(UNetInputError, match="without cross-attention layers"):
        no_cross(torch.randn(1, cfg.in_channels, 32), torch.tensor([0.5]), ctx, None, kv)


def test_pooled_context_starts_at_zero_and_ignores_masked_tokens():
    """zero_pooled_context() makes the pooled-context U-Net equal the same weights without the
    path (what fine-tuning an older model starts from); masked tokens never reach the mapping."""
    cfg = CONFIGS["pooled-context"]
    torch.manual_seed(1)
    pooled = UNet1d(cfg).eval()
    plain = UNet1d(dataclasses.replace(cfg, use_pooled_context=False)).eval()
    missing, unexpected = plain.load_state_dict(pooled.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["to_features.0.bias", "to_features.0.weight"]
    x, t = torch.randn(2, cfg.in_channels, 32), torch.rand(2)
    ctx = torch.randn(2, 79, cfg.context_embedding_features)
    mask = torch.rand(2, 79) > 0.4
    mask[:, -2:] = True
    with torch.no_grad():
        live = pooled(x, t, ctx, mask)
        assert (live - plain(x, t, ctx, mask)).abs().max() > 1e-4 * live.abs().max()
        pooled.zero_pooled_context()
        torch.testing.assert_close(pooled(x, t, ctx, mask), plain(x, t, ctx, mask))
        pooled.load_state_dict({**pooled.state_dict(), "to_features.0.weight": torch.randn_like(
            pooled.to_features[0].weight)})
        changed = ctx.clone()
        changed[~mask] = 50.0
        unmasked_only = pooled(x, t, ctx, mask)
        torch.testing.assert_close(pooled(x, t, changed, mask), unmasked_only)


def test_pooled_context_needs_a_time_mapping():
    from fastaudio.config import ConfigError
    cfg = preset("tiny")
    cfg.unet.use_pooled_context, cfg.unet.use_context_time = True, False
    with pytest.raises(ConfigError, match="use_pooled_context"):
        cfg.validate()
