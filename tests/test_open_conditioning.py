"""Stable Audio Open conditioning against stable-audio-tools 0.0.19: number conditioners, the T5
conditioner (a tiny random T5 and a tokenizer trained here: nothing is downloaded), the
assembly into cross-attention / global inputs, and where T5 is looked for.

Inputs and weights are fresh random draws each run; a failure prints what it saw.
"""
import logging
import os
import random
import types

import pytest
import torch

import reference_impl as R
from tiny_t5 import WORDS, make_tiny_t5, patch_reference_loaders, sentence, undo_reference_fp16  # noqa: F401
from fastaudio.models.number_conditioning import NumberConditioner, NumberConditioningError
from fastaudio.models.open_conditioning import (ConditioningConfigError, OpenConditioner, assemble,
                                                conditioner_state)
from fastaudio.hub_cache import hf_hub_cache
from fastaudio.models.t5_text import (T5Conditioner, TextEncoderNotFoundError, locate_t5,
                                      random_t5_folder)
from fastaudio.models.tokenizer import TokenizerError

# the reference T5Conditioner's `torch.cuda.amp.autocast(...) and ...` warns on every call
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning"),
              pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")]

SAO_10 = (["prompt", "seconds_start", "seconds_total"], ["seconds_start", "seconds_total"])
SAO_SMALL = (["prompt", "seconds_total"], ["seconds_total"])


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


# -- a tiny T5 and its tokenizer, made here (tests/tiny_t5.py) ------------------------------------

@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


# -- number conditioners -------------------------------------------------------------------------

@pytest.mark.reference
@pytest.mark.parametrize("dim,lo,hi", [(768, 0, 512), (37, 3, 11.5), (64, 0, 256)])
def test_number_conditioner_matches_reference(dim, lo, hi):
    sat = R.sat()
    ref = sat.conditioners.NumberConditioner(dim, lo, hi)
    with torch.no_grad():  # fresh, non-default weights
        for p in ref.parameters():
            p.normal_()
    ours = NumberConditioner(dim, lo, hi)
    ours.load_state_dict(ref.state_dict())  # strict: the parameter names are the reference's
    inside = [random.uniform(lo, hi) for _ in range(5)]
    values = inside + [lo, hi, lo - random.uniform(0.1, 50), hi + random.uniform(0.1, 500), 1e9, -1e9, 7]
    random.shuffle(values)
    want, want_mask = ref(values, "cpu")
    got, got_mask = ours(values, "cpu")
    assert got.shape == want.shape == (len(values), 1, dim)
    assert rel_err(got, want) <= 1e-5, values
    assert got_mask.dtype == want_mask.dtype and torch.equal(got_mask, want_mask)
    # beyond the range means at the bound
    at_bounds, _ = ours([lo, hi], "cpu")
    beyond, _ = ours([lo - 1, hi + 1], "cpu")
    assert torch.equal(at_bounds, beyond)


def test_number_conditioner_parameter_names_are_the_checkpoints():
    names = dict(NumberConditioner(768, 0, 512).state_dict())
    assert {k: tuple(v.shape) for k, v in names.items()} == {
        "embedder.embedding.0.weights": (128,),
        "embedder.embedding.1.weight": (768, 257),
        "embedder.embedding.1.bias": (768,)}


@pytest.mark.parametrize("values,match", [
    (["ten"], r"seconds_total\[0\] must be a number"),
    ([3.0, None], r"seconds_total\[1\] must be a number"),
    ([True], "must be a number"),
    ([float("nan")], "must be finite"),
    ([1.0, float("inf")], r"\[1\] must be finite"),
    ([], "empty"),
    ("12", "one number per batch item"),
])
def test_number_conditioner_rejects_what_is_not_a_finite_number(values, match):
    with pytest.raises(NumberConditioningError, match=match):
        NumberConditioner(16, 0, 512, name="seconds_total")(values)


def test_number_conditioner_accepts_tensors_and_integers():
    cond = NumberConditioner(16, 0, 512)
    a, _ = cond(torch.tensor([3, 10]))
    b, _ = cond([3.0, 10])
    assert torch.equal(a, b)


# -- the T5 conditioner --------------------------------------------------------------------------

def _prompts(max_length):
    """Awkward prompts: empty, one word, ones that fit and ones far too long."""
    return ["", random.choice(WORDS), sentence(random.randint(2, 4)), sentence(3 * max_length),
            sentence(random.randint(1, 6))]


