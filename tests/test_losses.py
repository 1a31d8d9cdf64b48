"""Training losses: STFT losses against auraloss, the discriminator against stable-audio-tools' and
encodec's, hinge / feature-matching values by hand, and the diffusion v-loss with stub models."""
import math
import os
import sys
import types

import pytest
import torch
from torch import nn

import reference_impl as R
from fastaudio.errors import FastAudioError
from fastaudio.train.discriminator import (EncodecDiscriminator, DiscriminatorInputError,
                                           feature_matching_loss, hinge_discriminator_loss,
                                           hinge_generator_loss)
from fastaudio.train.losses import (REFERENCE_SPECTRAL_CONFIG, LossInputError,
                                    MultiResolutionSTFTLoss, STFTLoss, SumAndDifferenceSTFTLoss,
                                    VAEReconstructionLoss, a_weighting_fir, diffusion_loss)

SR = 44100
CFG = REFERENCE_SPECTRAL_CONFIG["config"]
DISC = dict(filters=32, n_ffts=[2048, 1024, 512, 256, 128], hop_lengths=[512, 256, 128, 64, 32],
            win_lengths=[2048, 1024, 512, 256, 128])
SMALL_DISC = dict(DISC, filters=8)  # same layout, 16× fewer MACs, for the tests of behaviour
N_DISC = 2048 + 512  # two frames at the largest scale: short, to keep CPU tests fast


def _close(ours, ref, rel=1e-5):
    ours, ref = (float(v.detach()) if torch.is_tensor(v) else float(v) for v in (ours, ref))
    assert abs(ours - ref) <= rel * abs(ref) + 1e-7, (ours, ref)


