"""Text tokenizers for the CLAP text tower; both work offline.

* :class:`ByteTokenizer` – UTF-8 bytes plus RoBERTa's four special tokens; needs no files.
  The shipped small model uses it.
* :class:`RobertaTokenizer` – RoBERTa's byte-level BPE (what LAION-CLAP and so Stable Audio 1.0
  use), read from tokenizer files the user has (``vocab.json`` + ``merges.txt`` or
  ``tokenizer.json``) through the ``tokenizers`` library. Nothing is downloaded.

Both return ``input_ids`` and ``attention_mask`` of shape (B, max_length): ``<s> … </s>`` then
``<pad>``, truncated so that ``</s>`` stays, as LAION-CLAP's ``padding="max_length",
truncation=True`` does. Truncation is never silent: each distinct prompt that loses tokens is
logged once at WARNING with what was dropped (the first few; then a count in
:data:`truncated_prompts`), and ``FASTAUDIO_STRICT=1`` makes it an error. It matters for the
small model: its byte tokenizer spends one position per byte, so 75 bytes is all a prompt gets.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor
from ..errors import FastAudioError
from ..strict import strict

BOS, PAD, EOS, UNK = 0, 1, 2, 3

log = logging.getLogger("fastaudio.tokenizer")
MAX_LOGGED_PROMPTS = 5           # distinct truncated prompts named in the log; the rest are counted
truncated_prompts = 0            # calls' prompts that lost tokens, this process
_logged_prompts: set = set()
_lock = threading.Lock()


class TokenizerError(FastAudioError, ValueError):
    """Tokenizer files are missing or unreadable, or a prompt is not text."""


def _check_prompts(prompts: Sequence[str]) -> List[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TokenizerError(f"prompt {i} must be a string, got {type(p).__name__}")
    return prompts


def _body(prompt: str, ids: List[int], max_length: int, kind: str,
          dropped_text: Callable[[List[int]], str]) -> List[int]:
    """The first max_length - 2 ids (room for <s> and </s>); a cut is reported, not silent."""
    global truncated_prompts
    keep = max_length - 2
    if len(ids) <= keep:
        return ids
    message = (f"prompt of {len(ids)} {kind} tokens truncated to the text tower's {keep}, "
               f"dropping {dropped_text(ids[keep:])!r} (prompt: {prompt!r})")
    if strict():
        raise TokenizerError(f"FASTAUDIO_STRICT=1 forbids truncating a prompt: {message}")
    with _lock:
        truncated_prompts += 1
        if prompt in _logged_prompts or len(_logged_prompts) > MAX_LOGGED_PROMPTS:
            return ids[:keep]
        _logged_prompts.add(prompt)
        if len(_logged_prompts) > MAX_LOGGED_PROMPTS:
            message = (f"more prompts are being truncated to {keep} {kind} tokens; no longer "
                       "logged (count in fastaudio.models.tokenizer.truncated_prompts)")
    log.warning(message)
    return ids[:keep]


def _pack(rows: List[List[int]], max_length: int) -> Tuple[Tensor, Tensor]:
    ids = torch.full((len(rows), max_length), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class ByteTokenizer:
    kind = "byte"
    vocab_size = 260

    def __call__(self, prompts: Sequence[str], max_length: int) -> Tuple[Tensor, Tensor]:
        rows = []
        for p in _check_prompts(prompts):
            ids = [4 + b for b in p.encode("utf-8")]
            body = _body(p, ids, max_length, "byte",
                         lambda rest: bytes(i - 4 for i in rest).decode("utf-8", errors="replace"))
            rows.append([BOS] + body + [EOS])
        return _pack(rows, max_length)

    def save(self, folder: str) -> None:
        """Nothing to save: the byte tokenizer has no files."""


class RobertaTokenizer:
    kind = "roberta"
    FILES = ("tokenizer.json", "vocab.json", "merges.txt")

    def __init__(self, folder: str):
        try:
            from tokenizers import Tokenizer, processors
            from tokenizers.implementations import ByteLevelBPETokenizer
        except ImportError as e:  # pragma: no cover - tokenizers is an install requirement
            raise TokenizerError(f"the 'tokenizers' package is needed for RoBERTa BPE ({e})") from None
        self.folder = folder
        tj, vocab, merges = (os.path.join(folder, f) for f in self.FILES)
        try:
            if os.path.exists(tj):
                self._tok = Tokenizer.from_file(tj)
            elif os.path.exists(vocab) and os.path.exists(merges):
                self._tok = ByteLevelBPETokenizer(vocab, merges, add_prefix_space=False,
                                                  trim_offsets=True)
            else:
                raise TokenizerError(
                    f"no RoBERTa tokenizer files in {folder}: need tokenizer.json, or vocab.json and "
                    "merges.txt (from roberta-base); fastaudio downloads nothing")
        except TokenizerError:
            raise
        except Exception as e:
            raise TokenizerError(f"cannot read the tokenizer files in {folder}: {e}") from None
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.post_processor = processors.RobertaProcessing(("</s>", EOS), ("<s>", BOS))
        for name, want in (("<s>", BOS), ("<pad>", PAD), ("</s>", EOS)):
            got = self._tok.token_to_id(name)
            if got != want:
                raise TokenizerError(f"tokenizer in {folder}: {name} has id {got}, RoBERTa uses {want}")
        self.vocab_size = self._tok.get_vocab_size()

    def __call__(self, prompts: Sequence[str], max_length: int) -> Tuple[Tensor, Tensor]:
        rows = []
        prompts = _check_prompts(prompts)
        for p, enc in zip(prompts, self._tok.encode_batch(prompts, add_special_tokens=False)):
            body = _body(p, enc.ids, max_length, "BPE", self._tok.decode)
            rows.append([BOS] + body + [EOS])
        return _pack(rows, max_length)

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        for f in self.FILES:
            src = os.path.join(self.folder, f)
            if os.path.exists(src) and os.path.abspath(src) != os.path.abspath(os.path.join(folder, f)):
                shutil.copyfile(src, os.path.join(folder, f))


def load_tokenizer(kind: str, folder: str | None):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "roberta":
        if folder is None:
            raise TokenizerError("the RoBERTa tokenizer needs its files (vocab.json + merges.txt or "
                                 "tokenizer.json); pass the folder that holds them")
        return RobertaTokenizer(folder)
    raise TokenizerError(f"unknown tokenizer {kind!r} (roberta, byte)")
