"""The VAE: fidelity to descript-audio-codec's modules, shapes for any length, chunking, errors."""
import dataclasses

import pytest
import torch

import reference_impl as R
from fastaudio.config import VAEConfig, VAEDecoderConfig, VAEEncoderConfig, preset
from fastaudio.models.vae import AudioInputError, AutoencoderVAE, kl_divergence, vae_bottleneck

SMALL_CONFIGS = {
    "tiny": preset("tiny").vae,
    "ratio8": VAEConfig(encoder=VAEEncoderConfig(d_model=6, strides=[2, 4], latent_dim=10),
                        decoder=VAEDecoderConfig(latent_dim=5, channels=12, rates=[4, 2]),
                        latent_dim=5, downsampling_ratio=8),
}


def _random_vae(cfg: VAEConfig, seed: int = 0) -> AutoencoderVAE:
    torch.manual_seed(seed)
    vae = AutoencoderVAE(cfg).eval()
    for m in vae.modules():  # alphas away from their init so Snake is exercised
        if hasattr(m, "alpha"):
            torch.nn.init.uniform_(m.alpha, 0.5, 1.5)
    return vae


def _reference_modules(cfg: VAEConfig):
    d = R.dac()
    enc = d.model.Encoder(d_model=cfg.encoder.d_model, strides=cfg.encoder.strides,
                          d_latent=cfg.encoder.d_model * 2 ** len(cfg.encoder.strides))
    enc.block[0] = d.layers.WNConv1d(cfg.encoder.in_channels, cfg.encoder.d_model, kernel_size=7,
                                     padding=3)  # as stable-audio-tools' DACEncoderWrapper
    proj = torch.nn.Conv1d(enc.enc_dim, cfg.encoder.latent_dim, 1)
    dec = d.model.Decoder(cfg.decoder.latent_dim, cfg.decoder.channels, cfg.decoder.rates,
                          d_out=cfg.decoder.out_channels)
    for m in list(enc.modules()) + list(dec.modules()):
        if hasattr(m, "alpha"):
            torch.nn.init.uniform_(m.alpha, 0.5, 1.5)
    return enc, proj, dec


