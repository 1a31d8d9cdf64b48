"""A tiny random T5 encoder and a tokenizer trained here (nothing is downloaded), and the patches
that make stable-audio-tools' T5Conditioner (which loads T5 from the hub by name, in fp16) use
them: shared by the Stable Audio Open tests."""
import random

import pytest

WORDS = ("warm pad soft drums rain on a tin roof at night fast techno beat with deep bass "
         "airy strings bright piano chords field recording of birds distant thunder").split()


def sentence(n):
    return " ".join(random.choice(WORDS) for _ in range(n))


def make_tiny_t5(root):
    """(text_encoder dir, tokenizer dir): a Unigram tokenizer trained on a few sentences, saved as
    a transformers T5 tokenizer, and a random 2-layer T5 encoder 32 wide."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import models, pre_tokenizers, processors, trainers
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=70, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>")
    tok.train_from_iterator([sentence(8) for _ in range(40)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    wrapped = transformers.T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                           unk_token="<unk>", extra_ids=0)
    wrapped.save_pretrained(str(root / "tokenizer"))
    config = transformers.T5Config(vocab_size=tok.get_vocab_size(), d_model=32, num_layers=2,
                                   num_heads=4, d_kv=8, d_ff=64, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0)
    transformers.T5EncoderModel(config).save_pretrained(str(root / "text_encoder"))
    return str(root / "text_encoder"), str(root / "tokenizer")


def patch_reference_loaders(monkeypatch, sat, t5_dirs, width=32):
    """The reference's T5Conditioner loads T5 and its tokenizer from the hub by name: point both
    at the local tiny ones, and tell it that 't5-base' is as wide as the tiny T5 (its proj_out is
    sized from a name → width table)."""
    import transformers
    enc_dir, tok_dir = t5_dirs
    load_model = transformers.T5EncoderModel.from_pretrained
    load_tok = transformers.AutoTokenizer.from_pretrained
    # only the hub name is redirected: our own loads (local paths) pass straight through
    local = lambda name, folder: folder if name == "t5-base" else name  # noqa: E731
    monkeypatch.setattr(transformers.T5EncoderModel, "from_pretrained", staticmethod(
        lambda name, **kw: load_model(local(name, enc_dir), **{"local_files_only": True, **kw})))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(
        lambda name, **kw: load_tok(local(name, tok_dir), **{"local_files_only": True, **kw})))
    monkeypatch.setitem(sat.conditioners.T5Conditioner.T5_MODEL_DIMS, "t5-base", width)


def undo_reference_fp16(reference_t5, enc_dir):
    """The reference casts T5 to float16 (on every device). For an fp32 comparison its weights
    are put back in float32 – reloaded, since fp16 → fp32 cannot restore the rounded bits."""
    import transformers
    model = reference_t5.__dict__["model"]
    model.float().load_state_dict(transformers.T5EncoderModel.from_pretrained(enc_dir).state_dict())
