"""Configs: presets, JSON round trips, the reference format, and strict errors."""
import json
import os

import pytest

from fastaudio.config import (PRESETS, ConfigError, ModelConfig, config_from_json, config_from_obj,
                              config_to_json, preset)
from fastaudio.config_files import load_config, read_model_config
from fastaudio.reference_config import config_from_reference

# Copies of stable-audio-tools' SA1.0 configs (../shared/reference), kept as test data.
REFERENCE = os.path.join(os.path.dirname(__file__), "data")
REF_MODEL = os.path.join(REFERENCE, "stable_audio_1_0.json")
REF_VAE = os.path.join(REFERENCE, "stable_audio_1_0_vae.json")


def _reference_config_dict():
    with open(REF_MODEL) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    again = config_from_json(config_to_json(cfg))
    assert again == cfg


def test_reference_model_config_equals_the_sa10_preset():
    cfg = read_model_config(_reference_config_dict(), "ref")
    ours = preset("stable-audio-1.0")
    cfg.name = ours.name
    assert cfg == ours
    assert cfg.latent_length == 4096
    assert abs(cfg.window_seconds - 95.1) < 0.01


def test_reference_vae_config_reads_the_vae():
    assert load_config(REF_VAE).vae == preset("stable-audio-1.0").vae


def test_unknown_key_is_named():
    data = json.loads(config_to_json(preset("tiny")))
    data["unet"]["multiplierz"] = [1, 2]
    with pytest.raises(ConfigError, match=r"unet\.multiplierz"):
        config_from_obj(data)


def test_wrong_type_is_named():
    data = json.loads(config_to_json(preset("tiny")))
    data["vae"]["encoder"]["strides"] = [4, "4", 8, 8]
    with pytest.raises(ConfigError, match=r"vae\.encoder\.strides\[1\].*integer"):
        config_from_obj(data)
    data = json.loads(config_to_json(preset("tiny")))
    data["unet"]["use_skip_scale"] = 1
    with pytest.raises(ConfigError, match=r"unet\.use_skip_scale.*true/false"):
        config_from_obj(data)


def test_inconsistent_config_is_rejected_naming_the_key():
    data = json.loads(config_to_json(preset("tiny")))
    data["unet"]["in_channels"] = 7
    with pytest.raises(ConfigError, match=r"unet\.in_channels"):
        config_from_obj(data)
    data = json.loads(config_to_json(preset("tiny")))
    data["vae"]["decoder"]["rates"] = [8, 8, 4, 2]
    with pytest.raises(ConfigError, match=r"vae\.decoder\.rates"):
        config_from_obj(data)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="stable-audio-1.0"):
        preset("stable-audio-9")


def test_invalid_json_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid JSON"):
        config_from_json("{nope")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(str(tmp_path / "missing.json"))


def test_reference_format_rejects_what_sa10_is_not():
    data = _reference_config_dict()
    bad = json.loads(json.dumps(data))
    bad["model"]["diffusion"]["type"] = "dit"
    with pytest.raises(ConfigError, match="model.diffusion.type = 'dit'"):
        config_from_reference(bad)
    bad = json.loads(json.dumps(data))
    bad["model"]["conditioning"]["configs"][0]["type"] = "t5"
    with pytest.raises(ConfigError, match="'t5' is not supported"):
        config_from_reference(bad)
    bad = json.loads(json.dumps(data))
    bad["model"]["diffusion"]["config"]["attention_headz"] = 3
    with pytest.raises(ConfigError, match="attention_headz"):
        config_from_reference(bad)
    bad = json.loads(json.dumps(data))
    bad["model"]["surprise"] = 1
    with pytest.raises(ConfigError, match="surprise"):
        config_from_reference(bad)


def test_model_config_derived_figures():
    cfg = preset("tiny")
    assert isinstance(cfg, ModelConfig)
    assert cfg.latent_multiple == 16
    assert cfg.latent_length * cfg.vae.downsampling_ratio == cfg.sample_size
