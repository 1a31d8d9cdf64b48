"""Stable Audio Open 1.0 in diffusers' StableAudioPipeline layout.

A folder is made here with diffusers' own classes – a tiny random StableAudioDiTModel,
AutoencoderOobleck and StableAudioProjectionModel (weights moved off their initialisation), the
tiny T5 and tokenizer of tests/tiny_t5.py, CosineDPMSolverMultistepScheduler – and saved by
``StableAudioPipeline.save_pretrained``; nothing is downloaded. fastaudio loads it and is compared,
in fp32, with diffusers' modules on the same inputs: the DiT (rel. error <= 1e-5), the VAE's
decode and encode, the conditioning (``encode_prompt`` + ``encode_duration`` as the pipeline
assembles them), then whole generations (<= 1e-4 on the audio).

End to end, both sides need the same sampler. diffusers' CosineDPMSolverMultistepScheduler is an
SDE solver only (every step adds Brownian-tree noise), so the comparison swaps in diffusers'
EDMDPMSolverMultistepScheduler in its deterministic DPM-Solver++(2M) mode over the same
exponential sigmas (sigma_min 0.3, sigma_max 500, sigma_data 1, v-prediction), with one change:
its timestep is the DiT's atan(σ)·2/π, as CosineDPMSolverMultistepScheduler computes it (EDM's own
is 0.25·log σ). fastaudio's dpmpp-2m is that update over the same sigmas (the lists are compared);
diffusers' initial noise is scaled by its init_noise_sigma √(σ_max² + 1), fastaudio's by σ_max, so
diffusers gets ``z · σ_max / √(σ_max² + 1)``.
"""
import inspect
import json
import math
import os
import shutil

import pytest
import torch

from tiny_t5 import make_tiny_t5
from fastaudio.diffusers_checkpoints import load_diffusers_model
from fastaudio.diffusers_config import (PROJECTION_KEYS, SCHEDULER_DEFAULTS, TRANSFORMER_DEFAULTS,
                                        VAE_DEFAULTS, reference_config)
from fastaudio.state_dicts import CheckpointError

diffusers = pytest.importorskip("diffusers")

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

T5_WIDTH, COND_DIM, LATENT, FRAMES, RATIO, RATE, MAX_TOKENS = 32, 64, 8, 16, 8, 1000, 24
# SAO 1.0's structure, tiny: 2 query heads of 64 share 1 key/value head over 64-wide tokens
SAO_DIT = dict(sample_size=FRAMES, in_channels=LATENT, out_channels=LATENT, num_layers=2,
               attention_head_dim=64, num_attention_heads=2, num_key_value_attention_heads=1,
               cross_attention_dim=COND_DIM, cross_attention_input_dim=COND_DIM,
               global_states_input_dim=2 * COND_DIM, time_proj_dim=256)
# tokens as wide as T5 (no text projection: an Identity) projected to the model width (128),
# 2 key/value heads
PROJECTED_DIT = dict(SAO_DIT, cross_attention_dim=128, num_key_value_attention_heads=2,
                     cross_attention_input_dim=T5_WIDTH, global_states_input_dim=2 * T5_WIDTH)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def save_pipeline(root, t5_dirs, dit_kwargs, cond_dim=COND_DIM, seed=0):
    """A StableAudioPipeline folder made with diffusers' classes, weights off their init."""
    from transformers import AutoTokenizer, T5EncoderModel
    torch.manual_seed(seed)
    transformer = diffusers.StableAudioDiTModel(**dit_kwargs)
    vae = diffusers.AutoencoderOobleck(encoder_hidden_size=2 * LATENT, downsampling_ratios=[2, 4],
                                       channel_multiples=[1, 2], decoder_channels=4,
                                       decoder_input_channels=LATENT, audio_channels=2,
                                       sampling_rate=RATE)
    # the text projection is a Linear when T5 is narrower than the tokens, else an Identity
    projection = diffusers.StableAudioProjectionModel(text_encoder_dim=T5_WIDTH,
                                                      conditioning_dim=cond_dim, min_value=0,
                                                      max_value=0.2)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # zero norms' biases and snakes' log-scales would hide mapping slips
        for module in (transformer, vae, projection):
            for p in module.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    pipe = diffusers.StableAudioPipeline(
        vae=vae, text_encoder=T5EncoderModel.from_pretrained(t5_dirs[0]),
        projection_model=projection,
        tokenizer=AutoTokenizer.from_pretrained(t5_dirs[1], model_max_length=MAX_TOKENS),
        transformer=transformer, scheduler=diffusers.CosineDPMSolverMultistepScheduler())
    folder = os.path.join(str(root), "pipeline")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def sao_folder(tmp_path_factory, t5_dirs):
    return save_pipeline(tmp_path_factory.mktemp("sao"), t5_dirs, SAO_DIT)