@pytest.mark.reference
@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_matches_descript_audio_codec_modules(name):
    cfg = SMALL_CONFIGS[name]
    torch.manual_seed(1)
    enc, proj, dec = _reference_modules(cfg)
    sd = {"encoder.block." + k[len("block."):]: v for k, v in enc.state_dict().items()}
    sd.update({"encoder.proj_out." + k: v for k, v in proj.state_dict().items()})
    sd.update({"decoder." + k: v for k, v in dec.state_dict().items()})
    ours = AutoencoderVAE(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    ratio = cfg.downsampling_ratio
    x = torch.randn(2, 2, ratio * 7) * 0.5
    with torch.no_grad():
        pre = proj(enc(x))
        mean_ref = pre[:, : cfg.latent_dim]
        mean = ours.encode(x)
        audio_ref = dec(mean_ref)
        audio = ours.decode(mean_ref)
    assert (mean - mean_ref).abs().max() <= 1e-5 * mean_ref.abs().max()
    assert (audio - audio_ref).abs().max() <= 1e-5 * audio_ref.abs().max()
    # folding weight norm away changes nothing
    ours.fold_weight_norm()
    with torch.no_grad():
        folded = ours.decode(mean_ref)
    assert (folded - audio_ref).abs().max() <= 1e-5 * audio_ref.abs().max()


@pytest.mark.parametrize("n", [1024, 1025, 3000, 1024 * 5])
def test_any_length_is_padded_then_trimmed(n):
    cfg = preset("tiny").vae
    vae = _random_vae(cfg)
    x = torch.randn(1, 2, n) * 0.3
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z)
        # the padded tail is zeros: encoding the explicitly zero-padded audio gives the same latents
        frames = -(-n // 1024)
        z_pad = vae.encode(torch.nn.functional.pad(x, (0, frames * 1024 - n)))
    assert z.shape == (1, cfg.latent_dim, frames)
    assert y.shape == (1, 2, 1024 * frames)
    assert torch.equal(z, z_pad)


def test_chunked_matches_unchunked_within_fp32_rounding():
    cfg = dataclasses.replace(preset("tiny").vae, chunk_frames=48, overlap_frames=32)
    vae = _random_vae(cfg)
    z = torch.randn(2, cfg.latent_dim, 150)
    x = torch.randn(2, 2, 1024 * 150) * 0.3
    with torch.no_grad():
        full, chunked = vae.decode(z, chunked=False), vae.decode(z, chunked=True)
        e_full, e_chunked = vae.encode(x, chunked=False), vae.encode(x, chunked=True)
    # Measured: ~3e-7 (the receptive field fits in the 16-frame half-overlap).
    assert (full - chunked).abs().max() <= 1e-5
    assert (e_full - e_chunked).abs().max() <= 1e-5
    # and the test can fail: an overlap smaller than the receptive field shows seams
    small = dataclasses.replace(cfg, chunk_frames=24, overlap_frames=8)
    vae.config = small
    with torch.no_grad():
        seamy = vae.decode(z, chunked=True)
    assert (full - seamy).abs().max() > 1e-4


def test_cpu_decode_runs_its_convs_channels_last(conv2d_input_layouts):
    """Eager CPU inference decodes on channels-last memory (every conv's input), with the plain
    path's output within fp32 rounding, contiguous; gradients on keep the plain path."""
    cfg = dataclasses.replace(preset("tiny").vae, chunk_frames=48, overlap_frames=32)
    vae = _random_vae(cfg)
    z = torch.randn(2, cfg.latent_dim, 100)
    with torch.no_grad():
        vae.cpu_channels_last = False
        plain = vae.decode(z)
        assert conv2d_input_layouts == []
        vae.cpu_channels_last = True
        fast = vae.decode(z)
    assert len(conv2d_input_layouts) > 10 and all(conv2d_input_layouts)
    assert fast.is_contiguous() and (fast - plain).abs().max() <= 1e-5 * plain.abs().max()
    conv2d_input_layouts.clear()
    vae.decode(z.requires_grad_())
    assert conv2d_input_layouts == []


def test_bottleneck_sampling_and_kl():
    pre = torch.randn(3, 16, 9)
    z, mean, std = vae_bottleneck(pre, sample=False)
    assert torch.equal(z, mean)
    g = torch.Generator().manual_seed(0)
    zs, mean, std = vae_bottleneck(pre, sample=True, generator=g)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(zs, mean + std * noise)
    torch.testing.assert_close(std, torch.nn.functional.softplus(pre[:, 8:]) + 1e-4)
    # KL of N(mean, std) to N(0, 1), summed over channels and averaged: analytic form
    var = std.double() ** 2
    kl_ref = (mean.double() ** 2 + var - var.log() - 1).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mean, std).double(), kl_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(2, 1024), "must be \\(batch, 2, samples\\)"),
    (torch.randn(1, 1, 2048), "has 1 channels"),
    (torch.randn(1, 3, 2048), "has 3 channels"),
    (torch.full((1, 2, 2048), float("nan")), "NaN"),
    (torch.randn(1, 2, 1000), "shorter than one latent frame"),
    (torch.zeros(1, 2, 2048, dtype=torch.int16), "floating point"),
])
def test_bad_audio_is_rejected_clearly(bad, match):
    vae = _random_vae(preset("tiny").vae)
    with pytest.raises(AudioInputError, match=match):
        vae.encode(bad)


def test_bad_latents_are_rejected_clearly():
    vae = _random_vae(preset("tiny").vae)
    with pytest.raises(AudioInputError, match="latents must be"):
        vae.decode(torch.randn(1, 3, 4))