@pytest.mark.reference
def test_t5_conditioner_matches_reference_in_fp32(t5_dirs, monkeypatch):
    sat = R.sat()
    patch_reference_loaders(monkeypatch, sat, t5_dirs)
    max_length = random.choice([7, 13, 21])
    ref = sat.conditioners.T5Conditioner(32, "t5-base", max_length=max_length)
    undo_reference_fp16(ref, t5_dirs[0])
    ours = T5Conditioner(32, *t5_dirs, max_length=max_length)
    prompts = _prompts(max_length)
    want, want_mask = ref(prompts, "cpu")
    got, got_mask = ours(prompts, "cpu")
    assert got.shape == want.shape == (len(prompts), max_length, 32)
    assert got_mask.dtype == want_mask.dtype == torch.bool and torch.equal(got_mask, want_mask)
    assert rel_err(got, want) <= 1e-5, prompts
    assert (got[~got_mask] == 0).all()  # padding is exactly zero
    assert got_mask.sum(1).tolist()[0] == 1  # the empty prompt is just </s>


@pytest.mark.reference
def test_t5_conditioner_in_fp16_is_the_reference_bit_for_bit(t5_dirs, monkeypatch):
    """What the reference does on every device (T5 cast to fp16), and ours does on CUDA."""
    sat = R.sat()
    patch_reference_loaders(monkeypatch, sat, t5_dirs)
    ref = sat.conditioners.T5Conditioner(32, "t5-base", max_length=11)
    ours = T5Conditioner(32, *t5_dirs, max_length=11, dtype=torch.float16)
    prompts = _prompts(11)
    want, want_mask = ref(prompts, "cpu")
    got, got_mask = ours(prompts, "cpu")
    assert got.dtype == want.dtype == torch.float32  # the float mask promotes, in both
    assert torch.equal(got, want) and torch.equal(got_mask, want_mask)


@pytest.mark.reference
@pytest.mark.parametrize("output_dim,project_out", [(24, False), (32, True)])
def test_t5_projection_matches_reference(t5_dirs, monkeypatch, output_dim, project_out):
    sat = R.sat()
    patch_reference_loaders(monkeypatch, sat, t5_dirs)
    ref = sat.conditioners.T5Conditioner(output_dim, "t5-base", max_length=9, project_out=project_out)
    undo_reference_fp16(ref, t5_dirs[0])
    ours = T5Conditioner(output_dim, *t5_dirs, max_length=9, project_out=project_out)
    assert set(ours.state_dict()) == set(ref.state_dict()) == {"proj_out.weight", "proj_out.bias"}
    ours.load_state_dict(ref.state_dict())
    prompts = _prompts(9)
    want, _ = ref(prompts, "cpu")
    got, _ = ours(prompts, "cpu")
    assert rel_err(got, want) <= 1e-5


def test_t5_weights_stay_out_of_the_module(t5_dirs):
    cond = T5Conditioner(32, *t5_dirs, max_length=8)
    assert dict(cond.state_dict()) == {} and list(cond.parameters()) == []
    cond.half()  # recasting the diffusion model must not recast T5
    assert next(cond.encoder_on("cpu").parameters()).dtype == torch.float32


def test_t5_precision_is_restored_after_an_fp16_round(t5_dirs):
    """fp16 (the CUDA default) and back to fp32 must not leave fp16-rounded weights behind."""
    cond = T5Conditioner(32, *t5_dirs, max_length=8)
    prompts = [sentence(3), ""]
    want, _ = cond(prompts, "cpu")
    cond.dtype_override = torch.float16
    half, _ = cond(prompts, "cpu")
    cond.dtype_override = None
    again, _ = cond(prompts, "cpu")
    assert not torch.equal(half, want) and torch.equal(again, want)


def test_long_prompts_are_reported_and_refused_in_strict_mode(t5_dirs, caplog, monkeypatch):
    from fastaudio.models import t5_text
    monkeypatch.setattr(t5_text, "_logged_prompts", set())  # earlier tests used up the log quota
    cond = T5Conditioner(32, *t5_dirs, max_length=6)
    tail = f"{random.randint(0, 10**9)}"
    long_prompt = sentence(12) + " " + tail
    before = t5_text.truncated_prompts
    with caplog.at_level(logging.WARNING, logger="fastaudio.t5"):
        cond(["a", long_prompt], "cpu")
    messages = [r.getMessage() for r in caplog.records if r.name == "fastaudio.t5"]
    assert any(long_prompt in m and "dropping" in m and tail in m for m in messages), messages
    assert t5_text.truncated_prompts == before + 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fastaudio.t5"):
        cond(["a"], "cpu")
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    with pytest.raises(TokenizerError, match="FASTAUDIO_STRICT"):
        cond([long_prompt], "cpu")
    cond(["a"], "cpu")  # a prompt that fits is fine in strict mode


