"""Training checkpoints: RUN_DIR/checkpoints/step-00001234.pt, written atomically.

A checkpoint holds everything a run needs to continue exactly: model and EMA weights, optimizer
and scheduler states, the step, the data sampler's position, RNG states and the configs. The last
``keep_last`` are kept. Files are written to a temporary name and renamed, so a kill at any moment
leaves every earlier checkpoint intact; loading skips a damaged newest file and says so.
Checkpoints are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from typing import Optional, Tuple

import torch

from ..atomic import atomic_path
from ..errors import FastAudioError

log = logging.getLogger("fastaudio.train")

PATTERN = re.compile(r"step-(\d{8})\.pt$")


class ResumeError(FastAudioError, RuntimeError):
    pass


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def list_checkpoints(run_dir: str):
    """[(step, path)] sorted by step."""
    out = []
    for path in glob.glob(os.path.join(checkpoint_dir(run_dir), "step-*.pt")):
        m = PATTERN.search(path)
        if m:
            out.append((int(m.group(1)), path))
    return sorted(out)


def save_checkpoint(run_dir: str, step: int, payload: dict, keep_last: int) -> str:
    folder = checkpoint_dir(run_dir)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"step-{step:08d}.pt")
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        os.remove(old)
    return path


def load_latest(run_dir: str) -> Optional[Tuple[int, dict]]:
    """The newest readable checkpoint, or None when the run has none."""
    found = list_checkpoints(run_dir)
    for step, path in reversed(found):
        try:
            return step, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path,
                        str(e).splitlines()[0])
    if found:
        raise ResumeError(f"no readable checkpoint in {checkpoint_dir(run_dir)}")
    return None
