"""The SA1.0 preset has the paper's and the reference's parameter counts (built on meta)."""
import pytest
import torch

from fastaudio import build_model
from fastaudio.models.unet import Attention, TransformerBlock


@pytest.fixture(scope="module")
def sa10():
    return build_model("stable-audio-1.0", device="meta")


def _close(got, want, rel=1e-3):
    return abs(got - want) <= rel * want


def test_vae_parameter_count(sa10):
    counts = sa10.parameter_counts()
    assert _close(counts["vae"], 133.43e6), counts["vae"]
    assert _close(counts["vae.encoder"], 89.57e6), counts["vae.encoder"]
    assert _close(counts["vae.decoder"], 43.86e6), counts["vae.decoder"]


def test_unet_parameter_count(sa10):
    assert _close(sa10.parameter_counts()["unet"], 906.68e6), sa10.parameter_counts()["unet"]


def test_unet_structure(sa10):
    blocks = [m for m in sa10.unet.modules() if isinstance(m, TransformerBlock)]
    assert len(blocks) == 23
    head_dims = {m.to_q.out_features // m.num_heads for m in sa10.unet.modules()
                 if isinstance(m, Attention)}
    assert head_dims == {64, 80}
    assert tuple(sa10.unet.fixed_embedding.embedding.weight.shape) == (79, 768)


def test_timing_tables_and_text_tower(sa10):
    for table in (sa10.conditioner.seconds_start, sa10.conditioner.seconds_total):
        assert tuple(table.int_embedder.weight.shape) == (513, 768)
    text = sa10.conditioner.clap.text_branch
    assert len(text.encoder.layer) == 12
    assert tuple(text.embeddings.word_embeddings.weight.shape) == (50265, 768)
    assert all(p.device.type == "meta" for p in sa10.parameters())
    assert sa10.unet.fixed_embedding.embedding.weight.dtype == torch.float32


@pytest.mark.slow
def test_unet_flops_match_the_design_figures():
    """DESIGN.md: ~2.29 TFLOP per forward per item at L=4096, the attention core ~12 % of it; the
    core grows almost with the square of the length (self-attention; cross-attention to 79 tokens
    is linear), the rest linearly."""
    from fastaudio.flops import unet_flops
    full = unet_flops("stable-audio-1.0", 4096, 1)
    assert abs(full["total"] / 1e12 - 2.29) < 0.02, full
    share = full["attention_core"] / full["total"]
    assert 0.10 < share < 0.14, share
    half = unet_flops("stable-audio-1.0", 2048, 1)
    assert 3.5 < full["attention_core"] / half["attention_core"] < 4.0
    rest_full, rest_half = (f["total"] - f["attention_core"] for f in (full, half))
    assert abs(rest_half * 2 / rest_full - 1) < 0.02
    assert abs(unet_flops("stable-audio-1.0", 4096, 2)["total"] / full["total"] - 2) < 1e-6


@pytest.mark.slow
def test_cached_keys_values_leave_out_exactly_the_context_projections():
    """With the cross-attention keys/values passed in, the count drops by the K/V projections:
    2 · tokens · context features · (2 · heads · head features) per cross-attention layer and
    context row, counted here from the layer shapes, independently of the flop counter."""
    import torch
    from fastaudio.config import preset
    from fastaudio.flops import unet_flops
    from fastaudio.models.unet import UNet1d
    for name, frames, groups in [("stable-audio-1.0", 4096, 2), ("small", 512, 2), ("tiny", 48, 3)]:
        cfg = preset(name)
        with torch.device("meta"):
            unet = UNet1d(cfg.unet)
        tokens = cfg.unet.context_embedding_max_length
        projections = groups * sum(2 * tokens * b.cross_attention.to_kv.in_features *
                                   b.cross_attention.to_kv.out_features
                                   for b in unet.cross_attention_blocks())
        full = unet_flops(name, frames, 1, groups)
        cached = unet_flops(name, frames, 1, groups, cached_context_kv=True)
        assert projections > 0
        assert abs(full["total"] - cached["total"] - projections) <= 1e-9 * full["total"], name
        assert cached["attention_core"] == full["attention_core"]