def test_t5_rejects_non_text_prompts(t5_dirs):
    cond = T5Conditioner(32, *t5_dirs, max_length=6)
    with pytest.raises(TokenizerError, match="prompt 1 must be a string"):
        cond(["ok", 3], "cpu")


# -- the whole conditioner and its assembly ------------------------------------------------------

def _config(kind, width):
    if kind == "sao-1.0":
        return {"cond_dim": width, "configs": [
            {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 12}},
            {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
            {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}}]}, SAO_10
    return {"cond_dim": width, "configs": [
        {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 8}},
        {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}]}, SAO_SMALL


def _reference_inputs(sat, tensors, cross_ids, global_ids):
    # get_conditioning_inputs reads only these four attributes of the wrapper
    wrapper = types.SimpleNamespace(cross_attn_cond_ids=cross_ids, global_cond_ids=global_ids,
                                    input_concat_ids=[], prepend_cond_ids=[])
    return sat.diffusion.ConditionedDiffusionModelWrapper.get_conditioning_inputs(wrapper, tensors)


def _check_assembly(got, want):
    cross, mask, glob = got
    for name, g in (("cross_attn_cond", cross), ("cross_attn_mask", mask), ("global_cond", glob)):
        w = want[name]
        if w is None:
            assert g is None, name
            continue
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        assert rel_err(g, w) <= 1e-5, name


@pytest.mark.reference
@pytest.mark.parametrize("kind", ["sao-1.0", "sao-small"])
def test_open_conditioner_matches_reference(kind, t5_dirs, monkeypatch):
    sat = R.sat()
    patch_reference_loaders(monkeypatch, sat, t5_dirs)
    config, (cross_ids, global_ids) = _config(kind, 32)
    ref = sat.conditioners.create_multi_conditioner_from_conditioning_config(config)
    undo_reference_fp16(ref.conditioners["prompt"], t5_dirs[0])
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_()
    ours = OpenConditioner.from_config(config, cross_ids, global_ids, *t5_dirs)
    # the checkpoint's names, less "conditioner.": and no T5 among them on either side
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert not any("encoder" in k or "shared" in k for k in ours.state_dict())
    checkpoint = {f"conditioner.{k}": v for k, v in ref.state_dict().items()}
    checkpoint["model.model.something"] = torch.zeros(1)
    ours.load_state_dict(conditioner_state(checkpoint))

    batch = random.randint(1, 4)
    prompts = [sentence(random.randint(0, 9)) for _ in range(batch)]
    start = [random.uniform(-5, 600) for _ in range(batch)]
    total = [random.uniform(-5, 600) for _ in range(batch)]
    metadata = [{"prompt": p, "seconds_start": s, "seconds_total": t}
                for p, s, t in zip(prompts, start, total)]
    want = ref(metadata, "cpu")
    got = ours(prompts, start if "seconds_start" in ours.conditioners else None, total, "cpu")
    assert set(got) == set(want)
    for cid in want:
        assert rel_err(got[cid][0], want[cid][0]) <= 1e-5, cid
        assert got[cid][1].dtype == want[cid][1].dtype and torch.equal(got[cid][1], want[cid][1])
    for ids in ((cross_ids, global_ids), SAO_SMALL):
        _check_assembly(ours.assemble(got, *ids), _reference_inputs(sat, want, *ids))
    assert ours.assemble(got)[2].shape == (batch, 32 * len(global_ids))


@pytest.mark.reference
def test_assembly_matches_reference_on_awkward_shapes():
    """Synthetic outputs: sequences of different lengths, a (B, C) entry, bool and float masks."""
    sat = R.sat()
    b, c = random.randint(1, 5), random.choice([3, 8, 17])
    outputs = {
        "text": (torch.randn(b, random.randint(1, 9), c), torch.rand(b, 5) > 0.3),
        "vec": (torch.randn(b, c), torch.ones(b)),
        "n1": (torch.randn(b, 1, c), torch.ones(b, 1)),
        "n2": (torch.randn(b, 1, c), torch.ones(b, 1)),
    }
    outputs["text"] = (outputs["text"][0], torch.rand(b, outputs["text"][0].shape[1]) > 0.3)
    for cross_ids, global_ids in ((["text", "vec", "n1"], ["n1", "n2"]), (["n2", "text"], ["n2"]),
                                  ([], ["n1"]), (["text"], [])):
        _check_assembly(assemble(outputs, cross_ids, global_ids),
                        _reference_inputs(sat, outputs, cross_ids, global_ids))