def read_back(folder):
    """(folder, diffusers' pipeline read back from it, fastaudio's model)."""
    pipe = diffusers.StableAudioPipeline.from_pretrained(folder, local_files_only=True)
    return folder, pipe, load_diffusers_model(folder)


@pytest.fixture(scope="module")
def sao(sao_folder):
    return read_back(sao_folder)


@pytest.fixture(scope="module")
def projected(tmp_path_factory, t5_dirs):
    return read_back(save_pipeline(tmp_path_factory.mktemp("projected"), t5_dirs, PROJECTED_DIT,
                                   cond_dim=T5_WIDTH, seed=3))


# -- configs ---------------------------------------------------------------------------------------

def test_known_keys_and_defaults_are_diffusers():
    def defaults(cls):
        params = inspect.signature(cls.__init__).parameters
        return {k: p.default for k, p in params.items() if k != "self"}
    assert defaults(diffusers.StableAudioDiTModel) == TRANSFORMER_DEFAULTS
    assert defaults(diffusers.AutoencoderOobleck) == VAE_DEFAULTS
    assert defaults(diffusers.CosineDPMSolverMultistepScheduler) == SCHEDULER_DEFAULTS
    assert tuple(defaults(diffusers.StableAudioProjectionModel)) == PROJECTION_KEYS


def test_folder_reads_as_sao_1_0_structure(sao):
    from fastaudio.checkpoints import load_model
    folder, _, model = sao
    cfg = model.config
    assert (cfg.sample_size, cfg.sample_rate, cfg.objective) == (FRAMES * RATIO, RATE, "v")
    assert cfg.cross_attention_ids == ["prompt", "seconds_start", "seconds_total"]
    assert cfg.global_ids == ["seconds_start", "seconds_total"]
    prompt, start, total = cfg.conditioning["configs"]
    assert prompt["config"]["max_length"] == MAX_TOKENS  # the tokenizer's model_max_length
    assert start["config"] == total["config"] == {"min_val": 0, "max_val": 0.2}
    assert cfg.dit["project_cond_tokens"] is False
    s = cfg.sampling
    assert (s.sampler, s.sigma_min, s.sigma_max, s.schedule, s.rho) == (
        "dpmpp-3m-sde", 0.3, 500.0, "polyexponential", 1.0)
    assert model.text_encoder_source == os.path.join(folder, "text_encoder")
    assert load_model(folder).family == model.family  # load_model dispatches on model_index.json


def write_conversion_configs(folder, source):
    """The configs diffusers' scripts/convert_stable_audio.py writes for a stable-audio-tools
    config (no weights): its sample_size is a float division, its tokenizer length max_length."""
    dit = source["model"]["diffusion"]["config"]
    ae = source["model"]["pretransform"]["config"]
    numbers = {c["id"]: c["config"] for c in source["model"]["conditioning"]["configs"]}
    head = dit["embed_dim"] // dit["num_heads"]
    enc, dec = ae["encoder"]["config"], ae["decoder"]["config"]
    classes = {"projection_model": ["stable_audio", "StableAudioProjectionModel"],
               "scheduler": ["diffusers", "CosineDPMSolverMultistepScheduler"],
               "text_encoder": ["transformers", "T5EncoderModel"],
               "tokenizer": ["transformers", "T5TokenizerFast"],
               "transformer": ["diffusers", "StableAudioDiTModel"],
               "vae": ["diffusers", "AutoencoderOobleck"]}
    files = {
        "model_index.json": {"_class_name": "StableAudioPipeline",
                             "_diffusers_version": "0.30.0", **classes},
        "transformer/config.json": {
            "_class_name": "StableAudioDiTModel",
            "sample_size": source["sample_size"] / ae["downsampling_ratio"],
            "in_channels": dit["io_channels"], "out_channels": dit["io_channels"],
            "num_layers": dit["depth"], "attention_head_dim": head,
            "num_attention_heads": dit["num_heads"],
            "num_key_value_attention_heads": dit["cond_token_dim"] // head,
            "cross_attention_dim": dit["cond_token_dim"], "time_proj_dim": 256,
            "global_states_input_dim": dit["global_cond_dim"],
            "cross_attention_input_dim": dit["cond_token_dim"]},
        "vae/config.json": {
            "_class_name": "AutoencoderOobleck", "encoder_hidden_size": enc["channels"],
            "downsampling_ratios": enc["strides"], "channel_multiples": enc["c_mults"],
            "decoder_channels": dec["channels"], "decoder_input_channels": dec["latent_dim"],
            "audio_channels": ae["io_channels"], "sampling_rate": source["sample_rate"]},
        "projection_model/config.json": {  # the script assumes both ranges are seconds_start's
            "_class_name": "StableAudioProjectionModel", "text_encoder_dim": 768,
            "conditioning_dim": source["model"]["conditioning"]["cond_dim"],
            "min_value": numbers["seconds_start"]["min_val"],
            "max_value": numbers["seconds_start"]["max_val"]},
        "scheduler/scheduler_config.json": {
            "_class_name": "CosineDPMSolverMultistepScheduler", "sigma_min": 0.3,
            "sigma_max": 500, "solver_order": 2, "prediction_type": "v_prediction",
            "sigma_data": 1.0, "sigma_schedule": "exponential"},
        "tokenizer/tokenizer_config.json": {"model_max_length": numbers["prompt"]["max_length"]},
    }
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            json.dump(data, f)