def _stereo_pair(batch=2, n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    reals = torch.randn(batch, 2, n, generator=g) * 0.3
    decoded = reals + 0.2 * torch.randn(batch, 2, n, generator=g)
    return decoded, reals


# ---------------------------------------------------------------------------------------------
# Reference modules that only this file uses (loaded like those in reference_impl)
# ---------------------------------------------------------------------------------------------

class _SpectrogramStub(nn.Module):
    """torchaudio.transforms.Spectrogram for power=None, as torchaudio.functional.spectrogram
    computes it: torch.stft on (-1, T) rows, then ÷ sqrt(Σ w²) when normalized=True."""

    def __init__(self, n_fft, hop_length, win_length, window_fn, normalized, center, pad_mode, power):
        super().__init__()
        assert power is None and not center
        self.n_fft, self.hop_length, self.win_length, self.normalized = n_fft, hop_length, win_length, normalized
        self.register_buffer("window", window_fn(win_length))

    def forward(self, x):
        shape = x.shape
        spec = torch.stft(x.reshape(-1, shape[-1]), self.n_fft, self.hop_length, self.win_length,
                          self.window, center=False, return_complex=True)
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        return spec / self.window.pow(2).sum().sqrt() if self.normalized else spec


def _with_torchaudio_stub(load):
    """Run ``load`` with a stub torchaudio importable, then take the stub away again so other
    tests never see a fake torchaudio."""
    stub = types.ModuleType("torchaudio")
    stub.transforms = types.SimpleNamespace(Spectrogram=_SpectrogramStub)
    saved = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = stub
    try:
        return load()
    finally:
        if saved is None:
            sys.modules.pop("torchaudio", None)
        else:
            sys.modules["torchaudio"] = saved


_refs: dict = {}


def _sat_auraloss():
    """stable-audio-tools 0.0.19's vendored auraloss copy (per-item spectral convergence)."""
    if "sat_auraloss" not in _refs:
        R.auraloss()  # scipy present
        root = R._package_dir("stable_audio_tools")
        if root is None:
            R._missing("stable-audio-tools is not installed (pip install --no-deps stable-audio-tools)")
        _refs["sat_auraloss"] = R._load_file(
            "_ref_sat_auraloss", os.path.join(root, "training", "losses", "auraloss.py"))
    return _refs["sat_auraloss"]


def _sat_discriminators():
    """stable_audio_tools.models.discriminators (0.0.19) with its vendored encodec.py."""
    if "sat_disc" not in _refs:
        root = R._package_dir("stable_audio_tools")
        if root is None:
            R._missing("stable-audio-tools is not installed (pip install --no-deps stable-audio-tools)")
        pkg = types.ModuleType("_ref_sat_models")
        pkg.__path__ = [os.path.join(root, "models")]
        sys.modules["_ref_sat_models"] = pkg
        # discriminators.py imports `checkpoint` from the (heavy) autoencoders module.
        ae = types.ModuleType("_ref_sat_models.autoencoders")
        ae.checkpoint = lambda f, *a, **k: torch.utils.checkpoint.checkpoint(f, *a, use_reentrant=False, **k)
        sys.modules["_ref_sat_models.autoencoders"] = ae
        d = os.path.join(root, "models")
        _with_torchaudio_stub(lambda: R._load_file("_ref_sat_models.encodec", os.path.join(d, "encodec.py")))
        _refs["sat_disc"] = R._load_file("_ref_sat_models.discriminators", os.path.join(d, "discriminators.py"))
    return _refs["sat_disc"]


def _encodec_msstftd():
    """encodec 0.1.1's msstftd (what stable-audio-tools ≤ 0.0.16, hence SA1.0, trained with)."""
    if "encodec" not in _refs:
        root = R._package_dir("encodec")
        if root is None or not os.path.exists(os.path.join(root, "msstftd.py")):
            R._missing("encodec is not installed (pip install --no-deps encodec==0.1.1)")
        pkg = types.ModuleType("_ref_encodec")  # skip encodec/__init__ (it imports torchaudio)
        pkg.__path__ = [root]
        sys.modules["_ref_encodec"] = pkg
        _refs["encodec"] = _with_torchaudio_stub(
            lambda: R._load_file("_ref_encodec.msstftd", os.path.join(root, "msstftd.py")))
    return _refs["encodec"]


# ---------------------------------------------------------------------------------------------
# STFT losses
# ---------------------------------------------------------------------------------------------

@pytest.mark.reference
def test_a_weighting_taps_are_auralosses():
    ref = R.auraloss().perceptual.FIRFilter(filter_type="aw", fs=SR).fir.weight.data.view(-1)
    assert torch.equal(a_weighting_fir(SR), ref)


STFT_CASES = {
    "single-aw": ("STFTLoss", dict(fft_size=2048, hop_size=512, win_length=2048, sample_rate=SR,
                                   perceptual_weighting=True)),
    "single-lin-phase-short-window": ("STFTLoss", dict(fft_size=512, hop_size=100, win_length=300,
                                                       w_lin_mag=0.5, w_phs=0.25)),
    "single-sum-L2": ("STFTLoss", dict(fft_size=256, hop_size=64, win_length=256, reduction="sum",
                                       mag_distance="L2")),
    "mr-aw": ("MultiResolutionSTFTLoss", dict(sample_rate=SR, **CFG)),
    "mr-plain": ("MultiResolutionSTFTLoss", dict(CFG, perceptual_weighting=False)),
    "sd-aw": ("SumAndDifferenceSTFTLoss", dict(sample_rate=SR, **CFG)),
    "sd-weighted": ("SumAndDifferenceSTFTLoss", dict(fft_sizes=[512, 64], hop_sizes=[128, 16],
                                                     win_lengths=[512, 64], w_sum=0.3, w_diff=2.0)),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(STFT_CASES))
def test_stft_losses_match_auraloss(case):
    name, kwargs = STFT_CASES[case]
    ref = getattr(R.auraloss().freq, name)(**kwargs)
    ours = {"STFTLoss": STFTLoss, "MultiResolutionSTFTLoss": MultiResolutionSTFTLoss,
            "SumAndDifferenceSTFTLoss": SumAndDifferenceSTFTLoss}[name](**kwargs)
    x, y = _stereo_pair()
    _close(ours(x, y), ref(x, y))
    _close(ours(y, x), ref(y, x))  # not symmetric: spectral convergence normalises by the target


@pytest.mark.reference
@pytest.mark.parametrize("name", ["MultiResolutionSTFTLoss", "SumAndDifferenceSTFTLoss"])
def test_per_item_spectral_convergence_matches_stable_audio_tools(name):
    ref = getattr(_sat_auraloss(), name)(sample_rate=SR, **CFG)
    ours = {"MultiResolutionSTFTLoss": MultiResolutionSTFTLoss,
            "SumAndDifferenceSTFTLoss": SumAndDifferenceSTFTLoss}[name](sample_rate=SR, per_item_sc=True, **CFG)
    x, y = _stereo_pair()
    y[0] *= 4  # items of different loudness: per-item and whole-batch SC now differ
    _close(ours(x, y), ref(x, y))


@pytest.mark.reference
@pytest.mark.parametrize("convention", ["sa1.0", "sat-0.0.19"])
def test_vae_reconstruction_loss_combines_like_stable_audio_tools(convention):
    module = R.auraloss().freq if convention == "sa1.0" else _sat_auraloss()
    sd = module.SumAndDifferenceSTFTLoss(sample_rate=SR, **CFG)
    lr = module.MultiResolutionSTFTLoss(sample_rate=SR, **CFG)
    decoded, reals = _stereo_pair()
    decoded[1] *= 3
    # AutoencoderTrainingWrapper: every AuralossLoss is called as loss(reals, decoded), with
    # weights w (sum and difference), w/2 (left), w/2 (right).
    ref = {"mrstft_loss": sd(reals, decoded), "stft_loss_left": lr(reals[:, 0:1], decoded[:, 0:1]) / 2,
           "stft_loss_right": lr(reals[:, 1:2], decoded[:, 1:2]) / 2}
    for weight in (1.0, 0.5):
        config = dict(REFERENCE_SPECTRAL_CONFIG, weights={"mrstft": weight})
        total, parts = VAEReconstructionLoss(SR, config, convention=convention)(decoded, reals)
        assert sorted(parts) == sorted(ref)
        for k in ref:
            _close(parts[k], weight * ref[k])
        _close(total, weight * sum(ref.values()))


def test_stft_losses_are_zero_for_identical_inputs():
    x, _ = _stereo_pair(batch=2, n=4096)
    assert float(MultiResolutionSTFTLoss(sample_rate=SR, **CFG)(x, x)) == 0.0
    total, parts = VAEReconstructionLoss(SR)(x, x)
    assert float(total) == 0.0 and all(float(v) == 0.0 for v in parts.values())


@pytest.mark.parametrize("a", [2.0, 0.5])
def test_scaled_input_gives_analytic_loss(a):
    """input = a·target: SC = |1 − a| and the log-magnitude distance = |log a| at every resolution."""
    _, y = _stereo_pair(batch=2, n=4096)
    loss = MultiResolutionSTFTLoss(sample_rate=SR, **CFG)(a * y, y)
    assert float(loss) == pytest.approx(abs(1 - a) + abs(math.log(a)), rel=1e-3)
    sc_only = STFTLoss(512, 128, 512, w_log_mag=0.0)
    # Spectral convergence is normalised by the target: swapping the arguments changes it.
    assert float(sc_only(2 * y, y)) == pytest.approx(1.0, rel=1e-4)
    assert float(sc_only(y, 2 * y)) == pytest.approx(0.5, rel=1e-4)


def test_spectral_loss_gradients_flow():
    decoded, reals = _stereo_pair(batch=2, n=4096)
    decoded.requires_grad_(True)
    total, _ = VAEReconstructionLoss(SR)(decoded, reals)
    total.backward()
    assert torch.isfinite(decoded.grad).all() and decoded.grad.abs().sum() > 0


def test_spectral_loss_errors_are_clear():
    x, y = _stereo_pair(batch=1, n=4096)
    with pytest.raises(LossInputError, match="one shape"):
        STFTLoss()(x, y[..., :-1])
    with pytest.raises(LossInputError, match="too short"):
        STFTLoss(fft_size=2048, hop_size=512, win_length=2048)(x[..., :1000], y[..., :1000])
    with pytest.raises(LossInputError, match="sample_rate"):
        STFTLoss(perceptual_weighting=True)
    with pytest.raises(LossInputError, match="scale"):
        VAEReconstructionLoss(SR, dict(REFERENCE_SPECTRAL_CONFIG, config=dict(CFG, scale="mel")))
    with pytest.raises(LossInputError, match="convention"):
        VAEReconstructionLoss(SR, convention="auraloss")
    with pytest.raises(FastAudioError, match="mono or stereo"):
        VAEReconstructionLoss(SR)(torch.zeros(1, 3, 4096), torch.zeros(1, 3, 4096))


# ---------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("convention", ["sa1.0", "sat-0.0.19"])
def test_discriminator_shapes(convention):
    n = N_DISC
    disc = EncodecDiscriminator(in_channels=2, convention=convention, **SMALL_DISC)
    logits, fmaps = disc(torch.randn(2, 2, n))
    assert len(logits) == len(fmaps) == 5
    for n_fft, hop, logit, fmap in zip(DISC["n_ffts"], DISC["hop_lengths"], logits, fmaps):
        frames, bins = 1 + (n - n_fft) // hop, n_fft // 2 + 1
        assert len(fmap) == 5 and all(f.shape[:3] == (2, 8, frames) for f in fmap)
        assert fmap[0].shape[-1] == bins
        if convention == "sa1.0":  # three stride-2 convs along frequency (k 9, padding 4)
            for _ in range(3):
                bins = (bins - 1) // 2 + 1
        assert fmap[-1].shape[-1] == bins and logit.shape == (2, 1, frames, bins)


def _randomised(module):
    with torch.no_grad():  # away from init, so weight_g ≠ ‖weight_v‖ and biases ≠ 0 matter
        for p in module.parameters():
            p.mul_(1 + 0.3 * torch.rand_like(p)).add_(0.01 * torch.randn_like(p))
    return module


@pytest.mark.reference
def test_discriminator_loads_stable_audio_tools_state_dict():
    torch.manual_seed(0)
    ref = _randomised(_sat_discriminators().EncodecDiscriminator(in_channels=2, **DISC))
    ours = EncodecDiscriminator(in_channels=2, convention="sat-0.0.19", **DISC)
    ours.load_state_dict(ref.state_dict(), strict=True)
    reals, fakes = torch.randn(1, 2, N_DISC), torch.randn(1, 2, N_DISC)
    with torch.no_grad():
        (rl, rf), (ol, of) = ref(reals), ours(reals)
        for a, b in zip(rl + sum(rf, []), ol + sum(of, [])):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        for a, b in zip(ref.loss(reals, fakes), ours.loss(reals, fakes)):
            _close(b, a)


@pytest.mark.reference
def test_discriminator_loads_encodec_state_dict_and_sums_scales():
    torch.manual_seed(0)
    ref = _randomised(_encodec_msstftd().MultiScaleSTFTDiscriminator(in_channels=2, **DISC))
    ours = EncodecDiscriminator(in_channels=2, convention="sa1.0", **DISC)
    ours.discriminators.load_state_dict(ref.state_dict(), strict=True)
    reals, fakes = torch.randn(1, 2, N_DISC), torch.randn(1, 2, N_DISC)
    with torch.no_grad():
        (rl, rf), (ol, of) = ref(reals), ours(reals)
        for a, b in zip(rl + sum(rf, []), ol + sum(of, [])):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        # stable-audio-tools ≤ 0.0.16's EncodecDiscriminator.loss: per-scale terms summed.
        (lr_, fr), (lf, ff) = ref(reals), ref(fakes)
        dis = sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(lr_, lf))
        adv = sum(-f.mean() for f in lf)
        fm = sum(sum((a - b).abs().mean() for a, b in zip(sr, sf)) / len(sr) for sr, sf in zip(fr, ff))
        for a, b in zip((dis, adv, fm), ours.loss(reals, fakes)):
            _close(b, a)


