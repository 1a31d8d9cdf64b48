"""Checking what a caller passes to the pipeline: every bad value becomes a
:class:`GenerationError` naming the argument, before any work is done."""
from __future__ import annotations

import math
import numbers
import random
from typing import List, Optional, Sequence, Union

import torch

from .errors import FastAudioError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class GenerationError(FastAudioError, ValueError):
    """Arguments to generate() that cannot be served; the message names the argument."""


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise GenerationError(f"dtype {dtype} is not supported (fp32, bf16, fp16)")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise GenerationError(f"unknown dtype {dtype!r} (fp32, bf16, fp16)") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def parse_device(device: Union[None, str, torch.device]) -> torch.device:
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise GenerationError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerationError(f"device {device!r}: no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GenerationError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        raise GenerationError(f"device {device!r}: fastaudio runs on cpu or cuda")
    return dev


def number(name: str, value, low: float, high: float, inclusive_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (value == low and not inclusive_low) or value > high:
        lo = ">=" if inclusive_low else ">"
        raise GenerationError(f"{name} must be {lo} {low:g} and <= {high:g}, got {value:g}")
    return value


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerationError(f"{name} must be a positive integer, got {value!r}")
    return value


def prompt_list(prompt: Union[str, Sequence[str]], batch_size: int) -> List[str]:
    positive_int("batch_size", batch_size)
    if isinstance(prompt, str):
        return [prompt] * batch_size
    if not isinstance(prompt, (list, tuple)):
        raise GenerationError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = list(prompt)
    if not prompts:
        raise GenerationError("no prompt given")
    if batch_size not in (1, len(prompts)):
        raise GenerationError(f"{len(prompts)} prompts but batch_size={batch_size}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise GenerationError(f"prompt {i} must be a string, got {type(p).__name__}")
    return prompts


def seed_list(seed: Union[None, int, Sequence[int]], batch: int) -> List[int]:
    """One seed per batch item: ``seed`` gives seed, seed+1, …; a list gives each its own; None
    draws a fresh one. Item i's noise comes from its own generator, so ``seeds[i]`` alone
    reproduces item i in a batch of one."""
    if seed is None:
        seed = random.SystemRandom().randrange(2 ** 31)
    if isinstance(seed, (list, tuple)):
        seeds = list(seed)
        if len(seeds) != batch:
            raise GenerationError(f"{len(seeds)} seeds for a batch of {batch}")
    else:
        seeds = [seed + i if isinstance(seed, int) and not isinstance(seed, bool) else seed
                 for i in range(batch)]
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2 ** 63:
            raise GenerationError(f"seed must be a non-negative integer, got {s!r}")
    return seeds