def test_sao_1_0_conversion_configs_translate_back_to_its_config(tmp_path):
    """Full-size SAO 1.0 configs as diffusers' conversion writes them (no weights) read back as
    the published stable-audio-tools config."""
    from fastaudio.open_config import open_config_from_reference, open_preset, sao_1_0_source
    write_conversion_configs(str(tmp_path), sao_1_0_source())
    source, sampling = reference_config(str(tmp_path))
    ours, preset = open_config_from_reference(source), open_preset("stable-audio-open-1.0")
    assert ours.dit == preset.dit
    assert (ours.sample_size, ours.sample_rate, ours.latent_length) == (
        preset.sample_size, preset.sample_rate, preset.latent_length)
    assert ours.conditioning == preset.conditioning
    assert ours.cross_attention_ids == preset.cross_attention_ids
    assert ours.global_ids == preset.global_ids
    for part in ("encoder", "decoder"):
        assert ours.autoencoder[part]["config"] == preset.autoencoder[part]["config"]
    assert {k: v for k, v in ours.autoencoder.items() if k not in ("encoder", "decoder")} == \
        {k: v for k, v in preset.autoencoder.items() if k not in ("encoder", "decoder")}
    assert (sampling["sigma_min"], sampling["sigma_max"]) == (preset.sampling.sigma_min,
                                                              preset.sampling.sigma_max)


# -- components against diffusers' modules ---------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("layout", ["sao", "projected"])
def test_transformer_matches_diffusers(layout, request):
    from diffusers.models.embeddings import get_1d_rotary_pos_embed
    _, pipe, model = request.getfixturevalue(layout)
    assert model.config.dit["project_cond_tokens"] is (layout == "projected")
    theirs, ours = pipe.transformer, model.dit
    batch, tokens, width = 3, 7, model.config.conditioning["cond_dim"]
    x = torch.randn(batch, LATENT, FRAMES)
    t = torch.rand(batch)
    context = torch.randn(batch, tokens, width)
    glob = torch.randn(batch, 2 * width)
    # the pipeline's rotary table: head_dim // 2 channels over the latents and the global token
    rotary = get_1d_rotary_pos_embed(64 // 2, FRAMES + 1, use_real=True,
                                     repeat_interleave_real=False)
    with torch.no_grad():
        want = theirs(x, t, encoder_hidden_states=context, global_hidden_states=glob[:, None],
                      rotary_embedding=rotary, return_dict=False)[0]
        got = ours(x, t, cross_attn_cond=context, global_embed=glob)
    assert want.abs().max() > 1e-3
    assert rel_err(got, want) <= 1e-5


@pytest.mark.reference
def test_vae_matches_diffusers(sao):
    _, pipe, model = sao
    latents = torch.randn(2, LATENT, FRAMES)
    audio = torch.randn(2, 2, FRAMES * RATIO) * 0.3
    with torch.no_grad():
        want_audio = pipe.vae.decode(latents).sample
        got_audio = model.vae.decode(latents)
        want_latents = pipe.vae.encode(audio).latent_dist.mode()
        got_latents = model.vae.encode(audio)
    assert got_audio.shape == want_audio.shape and got_latents.shape == want_latents.shape
    assert rel_err(got_audio, want_audio) <= 1e-5
    assert rel_err(got_latents, want_latents) <= 1e-5


