"""Stable Audio Open end to end: a stable-audio-tools folder made here from the reference's own
modules (a tiny random DiT, Oobleck VAE and number conditioners, a tiny random T5 and a
tokenizer trained here in ``text_encoder/`` + ``tokenizer/``) renders through
``StableAudio.from_pretrained(...).generate(..., latents=z)`` the same audio as the reference's
``generate_diffusion_cond`` on the same initial noise, with a deterministic sampler (dpmpp-2m for
the v-objective, euler for rectified flow). Also: presets' sizes, the CLI, and bad folders.
"""
import copy
import json
import os
import shutil

import pytest
import torch

import reference_impl as R
from tiny_t5 import make_tiny_t5, patch_reference_loaders, undo_reference_fp16

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning"),
              pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

RATIO, FRAMES, T5_WIDTH = 8, 40, 32


def tiny_source(kind: str) -> dict:
    """A stable-audio-tools config with SAO 1.0's structure ("v": both seconds, unprojected
    tokens) or SAO Small's ("rf": seconds_total only, projected tokens, qk-norm), tiny."""
    oobleck = {"channels": 4, "c_mults": [1, 2], "strides": [2, 4], "use_snake": True}
    numbers = ["seconds_start", "seconds_total"] if kind == "v" else ["seconds_total"]
    dit = {"io_channels": 8, "embed_dim": 64, "depth": 2, "num_heads": 2, "cond_token_dim": T5_WIDTH,
           "global_cond_dim": T5_WIDTH * len(numbers), "project_cond_tokens": kind == "rf",
           "transformer_type": "continuous_transformer"}
    if kind == "rf":
        dit["attn_kwargs"] = {"qk_norm": "ln"}
    diffusion = {"cross_attention_cond_ids": ["prompt"] + numbers, "global_cond_ids": numbers,
                 "type": "dit", "config": dit}
    if kind == "rf":
        diffusion["diffusion_objective"] = "rf_denoiser"
    return {
        "model_type": "diffusion_cond", "sample_size": RATIO * FRAMES, "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "oobleck", "config": dict(oobleck, in_channels=2, latent_dim=16)},
                "decoder": {"type": "oobleck", "config": dict(oobleck, out_channels=2, latent_dim=8,
                                                             final_tanh=False)},
                "bottleneck": {"type": "vae"}, "latent_dim": 8, "downsampling_ratio": RATIO,
                "io_channels": 2}},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 12}}]
                + [{"id": n, "type": "number", "config": {"min_val": 0, "max_val": 512}} for n in numbers],
                "cond_dim": T5_WIDTH},
            "diffusion": diffusion, "io_channels": 8},
        "training": {"learning_rate": 1e-4},
    }


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


def reference_folder(kind, root, t5_dirs, monkeypatch):
    """(folder, reference model): the reference built from the config with perturbed weights,
    saved as stable-audio-tools saves a model, T5 beside it."""
    from safetensors.torch import save_file
    sat = R.sat()
    patch_reference_loaders(monkeypatch, sat, t5_dirs, width=T5_WIDTH)
    source = tiny_source(kind)
    torch.manual_seed(0)
    ref = sat.factory.create_model_from_config(copy.deepcopy(source)).eval()
    undo_reference_fp16(ref.conditioner.conditioners["prompt"], t5_dirs[0])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off the init: zero-initialised branches would hide half the DiT
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    folder = os.path.join(root, f"sao-{kind}")
    os.makedirs(folder)
    with open(os.path.join(folder, "model_config.json"), "w") as f:
        json.dump(source, f)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              os.path.join(folder, "model.safetensors"))
    shutil.copytree(t5_dirs[0], os.path.join(folder, "text_encoder"))
    shutil.copytree(t5_dirs[1], os.path.join(folder, "tokenizer"))
    return folder, ref, sat


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.reference
@pytest.mark.parametrize("kind,sampler,cfg_scale,negative", [
    ("v", "dpmpp-2m", 1.0, False), ("v", "dpmpp-2m", 4.0, False), ("v", "dpmpp-2m", 3.0, True),
    ("rf", "euler", 1.0, False), ("rf", "euler", 2.5, False)])
