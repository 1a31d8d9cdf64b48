"""The Oobleck VAE (Stable Audio Open): sizes, fidelity to stable-audio-tools 0.0.19's modules
with the same weights, any-length input, chunk seams, folding, and clear errors."""
import copy

import pytest
import torch

import reference_impl as R
from fastaudio.errors import FastAudioError
from fastaudio.models.oobleck import (DEFAULT_OVERLAP_FRAMES, OobleckConfigError, OobleckDecoder,
                                      OobleckEncoder, OobleckVAE)
from fastaudio.models.vae import AudioInputError

SAO_STRIDES = [2, 4, 4, 8, 8]


def _autoencoder_config(channels, c_mults, strides, latent, use_snake=True, final_tanh=False,
                        nearest=False, soft_clip=False):
    """A reference autoencoder config ("pretransform.config" layout)."""
    enc = dict(in_channels=2, channels=channels, c_mults=c_mults, strides=strides,
               latent_dim=2 * latent, use_snake=use_snake)
    dec = dict(out_channels=2, channels=channels, c_mults=c_mults, strides=strides,
               latent_dim=latent, use_snake=use_snake, final_tanh=final_tanh,
               use_nearest_upsample=nearest)
    ratio = 1
    for s in strides:
        ratio *= s
    decoder = {"type": "oobleck", "config": dec}
    if soft_clip:
        decoder["soft_clip"] = True
    return {"encoder": {"type": "oobleck", "config": enc}, "decoder": decoder,
            "bottleneck": {"type": "vae"}, "latent_dim": latent, "downsampling_ratio": ratio,
            "io_channels": 2}


SMALL_CONFIGS = {
    "snake-2blocks": _autoencoder_config(4, [1, 2], [2, 4], 3),
    "snake-3blocks-tanh": _autoencoder_config(6, [1, 2, 3], [2, 2, 4], 4, final_tanh=True),
    "elu-nearest-odd-stride-softclip": _autoencoder_config(5, [2, 3], [3, 2], 2, use_snake=False,
                                                           nearest=True, soft_clip=True),
}


