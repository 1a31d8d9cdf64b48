"""The text-to-audio pipeline on the tiny preset: lengths, seeds, guidance, windows, errors."""
import dataclasses

import pytest
import torch

import reference_impl as R
from fastaudio import build_model
from fastaudio.diffusion import sigmas as S
from fastaudio.diffusion.cuda_graph import StepRunner
from fastaudio.models.unet_guidance import GuidedUNet, UNetConditioning, uncond_context
from fastaudio.diffusion.samplers import make_plan, run_plan
from fastaudio.diffusion.schedule import VDenoiser
from fastaudio.pipeline import GenerationError, StableAudio


@pytest.fixture(scope="module")
def pipe():
    model = build_model("tiny", seed=0)
    with torch.no_grad():  # move the weights off their init so guidance has something to do
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return StableAudio(model, device="cpu", dtype="fp32")


@pytest.mark.parametrize("seconds", [0.5, 1.0, 1.2345])
def test_exact_length_and_finite_stereo(pipe, seconds):
    out = pipe.generate("a calm piano", seconds_total=seconds, steps=3, seed=0)
    audio = out.audio
    assert audio.shape == (1, 2, round(seconds * 44100)) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all() and audio.abs().max() <= 1.0
    assert set(out.timings) == {"text_encoding", "sampling", "decoding", "total"}
    assert out.sample_rate == 44100 and out.seeds == [0]
    assert out.latents.shape == (1, pipe.config.vae.latent_dim, pipe.config.latent_length)


def test_same_seed_same_audio_other_seed_other_audio(pipe):
    a = pipe.generate("drums", seconds_total=1.0, steps=3, seed=7, batch_size=2)
    b = pipe.generate("drums", seconds_total=1.0, steps=3, seed=7, batch_size=2)
    c = pipe.generate("drums", seconds_total=1.0, steps=3, seed=8, batch_size=2)
    assert torch.equal(a.audio, b.audio)
    assert (a.audio - c.audio).abs().max() > 1e-3
    assert (a.audio[0] - a.audio[1]).abs().max() > 1e-3  # the batch items get their own noise
    assert a.seeds == [7, 8] and c.seeds == [8, 9]  # each call reports its own seeds
    assert not torch.equal(a.latents, c.latents)


def test_guidance_scale_one_is_the_conditional_model_alone(pipe):
    model, cfg = pipe.model, pipe.config
    seed, steps = 3, 4
    audio = pipe.generate("strings", seconds_total=1.0, steps=steps, seed=seed, cfg_scale=1.0,
                          sampler="dpmpp-2m").audio
    # the same sampling written out by hand with the plain conditional U-Net
    g = torch.Generator().manual_seed(seed)
    frames = cfg.latent_length
    noise = torch.randn((1, cfg.vae.latent_dim, frames), generator=g)
    sig = S.polyexponential(steps, cfg.sampling.sigma_min, cfg.sampling.sigma_max, cfg.sampling.rho)
    with torch.no_grad():
        ctx, mask = model.conditioner(["strings"], 0, 1.0)
        den = VDenoiser(lambda x, t: model.unet(x, t, ctx, mask))
        lat = run_plan(den, noise * sig[0], make_plan("dpmpp-2m", sig), disable=True)
        want = model.vae.decode(lat)[..., :44100]
    torch.testing.assert_close(audio, want, rtol=1e-4, atol=1e-5)


