"""Audio embedders for Fréchet distance, behind one interface: ``embedder(audio) -> (B, d)``.

* ``clap`` – a CLAP audio tower (by default the reference model's, the same for every model
  evaluated, so distances are comparable);
* ``mel`` – log-mel statistics (no learned weights at all: independent of every model);
* ``openl3`` – the OpenL3 music embedding, when the user has the ``openl3`` package.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import torch
from torch import Tensor

from ..errors import FastAudioError
from .attributes import timbre_features


class EmbedderError(FastAudioError, ValueError):
    pass


class CLAPEmbedder:
    name = "clap"

    def __init__(self, clap):
        self.clap = clap.eval()

    @torch.no_grad()
    def __call__(self, audio: Tensor) -> np.ndarray:
        device = next(self.clap.parameters()).device
        return self.clap.embed_audio(audio.float().to(device)).double().cpu().numpy()


class MelEmbedder:
    name = "mel"

    def __init__(self, sample_rate: int = 44100):
        self.sample_rate = sample_rate

    def __call__(self, audio: Tensor) -> np.ndarray:
        return np.stack([timbre_features(a, self.sample_rate) for a in audio])


class OpenL3Embedder:
    name = "openl3"

    def __init__(self, sample_rate: int = 44100):
        try:
            import openl3  # noqa: F401
        except ImportError as e:
            raise EmbedderError(f"the openl3 embedder needs the openl3 package ({e})") from None
        import openl3
        self.openl3, self.sample_rate = openl3, sample_rate

    def __call__(self, audio: Tensor) -> np.ndarray:
        out = []
        for a in audio:
            emb, _ = self.openl3.get_audio_embedding(a.mean(0).numpy(), self.sample_rate,
                                                     content_type="music", verbose=False)
            out.append(emb.mean(0))
        return np.stack(out)


def get_embedder(name: str, clap=None, sample_rate: int = 44100):
    makers: Dict[str, Callable] = {
        "clap": lambda: CLAPEmbedder(clap) if clap is not None else None,
        "mel": lambda: MelEmbedder(sample_rate),
        "openl3": lambda: OpenL3Embedder(sample_rate),
    }
    if name not in makers:
        raise EmbedderError(f"unknown embedder {name!r} ({', '.join(makers)})")
    emb = makers[name]()
    if emb is None:
        raise EmbedderError("the clap embedder needs a CLAP model")
    return emb