def test_hinge_and_feature_matching_by_hand():
    real, fake = torch.tensor([0.5, 2.0, -1.0]), torch.tensor([-2.0, 0.0, 0.5])
    # relu(1 − real) = [0.5, 0, 2] → 5/6; relu(1 + fake) = [0, 1, 1.5] → 5/6
    assert float(hinge_discriminator_loss(real, fake)) == pytest.approx(5 / 3)
    assert float(hinge_generator_loss(fake)) == pytest.approx(0.5)
    fm = feature_matching_loss([torch.ones(2, 2), torch.zeros(3)], [torch.zeros(2, 2), torch.full((3,), 2.0)])
    assert float(fm) == pytest.approx((1.0 + 2.0) / 2)


@pytest.mark.parametrize("convention", ["sa1.0", "sat-0.0.19"])
def test_discriminator_loss_identical_inputs_and_gradients(convention):
    torch.manual_seed(0)
    disc = EncodecDiscriminator(in_channels=2, convention=convention, filters=8, n_ffts=[512, 128],
                                hop_lengths=[128, 32], win_lengths=[512, 128])
    x = torch.randn(1, 2, 1024, requires_grad=True)
    dis, adv, fm = disc.loss(x, x)
    assert float(fm.detach()) == 0.0
    logits, _ = disc(x)
    scale = 1 / len(logits) if convention == "sat-0.0.19" else 1.0
    _close(adv, scale * sum(-l.mean() for l in logits))
    (dis + adv).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in disc.parameters())