def test_generation_matches_generate_diffusion_cond(kind, sampler, cfg_scale, negative, t5_dirs,
                                                    tmp_path, monkeypatch):
    from fastaudio import StableAudio
    folder, ref, sat = reference_folder(kind, str(tmp_path), t5_dirs, monkeypatch)
    ours = StableAudio.from_pretrained(folder, device="cpu", dtype="fp32")
    assert ours.model.family.startswith("stable-audio-open")
    window = RATIO * FRAMES / 44100
    prompt, neg = "warm pad with soft drums", "distant thunder"
    seed, steps = 11, 5
    torch.manual_seed(seed)  # the reference's own draw: manual_seed, then randn
    z = torch.randn(1, 8, FRAMES)
    got = ours.generate(prompt, seconds_total=window, steps=steps, cfg_scale=cfg_scale,
                        sampler=sampler, latents=z, negative_prompt=neg if negative else None,
                        cfg_rescale=0.0)
    cond = [{"prompt": prompt, "seconds_start": 0, "seconds_total": window}]
    kw = dict(sampler_type=sampler)
    if kind == "v":
        s = ours.config.sampling
        kw.update(sigma_min=s.sigma_min, sigma_max=s.sigma_max)
    if negative:
        kw["negative_conditioning"] = [{"prompt": neg, "seconds_start": 0, "seconds_total": window}]
    with torch.no_grad():
        want = sat.generation.generate_diffusion_cond(
            ref, steps=steps, cfg_scale=cfg_scale, conditioning=cond, sample_size=RATIO * FRAMES,
            seed=seed, device="cpu", **kw)
    assert got.audio.shape == want.shape == (1, 2, RATIO * FRAMES)
    err = rel_err(got.audio, want)
    assert err <= 1e-4, err
    assert want.abs().max() > 1e-3  # not a silent model


@pytest.mark.reference
def test_same_latents_same_audio_and_seeds_report_themselves(t5_dirs, tmp_path, monkeypatch):
    from fastaudio import StableAudio
    folder, _, _ = reference_folder("rf", str(tmp_path), t5_dirs, monkeypatch)
    pipe = StableAudio.from_pretrained(folder, device="cpu", dtype="fp32")
    window = RATIO * FRAMES / 44100
    z = torch.randn(2, 8, FRAMES)
    a = pipe.generate("rain", seconds_total=window, batch_size=2, latents=z)  # pingpong: noisy steps
    b = pipe.generate("rain", seconds_total=window, batch_size=2, latents=z)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.latents, b.latents)
    c = pipe.generate("rain", seconds_total=window, seed=5)
    d = pipe.generate("rain", seconds_total=window, seed=6)
    assert c.seeds == [5] and d.seeds == [6] and not torch.equal(c.latents, d.latents)
    # item i of a batch is reproduced alone by its own seed
    e = pipe.generate(["rain", "birds"], seconds_total=window, seed=[7, 3])
    f = pipe.generate("birds", seconds_total=window, seed=3)
    torch.testing.assert_close(e.latents[1:], f.latents, rtol=1e-5, atol=1e-6)


def test_presets_have_the_published_sizes():
    from fastaudio.models.dit import DiffusionTransformer
    from fastaudio.models.oobleck import OobleckVAE
    from fastaudio.open_config import open_preset
    counts = {}
    for name in ("stable-audio-open-1.0", "stable-audio-open-small"):
        cfg = open_preset(name)
        with torch.device("meta"):
            dit = DiffusionTransformer(**cfg.dit, diffusion_objective=cfg.diffusion_objective)
            vae = OobleckVAE(**cfg.autoencoder)
        counts[name] = (sum(p.numel() for p in dit.parameters()), sum(p.numel() for p in vae.parameters()))
    assert counts["stable-audio-open-1.0"] == (1_056_828_544, 156_112_514)
    # Small: 340,879,488 with the q/k LayerNorms its checkpoint carries (340,863,104 without)
    assert counts["stable-audio-open-small"] == (340_879_488, 156_112_514)
    assert open_preset("stable-audio-open-1.0").window_seconds == pytest.approx(47.55, abs=0.01)
    assert open_preset("stable-audio-open-small").window_seconds == pytest.approx(11.89, abs=0.01)
    assert open_preset("stable-audio-open-small").sampling.sampler == "pingpong"


# -- bad input ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_folder(tmp_path_factory, t5_dirs):
    mp = pytest.MonkeyPatch()
    try:
        folder, _, _ = reference_folder("v", str(tmp_path_factory.mktemp("good")), t5_dirs, mp)
    finally:
        mp.undo()
    return folder


def _copy(folder, tmp_path, name="bad"):
    out = os.path.join(str(tmp_path), name)
    shutil.copytree(folder, out)
    return out


