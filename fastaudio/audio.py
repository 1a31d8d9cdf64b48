"""Reading and writing audio files (soundfile: WAV, FLAC, OGG, MP3 where libsndfile has it).

Writes are atomic (temporary file, then rename) and never replace an existing file unless asked;
reads report corrupt, empty and unreadable files by name.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_path
from .errors import FastAudioError

FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_24")}


class AudioFileError(FastAudioError, OSError):
    """An audio file cannot be read or written; the message names it and says why."""


def format_for(path: str, fmt: Optional[str] = None) -> str:
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise AudioFileError(f"unsupported output format {fmt or '(none)'!r} for {path}: "
                             f"use {' or '.join(FORMATS)}")
    return fmt


def check_writable(path: str, overwrite: bool = False) -> None:
    """Fail before any work is done when ``path`` cannot be written."""
    if os.path.isdir(path):
        raise AudioFileError(f"{path} is a directory")
    if os.path.exists(path) and not overwrite:
        raise AudioFileError(f"{path} exists (pass --overwrite to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AudioFileError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise AudioFileError(f"cannot write {path}: folder {folder} is not writable")


def write_audio(path: str, audio: Tensor, sample_rate: int, fmt: Optional[str] = None,
                overwrite: bool = False) -> None:
    """Write (channels, samples) float audio in [-1, 1] to WAV or FLAC, atomically."""
    import soundfile as sf
    fmt = format_for(path, fmt)
    check_writable(path, overwrite)
    if audio.dim() != 2:
        raise AudioFileError(f"audio to write must be (channels, samples), got {tuple(audio.shape)}")
    data = audio.detach().float().clamp(-1, 1).cpu().numpy().T  # soundfile wants (frames, channels)
    container, subtype = FORMATS[fmt]
    try:
        with atomic_path(path) as tmp:
            sf.write(tmp, data, sample_rate, format=container, subtype=subtype)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise AudioFileError(f"cannot write {path}: {e}") from None


def read_audio(path: str) -> Tuple[Tensor, int]:
    """(channels, samples) float32 and the sample rate; clear errors for bad files."""
    import soundfile as sf
    if not os.path.isfile(path):
        raise AudioFileError(f"audio file not found: {path}")
    if os.path.getsize(path) == 0:
        raise AudioFileError(f"{path} is empty")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError for corrupt files
        raise AudioFileError(f"{path} is not a readable audio file: {e}") from None
    if data.shape[0] == 0:
        raise AudioFileError(f"{path} holds no samples")
    if not np.isfinite(data).all():
        raise AudioFileError(f"{path} contains NaN or Inf samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)
