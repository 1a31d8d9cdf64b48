"""The model that ships inside the package: it loads offline and renders audio."""
import json
import os

import pytest
import torch

from fastaudio.assets import DEFAULT_MODEL, default_model_path

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="this build ships no default model")


def test_shipped_weights_are_small_and_documented():
    size = sum(os.path.getsize(os.path.join(DEFAULT_MODEL, f)) for f in os.listdir(DEFAULT_MODEL))
    assert size < 80 * 2 ** 20, f"{size / 2 ** 20:.0f} MiB"
    records = [f for f in os.listdir(DEFAULT_MODEL) if f.startswith("training-") and f.endswith(".json")]
    stages = set()
    for name in records:  # training-<stage>.json, continuations training-<stage>-2.json, ...
        with open(os.path.join(DEFAULT_MODEL, name)) as f:
            record = json.load(f)
        assert name.startswith(f"training-{record['stage']}"), name
        assert record["steps"] > 0 and record["final_log"] and record["wall_time_s"] > 0
        stages.add(record["stage"])
    assert stages == {"vae", "clap", "diffusion"}, records


def test_shipped_model_renders_a_clip_offline():
    from fastaudio.pipeline import StableAudio
    pipe = StableAudio.from_pretrained(default_model_path(), device="cpu", dtype="fp32")
    audio = pipe.generate("a slow solo piano melody in D minor, 70 BPM", seconds_total=2.0, steps=4,
                          seed=0).audio
    assert audio.shape == (1, 2, 88200) and torch.isfinite(audio).all()
    assert audio.abs().max() > 1e-4  # not silence