def _tensors(folder):
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "model.safetensors"))


def _save_tensors(folder, sd):
    from safetensors.torch import save_file
    save_file(sd, os.path.join(folder, "model.safetensors"))


def _edit_config(folder, edit):
    path = os.path.join(folder, "model_config.json")
    with open(path) as f:
        cfg = json.load(f)
    edit(cfg)
    with open(path, "w") as f:
        json.dump(cfg, f)


def _missing_tensor(folder):
    sd = _tensors(folder)
    sd.pop("model.model.transformer.layers.1.self_attn.to_out.weight")
    _save_tensors(folder, sd)


def _unexpected_tensor(folder):
    sd = _tensors(folder)
    sd["model.model.surprise.weight"] = torch.zeros(3)
    _save_tensors(folder, sd)


def _misshaped_tensor(folder):
    sd = _tensors(folder)
    sd["pretransform.model.decoder.layers.0.weight_v"] = torch.zeros(3, 3, 3)
    _save_tensors(folder, sd)


def _truncated(folder):
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _no_t5(folder):
    shutil.rmtree(os.path.join(folder, "text_encoder"))


@pytest.mark.parametrize("breakage,match", [
    (_missing_tensor, r"missing.*layers\.1\.self_attn\.to_out\.weight"),
    (_unexpected_tensor, r"model\.model\.surprise\.weight"),
    (_misshaped_tensor, r"mis-shaped.*decoder\.layers\.0"),
    (_truncated, r"corrupt or truncated"),
    (lambda f: _edit_config(f, lambda c: c["model"]["conditioning"]["configs"][0].update(type="clip")),
     r"'clip'"),
    (lambda f: _edit_config(f, lambda c: c["model"]["diffusion"].update(diffusion_objective="edm")),
     r"diffusion_objective.*'edm'"),
    (lambda f: _edit_config(f, lambda c: c["model"]["diffusion"]["config"].update(depht=3)),
     r"depht"),
    (lambda f: _edit_config(f, lambda c: c["model"]["diffusion"].update(type="mmdit")),
     r"model\.diffusion\.type.*'mmdit'"),
    (_no_t5, r"no T5 text encoder.*text_encoder.*--text-encoder"),
])
def test_bad_folders_are_named(good_folder, tmp_path, monkeypatch, breakage, match):
    from fastaudio.errors import FastAudioError
    from fastaudio.pipeline import StableAudio
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    bad = _copy(good_folder, tmp_path)
    breakage(bad)
    with pytest.raises(FastAudioError, match=match):
        StableAudio.from_pretrained(bad, device="cpu", dtype="fp32")