@pytest.mark.reference
def test_guidance_matches_the_reference_unetcfg1d():
    """CFG with rescale and a negative prompt, against UNetCFG1d(batch_cfg=True)."""
    adp = R.adp()
    cfg = dataclasses.replace(build_model("tiny", device="meta").config.unet)
    torch.manual_seed(0)
    ref = adp.UNetCFG1d(**R.unet_kwargs(cfg)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    from fastaudio.models.unet import UNet1d
    ours = UNet1d(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    x, t = torch.randn(2, cfg.in_channels, 32), torch.rand(2)
    ctx, neg = torch.randn(2, 79, 32), torch.randn(2, 79, 32)
    mask = torch.ones(2, 79, dtype=torch.bool)
    mask[1, 5:77] = False
    neg_mask = torch.ones(2, 79, dtype=torch.bool)
    neg_mask[0, 3:77] = False
    with torch.no_grad():
        for scale, rescale, negative in [(6.0, False, False), (3.0, True, False), (4.0, True, True)]:
            kw = dict(negative_embedding=neg, negative_embedding_mask=neg_mask) if negative else {}
            want = ref(x, t, embedding=ctx, embedding_mask=mask, embedding_scale=scale,
                       batch_cfg=True, rescale_cfg=rescale, scale_phi=0.4, **kw)
            cond = UNetConditioning(ctx, mask, neg if negative else None,
                                    neg_mask if negative else None)
            got = GuidedUNet(ours, cond, scale, 0.4 if rescale else 0.0)(x, t)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), (scale, rescale, negative)


@pytest.mark.parametrize("scale,negative", [(4.0, False), (4.0, True), (1.0, False)])
def test_new_conditioning_replaces_the_cached_keys_and_values(pipe, scale, negative):
    """GuidedUNet projects the context's cross-attention keys/values once; set_conditioning (the
    CUDA-graph path's way to serve a new prompt) must refresh them, not only the context: the
    result equals a fresh GuidedUNet and the U-Net called without any cache."""
    unet, cond = pipe.model.unet, pipe.model.conditioner
    with torch.no_grad():
        a, mask_a = cond(["a fast drum loop"], 0, 1.0)
        b, mask_b = cond(["a slow piano in D minor, longer"], 0, 1.0)
        neg, neg_mask = cond(["noise"], 0, 1.0) if negative else (None, None)
        x, t = torch.randn(1, unet.config.in_channels, 32), torch.tensor([0.4])
        reused = GuidedUNet(unet, UNetConditioning(a, mask_a, neg, neg_mask), scale, 0.4)
        first = reused(x, t)
        reused.set_conditioning(UNetConditioning(b, mask_b, neg, neg_mask))
        want = GuidedUNet(unet, UNetConditioning(b, mask_b, neg, neg_mask), scale, 0.4)(x, t)
        got = reused(x, t)
        if scale == 1.0:
            out = unet(x, t, b, mask_b)  # no keys/values passed: projected in the call
        else:
            uncond = uncond_context(unet, b, neg, neg_mask)
            c, u = unet(x, t, torch.cat([b, uncond]), torch.cat([mask_b, mask_b])).chunk(2)
            out = u + (c - u) * scale
            out = 0.4 * out * c.std(1, keepdim=True) / out.std(1, keepdim=True) + 0.6 * out
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got, out, rtol=1e-5, atol=1e-6)
    assert (got - first).abs().max() > 1e-4  # the prompts differ, so must the outputs


def test_step_runner_matches_the_samplers(pipe):
    model = pipe.model
    with torch.no_grad():
        ctx, mask = model.conditioner(["x", "y"], 0, 1.0)
        den = VDenoiser(GuidedUNet(model.unet, UNetConditioning(ctx, mask), 5.0, 0.4))
        sig = S.polyexponential(5, 0.03, 80.0)
        x0 = torch.randn(2, 8, 32) * sig[0]
        for sampler in ("dpmpp-3m-sde", "dpmpp-2m", "euler"):
            plan = make_plan(sampler, sig)
            want = run_plan(den, x0, plan, disable=True, generator=torch.Generator().manual_seed(1))
            got = StepRunner(den, x0).run(x0, plan, generator=torch.Generator().manual_seed(1))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_window_renders_fewer_frames(pipe):
    assert pipe.window_frames(None, 1.0) == pipe.config.latent_length
    assert pipe.window_frames(0.5, 0.5) == 32  # 21.5 frames, rounded up to a multiple of 16
    audio = pipe.generate("short", seconds_total=0.4, steps=2, seed=0, window=0.5).audio
    assert audio.shape[-1] == round(0.4 * 44100)


