"""Training crops with timing conditioning, as Stable Audio 1.0 makes them.

Each sample is a ``sample_size`` window of one file: the offset is uniform in
``[0, n − sample_size]``, ``seconds_start = floor(offset / sr)`` and
``seconds_total = ceil(n / sr)`` (n: the file's length in samples at the model's rate). Files
shorter than the window start at 0 and are zero-padded at the end; ``padding_mask`` marks the
real samples. This is what lets the model learn where in a track a window sits and how long the
track is, so at inference it renders ``seconds_total`` of audio followed by silence.

All randomness (crop, prompt, augmentation) comes from ``(seed, epoch, index)``
(:mod:`fastaudio.data.rng`), so processes, DataLoader workers and resumed runs agree.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from .decode import load_crop
from .errors import DataError
from .manifest import AudioItem
from .prompts import check_style, count_empty_prompts, make_prompt
from .rng import sample_rng
from .sampler import ShardedSampler  # noqa: F401  (the sampler that goes with these datasets)

log = logging.getLogger("fastaudio.data")

Key = Union[int, Tuple[int, int]]


def split_key(key: Key, default_epoch: int, length: int, owner: str) -> Tuple[int, int]:
    """``index`` or ``(epoch, index)`` → ``(epoch, index)`` with a non-negative index."""
    if isinstance(key, tuple):
        if len(key) != 2:
            raise IndexError(f"{owner}: expected an index or (epoch, index), got {key!r}")
        epoch, index = int(key[0]), int(key[1])
    else:
        epoch, index = default_epoch, int(key)
    if not -length <= index < length:
        raise IndexError(f"{owner}: index {index} out of range for {length} samples")
    return epoch, index % length


def choose_offset(n: int, sample_size: int, random_crop: bool, rng) -> int:
    """The crop's first sample: uniform in [0, n − sample_size]; 0 for short files or when not
    cropping at random."""
    if not random_crop or n <= sample_size:
        return 0
    return rng.randint(0, n - sample_size)


class AudioDataset(Dataset):
    """``dataset[i]`` (or ``dataset[(epoch, i)]``) → dict with ``audio`` (channels, sample_size)
    float32, ``padding_mask`` (sample_size,) bool (True: real audio), ``seconds_start`` int,
    ``seconds_total`` int, ``prompt`` str, ``path`` str.

    Audio is clamped to [-1, 1] as in stable-audio-tools (float files may exceed it).
    ``phase_flip`` inverts the polarity of half the crops, the reference's only augmentation
    (its ``PhaseFlipper``); it is off unless asked for.
    """

    def __init__(self, items: Sequence[AudioItem], sample_size: int, sample_rate: int = 44100,
                 random_crop: bool = True, seed: int = 0, prompt_style: str = "mixed",
                 channels: int = 2, phase_flip: bool = False):
        items = list(items)
        if not items:
            raise DataError("AudioDataset: no items (did the audit reject every file?)")
        for n, item in enumerate(items):
            if not isinstance(item, AudioItem):
                raise DataError(f"AudioDataset: item {n} is a {type(item).__name__}, not an AudioItem")
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
            raise DataError(f"AudioDataset: sample_size must be a positive integer, got {sample_size!r}")
        if not isinstance(sample_rate, int) or sample_rate < 1:
            raise DataError(f"AudioDataset: sample_rate must be a positive integer, got {sample_rate!r}")
        if channels not in (1, 2):
            raise DataError(f"AudioDataset: channels must be 1 or 2, got {channels!r}")
        self.items = items
        self.sample_size = sample_size
        self.sample_rate = sample_rate
        self.random_crop = random_crop
        self.seed = int(seed)
        self.prompt_style = check_style(prompt_style)
        self.channels = channels
        self.phase_flip = phase_flip
        self.epoch = 0
        empty = count_empty_prompts(items, prompt_style)
        if empty:
            log.info("AudioDataset: %d of %d items have nothing for prompt style %r; they train "
                     "with the empty prompt", empty, len(items), prompt_style)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Crops and prompts of later ``dataset[i]`` calls come from this epoch."""
        self.epoch = int(epoch)

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = split_key(key, self.epoch, len(self.items), "AudioDataset")
        return self.sample(index, epoch)

    def sample(self, index: int, epoch: int) -> Dict[str, Any]:
        """Sample ``index`` as epoch ``epoch`` draws it (the dataset's own epoch is untouched)."""
        item = self.items[index]
        crop_rng = sample_rng(self.seed, epoch, index, "crop")
        audio, n, offset = load_crop(
            item.path, self.sample_size,
            lambda n: choose_offset(n, self.sample_size, self.random_crop, crop_rng),
            self.sample_rate, self.channels)
        real = audio.shape[1]
        out = torch.zeros(self.channels, self.sample_size, dtype=torch.float32)
        out[:, :real] = audio.clamp(-1.0, 1.0)
        mask = torch.zeros(self.sample_size, dtype=torch.bool)
        mask[:real] = True
        if self.phase_flip and sample_rng(self.seed, epoch, index, "phase_flip").random() < 0.5:
            out.neg_()
        return {
            "audio": out,
            "padding_mask": mask,
            "seconds_start": offset // self.sample_rate,
            "seconds_total": -(-n // self.sample_rate),  # ceil without float rounding
            "prompt": make_prompt(item, sample_rng(self.seed, epoch, index, "prompt"),
                                  self.prompt_style),
            "path": item.path,
        }


def collate(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Samples → a batch: tensors stacked, ints and floats as tensors (B,), strings and anything
    else as lists."""
    if not batch:
        raise DataError("collate: empty batch")
    keys = list(batch[0].keys())
    for n, sample in enumerate(batch):
        if list(sample.keys()) != keys:
            raise DataError(f"collate: sample {n} has keys {sorted(sample)}, sample 0 has {sorted(keys)}")
    out: Dict[str, Any] = {}
    for k in keys:
        values: List[Any] = [s[k] for s in batch]
        first = values[0]
        if isinstance(first, torch.Tensor):
            out[k] = torch.stack(values)
        elif isinstance(first, bool):
            out[k] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[k] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            out[k] = torch.tensor(values, dtype=torch.float32)
        else:
            out[k] = values
    return out