def _as_hub_snapshot(folder, cache, repo_id, rev, files=None):
    """Lay ``folder`` out as huggingface_hub caches a download: files under blobs/, the snapshot
    made of symlinks to them, refs/main naming the revision. ``files``: only these (relative)."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", rev)
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if files is not None and rel not in files:
                continue
            blob = os.path.join(repo, "blobs", f"{rev}-{rel.replace(os.sep, '_')}")
            os.makedirs(os.path.dirname(blob), exist_ok=True)
            shutil.copyfile(os.path.join(root, name), blob)
            os.makedirs(os.path.dirname(os.path.join(snap, rel)), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(os.path.join(snap, rel))),
                       os.path.join(snap, rel))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    return snap


def test_hub_repo_id_loads_from_the_local_cache_only(good_folder, tmp_path, monkeypatch, capsys):
    """``--model owner/name`` finds the snapshot refs/main names in the Hugging Face cache (files
    are symlinks to blobs there) and generates what the folder generates; an incomplete download
    and an absent repository are errors that say where they looked and how to fetch."""
    from fastaudio import StableAudio
    from fastaudio.cli import main
    from fastaudio.errors import FastAudioError
    cache = str(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    repo_id = "stabilityai/stable-audio-open-1.0"
    _as_hub_snapshot(good_folder, cache, repo_id, "0ld", files={"model_config.json"})
    snap = _as_hub_snapshot(good_folder, cache, repo_id, "c0ffee")
    window = RATIO * FRAMES / 44100
    z = torch.randn(1, 8, FRAMES)
    kw = dict(seconds_total=window, steps=2, latents=z)
    want = StableAudio.from_pretrained(good_folder, device="cpu", dtype="fp32").generate("rain", **kw)
    got = StableAudio.from_pretrained(repo_id, device="cpu", dtype="fp32").generate("rain", **kw)
    assert torch.equal(got.audio, want.audio)

    os.remove(os.path.join(cache, "models--stabilityai--stable-audio-open-1.0", "refs", "main"))
    os.utime(snap, (1, 1))  # without refs/main the newest snapshot is tried first: the incomplete one
    got = StableAudio.from_pretrained(repo_id, device="cpu", dtype="fp32").generate("rain", **kw)
    assert torch.equal(got.audio, want.audio)
    shutil.rmtree(snap)
    with pytest.raises(FastAudioError, match=r"0ld \(no model_index.json.*incomplete download"):
        StableAudio.from_pretrained(repo_id)
    assert main(["generate", "x", "--seconds", "1", "-o", str(tmp_path / "x.wav"), "--model",
                 "stabilityai/stable-audio-open-small"]) == 2
    err = capsys.readouterr().err
    assert "models--stabilityai--stable-audio-open-small (no snapshot)" in err
    assert "huggingface-cli download stabilityai/stable-audio-open-small" in err
    assert "Traceback" not in err
    with pytest.raises(FastAudioError) as e:  # a mistyped file path is not taken for a repo id
        StableAudio.from_pretrained("ckpts/model.safetensors")
    assert "model path not found" in str(e.value) and "huggingface-cli" not in str(e.value)


def test_cli_generates_from_a_sao_folder_and_names_errors(good_folder, tmp_path, capsys):
    from fastaudio.cli import main
    out = str(tmp_path / "x.wav")
    window = RATIO * FRAMES / 44100
    assert main(["generate", "rain on a roof", "--seconds", f"{window:.6f}", "-o", out, "--model",
                 good_folder, "--steps", "3", "--seed", "1", "--device", "cpu"]) == 0
    assert os.path.getsize(out) > 0 and "seed 1" in capsys.readouterr().out
    assert main(["generate", "x", "--seconds", "5", "-o", str(tmp_path / "y.wav"), "--model",
                 good_folder, "--device", "cpu"]) == 2
    assert "past this model's limit" in capsys.readouterr().err and not os.path.exists(tmp_path / "y.wav")
    assert main(["generate", "x", "--seconds", f"{window:.6f}", "-o", str(tmp_path / "z.wav"),
                 "--model", good_folder, "--sampler", "pingpong", "--device", "cpu"]) == 2
    assert "unknown sampler 'pingpong'" in capsys.readouterr().err
    assert main(["generate", "x", "--seconds", f"{window:.6f}", "-o", str(tmp_path / "z.wav"),
                 "--model", good_folder, "--text-encoder", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["info", "--model", good_folder]) == 0
    text = capsys.readouterr().out
    assert "stable-audio-open (DiT)" in text and "T5 32 wide" in text and "dit" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["v", "rf"])
def test_graph_and_eager_agree_on_gpu(kind, t5_dirs, tmp_path, monkeypatch):
    """The DiT step captured in a CUDA graph (then replayed for a second prompt) renders what the
    eager loop renders."""
    from fastaudio import StableAudio
    folder, _, _ = reference_folder(kind, str(tmp_path), t5_dirs, monkeypatch)
    window = RATIO * FRAMES / 44100
    graph = StableAudio.from_pretrained(folder, device="cuda", dtype="fp32", execution="graph")
    eager = StableAudio.from_pretrained(folder, device="cuda", dtype="fp32", execution="eager")
    for prompt in ("rain on a roof", "fast techno beat"):
        kw = dict(seconds_total=window, steps=4, seed=3, cfg_scale=3.0)
        a, b = graph.generate(prompt, **kw).audio, eager.generate(prompt, **kw).audio
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_execution_matches_eager(t5_dirs, tmp_path, monkeypatch):
    """execution="compile" (the DiT frozen and compiled, the Oobleck decoder compiled) renders what
    eager renders, guided (cfg 3) and not."""
    from fastaudio import StableAudio
    folder, _, _ = reference_folder("v", str(tmp_path), t5_dirs, monkeypatch)
    window = RATIO * FRAMES / 44100
    compiled = StableAudio.from_pretrained(folder, device="cpu", dtype="fp32", execution="compile")
    eager = StableAudio.from_pretrained(folder, device="cpu", dtype="fp32", execution="eager")
    for cfg_scale in (1.0, 3.0):
        kw = dict(seconds_total=window, steps=3, seed=2, cfg_scale=cfg_scale, sampler="dpmpp-2m")
        a, b = compiled.generate("rain", **kw).audio, eager.generate("rain", **kw).audio
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