def test_unknown_conditioner_types_and_options_are_named():
    config = {"cond_dim": 8, "configs": [{"id": "prompt", "type": "clap_text", "config": {}}]}
    with pytest.raises(ConditioningConfigError, match="'clap_text'"):
        OpenConditioner.from_config(config)
    config = {"cond_dim": 8, "configs": [{"id": "x", "type": "number", "config": {"maxval": 3}}]}
    with pytest.raises(ConditioningConfigError, match="maxval"):
        OpenConditioner.from_config(config)
    config = {"cond_dim": 8, "configs": [{"id": "prompt", "type": "t5", "config": {}}]}
    with pytest.raises(ConditioningConfigError, match="locate_t5"):
        OpenConditioner.from_config(config)
    config = {"cond_dim": 8, "configs": [{"id": "seconds_total", "type": "number", "config": {}}]}
    with pytest.raises(ConditioningConfigError, match="seconds_start"):
        OpenConditioner.from_config(config, ["seconds_start"], [])


def test_timing_inputs_are_checked(monkeypatch, caplog):
    config = {"cond_dim": 8, "configs": [
        {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}}]}
    cond = OpenConditioner.from_config(config, ["seconds_total"], ["seconds_total"])
    cond.encode({"seconds_total": [3.0]})  # no T5: encode straight from inputs
    with pytest.raises(ConditioningConfigError, match="2 values for a batch of 3"):
        cond(["a", "b", "c"], None, [1.0, 2.0])
    with pytest.raises(ConditioningConfigError, match="'seconds_total'; no value"):
        cond(["a"], None, None)
    out = cond(["a", "b"], None, 30)  # a scalar is shared by the batch
    assert torch.equal(out["seconds_total"][0][0], out["seconds_total"][0][1])
    with caplog.at_level(logging.WARNING, logger="fastaudio.conditioning"):
        cond(["a"], 5.0, 10.0)  # SAO Small has no seconds_start
    assert any("seconds_start" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    with pytest.raises(ConditioningConfigError, match="seconds_start"):
        cond(["a"], 5.0, 10.0)


# -- where T5 is looked for ----------------------------------------------------------------------

def _fake_encoder(folder):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "config.json"), "w").write("{}")
    open(os.path.join(folder, "model.safetensors"), "wb").close()
    return str(folder)


def _fake_tokenizer(folder, name="tokenizer.json"):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, name), "w").write("{}")
    return str(folder)


def _fake_snapshot(cache, repo_id, rev, main=True):
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", rev)
    _fake_encoder(snap)
    _fake_tokenizer(snap, "spiece.model")
    if main:
        os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
        open(os.path.join(repo, "refs", "main"), "w").write(rev + "\n")
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return str(cache)


def test_locate_t5_looks_in_order(tmp_path, hub_cache):
    ckpt = tmp_path / "sao"
    enc_beside = _fake_encoder(ckpt / "text_encoder")
    tok_beside = _fake_tokenizer(ckpt / "tokenizer")
    open(ckpt / "model.safetensors", "wb").close()
    explicit = _fake_tokenizer(_fake_encoder(tmp_path / "my_t5"))
    cached = _fake_snapshot(hub_cache, "google-t5/t5-base", "c0ffee")

    assert locate_t5(str(ckpt), explicit) == (explicit, explicit)
    assert locate_t5(str(ckpt)) == (enc_beside, tok_beside)
    assert locate_t5(str(ckpt / "model.safetensors")) == (enc_beside, tok_beside)  # the file
    assert locate_t5(str(tmp_path / "elsewhere")) == (cached, cached)
    assert locate_t5(None) == (cached, cached)
    # an explicit SAO-style text_encoder/ finds the tokenizer/ beside it
    assert locate_t5(None, enc_beside) == (enc_beside, tok_beside)