def _randomise(module, seed):
    """Weights away from their init: log-scale α, β in [-1, 1], weight-norm g scaled by
    [0.5, 1.5] per output channel, biases ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("alpha", "beta"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif leaf == "weight_g":
                p.mul_(0.5 + torch.rand(p.shape, generator=g))
            elif leaf == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def _reference(cfg, seed=0):
    torch.manual_seed(seed)
    sat = R.sat()
    model = sat.autoencoders.create_autoencoder_from_config({"model": copy.deepcopy(cfg),
                                                             "sample_rate": 44100})
    return _randomise(model, seed).eval()


def _rel(ours, ref):
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------
def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.reference
def test_stable_audio_open_sizes_and_names_match_the_reference():
    with torch.device("meta"):
        ours = OobleckVAE()
        ref = R.sat().autoencoders.create_autoencoder_from_config(
            {"model": _autoencoder_config(128, [1, 2, 4, 8, 16], SAO_STRIDES, 64), "sample_rate": 44100})
    assert (_count(ours), _count(ours.encoder), _count(ours.decoder)) == \
        (156_112_514, 77_989_888, 78_122_626)
    assert (_count(ref.encoder), _count(ref.decoder)) == (77_989_888, 78_122_626)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert ours.ratio == 2048 and ours.latent_dim == 64 and ours.io_channels == 2


# ------------------------------------------------------------------------------------------------
# Fidelity: the reference's modules with the same weights, fp32
# ------------------------------------------------------------------------------------------------
@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_matches_stable_audio_tools_modules(name):
    cfg = SMALL_CONFIGS[name]
    ref = _reference(cfg, seed=1)
    ours = OobleckVAE(**copy.deepcopy(cfg)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ratio, latent = cfg["downsampling_ratio"], cfg["latent_dim"]
    n = ratio * 5 + ratio // 2 + 1  # not a multiple of the frame: padded with silence, as the
    x = torch.randn(2, 2, n) * 0.5  # reference's preprocess_audio_for_encoder pads
    x_padded = torch.nn.functional.pad(x, (0, ratio * 6 - n))

    def compare():
        with torch.no_grad():
            pre = ref.encode(x_padded, skip_bottleneck=True)
            torch.manual_seed(7)
            sampled_ref = ref.encode(x_padded)
            sampled = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
            mean = ours.encode(x)
            audio_ref = ref.decode(pre[:, :latent])
            audio = ours.decode(pre[:, :latent])
        assert mean.shape == (2, latent, 6) and audio.shape == (2, 2, 6 * ratio)
        assert _rel(mean, pre[:, :latent]) <= 1e-5
        assert _rel(sampled, sampled_ref) <= 1e-5
        assert _rel(audio, audio_ref) <= 1e-5

    compare()
    assert ours.fold_weight_norm() > 0
    compare()  # folding weight norm and SnakeBeta's log scale changes nothing
    assert ours.fold_weight_norm() == 0


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_training_gradients_match_the_reference(name):
    """Training mode (the residual units recompute under checkpointing, as the reference's do):
    the gradients of every parameter, log-scale α and β and weight-norm g and v included.
    In fp64, so that the comparison is of the mathematics (in fp32 the α, β gradients, sums
    over every sample, differ by ~1e-5 relative through rounding alone)."""
    cfg = SMALL_CONFIGS[name]
    ref = _reference(cfg, seed=8).train().double()
    ours = OobleckVAE(**copy.deepcopy(cfg)).train().double()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ratio = cfg["downsampling_ratio"]
    x = torch.randn(1, 2, ratio * 4, dtype=torch.float64) * 0.5
    w = torch.randn(1, 2, ratio * 4, dtype=torch.float64)
    mean_ref = ref.encode(x, skip_bottleneck=True)[:, : cfg["latent_dim"]]
    (ref.decode(mean_ref) * w).sum().backward()
    (ours.decode(ours.encode(x)) * w).sum().backward()
    ref_grads = dict(ref.named_parameters())
    for name_, p in ours.named_parameters():
        assert _rel(p.grad, ref_grads[name_].grad) <= 1e-10, name_


@pytest.mark.reference
def test_pretransform_scale_matches_the_reference():
    """AutoencoderPretransform divides encoded latents by ``scale`` and multiplies before
    decoding (SAO's configs set none: scale 1)."""
    cfg = SMALL_CONFIGS["snake-2blocks"]
    ref_ae = _reference(cfg, seed=2)
    pretransform = {"type": "autoencoder", "config": copy.deepcopy(cfg), "scale": 0.7,
                    "iterate_batch": True, "model_half": False}
    ours = OobleckVAE.from_pretransform_config(pretransform).eval()
    ours.load_state_dict(ref_ae.state_dict(), strict=True)
    from stable_audio_tools.models.pretransforms import AutoencoderPretransform
    ref = AutoencoderPretransform(ref_ae, scale=0.7)
    x = torch.randn(1, 2, 8 * 6) * 0.5
    with torch.no_grad():
        torch.manual_seed(3)
        z_ref = ref.encode(x)
        z = ours.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        assert _rel(z, z_ref) <= 1e-5
        assert _rel(ours.decode(z_ref), ref.decode(z_ref)) <= 1e-5


@pytest.mark.reference
def test_snake_beta_torch_path_is_the_reference_bit_for_bit():
    from fastaudio.nn.snake import SnakeBeta1d
    g = torch.Generator().manual_seed(0)
    ref = R.sat().blocks.SnakeBeta(6)
    ours = SnakeBeta1d(6)
    with torch.no_grad():
        ref.alpha.copy_(torch.randn(6, generator=g))
        ref.beta.copy_(torch.randn(6, generator=g))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 6, 301, generator=g) * 3
    with torch.no_grad():
        y_ref = ref(x)
        assert torch.equal(ours(x), y_ref)
        ours.fold_log_scale()
        assert torch.equal(ours(x), y_ref)
    # the folded module still saves (and loads) the reference's log-scale values
    torch.testing.assert_close(ours.state_dict()["alpha"], ref.alpha.detach(), rtol=1e-6, atol=1e-7)
    fresh = SnakeBeta1d(6)
    fresh.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), y_ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(ours(x), y_ref)


def test_folded_model_round_trips_its_state_dict():
    cfg = SMALL_CONFIGS["snake-2blocks"]
    torch.manual_seed(4)
    ours = _randomise(OobleckVAE(**copy.deepcopy(cfg)), 4).eval()
    z = torch.randn(1, 3, 5)
    with torch.no_grad():
        before = ours.decode(z)
        ours.fold_weight_norm()
        fresh = OobleckVAE(**copy.deepcopy(cfg)).eval()
        fresh.load_state_dict(ours.state_dict(), strict=True)  # folded weights into weight norm
        assert _rel(fresh.decode(z), before) <= 1e-5
        assert _rel(ours.decode(z), before) <= 1e-6


