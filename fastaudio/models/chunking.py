"""Overlapped chunking along time, shared by the VAEs' encoders and decoders.

A fully convolutional network's output at frame t depends only on the inputs within its
receptive field around t. So a long input can be processed in windows: each window computes a
kept region plus ``overlap // 2`` frames of context on both sides, and only the kept region is
written out. When the half-overlap covers the receptive field, the result equals the unchunked
one up to floating-point rounding, while memory is bounded by the window, not the duration.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from torch import Tensor

from ..errors import FastAudioError
from ..nn.conv import convs_channels_last, eager_cpu_inference


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


def decode_latents(decoder: Callable[[Tensor], Tensor], latents: Tensor, chunk: int, overlap: int,
                   ratio: int, chunked: Optional[bool], channels_last: bool) -> Tensor:
    """A VAE decoder over latents of any length: in windows when longer than ``chunk`` (or when
    ``chunked`` says so). ``channels_last``: the caller allows channels-last convs (see
    ``fastaudio.nn.conv.convs_channels_last``); they run for eager CPU inference only, and the
    audio is returned in plain memory either way."""
    frames = latents.shape[-1]
    if chunked is None:
        chunked = frames > chunk
    channels_last = channels_last and eager_cpu_inference(latents)
    with convs_channels_last(channels_last):
        if chunked:
            audio = map_in_chunks(decoder, latents, frames, chunk, overlap, out_per_frame=ratio)
        else:
            audio = decoder(latents)
    return audio.contiguous() if channels_last else audio
