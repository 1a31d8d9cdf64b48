"""Overlapped chunking along time, shared by the VAEs' encoders and decoders.

A fully convolutional network's output at frame t depends only on the inputs within its
receptive field around t. So a long input can be processed in windows: each window computes a
kept region plus ``overlap // 2`` frames of context on both sides, and only the kept region is
written out. When the half-overlap covers the receptive field, the result equals the unchunked
one up to floating-point rounding, while memory is bounded by the window, not the duration.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

from torch import Tensor

from ..errors import FastAudioError


class ChunkingError(FastAudioError, ValueError):
    """Chunk and overlap sizes that cannot cover the input."""


def spans(total: int, chunk: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """Cover [0, total) with kept regions of ``chunk - overlap`` frames, each computed from a
    window widened by ``overlap // 2`` on both sides: (win_start, win_end, keep_start, keep_end)."""
    if not 0 <= overlap < chunk:
        raise ChunkingError(f"chunks of {chunk} frames cannot overlap by {overlap} "
                            "(need 0 <= overlap < chunk)")
    hop = chunk - overlap
    half = overlap // 2
    out = []
    for keep_start in range(0, total, hop):
        keep_end = min(keep_start + hop, total)
        out.append((max(0, keep_start - half), min(total, keep_end + half), keep_start, keep_end))
    return out


def map_in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, frames: int, chunk: int,
                  overlap: int, in_per_frame: int = 1, out_per_frame: int = 1) -> Tensor:
    """``fn`` applied to ``x`` in overlapping windows along the last axis, stitched together.

    Time is counted in frames: ``x`` holds ``frames · in_per_frame`` steps and ``fn`` maps a
    window of n frames to ``n · out_per_frame`` steps (an encoder: in_per_frame = its
    downsampling ratio; a decoder: out_per_frame = its upsampling ratio). Every other axis of
    ``fn``'s output is taken from the first window's.
    """
    out = None
    for w0, w1, k0, k1 in spans(frames, chunk, overlap):
        part = fn(x[..., w0 * in_per_frame: w1 * in_per_frame])
        if out is None:
            out = part.new_empty(*part.shape[:-1], frames * out_per_frame)
        out[..., k0 * out_per_frame: k1 * out_per_frame] = \
            part[..., (k0 - w0) * out_per_frame: (k1 - w0) * out_per_frame]
    return out