# ------------------------------------------------------------------------------------------------
# Any length, chunking
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 8, 9, 8 * 5 + 3])
def test_any_length_is_padded_then_trimmed(n):
    vae = _randomise(OobleckVAE(**copy.deepcopy(SMALL_CONFIGS["snake-2blocks"])), 5).eval()
    x = torch.randn(1, 2, n) * 0.3
    frames = -(-n // 8)
    with torch.no_grad():
        z = vae.encode(x)
        z_pad = vae.encode(torch.nn.functional.pad(x, (0, frames * 8 - n)))
        recon, kl, _ = vae(x)
    assert z.shape == (1, 3, frames) and torch.equal(z, z_pad)
    assert vae.decode(z).shape == (1, 2, 8 * frames)
    assert recon.shape == x.shape and kl.dim() == 0


def _sao_strided(channels=2, seed=0, dtype=torch.float32):
    """Stable Audio Open's strides and kernels (so its receptive field) with few channels."""
    torch.manual_seed(seed)
    vae = OobleckVAE(**_autoencoder_config(channels, [1, 2, 4, 8, 16], SAO_STRIDES, 64))
    return _randomise(vae, seed).to(dtype).eval()


def test_receptive_field_fits_in_the_half_overlap():
    """Perturb one latent frame (one audio sample) in fp64 and see how far the change reaches:
    exactly zero beyond the receptive field. Measured: the decoder reaches 9.25 frames to
    either side, the encoder's frame depends on samples 7.27 frames away."""
    vae = _sao_strided(channels=1, dtype=torch.float64)
    frames, c, ratio = 25, 12, 2048
    z = torch.randn(1, 64, frames, dtype=torch.float64)
    with torch.no_grad():
        y = vae.decode(z, chunked=False)
        z[..., c] += 1
        changed = torch.nonzero((vae.decode(z, chunked=False) - y).abs().sum(1)[0]).flatten()
    reach = max(c * ratio - changed.min().item(), changed.max().item() - ((c + 1) * ratio - 1))
    assert 9 * ratio < reach <= 10 * ratio
    x = torch.randn(1, 2, frames * ratio, dtype=torch.float64, requires_grad=True)
    vae.encoder(x)[0, :, c].sum().backward()
    used = torch.nonzero(x.grad.abs().sum(1)[0]).flatten()
    reach_enc = max(c * ratio - used.min().item(), used.max().item() - ((c + 1) * ratio - 1))
    assert 7 * ratio < reach_enc <= 8 * ratio
    assert 10 <= DEFAULT_OVERLAP_FRAMES // 2


def test_chunked_matches_unchunked_within_fp32_rounding():
    vae = _sao_strided(channels=2, seed=6)
    vae.chunk_frames = 44  # hop 20 with the default overlap of 24: 3 windows over 50 frames
    z = torch.randn(1, 64, 50)
    x = torch.randn(1, 2, 2048 * 50) * 0.3
    with torch.no_grad():
        full, chunked = vae.decode(z, chunked=False), vae.decode(z, chunked=True)
        e_full, e_chunked = vae.encode(x, chunked=False), vae.encode(x, chunked=True)
        exact = _sao_strided(channels=2, seed=6, dtype=torch.float64).decode(z.double(), chunked=False)

    def err(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    # Measured: 4e-7 of max |full| for the decoder, 2.3e-6 for the encoder: the seams add nothing
    # beyond fp32 rounding, whose own size here (full fp32 vs fp64 decoding) is 1.3e-6.
    assert err(chunked, full) <= 1e-5 and err(e_chunked, e_full) <= 1e-5
    assert err(chunked, exact) <= 2 * err(full, exact) + 1e-7
    # and the test can fail: a half-overlap smaller than the receptive field shows seams
    vae.overlap_frames = 16
    with torch.no_grad():
        seamy = vae.decode(z, chunked=True)
    assert err(seamy, full) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_decode_runs_its_convs_channels_last(dtype, conv2d_input_layouts):
    """Eager CPU inference decodes with every conv on channels-last (N, C, 1, L) memory and gives
    what the (N, C, L) path gives (fp32: within rounding; bf16: within one bf16 step of the
    audio's scale), as a contiguous (B, 2, N) tensor; with gradients on it stays on the plain path
    (activation checkpointing recomputes outside the decode call)."""
    vae = _sao_strided(channels=4, seed=3).to(dtype)
    vae.chunk_frames = 44
    z = torch.randn(1, 64, 50).to(dtype)
    seen = conv2d_input_layouts
    with torch.no_grad():
        vae.cpu_channels_last = False
        plain = vae.decode(z)
        assert seen == []
        vae.cpu_channels_last = True
        fast = vae.decode(z)
    assert len(seen) > 10 and all(seen), seen
    assert fast.is_contiguous() and fast.shape == plain.shape
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert ((fast.float() - plain.float()).abs().max() / plain.float().abs().max()).item() <= tol
    seen.clear()
    vae.decode(z.requires_grad_())
    assert seen == []


def test_chunk_defaults_and_windows():
    """Chunk sizes by device, and the windows a decode runs (seen through ``decoder=``)."""
    cfg = SMALL_CONFIGS["snake-2blocks"]
    vae = OobleckVAE(**copy.deepcopy(cfg))
    assert vae.default_chunk_frames(torch.device("cpu")) == 256
    assert vae.default_chunk_frames(torch.device("cuda")) == 1024
    assert OobleckVAE(**copy.deepcopy(cfg), chunk_frames=64).default_chunk_frames(
        torch.device("cuda")) == 64
    windows = []

    def fake_decoder(z):
        windows.append(z.shape[-1])
        return torch.zeros(z.shape[0], 2, z.shape[-1] * 8)

    # overlap 24: windows reach 12 frames past their kept regions (CPU default chunk: 256)
    for frames, chunk, expected in [(256, None, [256]), (257, None, [244, 37]),
                                    (100, 40, [28, 40, 40, 40, 40, 32, 16])]:
        windows.clear()
        out = vae.decode(torch.zeros(1, 3, frames), chunk_frames=chunk, decoder=fake_decoder)
        assert out.shape == (1, 2, 8 * frames)
        assert windows == expected, (frames, chunk, windows)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 64), "must be \\(batch, 2, samples\\)"),
    (torch.randn(1, 1, 64), "has 1 channels"),
    (torch.full((1, 2, 64), float("nan")), "NaN"),
    (torch.zeros(1, 2, 64, dtype=torch.int16), "floating point"),
    (torch.zeros(1, 2, 0), "no samples"),
])
def test_bad_audio_is_rejected_clearly(bad, match):
    vae = OobleckVAE(**copy.deepcopy(SMALL_CONFIGS["snake-2blocks"]))
    with pytest.raises(AudioInputError, match=match):
        vae.encode(bad)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(1, 4, 5), "latents must be \\(batch, 3, frames\\)"),
    (torch.randn(3, 5), "latents must be"),
    (torch.randn(1, 3, 0), "no frames"),
    (torch.zeros(1, 3, 5, dtype=torch.int32), "floating point"),
])
def test_bad_latents_are_rejected_clearly(bad, match):
    vae = OobleckVAE(**copy.deepcopy(SMALL_CONFIGS["snake-2blocks"]))
    with pytest.raises(AudioInputError, match=match):
        vae.decode(bad)