def test_discriminator_errors():
    with pytest.raises(DiscriminatorInputError, match="convention"):
        EncodecDiscriminator(convention="encodec")
    disc = EncodecDiscriminator(in_channels=2, **SMALL_DISC)
    with pytest.raises(DiscriminatorInputError, match="fewer than one STFT frame"):
        disc(torch.zeros(1, 2, 1000))
    with pytest.raises(DiscriminatorInputError, match=r"\(batch, 2, samples\)"):
        disc(torch.zeros(1, 1, N_DISC))


# ---------------------------------------------------------------------------------------------
# Diffusion loss
# ---------------------------------------------------------------------------------------------

class _Recorder(nn.Module):
    """A 'perfect' v-model for known clean latents x0: v = (α·x_t − x0)/σ (= α·ε − σ·x0), plus a
    null context it can recognise; it records what it was called with."""

    def __init__(self, x0, tokens=5, features=4):
        super().__init__()
        self.x0 = x0
        self.null = nn.Parameter(torch.full((tokens, features), -7.0, dtype=x0.dtype))
        self.calls = []

    def null_context(self, batch, length):
        return self.null[:length].unsqueeze(0).expand(batch, -1, -1)

    def forward(self, x, t, context=None, context_mask=None):
        self.calls.append(dict(x=x, t=t, context=context, context_mask=context_mask))
        t = t.to(x.dtype)
        alpha, sigma = torch.cos(t * math.pi / 2)[:, None, None], torch.sin(t * math.pi / 2)[:, None, None]
        return (alpha * x - self.x0) / sigma


