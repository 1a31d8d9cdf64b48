"""CLAP: the contrastive text–audio model whose text tower conditions Stable Audio 1.0.

* text tower: RoBERTa-shaped (:mod:`.text_encoder`), names as in LAION-CLAP's ``text_branch``;
  ``text_projection`` is LAION's Linear → ReLU → Linear.
* audio tower: a log-mel spectrogram transformer. The paper uses HTSAT-base; this simpler
  encoder (patches of ``patch_frames`` mel frames, pre-norm transformer, mean pooling) is what
  fastaudio trains and evaluates with, and the README says so.
* the contrastive (InfoNCE) loss with a learned temperature ``logit_scale``.

:func:`load_laion_clap_text` loads the text branch (and projection) of a LAION-CLAP checkpoint.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import AudioEncoderConfig, CLAPConfig
from ..dsp import log_mel_spectrogram
from .text_encoder import RobertaTextModel, init_bert_weights
from ..errors import FastAudioError
from .tokenizer import ByteTokenizer, load_tokenizer


class TextEncoderError(FastAudioError, ValueError):
    """The text tower cannot encode these prompts (no tokenizer, ids beyond its vocabulary)."""


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer (self-attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.mlp(self.norm2(x))


class SpectrogramTransformer(nn.Module):
    """(B, C, N) audio → (B, hidden) embedding (mean over time patches)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.config = cfg
        frames = int(cfg.max_seconds * cfg.sample_rate / cfg.hop_length) + 1
        self.max_patches = math.ceil(frames / cfg.patch_frames)
        self.patch_embed = nn.Linear(cfg.n_mels * cfg.patch_frames, cfg.hidden_size)
        self.pos_embed = nn.Parameter(torch.randn(1, self.max_patches, cfg.hidden_size) * 0.02)
        self.layers = nn.ModuleList(EncoderLayer(cfg.hidden_size, cfg.num_heads)
                                    for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size)

    @property
    def max_samples(self) -> int:
        return int(self.config.max_seconds * self.config.sample_rate)

    def forward(self, audio: Tensor) -> Tensor:
        cfg = self.config
        if audio.shape[-1] > self.max_samples:
            raise ValueError(f"audio of {audio.shape[-1]} samples exceeds the audio tower's "
                             f"{self.max_samples} ({cfg.max_seconds} s); use CLAP.embed_audio")
        mel = log_mel_spectrogram(audio.float(), cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels)
        b, m, t = mel.shape
        pad = (-t) % cfg.patch_frames
        mel = F.pad(mel, (0, pad), value=math.log(1e-5))
        patches = mel.view(b, m, -1, cfg.patch_frames).permute(0, 2, 1, 3).reshape(b, -1, m * cfg.patch_frames)
        x = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        x = x + self.pos_embed[:, : x.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).mean(1)


def _projection(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Linear(dim_out, dim_out))


class CLAP(nn.Module):
    def __init__(self, cfg: CLAPConfig, tokenizer=None):
        super().__init__()
        self.config = cfg
        self.text_branch = RobertaTextModel(cfg.text)
        self.text_projection = _projection(cfg.text.hidden_size, cfg.projection_dim)
        self.audio_branch = SpectrogramTransformer(cfg.audio)
        self.audio_projection = _projection(cfg.audio.hidden_size, cfg.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        init_bert_weights(self.text_branch)
        if tokenizer is None and cfg.text.tokenizer == "byte":
            tokenizer = ByteTokenizer()
        self.tokenizer = tokenizer  # None until load_tokenizer() for RoBERTa BPE

    def set_tokenizer_folder(self, folder: Optional[str]) -> None:
        self.tokenizer = load_tokenizer(self.config.text.tokenizer, folder)

    def tokenize(self, prompts: Sequence[str], device=None) -> Tuple[Tensor, Tensor]:
        if self.tokenizer is None:
            raise TextEncoderError("this CLAP uses RoBERTa's BPE tokenizer but no tokenizer files were "
                               "loaded: put vocab.json and merges.txt (or tokenizer.json) in the "
                               "model folder's tokenizer/ directory")
        ids, mask = self.tokenizer(prompts, self.config.text.max_length)
        if int(ids.max()) >= self.config.text.vocab_size:
            raise TextEncoderError(f"tokenizer produced id {int(ids.max())} beyond the text tower's "
                             f"vocabulary of {self.config.text.vocab_size}")
        device = device if device is not None else self.logit_scale.device
        return ids.to(device), mask.to(device)

    def text_features(self, prompts: Sequence[str], layer: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Token features (B, max_length, hidden) at ``layer`` and the attention mask (B, max_length)."""
        ids, mask = self.tokenize(prompts)
        layer = self.config.text.feature_layer if layer is None else layer
        return self.text_branch.hidden_states(ids, mask, layer), mask

    def text_embedding(self, prompts: Sequence[str]) -> Tensor:
        """Unit-norm joint-space text embeddings (B, projection_dim), from the pooled output."""
        ids, mask = self.tokenize(prompts)
        _, pooled = self.text_branch(ids, mask)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def audio_embedding(self, audio: Tensor) -> Tensor:
        """Unit-norm joint-space audio embeddings of clips no longer than the tower's window."""
        return F.normalize(self.audio_projection(self.audio_branch(audio)), dim=-1)

    @torch.no_grad()
    def embed_audio(self, audio: Tensor) -> Tensor:
        """Audio embeddings for any length: the mean over windows of the tower's length."""
        win = self.audio_branch.max_samples
        if audio.shape[-1] <= win:
            return self.audio_embedding(audio)
        parts = [self.audio_embedding(audio[..., s: s + win])
                 for s in range(0, audio.shape[-1] - win // 4, win)]
        return F.normalize(torch.stack(parts).mean(0), dim=-1)

    def contrastive_loss(self, audio: Tensor, prompts: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Symmetric InfoNCE over the batch; returns (loss, accuracy of audio→text retrieval)."""
        a = self.audio_embedding(audio)
        t = self.text_embedding(prompts)
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * a @ t.t()
        target = torch.arange(len(a), device=a.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        acc = (logits.argmax(1) == target).float().mean()
        return loss, acc


def load_laion_clap_text(clap: CLAP, path: str) -> dict:
    """Load ``text_branch.*`` and ``text_projection.*`` from a LAION-CLAP checkpoint.

    The file is read with ``torch.load(weights_only=True)``; keys may carry DDP's ``module.``
    prefix. Returns a summary (tensors loaded). Mismatched or missing tensors raise, naming them.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CLAP checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read CLAP checkpoint {path}: {e}") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"CLAP checkpoint {path} holds no state dict")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    wanted = {k: v for k, v in sd.items()
              if k.startswith(("text_branch.", "text_projection."))
              and not k.endswith("embeddings.position_ids")}
    if not any(k.startswith("text_branch.") for k in wanted):
        raise ValueError(f"{path} has no text_branch.* tensors: not a LAION-CLAP checkpoint")
    own = clap.state_dict()
    problems = []
    for k, v in wanted.items():
        if k not in own:
            problems.append(f"unexpected {k}")
        elif own[k].shape != v.shape:
            problems.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
    for k in own:
        if k.startswith("text_branch.") and k not in wanted:
            problems.append(f"missing {k}")
    if problems:
        raise ValueError(f"CLAP checkpoint {path} does not fit the text tower: " + "; ".join(problems[:10])
                         + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    clap.load_state_dict(wanted, strict=False)
    return {"tensors": len(wanted)}
