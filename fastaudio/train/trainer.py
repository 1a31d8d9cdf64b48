"""The training loop shared by the three stages (VAE, CLAP, diffusion).

A stage provides *update groups*: a module whose ``forward(micro_batch, ctx)`` returns
``(loss, logs)``, with its own optimizer, LR schedule and optional EMA (the VAE has two groups:
the autoencoder and the discriminator). Each step the trainer

1. takes this rank's share of the global batch (a pure function of the step, so a resumed run,
   or N processes, see exactly the samples one uninterrupted process would),
2. for each group: zero grads, forward/backward over ``grad_accum`` micro-batches (DDP syncs
   only on the last), clip, step, schedule, EMA,
3. logs, checkpoints (atomically, keeping the last K), and renders demos on rank 0.

All randomness a step uses (crops, prompts, diffusion times, noise, dropout) is derived from
(seed, epoch, sample index) through :func:`sample_generator`, never from a global RNG stream.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import FastAudioError
from . import distributed as D
from .checkpointing import load_latest, save_checkpoint
from .config import OptimConfig, TrainConfig
from .ema import EMA
from .run_log import RunLog

log = logging.getLogger("fastaudio.train")


class TrainingError(FastAudioError, RuntimeError):
    pass


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *keys): the same sample gets the same randomness in
    any process and after any restart."""
    digest = hashlib.blake2b(repr((seed,) + tuple(int(k) for k in keys)).encode(), digest_size=8)
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") & (2 ** 63 - 1))


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "constant":
            return warm
        if cfg.schedule == "exponential":
            return warm * cfg.gamma ** step
        if cfg.schedule == "cosine":
            progress = min(1.0, step / max(1, total_steps))
            return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        raise TrainingError(f"unknown LR schedule {cfg.schedule!r}")
    return factor


@dataclass
class UpdateGroup:
    name: str
    module: nn.Module               # forward(micro_batch, ctx) -> (loss, logs)
    optim: OptimConfig
    params: Optional[List[nn.Parameter]] = None   # default: every trainable parameter
    ema_target: Optional[nn.Module] = None        # the module whose EMA is exported
    active: Callable[[int], bool] = lambda step: True  # e.g. a discriminator that starts later
    wrapped: Optional[nn.Module] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None
    ema: Optional[EMA] = None


@dataclass
class StepContext:
    """What a group's forward needs besides the micro-batch."""
    step: int
    epoch: int
    seed: int
    indices: List[int]              # global sample positions of the micro-batch's items
    cache: dict                     # shared between the groups of one step (e.g. decoded audio)
    micro: int