def _latents(b=4, c=3, n=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, c, n, generator=g, dtype=dtype), torch.randn(b, 5, 4, generator=g, dtype=dtype),
            torch.rand(b, 5, generator=g) > 0.3)


def test_diffusion_loss_is_zero_for_the_true_v():
    x0, ctx, mask = _latents()
    model = _Recorder(x0)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    loss, info = diffusion_loss(model, x0, ctx, mask, t=t, noise=noise, cfg_dropout=0.0)
    assert float(loss) < 1e-20
    torch.testing.assert_close(info["t"], t)
    call = model.calls[-1]
    td = t.double()
    alpha, sigma = torch.cos(td * math.pi / 2)[:, None, None], torch.sin(td * math.pi / 2)[:, None, None]
    torch.testing.assert_close(call["x"], alpha * x0 + sigma * noise)
    # a wrong prediction gives exactly its MSE
    loss, _ = diffusion_loss(lambda x, t, **kw: model(x, t, **kw) + 0.5, x0, ctx, mask, model.null_context,
                             t=t, noise=noise, cfg_dropout=0.0)
    assert float(loss) == pytest.approx(0.25)


@pytest.mark.parametrize("p, expect", [(1.0, "all"), (0.0, "none"), (0.5, "some")])
def test_cfg_dropout_routes_to_the_null_context(p, expect):
    x0, ctx, mask = _latents(b=16)
    model = _Recorder(x0)
    _, info = diffusion_loss(model, x0, ctx, mask, generator=torch.Generator().manual_seed(3), cfg_dropout=p)
    seen = model.calls[-1]["context"]
    is_null = (seen == -7.0).flatten(1).all(1)
    is_orig = (seen == ctx).flatten(1).all(1)
    assert torch.equal(is_null, info["cfg_dropped"]) and torch.equal(is_orig, ~info["cfg_dropped"])
    n = int(is_null.sum())
    assert {"all": n == 16, "none": n == 0, "some": 0 < n < 16}[expect]
    assert model.calls[-1]["context_mask"] is mask  # the reference keeps the mask for dropped items


