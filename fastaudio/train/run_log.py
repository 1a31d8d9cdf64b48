"""Training logs: JSON lines in RUN_DIR/log.jsonl (and TensorBoard when installed), rank 0 only.

On resume from step S the log keeps exactly the records of steps <= S (a partial last line left
by a kill is dropped too), so the log of a resumed run reads as one continuous run.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, Optional

log = logging.getLogger("fastaudio.train")


def read_log(path: str) -> list:
    """Every complete record of a log file (a torn last line is skipped)."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class RunLog:
    def __init__(self, run_dir: str, enabled: bool, resume_step: Optional[int] = None):
        self.enabled = enabled
        self.path = os.path.join(run_dir, "log.jsonl")
        self._tb = None
        if not enabled:
            return
        if resume_step is not None:
            keep = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
            from ..atomic import atomic_write_text
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        elif os.path.exists(self.path):
            os.remove(self.path)  # a fresh run in a folder with an old log
        self._file = open(self.path, "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        except Exception:  # tensorboard is optional (the `train` extra)
            self._tb = None

    def write(self, step: int, values: Dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in values.items()}
        record = {"step": step, "kind": kind, **clean}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