def test_negative_prompt_changes_the_result(pipe):
    seen = {}
    keep = lambda key: (lambda d: seen.__setitem__(key, d["denoised"].clone()))
    pipe.generate("bells", seconds_total=0.5, steps=3, seed=1, callback=keep("null"))
    pipe.generate("bells", seconds_total=0.5, steps=3, seed=1, negative_prompt="noise",
                  callback=keep("negative"))
    pipe.generate("bells", seconds_total=0.5, steps=3, seed=1, negative_prompt="noise",
                  callback=keep("negative again"))
    assert (seen["null"] - seen["negative"]).abs().max() > 1e-4 * seen["null"].abs().max()
    assert torch.equal(seen["negative"], seen["negative again"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(seconds_total=0), "seconds_total must be > 0"),
    (dict(seconds_total=-1), "seconds_total"),
    (dict(seconds_total=99), "<= 1.48"),
    (dict(seconds_total=1, steps=0), "steps must be a positive integer"),
    (dict(seconds_total=1, sampler="ddim?"), "unknown sampler"),
    (dict(seconds_total=1, window=0.5), "shorter than seconds_total"),
    (dict(seconds_total=1, batch_size=0), "batch_size"),
    (dict(seconds_total=1, dtype="fp8"), "unknown dtype"),
    (dict(seconds_total=1, seconds_start=-3), "seconds_start"),
    (dict(seconds_total="ten"), "finite number"),
])
def test_bad_arguments_are_named(pipe, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        pipe.generate("x", **kwargs)


def test_graph_execution_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: graph execution is exercised by the GPU test")
    with pytest.raises(GenerationError, match="needs a CUDA device"):
        StableAudio(build_model("tiny"), device="cpu", execution="graph")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graph_and_eager_results_are_equal_on_gpu():
    model = build_model("tiny", seed=0)
    graph = StableAudio(model, device="cuda", dtype="fp32", execution="graph")
    a = graph.generate("x", seconds_total=1.0, steps=4, seed=2).audio
    a2 = graph.generate("y", seconds_total=1.0, steps=4, seed=2).audio  # replays the captured graph
    eager = StableAudio(model, device="cuda", dtype="fp32", execution="eager")
    b = eager.generate("x", seconds_total=1.0, steps=4, seed=2).audio
    b2 = eager.generate("y", seconds_total=1.0, steps=4, seed=2).audio
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a2, b2, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_execution_matches_eager(pipe):
    """execution="compile" (torch.compile of the U-Net and the VAE decoder; inductor on a CPU)
    renders what eager renders, on a window long enough for several decoder chunks."""
    model = pipe.model
    compiled = StableAudio(model, device="cpu", dtype="fp32", execution="compile",
                           decode_chunk_frames=40)
    eager = StableAudio(model, device="cpu", dtype="fp32", execution="eager", decode_chunk_frames=40)
    kw = dict(seconds_total=1.4, steps=3, seed=5)
    a, b = compiled.generate("x", **kw).audio, eager.generate("x", **kw).audio
    assert compiled._compiled is not None and compiled._compiled_decoder is not None
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert (a - eager.generate("x", seconds_total=1.4, steps=3, seed=6).audio).abs().max() > 1e-3


def test_same_latents_give_the_same_audio_and_wrong_latents_are_named(pipe):
    """generate(latents=z) starts from z (scaled by sigma_max as k-diffusion does): the same z
    twice gives the same audio even with the SDE sampler (its step noise then comes from seed 0);
    a different z gives different audio; a z of the wrong shape is an error naming the shape."""
    cfg = pipe.config
    z = torch.randn(2, cfg.vae.latent_dim, cfg.latent_length)
    a = pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, latents=z)
    b = pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, latents=z)
    c = pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, latents=torch.randn_like(z))
    assert torch.equal(a.audio, b.audio) and a.seeds == [0, 1]
    assert (a.audio - c.audio).abs().max() > 1e-3
    # the seeded draw is exactly latents=(that draw): item i from a generator seeded seed + i
    drawn = torch.stack([torch.randn(z.shape[1:], generator=torch.Generator().manual_seed(s))
                         for s in (4, 5)])
    # (a deterministic sampler: with latents given, the SDE's step noise starts where the
    # generator starts, not after the initial draw)
    d = pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, seed=4, sampler="dpmpp-2m")
    e = pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, seed=4, latents=drawn,
                      sampler="dpmpp-2m")
    torch.testing.assert_close(d.audio, e.audio, rtol=1e-5, atol=1e-6)
    with pytest.raises(GenerationError, match=r"latents must have shape \(2, 8, 64\)"):
        pipe.generate("wind", seconds_total=1.0, steps=3, batch_size=2, latents=z[:, :, :10])


def test_a_different_dtype_per_call_raises_and_to_switches(pipe):
    with pytest.raises(GenerationError, match=r"pipe.to\(dtype"):
        pipe.generate("x", seconds_total=0.5, steps=2, dtype="bf16")
    assert pipe.generate("x", seconds_total=0.5, steps=2, dtype="fp32").audio.dtype == torch.float32