def _edit(path, value):
    cfg = copy.deepcopy(SMALL_CONFIGS["snake-2blocks"])
    *parents, leaf = path
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    return cfg


@pytest.mark.parametrize("cfg, match", [
    (_edit(("encoder", "config", "antialias_activation"), True), "antialias_activation=True"),
    (_edit(("decoder", "config", "antialias_activation"), True), "antialias_activation=True"),
    (_edit(("decoder", "config", "strides"), [3, 4]), "stride 3 is odd"),
    (_edit(("encoder", "type"), "dac"), "only 'oobleck'"),
    (_edit(("bottleneck",), {"type": "tanh"}), "only {'type': 'vae'}"),
    (_edit(("decoder", "config", "transformer_depths"), [1, 1]),
     "unsupported keys \\['transformer_depths'\\]"),
    (_edit(("encoder", "note"), "x"), "unsupported keys \\['note'\\]"),
    (_edit(("downsampling_ratio",), 16), "strides multiply to 8"),
    (_edit(("latent_dim",), 4), "encoder latent_dim 6 must be 2 × latent_dim 4"),
    (_edit(("decoder", "config", "out_channels"), 1), "audio channel counts differ"),
    (_edit(("encoder", "config", "strides"), [2]), "must be non-empty and of equal length"),
    (_edit(("pretransform",), {"type": "autoencoder"}), "pretransform inside"),
])
def test_unsupported_or_inconsistent_configs_are_named(cfg, match):
    with pytest.raises(OobleckConfigError, match=match) as info:
        OobleckVAE(**cfg)
    assert isinstance(info.value, FastAudioError)


def test_module_level_options():
    """The modules alone: the reference's defaults, ELU instead of Snake, errors by name."""
    enc, dec = OobleckEncoder(channels=2), OobleckDecoder(channels=2)
    assert enc.downsampling_ratio == dec.upsampling_ratio == 512
    assert isinstance(dec.layers[-1], torch.nn.Tanh)  # final_tanh defaults to True, as there
    assert not any(n.endswith("alpha") for n, _ in enc.named_parameters())  # use_snake False: ELU
    with pytest.raises(OobleckConfigError, match="antialias"):
        OobleckDecoder(channels=2, antialias_activation=True)
    with pytest.raises(OobleckConfigError, match="scale must be"):
        OobleckVAE(**copy.deepcopy(SMALL_CONFIGS["snake-2blocks"]), scale=0.0)
    with pytest.raises(OobleckConfigError, match="pretransform.type"):
        OobleckVAE.from_pretransform_config({"type": "wavelet", "config": {}})
