"""Model folders and stable-audio-tools checkpoints through load_model; bad files fail clearly."""
import argparse
import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import reference_impl as R
from fastaudio import CheckpointError, build_model, load_model, save_model
from fastaudio.config import config_to_json, preset
from fastaudio.models.conditioning import ConditioningError


@pytest.fixture(scope="module")
def tiny_model():
    model = build_model("tiny", seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    x = torch.randn(2, cfg.vae.latent_dim, 32, generator=g)
    t = torch.rand(2, generator=g)
    with torch.no_grad():
        ctx, mask = model.conditioner(["a", "bb"], [0, 1], [5, 6])
        return {"ctx": ctx, "v": model.unet(x, t, ctx, mask), "audio": model.vae.decode(x[..., :4])}


def test_save_and_load_round_trip(tmp_path, tiny_model):
    save_model(tiny_model, str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path / "m")) == ["model.safetensors", "model_config.json"]
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.config == tiny_model.config
    want, got = _outputs(tiny_model), _outputs(loaded)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    # the weights file alone (config beside it) loads too
    assert load_model(str(tmp_path / "m" / "model.safetensors")).config == tiny_model.config


def test_folded_and_parametrized_weight_norm_layouts_load(tmp_path, tiny_model):
    want = _outputs(tiny_model)["audio"]
    sd = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    # torch.nn.utils.parametrizations names for half of the convs, folded weights for the rest
    for i, key in enumerate([k for k in sd if k.endswith(".weight_g")]):
        base = key[: -len("weight_g")]
        g, v = sd.pop(key), sd.pop(base + "weight_v")
        if i % 2:
            sd[base + "parametrizations.weight.original0"] = g
            sd[base + "parametrizations.weight.original1"] = v
        else:
            sd[base + "weight"] = g * v / v.norm(dim=(1, 2), keepdim=True)
    folder = tmp_path / "wn"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(config_to_json(tiny_model.config))
    got = _outputs(load_model(str(folder)))["audio"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _write_folder(tmp_path, name, sd, cfg_text):
    folder = tmp_path / name
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(cfg_text)
    return str(folder)


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path, tiny_model):
    sd = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    cfg_text = config_to_json(tiny_model.config)
    missing = dict(sd)
    missing.pop("unet.to_in.block.block1.project.weight")
    with pytest.raises(CheckpointError, match=r"missing \(1\): unet\.to_in\.block\.block1\.project\.weight"):
        load_model(_write_folder(tmp_path, "missing", missing, cfg_text))
    extra = dict(sd, **{"unet.surprise": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected \(1\): unet\.surprise"):
        load_model(_write_folder(tmp_path, "extra", extra, cfg_text))
    other = preset("tiny")
    other.unet.channels = 64  # a checkpoint of another configuration
    with pytest.raises(CheckpointError, match=r"(?s)mis-shaped .*unet\..*another preset"):
        load_model(_write_folder(tmp_path, "other", sd, config_to_json(other)))


def test_checkpoint_of_another_preset_is_refused(tmp_path, tiny_model):
    folder = tmp_path / "m"
    save_model(tiny_model, str(folder))
    (folder / "model_config.json").write_text(config_to_json(preset("small")))
    with pytest.raises(CheckpointError, match="does not fit the model configuration"):
        load_model(str(folder))


def test_corrupt_and_truncated_files(tmp_path, tiny_model):
    folder = tmp_path / "m"
    save_model(tiny_model, str(folder))
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(str(folder))
    weights.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(str(folder))
    weights.unlink()
    torch.save({"state_dict": {"x": torch.zeros(1)}}, folder / "model.ckpt")
    data = (folder / "model.ckpt").read_bytes()
    (folder / "model.ckpt").write_bytes(data[:40])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(str(folder))
    (folder / "model_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(str(folder))


def test_pickled_code_is_not_loaded(tmp_path, tiny_model):
    folder = tmp_path / "m"
    save_model(tiny_model, str(folder))
    (folder / "model.safetensors").unlink()
    torch.save({"state_dict": tiny_model.state_dict(), "code": argparse.Namespace(x=1)},
               folder / "model.ckpt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(str(folder))


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model_config.json"):
        load_model(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------
# stable-audio-tools checkpoints, made here from that implementation's own modules
# ---------------------------------------------------------------------------------------------

def _sat_config(cfg):
    """A stable-audio-tools diffusion_cond config for ``cfg``'s VAE and U-Net sizes."""
    v, u = cfg.vae, cfg.unet
    return {
        "model_type": "diffusion_cond", "sample_size": cfg.sample_size, "sample_rate": 44100,
        "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "iterate_batch": True, "config": {
                "encoder": {"type": "dac", "config": dataclasses.asdict(v.encoder)},
                "decoder": {"type": "dac", "config": dataclasses.asdict(v.decoder)},
                "bottleneck": {"type": "vae"}, "latent_dim": v.latent_dim,
                "downsampling_ratio": 1024, "io_channels": 2}},
            "conditioning": {"configs": [
                {"id": "prompt", "type": "clap_text", "config": {
                    "audio_model_type": "HTSAT-base", "enable_fusion": True,
                    "clap_ckpt_path": "clap.ckpt", "use_text_features": True, "feature_layer_ix": -2}},
                {"id": "seconds_start", "type": "int", "config": {"min_val": 0, "max_val": 512}},
                {"id": "seconds_total", "type": "int", "config": {"min_val": 0, "max_val": 512}}],
                "cond_dim": 768},
            "diffusion": {"type": "adp_cfg_1d",
                          "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                          "config": R.unet_kwargs(u)},
            "io_channels": v.latent_dim,
        },
    }


@pytest.fixture(scope="module")
def sat_checkpoint(tmp_path_factory):
    """(folder, reference modules) of a stable-audio-tools-format checkpoint."""
    adp, dac = R.adp(), R.dac()
    cfg = preset("tiny")
    cfg.unet = dataclasses.replace(cfg.unet, context_embedding_features=768)
    torch.manual_seed(5)
    unet = adp.UNetCFG1d(**R.unet_kwargs(cfg.unet)).eval()
    e = cfg.vae.encoder
    enc = dac.model.Encoder(d_model=e.d_model, strides=e.strides, d_latent=e.d_model * 16)
    enc.block[0] = dac.layers.WNConv1d(2, e.d_model, kernel_size=7, padding=3)
    proj = torch.nn.Conv1d(enc.enc_dim, e.latent_dim, 1)
    d = cfg.vae.decoder
    dec = dac.model.Decoder(d.latent_dim, d.channels, d.rates, d_out=2).eval()
    start, total = torch.nn.Embedding(513, 768), torch.nn.Embedding(513, 768)
    sd = {}
    sd.update({"model.model." + k: v for k, v in unet.state_dict().items()})
    sd.update({"pretransform.model.encoder.encoder." + k: v for k, v in enc.state_dict().items()})
    sd.update({"pretransform.model.encoder.proj_out." + k: v for k, v in proj.state_dict().items()})
    sd.update({"pretransform.model.decoder.decoder." + k: v for k, v in dec.state_dict().items()})
    sd["conditioner.conditioners.seconds_start.int_embedder.weight"] = start.weight.detach()
    sd["conditioner.conditioners.seconds_total.int_embedder.weight"] = total.weight.detach()
    folder = tmp_path_factory.mktemp("sat")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "model_config.json").write_text(json.dumps(_sat_config(cfg)))
    refs = {"unet": unet, "enc": enc, "proj": proj, "dec": dec, "start": start, "total": total,
            "cfg": cfg, "sd": sd}
    return str(folder), refs


@pytest.mark.reference
def test_stable_audio_tools_checkpoint_loads_and_reproduces_outputs(sat_checkpoint):
    folder, ref = sat_checkpoint
    model = load_model(folder)
    cfg = ref["cfg"]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.vae.latent_dim, 32, generator=g)
    t = torch.rand(2, generator=g)
    ctx = torch.randn(2, 79, 768, generator=g)
    mask = torch.ones(2, 79, dtype=torch.bool)
    mask[1, 10:77] = False
    audio = torch.randn(1, 2, 4096, generator=g) * 0.3
    with torch.no_grad():
        want_v = ref["unet"](x, t, embedding=ctx, embedding_mask=mask)
        got_v = model.unet(x, t, ctx, mask)
        want_z = ref["proj"](ref["enc"](audio))[:, : cfg.vae.latent_dim]
        got_z = model.vae.encode(audio)
        want_a = ref["dec"](x[..., :4])
        got_a = model.vae.decode(x[..., :4])
    assert (got_v - want_v).abs().max() <= 1e-5 * want_v.abs().max()
    assert (got_z - want_z).abs().max() <= 1e-5 * want_z.abs().max()
    assert (got_a - want_a).abs().max() <= 1e-5 * want_a.abs().max()
    torch.testing.assert_close(model.conditioner.seconds_total.int_embedder.weight, ref["total"].weight)
    # its CLAP is a separate file that is absent here: prompts fail clearly, not silently
    with pytest.raises(ConditioningError, match="CLAP text encoder .* was not loaded"):
        model.conditioner(["piano"], 0, 10)


@pytest.mark.reference
def test_stable_audio_tools_ckpt_file_and_training_layout(sat_checkpoint, tmp_path):
    folder, ref = sat_checkpoint
    cfg_text = open(os.path.join(folder, "model_config.json")).read()
    sub = tmp_path / "ckpt"
    sub.mkdir()
    (sub / "model_config.json").write_text(cfg_text)
    torch.save({"state_dict": {"diffusion." + k: v for k, v in ref["sd"].items()}}, sub / "model.ckpt")
    model = load_model(str(sub))
    torch.testing.assert_close(model.unet.fixed_embedding.embedding.weight,
                               ref["unet"].fixed_embedding.embedding.weight)
    bad = dict(ref["sd"], **{"model.surprise.weight": torch.zeros(1)})
    torch.save({"state_dict": bad}, sub / "model.ckpt")
    with pytest.raises(CheckpointError, match="model.surprise.weight"):
        load_model(str(sub))


@pytest.mark.reference
def test_training_checkpoint_loads_its_ema_denoiser(sat_checkpoint, tmp_path):
    """A training checkpoint with an EMA (stable-audio-tools' DiffusionCondTrainingWrapper keeps
    EMA(diffusion.model) under diffusion_ema.ema_model.) loads the EMA denoiser, as the
    reference's export_model writes it; the rest (conditioner, VAE) comes from diffusion.; an
    EMA that does not mirror the denoiser is an error naming the tensors."""
    folder, ref = sat_checkpoint
    sub = tmp_path / "train"
    sub.mkdir()
    (sub / "model_config.json").write_text(open(os.path.join(folder, "model_config.json")).read())
    online = {"diffusion." + k: (v + 1.0 if k.startswith("model.") and v.is_floating_point() else v)
              for k, v in ref["sd"].items()}
    ema = {"diffusion_ema.ema_model." + k[len("model."):]: v for k, v in ref["sd"].items()
           if k.startswith("model.")}
    extra = {"diffusion_ema.initted": torch.tensor(True), "diffusion_ema.step": torch.tensor(7)}
    torch.save({"state_dict": {**online, **ema, **extra}}, sub / "model.ckpt")
    model = load_model(str(sub))
    torch.testing.assert_close(model.unet.fixed_embedding.embedding.weight,
                               ref["unet"].fixed_embedding.embedding.weight)
    torch.testing.assert_close(model.conditioner.seconds_total.int_embedder.weight, ref["total"].weight)
    dropped = dict(ema)
    dropped.pop(sorted(dropped)[0])
    torch.save({"state_dict": {**online, **dropped}}, sub / "model.ckpt")
    with pytest.raises(CheckpointError, match="EMA .* hold different tensors"):
        load_model(str(sub))