def test_locate_t5_follows_refs_main_and_both_hub_names(tmp_path, hub_cache):
    newer = _fake_snapshot(hub_cache, "t5-base", "bbbb", main=False)
    main = _fake_snapshot(hub_cache, "t5-base", "aaaa")
    os.utime(main, (1, 1))  # refs/main wins even over a newer snapshot
    assert locate_t5(None) == (main, main)
    other = _fake_snapshot(hub_cache, "google/flan-t5-base", "f1a9")
    assert locate_t5(None, model_name="google/flan-t5-base") == (other, other)
    os.remove(os.path.join(hub_cache, "models--t5-base", "refs", "main"))
    assert locate_t5(None) == (newer, newer)  # no refs/main: the newest snapshot


def test_locate_t5_reads_hf_home(tmp_path, monkeypatch, hub_cache):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_hub_cache() == str(tmp_path / "hf" / "hub")
    snap = _fake_snapshot(hf_hub_cache(), "google-t5/t5-base", "1234")
    assert locate_t5(None) == (snap, snap)


def test_locate_t5_error_names_every_place(tmp_path, hub_cache):
    ckpt = tmp_path / "small"
    ckpt.mkdir()
    _fake_snapshot(hub_cache, "google-t5/t5-base", "dead")  # incomplete: no weights
    os.remove(os.path.join(hub_cache, "models--google-t5--t5-base", "snapshots", "dead",
                           "model.safetensors"))
    with pytest.raises(TextEncoderNotFoundError) as err:
        locate_t5(str(ckpt))
    message = str(err.value)
    for place in (str(ckpt / "text_encoder"), str(ckpt / "tokenizer"),
                  os.path.join(hub_cache, "models--t5-base"),
                  os.path.join(hub_cache, "models--google-t5--t5-base", "snapshots", "dead"),
                  "text_encoder=", "--text-encoder", "no weights"):
        assert place in message, (place, message)


def test_locate_t5_never_passes_over_an_explicit_folder(tmp_path, hub_cache):
    _fake_snapshot(hub_cache, "google-t5/t5-base", "ok")
    bad = _fake_encoder(tmp_path / "t5_without_tokenizer")
    with pytest.raises(TextEncoderNotFoundError, match="t5_without_tokenizer"):
        locate_t5(None, bad)


def test_locate_t5_warns_when_the_checkpoint_folders_are_incomplete(tmp_path, hub_cache, caplog,
                                                                     monkeypatch):
    ckpt = tmp_path / "sao"
    _fake_encoder(ckpt / "text_encoder")  # no tokenizer/ beside it
    cached = _fake_snapshot(hub_cache, "google-t5/t5-base", "abc")
    with caplog.at_level(logging.WARNING, logger="fastaudio.t5"):
        assert locate_t5(str(ckpt)) == (cached, cached)
    assert any("incomplete" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    with pytest.raises(TextEncoderNotFoundError, match="FASTAUDIO_STRICT"):
        locate_t5(str(ckpt))


def test_located_folders_load(t5_dirs, tmp_path):
    """The SAO 1.0 layout (text_encoder/ + tokenizer/ beside the checkpoint) loads for real."""
    import shutil
    ckpt = tmp_path / "sao"
    shutil.copytree(t5_dirs[0], ckpt / "text_encoder")
    shutil.copytree(t5_dirs[1], ckpt / "tokenizer")
    cond = T5Conditioner(32, *locate_t5(str(ckpt)), max_length=5)
    emb, mask = cond(["rain"], "cpu")
    assert emb.shape == (1, 5, 32) and torch.isfinite(emb).all()


def test_random_stand_in_t5_is_made_once_per_seed(tmp_path):
    tiny = dict(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32)
    state = torch.random.get_rng_state()
    folder = random_t5_folder(3, root=str(tmp_path), **tiny)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    stamp = os.path.getmtime(os.path.join(folder, "config.json"))
    assert random_t5_folder(3, root=str(tmp_path), **tiny) == folder
    assert os.path.getmtime(os.path.join(folder, "config.json")) == stamp  # reused, not rewritten
    other = random_t5_folder(4, root=str(tmp_path), **tiny)
    assert other != folder and not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    prompts = ["any text at all", ""]
    a, mask = T5Conditioner(16, folder, max_length=10)(prompts, "cpu")
    b, _ = T5Conditioner(16, other, max_length=10)(prompts, "cpu")
    assert a.shape == (2, 10, 16) and torch.isfinite(a).all() and not torch.equal(a, b)
    assert mask.sum(1).tolist() == [10, 1]  # byte tokens: 15 bytes truncated to 9 + </s>
