"""The CLAP text tower: a RoBERTa-shaped transformer encoder.

Parameter names are Hugging Face ``RobertaModel``'s (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query`` …), so the ``text_branch.*`` tensors of a LAION-CLAP
checkpoint load unchanged. Stable Audio 1.0 conditions on the hidden states of the
second-to-last layer, so :meth:`RobertaTextModel.hidden_states` stops after the layer it needs
instead of running all twelve.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TextEncoderConfig


class RobertaEmbeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.pad_token_id = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                                padding_idx=cfg.pad_token_id)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> Tensor:
        # RoBERTa numbers real tokens from pad_token_id + 1; padding keeps position pad_token_id.
        not_pad = (input_ids != self.pad_token_id).long()
        positions = torch.cumsum(not_pad, dim=1) * not_pad + self.pad_token_id
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight[0])
        return self.LayerNorm(x)


class RobertaSelfAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        # keep: (B, 1, 1, N) bool; padded keys get no weight, as HF's additive finfo.min mask.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return out.transpose(1, 2).reshape(b, n, c)


class RobertaSelfOutput(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + x)


class RobertaAttention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.self = RobertaSelfAttention(cfg)
        self.output = RobertaSelfOutput(cfg)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.output(self.self(x, keep), x)


class RobertaIntermediate(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class RobertaOutput(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + x)


class RobertaLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.attention = RobertaAttention(cfg)
        self.intermediate = RobertaIntermediate(cfg)
        self.output = RobertaOutput(cfg)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        a = self.attention(x, keep)
        return self.output(self.intermediate(a), a)


class RobertaEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(RobertaLayer(cfg) for _ in range(cfg.num_layers))


class RobertaPooler(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class RobertaTextModel(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = RobertaEmbeddings(cfg)
        self.encoder = RobertaEncoder(cfg)
        self.pooler = RobertaPooler(cfg)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, layer: int) -> Tensor:
        """Hidden states at ``layer`` in HF's ``hidden_states`` indexing (0 = embeddings,
        −1 = last layer, −2 = second to last); only the layers needed are run."""
        n = len(self.encoder.layer)
        index = layer if layer >= 0 else n + 1 + layer
        if not 0 <= index <= n:
            raise ValueError(f"layer {layer} is out of range for {n} layers")
        keep = attention_mask.to(torch.bool)[:, None, None, :]
        x = self.embeddings(input_ids)
        for block in self.encoder.layer[:index]:
            x = block(x, keep)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tuple[Tensor, Tensor]:
        """(last hidden state (B, N, H), pooled output (B, H)) as RobertaModel returns them."""
        last = self.hidden_states(input_ids, attention_mask, -1)
        return last, self.pooler(last)


def init_bert_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation (normal(0, 0.02) weights, zero biases), for fresh text towers."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


__all__ = ["RobertaTextModel", "init_bert_weights"]
