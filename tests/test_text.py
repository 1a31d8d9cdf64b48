"""CLAP text tower, tokenizers, LAION-CLAP loading, and the conditioner's context."""
import pytest
import torch

import reference_impl as R
from fastaudio.config import CLAPConfig, TextEncoderConfig, preset
from fastaudio.models.clap import CLAP, load_laion_clap_text
from fastaudio.models.conditioning import Conditioner, ConditioningError
from fastaudio.models.text_encoder import RobertaTextModel
from fastaudio.models.tokenizer import ByteTokenizer, RobertaTokenizer, TokenizerError

TEXT = TextEncoderConfig(vocab_size=300, hidden_size=48, num_layers=3, num_heads=4,
                         intermediate_size=96, max_position_embeddings=80, max_length=16)
CORPUS = ["a slow solo piano melody in D minor, 70 BPM", "upbeat drums and bass, 128 BPM",
          "ambient pads with rain", "Genre: techno | Tempo: 130 BPM | Mood: dark",
          "a cheerful ukulele strum in G major"] * 20


def _hf_model(cfg: TextEncoderConfig):
    RobertaConfig, RobertaModel = R.transformers_roberta()
    hf_cfg = RobertaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                           num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                           intermediate_size=cfg.intermediate_size,
                           max_position_embeddings=cfg.max_position_embeddings,
                           type_vocab_size=1, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=1,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = RobertaModel(hf_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _ids_and_mask(batch=3, length=16, vocab=300):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i, n in enumerate([16, 9, 3][:batch]):
        ids[i, 0] = 0
        ids[i, n - 1] = 2
        ids[i, n:] = 1
        mask[i, n:] = 0
    return ids, mask


@pytest.mark.reference
@pytest.mark.parametrize("layer", [-2, -1, 1])
def test_text_tower_matches_transformers_roberta(layer):
    hf = _hf_model(TEXT)
    ours = RobertaTextModel(TEXT).eval()
    missing = ours.load_state_dict({k: v for k, v in hf.state_dict().items()
                                    if not k.endswith("position_ids")}, strict=True)
    assert not missing.missing_keys
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        want = out.hidden_states[layer]
        got = ours.hidden_states(ids, mask, layer)
        last, pooled = ours(ids, mask)
    keep = mask.bool()  # padded positions are never read downstream (masked in cross-attention)
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-5, atol=1e-5)


def _train_bpe(folder):
    from tokenizers.implementations import ByteLevelBPETokenizer
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.save_model(str(folder))
    return folder