@pytest.mark.reference
@pytest.mark.parametrize("layout", ["sao", "projected"])
def test_conditioning_matches_pipeline(layout, request):
    """Prompt tokens (through the text projection, padding zeroed), then seconds_start and
    seconds_total tokens; the global input is the two seconds side by side – as the pipeline
    concatenates them."""
    _, pipe, model = request.getfixturevalue(layout)
    width = model.config.conditioning["cond_dim"]
    prompts = ["warm pad", "rain on a tin roof at night fast techno beat with deep bass", ""]
    starts, totals = [0.0, 0.03, 0.5], [0.1, 0.05, 3.0]  # the last ones beyond max_value: clamped
    with torch.no_grad():
        cond = model.encode_conditioning(prompts, starts, totals)
        text = pipe.encode_prompt(prompts, "cpu", False)
        start, end = pipe.encode_duration(starts, totals, "cpu", False, len(prompts))
    want_cross = torch.cat([text, start, end], dim=1)
    want_global = torch.cat([start, end], dim=2).squeeze(1)
    assert cond.cross_attn_cond.shape == want_cross.shape == (3, MAX_TOKENS + 2, width)
    assert rel_err(cond.cross_attn_cond, want_cross) <= 1e-5
    assert rel_err(cond.global_embed, want_global) <= 1e-5


class AtanDPMSolver(diffusers.EDMDPMSolverMultistepScheduler):
    """Deterministic DPM-Solver++(2M) feeding the DiT t = atan(σ)·2/π, as
    CosineDPMSolverMultistepScheduler does (see the module docstring)."""

    def precondition_noise(self, sigma):
        sigma = sigma if isinstance(sigma, torch.Tensor) else torch.tensor([sigma])
        return sigma.atan() / math.pi * 2


@pytest.mark.reference
@pytest.mark.parametrize("cfg_scale,negative", [(1.0, None), (4.0, None), (3.0, "distant thunder")])
def test_generation_matches_stable_audio_pipeline(cfg_scale, negative, sao):
    from fastaudio import StableAudio
    from fastaudio.diffusion.objectives import objective
    folder, pipe, _ = sao
    ours = StableAudio.from_pretrained(folder, device="cpu", dtype="fp32")
    steps, seconds, prompt = 4, 0.096, "warm pad"
    s = ours.config.sampling
    pipe.scheduler = AtanDPMSolver(sigma_min=s.sigma_min, sigma_max=s.sigma_max, sigma_data=1.0,
                                   sigma_schedule="exponential", prediction_type="v_prediction",
                                   algorithm_type="dpmsolver++", solver_order=2,
                                   final_sigmas_type="zero")
    pipe.scheduler.set_timesteps(steps)
    sigmas = objective("v").schedule(steps, s, None, None, FRAMES)
    theirs = pipe.scheduler.sigmas.double()  # float32 there, float64 here
    assert torch.allclose(torch.tensor(sigmas, dtype=torch.float64), theirs, rtol=1e-6, atol=0), \
        (sigmas, theirs.tolist())
    z = torch.randn(1, LATENT, FRAMES)
    got = ours.generate(prompt, seconds_total=seconds, steps=steps, cfg_scale=cfg_scale,
                        sampler="dpmpp-2m", latents=z, negative_prompt=negative, cfg_rescale=0.0)
    with torch.no_grad():
        want = pipe(prompt, audio_end_in_s=seconds, num_inference_steps=steps,
                    guidance_scale=cfg_scale, negative_prompt=negative, output_type="pt",
                    latents=z * sigmas[0] / pipe.scheduler.init_noise_sigma).audios
    assert got.audio.shape == want.shape == (1, 2, round(seconds * RATE))
    assert want.abs().max() > 1e-3
    assert rel_err(got.audio, want) <= 1e-4


# -- folders that do not load ----------------------------------------------------------------------

@pytest.fixture
def copy_of(sao_folder, tmp_path):
    folder = str(tmp_path / "copy")
    shutil.copytree(sao_folder, folder)
    return folder


def edit_json(path, **changes):
    with open(path) as f:
        data = json.load(f)
    data.update(changes)
    with open(path, "w") as f:
        json.dump(data, f)


@pytest.mark.parametrize("component", ["transformer", "vae", "projection_model", "text_encoder",
                                       "tokenizer", "scheduler"])
def test_missing_component_folder_is_named(component, copy_of):
    shutil.rmtree(os.path.join(copy_of, component))
    with pytest.raises(CheckpointError, match=f"component folder {component}/ is missing"):
        load_diffusers_model(copy_of)


