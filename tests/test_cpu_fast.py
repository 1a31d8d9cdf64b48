"""The CPU switches of fastaudio/cpu_fast.py on a tiny Stable Audio Open model: what dtype=None
means, the decoder's own dtype, dynamic int8 linears, the decoder chunk, and the errors."""
import json
import os

import pytest
import torch

from tiny_t5 import make_tiny_t5

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


def tiny_open_model(t5_dirs, seed=0, kind="rf"):
    from test_open_pipeline import tiny_source

    from fastaudio.models.open_audio import build_open_model
    from fastaudio.open_config import open_config_from_reference
    cfg = open_config_from_reference(tiny_source(kind), f"tiny-{kind}")
    model = build_open_model(cfg, text_encoder_dir=t5_dirs[0], tokenizer_dir=t5_dirs[1], seed=seed)
    with torch.no_grad():  # off the init: zero-initialised output projections would hide the DiT
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.dit.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_default_dtype_follows_the_cpu(t5_dirs, monkeypatch):
    from fastaudio.models.stable_audio import build_model
    from fastaudio.pipeline import StableAudio
    monkeypatch.setenv("FASTAUDIO_CPU_BF16", "1")
    pipe = StableAudio(tiny_open_model(t5_dirs), device="cpu")
    assert pipe.dtype == torch.bfloat16 and pipe.decoder_dtype == torch.bfloat16
    assert pipe.decode_chunk_frames == 128  # the eager bf16 decoder's measured chunk
    assert StableAudio(tiny_open_model(t5_dirs), device="cpu", execution="compile").decode_chunk_frames != 128
    # an explicit dtype always wins; other model families keep fp32
    assert StableAudio(tiny_open_model(t5_dirs), device="cpu", dtype="fp32").decoder_dtype == torch.float32
    assert StableAudio(build_model("tiny"), device="cpu").dtype == torch.float32
    # SAO 1.0's family (v objective, guided) measured under the quality bar in bf16: fp32
    assert StableAudio(tiny_open_model(t5_dirs, kind="v"), device="cpu").dtype == torch.float32
    monkeypatch.setenv("FASTAUDIO_CPU_BF16", "0")
    pipe = StableAudio(tiny_open_model(t5_dirs), device="cpu")
    assert pipe.dtype == torch.float32 and pipe.decoder_dtype == torch.float32


def test_decoder_dtype_and_int8_generate_close_to_fp32(t5_dirs):
    from fastaudio.pipeline import StableAudio
    z = torch.randn(1, 8, 40, generator=torch.Generator().manual_seed(3))
    seconds = 8 * 40 / 44100

    def run(**kw):
        pipe = StableAudio(tiny_open_model(t5_dirs), device="cpu", **kw)
        return pipe, pipe.generate("rain", seconds_total=seconds, steps=4, latents=z, sampler="euler")

    _, ref = run(dtype="fp32")
    pipe, dec = run(dtype="fp32", decoder_dtype="bf16")
    assert pipe.model.vae.decoder.layers[0].weight.dtype == torch.bfloat16
    assert pipe.model.dit.timestep_features.weight.dtype == torch.float32
    assert dec.audio.dtype == torch.float32
    assert torch.equal(dec.latents, ref.latents)  # the DiT is untouched
    err = (dec.audio - ref.audio).norm() / ref.audio.norm()
    assert 0 < err < 0.05
    pipe, q = run(dtype="fp32", quantize="int8")
    from fastaudio.cpu_fast import is_quantized
    assert is_quantized(pipe.model.dit) and pipe.quantize == "int8"
    err = (q.latents - ref.latents).norm() / ref.latents.norm()
    assert 0 < err < 0.2


def test_bad_cpu_options_are_named(t5_dirs):
    from fastaudio.pipeline import GenerationError, StableAudio
    with pytest.raises(GenerationError, match="fp32 backbone"):
        StableAudio(tiny_open_model(t5_dirs), device="cpu", dtype="bf16", quantize="int8")
    with pytest.raises(GenerationError, match="quantize must be one of"):
        StableAudio(tiny_open_model(t5_dirs), device="cpu", dtype="fp32", quantize="int4")
    from fastaudio.cpu_fast import CpuOptionError, set_threads
    with pytest.raises(CpuOptionError):
        set_threads(0)


def test_cli_switches(t5_dirs, tmp_path, capsys):
    """--decoder-dtype, --quantize, --decode-chunk and --threads reach the pipeline."""
    from safetensors.torch import save_file

    from fastaudio.cli import main
    from test_open_pipeline import tiny_source
    import shutil
    model = tiny_open_model(t5_dirs)
    folder = tmp_path / "sao"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(tiny_source("rf")))
    from fastaudio.open_checkpoints import checkpoint_key
    sd = {checkpoint_key(k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"))
    shutil.copytree(t5_dirs[0], folder / "text_encoder")
    shutil.copytree(t5_dirs[1], folder / "tokenizer")
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "a.wav"
        rc = main(["generate", "rain", "--seconds", "0.007", "-o", str(out), "--model", str(folder),
                   "--steps", "2", "--quantize", "int8", "--decoder-dtype", "bf16",
                   "--decode-chunk", "16", "--threads", "1"])
        assert rc in (0, None) and os.path.exists(out)
        printed = capsys.readouterr().out
        assert "float32, decoder bfloat16, int8 linears" in printed
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