class Stage:
    """Base of the three stages; see stage_vae.py, stage_clap.py, stage_diffusion.py."""
    name = "stage"

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def dataset(self):
        raise NotImplementedError

    def collate(self, items: list) -> dict:
        raise NotImplementedError

    def groups(self) -> List[UpdateGroup]:
        raise NotImplementedError

    def demo(self, step: int) -> None:
        """Rank 0, every ``demo_every`` steps."""

    def export(self, folder: str, gathered=None) -> None:
        raise NotImplementedError


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str, stage_factory: Callable[["Trainer"], Stage],
                 dist: D.Dist, resume: bool = False, progress: bool = True):
        self.cfg = cfg.validate()
        self.run_dir = run_dir
        self.dist = dist
        self.device = dist.device
        self.progress = progress and dist.is_main
        world_micro = dist.world * cfg.grad_accum
        if cfg.batch_size % world_micro:
            raise TrainingError(f"batch_size {cfg.batch_size} must be divisible by processes x "
                                f"grad_accum = {world_micro}")
        self.rank_batch = cfg.batch_size // dist.world
        os.makedirs(run_dir, exist_ok=True)
        self.stage = stage_factory(self)
        self.data = self.stage.dataset()
        self.num_items = len(self.data)
        if self.num_items < cfg.batch_size:
            raise TrainingError(f"the dataset has {self.num_items} usable items, fewer than one "
                                f"batch of {cfg.batch_size}")
        self.steps_per_epoch = self.num_items // cfg.batch_size
        self.groups = self.stage.groups()
        for g in self.groups:
            g.wrapped = D.wrap(g.module, dist, cfg.strategy)
            params = g.params if g.params is not None else \
                [p for p in g.wrapped.parameters() if p.requires_grad]
            o = g.optim
            g.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                            weight_decay=o.weight_decay)
            g.scheduler = torch.optim.lr_scheduler.LambdaLR(g.optimizer, lr_lambda(o, cfg.steps))
            if g.ema_target is not None and cfg.ema_decay > 0:
                g.ema = EMA(g.ema_target, cfg.ema_decay)
        self.step = 0
        resumed = self._resume() if resume else None
        self.log = RunLog(run_dir, dist.is_main, resume_step=resumed)

    # -- data -----------------------------------------------------------------------------
    def permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.num_items, generator=sample_generator(self.cfg.seed, epoch, -1))

    def rank_indices(self, step: int):
        """(epoch, [(global position, dataset index)]) of this rank's share of step ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self.permutation(epoch)
        start = k * self.cfg.batch_size
        positions = range(start + self.dist.rank, start + self.cfg.batch_size, self.dist.world)
        return epoch, [(p, int(perm[p])) for p in positions]

    def load_batch(self, step: int):
        epoch, pairs = self.rank_indices(step)
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)
        items = [self.data[i] for _, i in pairs]
        return epoch, [p + epoch * self.num_items for p, _ in pairs], items

    # -- one step -------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, step: int) -> Dict[str, float]:
        epoch, positions, items = self.load_batch(step)
        a = self.cfg.grad_accum
        size = len(items) // a
        micro = [(positions[i * size:(i + 1) * size], self.stage.collate(items[i * size:(i + 1) * size]))
                 for i in range(a)]
        cache: dict = {}
        logs: Dict[str, float] = {}
        for g in self.groups:
            if not g.active(step):
                continue
            g.optimizer.zero_grad(set_to_none=True)
            for m, (pos, batch) in enumerate(micro):
                ctx = StepContext(step, epoch, self.cfg.seed, pos, cache, m)
                sync = contextlib.nullcontext() if (m == a - 1 or not hasattr(g.wrapped, "no_sync")) \
                    else g.wrapped.no_sync()
                with sync:
                    with self._autocast():
                        loss, parts = g.wrapped(batch, ctx)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"{g.name} loss is {loss.item()} at step {step}")
                    (loss / a).backward()
                for k, v in parts.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / a
            if self.cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in g.wrapped.parameters() if p.grad is not None], self.cfg.grad_clip)
                logs[f"{g.name}_grad_norm"] = float(norm)
            g.optimizer.step()
            g.scheduler.step()
            logs[f"{g.name}_lr"] = g.scheduler.get_last_lr()[0]
            if g.ema is not None:
                g.ema.update(g.ema_target, step)
        return logs

    # -- run ------------------------------------------------------------------------------
    def fit(self, steps: Optional[int] = None) -> None:
        total = self.cfg.steps if steps is None else steps
        cfg = self.cfg
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.stage.name}", unit="step",
                   disable=not self.progress)
        window: Dict[str, float] = {}
        count, t0 = 0, time.perf_counter()
        try:
            while self.step < total:
                step = self.step
                logs = self.train_step(step)
                self.step = step + 1
                bar.update(1)
                for k, v in logs.items():
                    window[k] = window.get(k, 0.0) + v
                count += 1
                if self.step % cfg.log_every == 0 or self.step == total:
                    elapsed = time.perf_counter() - t0
                    means = {k: v / count for k, v in window.items()}
                    means["step_time_s"] = elapsed / count
                    means["samples_per_s"] = count * cfg.batch_size / max(elapsed, 1e-9)
                    reduced = {k: float(D.all_reduce_mean(torch.tensor(v, dtype=torch.float64), self.dist))
                               for k, v in means.items()}
                    self.log.write(self.step, reduced)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in reduced.items() if k.endswith("loss")})
                    window, count, t0 = {}, 0, time.perf_counter()
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save()
                if cfg.demo_every and self.step % cfg.demo_every == 0 and self.dist.is_main:
                    self.stage.demo(self.step)
        finally:
            bar.close()
        self.export()

    # -- state ----------------------------------------------------------------------------
    def _module_state(self, g: UpdateGroup) -> dict:
        if self.cfg.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                 get_model_state_dict,
                                                                 get_optimizer_state_dict)
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return {"model": get_model_state_dict(g.wrapped, options=opts),
                    "optimizer": get_optimizer_state_dict(g.wrapped, g.optimizer, options=opts)}
        return {"model": D.unwrap(g.wrapped).state_dict(), "optimizer": g.optimizer.state_dict()}

    def state_dict(self) -> dict:
        from dataclasses import asdict
        state = {"step": self.step, "train_config": asdict(self.cfg), "groups": {},
                 "rng": {"torch": torch.get_rng_state()}}
        for g in self.groups:
            entry = self._module_state(g)
            entry["scheduler"] = g.scheduler.state_dict()
            if g.ema is not None:
                entry["ema"] = g.ema.state_dict()
            state["groups"][g.name] = entry
        return state

    def save(self) -> None:
        state = self.state_dict()  # every rank takes part (FSDP gathers)
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.step, state, self.cfg.keep_last)
            self.log.write(self.step, {"checkpoint": os.path.basename(path)}, kind="checkpoint")
        D.barrier(self.dist)

    def _resume(self) -> Optional[int]:
        found = load_latest(self.run_dir)
        if found is None:
            log.info("no checkpoint in %s: starting from step 0", self.run_dir)
            return 0
        step, state = found
        for g in self.groups:
            entry = state["groups"].get(g.name)
            if entry is None:
                raise TrainingError(f"checkpoint step {step} has no state for {g.name!r}")
            if self.cfg.strategy == "fsdp" and self.dist.enabled:
                from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                     set_model_state_dict,
                                                                     set_optimizer_state_dict)
                set_model_state_dict(g.wrapped, entry["model"],
                                     options=StateDictOptions(full_state_dict=True))
                # strict=False: a parameter that has not had a gradient yet (the null context
                # before its first dropout) has no Adam state to restore, which is correct
                set_optimizer_state_dict(g.wrapped, g.optimizer, entry["optimizer"],
                                         options=StateDictOptions(full_state_dict=True, strict=False))
            else:
                D.unwrap(g.wrapped).load_state_dict(entry["model"])
                g.optimizer.load_state_dict(entry["optimizer"])
            g.scheduler.load_state_dict(entry["scheduler"])
            if g.ema is not None and "ema" in entry:
                g.ema.load_state_dict(entry["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = step
        log.info("resumed %s from step %d", self.run_dir, step)
        return step

    def export(self) -> None:
        """Write RUN_DIR/export, a model folder with the EMA weights (rank 0)."""
        gathered = self._gathered_weights() if self.cfg.strategy == "fsdp" and self.dist.enabled else None
        if self.dist.is_main:
            folder = os.path.join(self.run_dir, "export")
            self.stage.export(folder, gathered)
            self.log.write(self.step, {"export": folder}, kind="export")
        D.barrier(self.dist)

    def _gathered_weights(self) -> Dict[int, torch.Tensor]:
        """Under FSDP: full (EMA) tensors of every trained parameter, keyed by the parameter's id
        (every rank takes part in the gather; the stage maps ids to its model's names)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        out: Dict[int, torch.Tensor] = {}
        with self.ema_weights():
            for g in self.groups:
                full = get_model_state_dict(g.wrapped, options=opts)
                for name, p in g.module.named_parameters():
                    if name in full:
                        out[id(p)] = full[name]
        return out

    @contextlib.contextmanager
    def ema_weights(self):
        """Temporarily swap the EMA weights into the exported modules (demos, export)."""
        saved = []
        for g in self.groups:
            if g.ema is not None:
                backup = {k: p.detach().clone() for k, p in g.ema_target.named_parameters()}
                g.ema.copy_to(g.ema_target)
                saved.append((g, backup))
        try:
            yield
        finally:
            for g, backup in saved:
                with torch.no_grad():
                    for k, p in g.ema_target.named_parameters():
                        p.copy_(backup[k])

    def close(self) -> None:
        self.log.close()