@pytest.mark.reference
def test_roberta_tokenizer_matches_transformers(tmp_path):
    folder = _train_bpe(tmp_path)
    try:
        from transformers import RobertaTokenizer as HFTokenizer
        hf = HFTokenizer.from_pretrained(str(folder))  # a local folder: nothing is downloaded
    except Exception as e:  # pragma: no cover
        pytest.skip(f"transformers tokenizer unavailable: {e}")
    prompts = ["a slow solo piano melody in D minor, 70 BPM", "", "drums " * 40, "café naïve ☃"]
    ours = RobertaTokenizer(str(folder))
    ids, mask = ours(prompts, 16)
    want = hf(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    assert torch.equal(ids, want["input_ids"])
    assert torch.equal(mask, want["attention_mask"])


def test_roberta_tokenizer_needs_its_files(tmp_path):
    with pytest.raises(TokenizerError, match="no RoBERTa tokenizer files"):
        RobertaTokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot read"):
        RobertaTokenizer(str(tmp_path))


def test_byte_tokenizer_layout():
    ids, mask = ByteTokenizer()(["ab", "x" * 100], 8)
    assert ids[0].tolist() == [0, 4 + ord("a"), 4 + ord("b"), 2, 1, 1, 1, 1]
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert ids[1, 0] == 0 and ids[1, -1] == 2 and mask[1].all()  # truncated, </s> kept
    with pytest.raises(TokenizerError, match="must be a string"):
        ByteTokenizer()([3], 8)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_truncated_prompts_are_reported_not_silent(kind, tmp_path, caplog, monkeypatch):
    """A prompt longer than the text tower keeps its first max_length - 2 tokens, as LAION-CLAP
    does, and the log names what was dropped (once per distinct prompt, a few prompts at most);
    FASTAUDIO_STRICT=1 makes it an error. Short prompts say nothing."""
    from fastaudio.models import tokenizer as T
    tok = ByteTokenizer() if kind == "byte" else RobertaTokenizer(str(_train_bpe(tmp_path)))
    monkeypatch.setattr(T, "_logged_prompts", set())
    monkeypatch.setattr(T, "truncated_prompts", 0)
    long = "a slow solo piano melody in D minor with soft strings behind it, 70 BPM"
    short = "piano"
    with caplog.at_level("WARNING", logger="fastaudio.tokenizer"):
        ids, mask = tok([short, long, long], 16)
        tok([short], 16)
    assert mask[1].all() and ids[1, -1] == 2 and torch.equal(ids[1], ids[2])
    warnings = [r.getMessage() for r in caplog.records if r.name == "fastaudio.tokenizer"]
    assert len(warnings) == 1 and repr(long) in warnings[0]
    dropped = warnings[0].split("dropping ")[1].split(" (prompt:")[0]
    assert "70 BPM" in dropped and "piano" not in dropped  # the tail is what was lost
    if kind == "byte":
        assert dropped == repr(long[14:])
    assert T.truncated_prompts == 2
    # The kept tokens are the prompt's own first ones: decode them back (byte: exactly).
    if kind == "byte":
        assert bytes(int(i) - 4 for i in ids[1, 1:-1]).decode() == long[:14]
    # Beyond MAX_LOGGED_PROMPTS distinct prompts one last line says logging stops.
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastaudio.tokenizer"):
        for i in range(T.MAX_LOGGED_PROMPTS + 3):
            tok([f"{i} " + long], 16)
    lines = [r.getMessage() for r in caplog.records if r.name == "fastaudio.tokenizer"]
    assert len(lines) == T.MAX_LOGGED_PROMPTS and "no longer logged" in lines[-1]
    monkeypatch.setenv("FASTAUDIO_STRICT", "1")
    with pytest.raises(TokenizerError, match="truncat"):
        tok([long], 16)
    tok([short], 16)  # fits: strict mode has nothing to object to


@pytest.mark.reference
def test_laion_clap_text_branch_loads(tmp_path):
    hf = _hf_model(TEXT)
    cfg = CLAPConfig(text=TEXT, projection_dim=24)
    cfg.audio.hidden_size, cfg.audio.num_layers, cfg.audio.num_heads = 16, 1, 2
    proj = torch.nn.Sequential(torch.nn.Linear(48, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24))
    sd = {"module.text_branch." + k: v for k, v in hf.state_dict().items()}
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(80)[None]
    sd.update({"module.text_projection." + k: v for k, v in proj.state_dict().items()})
    sd["module.logit_scale_a"] = torch.tensor(1.0)  # other LAION tensors are ignored
    path = tmp_path / "clap.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    clap = CLAP(cfg, tokenizer=ByteTokenizer())
    assert load_laion_clap_text(clap, str(path))["tensors"] > 0
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).pooler_output
        _, pooled = clap.text_branch(ids, mask)
    torch.testing.assert_close(pooled, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clap.text_projection[2].weight, proj[2].weight)
    # a checkpoint that does not fit is refused, naming the tensor
    bad = dict(sd)
    bad["module.text_branch.pooler.dense.weight"] = torch.zeros(3, 3)
    torch.save({"state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="pooler.dense.weight"):
        load_laion_clap_text(clap, str(tmp_path / "bad.ckpt"))


def test_conditioner_builds_the_79_token_context():
    cfg = preset("tiny")
    cond = Conditioner(cfg).eval()
    with torch.no_grad():
        ctx, mask = cond(["piano", "a much longer prompt about drums"], [0, 3.7], [10, 9.2])
    assert ctx.shape == (2, 79, cfg.conditioning.cond_dim)
    assert mask.shape == (2, 79) and mask.dtype == torch.bool
    assert mask[:, -2:].all() and mask[0].sum() == len("piano") + 2 + 2
    table = cond.seconds_total.int_embedder.weight
    torch.testing.assert_close(ctx[1, -1], table[10])  # 9.2 s rounds up to 10
    torch.testing.assert_close(ctx[1, -2], cond.seconds_start.int_embedder.weight[3])  # 3.7 → 3


def test_timing_is_clamped_to_512():
    cond = Conditioner(preset("tiny")).eval()
    with torch.no_grad():
        ctx, _ = cond(["x"], 0, 4000)
    torch.testing.assert_close(ctx[0, -1], cond.seconds_total.int_embedder.weight[512])


@pytest.mark.parametrize("start, total, match", [
    (-1, 10, "seconds_start must be >= 0"),
    (0, -5, "seconds_total must be >= 0"),
    ("ten", 10, "seconds_start must be a number"),
    (0, None, "seconds_total must be a number"),
    (0, float("nan"), "finite"),
    (0, [1, 2, 3], "3 values for a batch of 1"),
])
def test_bad_seconds_are_rejected(start, total, match):
    cond = Conditioner(preset("tiny"))
    with pytest.raises(ConditioningError, match=match):
        cond(["x"], start, total)


def test_bad_prompts_are_rejected():
    cond = Conditioner(preset("tiny"))
    with pytest.raises(ConditioningError, match="prompt 1 must be a string"):
        cond(["x", 5], 0, 10)
    with pytest.raises(ConditioningError, match="no prompts"):
        cond([], 0, 10)


def test_clap_contrastive_loss_is_finite_and_differentiable():
    cfg = preset("tiny").clap
    clap = CLAP(cfg)
    audio = torch.randn(3, 2, 44100) * 0.1
    loss, acc = clap.contrastive_loss(audio, ["a", "b", "c"])
    loss.backward()
    assert torch.isfinite(loss) and 0 <= acc <= 1
    assert clap.logit_scale.grad is not None and clap.audio_branch.patch_embed.weight.grad is not None