def test_diffusion_loss_draws_reproducibly_from_the_generator():
    x0, ctx, mask = _latents()
    model = _Recorder(x0)
    runs = [diffusion_loss(model, x0, ctx, mask, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert float(runs[0][0]) == float(runs[1][0])
    t = runs[0][1]["t"]
    assert t.shape == (4,) and bool(((t >= 0) & (t < 1)).all())
    assert torch.equal(model.calls[0]["x"], model.calls[1]["x"])


def test_diffusion_loss_padding_mask_averages_real_frames_only():
    x0, ctx, mask = _latents(b=2, n=8)
    model = _Recorder(x0)
    pad = torch.tensor([[True] * 8, [True] * 3 + [False] * 5])
    off = torch.zeros_like(x0)
    off[1, :, 3:] = 100.0  # errors only in the padding of item 1
    off[0] = 1.0
    loss, info = diffusion_loss(lambda x, t, **kw: model(x, t, **kw) + off, x0, ctx, mask,
                                model.null_context, t=torch.tensor([0.2, 0.7]),
                                cfg_dropout=0.0, padding_mask=pad)
    # 24 real elements of item 0 with error 1, 9 of item 1 with error 0
    assert float(loss) == pytest.approx(24 / 33)
    torch.testing.assert_close(info["mse_per_item"], torch.tensor([1.0, 0.0], dtype=torch.float32))


def test_diffusion_loss_gradients_reach_model_and_null_context():
    torch.manual_seed(0)
    x0 = torch.randn(3, 4, 8)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(4, 4, 3, padding=1)
            self.proj = nn.Linear(6, 4)
            self.null = nn.Parameter(torch.randn(2, 6))

        def null_context(self, batch, length):
            return self.null[:length].unsqueeze(0).expand(batch, -1, -1)

        def forward(self, x, t, context=None, context_mask=None):
            return self.conv(x) * t[:, None, None] + self.proj(context.mean(1)).unsqueeze(-1)

    model = Tiny()
    ctx = torch.randn(3, 2, 6, requires_grad=True)
    loss, _ = diffusion_loss(model, x0, ctx, None, generator=torch.Generator().manual_seed(0), cfg_dropout=1.0)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert ctx.grad is None or ctx.grad.abs().sum() == 0  # every item used the null context


def test_diffusion_loss_errors():
    x0, ctx, mask = _latents()
    model = _Recorder(x0)
    with pytest.raises(LossInputError, match="cfg_dropout"):
        diffusion_loss(model, x0, ctx, mask, cfg_dropout=1.5)
    with pytest.raises(LossInputError, match="t must be"):
        diffusion_loss(model, x0, ctx, mask, t=torch.rand(3))
    with pytest.raises(LossInputError, match="padding_mask"):
        diffusion_loss(model, x0, ctx, mask, padding_mask=torch.ones(4, 3, dtype=torch.bool))


@pytest.mark.reference
def test_training_config_gives_sa10s_loss_or_an_unweighted_one_with_larger_windows():
    """vae.perceptual_weighting / vae.fft_sizes: the defaults are SA1.0's loss entry exactly;
    the unweighted variant equals auraloss's MultiResolutionSTFTLoss with those settings."""
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_vae import spectral_loss_config
    default = spectral_loss_config(VAETrainConfig())
    assert default["config"] == REFERENCE_SPECTRAL_CONFIG["config"]
    assert default["weights"] == REFERENCE_SPECTRAL_CONFIG["weights"]
    sizes = [4096, 1024, 64]
    config = spectral_loss_config(VAETrainConfig(perceptual_weighting=False, fft_sizes=sizes))
    ref = R.auraloss().freq.MultiResolutionSTFTLoss(
        sample_rate=SR, fft_sizes=sizes, hop_sizes=[1024, 256, 16], win_lengths=sizes,
        perceptual_weighting=False)
    decoded, reals = _stereo_pair(n=9000, seed=3)
    _, parts = VAEReconstructionLoss(SR, config)(decoded, reals)
    _close(parts["stft_loss_left"], ref(reals[:, 0:1], decoded[:, 0:1]) / 2)
    _close(parts["stft_loss_right"], ref(reals[:, 1:2], decoded[:, 1:2]) / 2)


def test_a_weighting_hides_a_low_hum_that_the_unweighted_loss_sees():
    """Why a run without a discriminator drops the weighting: against a 2 kHz tone of the same
    level, a 50 Hz hum costs the A-weighted loss about a quarter as much, the unweighted loss
    about as much (measured: 0.26 and 1.07 of the tone's cost)."""
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_vae import spectral_loss_config
    g = torch.Generator().manual_seed(4)
    n = 16384
    t = torch.arange(n) / SR
    reals = 0.1 * torch.randn(2, 2, n, generator=g)

    def tone(hz):
        return 0.1 * math.sqrt(2) * torch.sin(2 * math.pi * hz * t)  # the noise's RMS
    weighted = VAEReconstructionLoss(SR, spectral_loss_config(VAETrainConfig()))
    plain = VAEReconstructionLoss(SR, spectral_loss_config(VAETrainConfig(perceptual_weighting=False)))

    def hum_over_tone(loss):
        return float(loss(reals + tone(50), reals)[0]) / float(loss(reals + tone(2000), reals)[0])
    assert hum_over_tone(weighted) < 0.5 < 0.8 < hum_over_tone(plain)


def test_spectral_convergence_over_the_decoded_audio_pays_for_a_dc_offset():
    """The reference's argument order normalises spectral convergence by the decoded magnitudes,
    which caps the term near 1 however loud the output: a DC offset 13x the music's RMS then costs
    less than replacing the music with noise (measured 1.7 vs 2.8). Normalised by the reals
    (``sc_over="reals"``) the offset costs ~10x the noise. The option only swaps the slots."""
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_vae import spectral_loss_config
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    reals = 0.075 * torch.randn(2, 2, 32768, generator=g)
    noise = 0.075 * torch.randn(2, 2, 32768, generator=g)
    offset = reals - 0.97
    config = spectral_loss_config(VAETrainConfig(perceptual_weighting=False))
    sat, fixed = VAEReconstructionLoss(SR, config), VAEReconstructionLoss(SR, config, sc_over="reals")
    assert float(sat(offset, reals)[0]) < float(sat(noise, reals)[0])
    assert float(fixed(offset, reals)[0]) > 5 * float(fixed(noise, reals)[0])
    louder = 3 * reals  # and louder is cheaper than quieter in the reference's order only
    assert float(sat(louder, reals)[0]) < float(sat(reals / 3, reals)[0])
    assert float(fixed(louder, reals)[0]) > float(fixed(reals / 3, reals)[0])
    total, parts = fixed(noise, reals)
    want_total, want_parts = sat(reals, noise)
    torch.testing.assert_close(total, want_total)
    for k in want_parts:
        torch.testing.assert_close(parts[k], want_parts[k])
    with pytest.raises(LossInputError, match="sc_over"):
        VAEReconstructionLoss(SR, config, sc_over="target")


def _bass_and_hiss(f0: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(32768) / 44100
    bass = 0.1 * torch.sin(2 * math.pi * f0 * t + float(torch.rand(1, generator=g)) * 6.28)
    hiss = 0.01 * torch.randn(2, 32768, generator=g)
    return (bass + hiss)[None], 0.5 * hiss[None]  # the real audio; a decode that lost the bass


@pytest.mark.parametrize("f0", [55.0, 110.0, 220.0])
def test_unweighted_spectral_loss_rewards_a_dc_offset_and_dc_error_sees_it(f0):
    """Why ``vae.dc_weight`` exists: the spectral loss, unweighted and with SA1.0's A-weighting
    FIR alike, scores a decode that lost the bass *better* with a constant offset added (short
    STFTs cannot tell an offset from low-frequency content; the FIR does not remove it); the DC
    error grows with the offset."""
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_vae import dc_error, spectral_loss_config
    real, lost_bass = _bass_and_hiss(f0, int(f0))
    fft = [4096, 2048, 1024, 512, 256, 128, 64, 32]
    plain = VAEReconstructionLoss(44100, spectral_loss_config(
        VAETrainConfig(fft_sizes=fft, perceptual_weighting=False)), sc_over="reals")
    weighted = VAEReconstructionLoss(44100, spectral_loss_config(
        VAETrainConfig(fft_sizes=fft, perceptual_weighting=True)), sc_over="reals")
    offset = lost_bass + 0.04
    assert plain(offset, real)[0] < plain(lost_bass, real)[0] - 0.1
    assert weighted(offset, real)[0] < weighted(lost_bass, real)[0] - 0.1
    expected = (offset - real).double().mean(-1).abs().mean()  # fp64 reference
    torch.testing.assert_close(dc_error(offset, real).double(), expected, rtol=1e-5, atol=1e-7)
    assert dc_error(offset, real) > dc_error(lost_bass, real) + 0.03


@pytest.mark.parametrize("n_fft", [4096, 256, 32])
def test_log_floor_means_one_level_at_every_resolution_and_hides_only_what_lies_under_it(n_fft):
    """A sinusoid of amplitude A at a bin centre peaks at A·N/4 in a Hann STFT of N points, so a
    log_floor of A puts the floor at that peak: below it two signals are equal to the log term,
    above it they are not; the log term with a floor equals a hand-written clamped L1."""
    g = torch.Generator().manual_seed(n_fft)
    n = 4 * n_fft + 37
    t = torch.arange(n, dtype=torch.float64)
    k = 3 if n_fft > 32 else 2
    tone = lambda amp: amp * torch.sin(2 * math.pi * k * t / n_fft)  # bin k exactly
    floor = 1e-2
    loss = STFTLoss(n_fft, n_fft // 4, n_fft, w_sc=0.0, log_floor=floor)
    mag, _ = loss.spectra(tone(floor).view(1, -1))
    interior = mag[0, k, 2:-2]  # away from the reflect-padded edges
    assert float((interior / loss.log_floor_magnitude).min()) == pytest.approx(1.0, rel=2e-3)
    assert float((interior / loss.log_floor_magnitude).max()) == pytest.approx(1.0, rel=2e-3)
    # Two quiet noises that differ only under the floor (bin magnitudes ~ std·sqrt(3N/8), 20x
    # under it, yet far over auraloss's eps): the log term cannot tell them apart (without the
    # floor it can); a loud difference it still sees.
    std = loss.log_floor_magnitude / (20 * math.sqrt(3 * n_fft / 8))
    quiet_a = (std * torch.randn(n, generator=g, dtype=torch.float64)).view(1, 1, -1)
    quiet_b = (std * torch.randn(n, generator=g, dtype=torch.float64)).view(1, 1, -1)
    assert float(loss(quiet_a, quiet_b)) == 0.0
    assert float(STFTLoss(n_fft, n_fft // 4, n_fft, w_sc=0.0)(quiet_a, quiet_b)) > 0.1
    loud = tone(0.1).view(1, 1, -1)
    # The tone (10x the floor) fills its bin and the two beside it at half height: log 10 + 2 log 5
    # over N/2 + 1 bins, less at the padded edges.
    assert float(loss(loud + quiet_a, quiet_b)) > 3.0 / (n_fft // 2 + 1)
    # Against a hand-written clamped log-magnitude L1 on random signals of mixed level.
    x = torch.randn(2, 1, n, generator=g, dtype=torch.float64) * torch.logspace(-5, -1, n, dtype=torch.float64)
    y = torch.randn(2, 1, n, generator=g, dtype=torch.float64) * torch.logspace(-1, -5, n, dtype=torch.float64)
    w = torch.hann_window(n_fft, dtype=torch.float64)
    mags = [torch.stft(s.view(2, -1), n_fft, n_fft // 4, n_fft, w, center=True, pad_mode="reflect",
                       return_complex=True).abs().clamp_min(1e-4) for s in (x, y)]
    f = floor * n_fft / 4
    expect = (mags[0].clamp_min(f).log() - mags[1].clamp_min(f).log()).abs().mean()
    _close(loss(x, y), expect)


def test_log_floor_from_the_training_config_and_bad_values():
    from fastaudio.train.config import VAETrainConfig
    from fastaudio.train.stage_vae import spectral_loss_config
    config = spectral_loss_config(VAETrainConfig(log_magnitude_floor_db=-60.0))
    assert config["config"]["log_floor"] == pytest.approx(1e-3)
    assert "log_floor" not in spectral_loss_config(VAETrainConfig())["config"]
    for bad in (0.0, 1.5, -1e-3):
        with pytest.raises(LossInputError, match="log_floor"):
            STFTLoss(log_floor=bad)
    with pytest.raises(FastAudioError, match="log_magnitude_floor_db"):
        spectral_loss_config(VAETrainConfig(log_magnitude_floor_db=6.0))