def test_text_encoder_can_come_from_elsewhere(copy_of, t5_dirs):
    shutil.rmtree(os.path.join(copy_of, "text_encoder"))
    model = load_diffusers_model(copy_of, text_encoder=t5_dirs[0])
    assert model.text_encoder_source == t5_dirs[0]


def test_corrupt_weights_are_named(copy_of):
    path = os.path.join(copy_of, "transformer", "diffusion_pytorch_model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(CheckpointError, match=r"transformer/diffusion_pytorch_model\.safetensors "
                                              r"is not a readable safetensors file"):
        load_diffusers_model(copy_of)


DIT_JSON, VAE_JSON = "transformer/config.json", "vae/config.json"
SCHEDULER_JSON = "scheduler/scheduler_config.json"


@pytest.mark.parametrize("file,changes,match", [
    (DIT_JSON, {"use_fancy_norm": True}, r"transformer/config\.json: unknown key 'use_fancy_norm'"),
    (VAE_JSON, {"upsample_mode": "nearest"}, r"vae/config\.json: unknown key 'upsample_mode'"),
    (SCHEDULER_JSON, {"thresholding": False}, r"unknown key 'thresholding'"),
    (DIT_JSON, {"attention_head_dim": 32}, r"transformer/config\.json: attention_head_dim = 32"),
    (DIT_JSON, {"time_proj_dim": 128}, "time_proj_dim = 128"),
    (DIT_JSON, {"cross_attention_dim": 96}, "cross_attention_dim = 96"),
    (VAE_JSON, {"audio_channels": 1}, "audio_channels = 1 is not supported: fastaudio renders st"),
    (VAE_JSON, {"encoder_hidden_size": 32}, "encoder_hidden_size = 32"),
    (SCHEDULER_JSON, {"prediction_type": "epsilon"}, "prediction_type = 'epsilon'"),
    (SCHEDULER_JSON, {"_class_name": "DDIMScheduler"}, "'DDIMScheduler' is not supported"),
    ("tokenizer/tokenizer_config.json", {"model_max_length": int(1e30)}, "model_max_length"),
    ("model_index.json", {"_class_name": "AudioLDMPipeline"}, "is not 'StableAudioPipeline'"),
    ("model_index.json", {"vae": ["diffusers", "AutoencoderKL"]}, "vae is a 'AutoencoderKL'"),
])
def test_config_that_fastaudio_cannot_represent_is_named(file, changes, match, copy_of):
    edit_json(os.path.join(copy_of, file), **changes)
    with pytest.raises(CheckpointError, match=match):
        load_diffusers_model(copy_of)


def test_missing_and_unexpected_tensors_are_named(copy_of):
    from safetensors.torch import load_file, save_file
    path = os.path.join(copy_of, "vae", "diffusion_pytorch_model.safetensors")
    sd = load_file(path)
    removed = sd.pop("decoder.block.1.res_unit2.conv1.weight_v")
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model\.safetensors does "
                                              r"not fit(.|\n)*missing(.|\n)*"
                                              r"vae\.decoder\.layers\.2\.layers\.3"):
        load_diffusers_model(copy_of)
    sd["decoder.block.1.res_unit2.conv1.weight_v"] = removed
    sd["decoder.block.7.snake1.alpha"] = sd["decoder.snake1.alpha"].clone()  # no 8th block
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"not part of an AutoencoderOobleck(.|\n)*"
                                              r"decoder\.block\.7\.snake1\.alpha"):
        load_diffusers_model(copy_of)


def test_a_missing_attention_projection_is_named(copy_of):
    from safetensors.torch import load_file, save_file
    path = os.path.join(copy_of, "transformer", "diffusion_pytorch_model.safetensors")
    sd = load_file(path)
    del sd["transformer_blocks.1.attn2.to_v.weight"]
    save_file(sd, path)
    with pytest.raises(CheckpointError, match=r"missing tensor transformer_blocks\.1\.attn2\.to_v"):
        load_diffusers_model(copy_of)


def test_weight_variants_are_not_picked_silently(copy_of):
    base = os.path.join(copy_of, "vae", "diffusion_pytorch_model")
    os.rename(base + ".safetensors", base + ".fp16.safetensors")
    with pytest.raises(CheckpointError, match=r"only variants are present "
                                              r"\(diffusion_pytorch_model\.fp16\.safetensors\)"):
        load_diffusers_model(copy_of)
