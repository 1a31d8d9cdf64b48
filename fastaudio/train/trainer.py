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


def ramp(step: int, steps: int) -> float:
    """0 → 1 linearly over ``steps``, then 1; always 1 when ``steps`` is 0 (warm-ups)."""
    return 1.0 if steps <= 0 else min(1.0, step / steps)


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        warm = ramp(step + 1, cfg.warmup_steps)
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
    find_unused: bool = False       # DDP: some parameters may get no gradient in a step
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


class _StepItems(torch.utils.data.Dataset):
    """step → (epoch, positions, items) of one rank: what DataLoader workers load ahead."""

    def __init__(self, trainer: "Trainer"):
        self.steps_per_epoch = trainer.steps_per_epoch
        self.batch_size = trainer.cfg.batch_size
        self.rank, self.world = trainer.dist.rank, trainer.dist.world
        self.seed, self.num_items = trainer.cfg.seed, trainer.num_items
        self.data = trainer.data

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int):
        return load_rank_batch(self.data, step, self.steps_per_epoch, self.batch_size, self.rank,
                               self.world, self.seed, self.num_items)


def _as_is(batch):
    """DataLoader collate for _StepItems, which already returns whole steps (a module-level
    function, not a lambda, so workers can be spawned as well as forked)."""
    return batch


def load_rank_batch(data, step: int, steps_per_epoch: int, batch_size: int, rank: int, world: int,
                    seed: int, num_items: int):
    """(epoch, global positions, items) of rank ``rank``'s share of step ``step``: a pure function
    of its arguments, so workers, resumed runs and N processes agree."""
    epoch, k = divmod(step, steps_per_epoch)
    perm = torch.randperm(num_items, generator=sample_generator(seed, epoch, -1))
    start = k * batch_size
    positions = range(start + rank, start + batch_size, world)
    items = [data[(epoch, int(perm[p]))] if hasattr(data, "set_epoch") else data[int(perm[p])]
             for p in positions]
    return epoch, [p + epoch * num_items for p in positions], items


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
            g.wrapped = D.wrap(g.module, dist, cfg.strategy, find_unused=g.find_unused)
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
    def load_batch(self, step: int):
        return load_rank_batch(self.data, step, self.steps_per_epoch, self.cfg.batch_size,
                               self.dist.rank, self.dist.world, self.cfg.seed, self.num_items)

    # -- one step -------------------------------------------------------------------------
    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, step: int, loaded=None) -> Dict[str, torch.Tensor]:
        """One optimisation step; logged values come back as detached device tensors (no host
        sync per step: they are read at ``log_every``)."""
        epoch, positions, items = loaded if loaded is not None else self.load_batch(step)
        a = self.cfg.grad_accum
        size = len(items) // a
        micro = [(positions[i * size:(i + 1) * size], self.stage.collate(items[i * size:(i + 1) * size]))
                 for i in range(a)]
        cache: dict = {}
        logs: Dict[str, torch.Tensor] = {}

        def add(key, value, weight=1.0):
            if hasattr(value, "full_tensor"):  # FSDP2: clip_grad_norm_ returns a DTensor
                value = value.full_tensor()
            value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
            logs[key] = logs.get(key, 0.0) + value * weight

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
                    (loss / a).backward()
                add(f"{g.name}_objective", loss, 1 / a)
                for k, v in parts.items():
                    add(k, v, 1 / a)
            if self.cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(
                    [p for p in g.wrapped.parameters() if p.grad is not None], self.cfg.grad_clip)
                add(f"{g.name}_grad_norm", norm)
            g.optimizer.step()
            g.scheduler.step()
            add(f"{g.name}_lr", g.scheduler.get_last_lr()[0])
            if g.ema is not None:
                g.ema.update(g.ema_target, step)
        return logs

    def _reduce_logs(self, window: Dict[str, torch.Tensor], count: int) -> Dict[str, float]:
        """Means over the window, averaged over processes with one collective (keys sorted, so
        every rank lines its values up the same way), and a check that training is finite."""
        keys = sorted(window)
        dev = self.device if self.dist.enabled and self.device.type == "cuda" else torch.device("cpu")
        values = torch.stack([torch.as_tensor(window[k], dtype=torch.float64).to(dev) for k in keys]) / count
        values = D.all_reduce_mean(values, self.dist).cpu().tolist()
        means = dict(zip(keys, values))
        bad = [k for k in keys if k.endswith("_objective") and not math.isfinite(means[k])]
        if bad:
            raise TrainingError(f"{', '.join(bad)} became {means[bad[0]]} before step {self.step}: "
                                "lower the learning rate or check the data")
        return means

    # -- run ------------------------------------------------------------------------------
    def fit(self, steps: Optional[int] = None) -> None:
        total = self.cfg.steps if steps is None else steps
        cfg = self.cfg
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.stage.name}", unit="step",
                   disable=not self.progress)
        window: Dict[str, torch.Tensor] = {}
        count, t0 = 0, time.perf_counter()
        batches = self._batches(total)
        try:
            while self.step < total:
                step = self.step
                logs = self.train_step(step, next(batches))
                self.step = step + 1
                bar.update(1)
                for k, v in logs.items():
                    window[k] = window.get(k, 0.0) + v
                count += 1
                if self.step % cfg.log_every == 0 or self.step % cfg.checkpoint_every == 0 \
                        or self.step == total:
                    elapsed = time.perf_counter() - t0
                    means = self._reduce_logs(window, count)
                    means["step_time_s"] = elapsed / count
                    means["samples_per_s"] = count * cfg.batch_size / max(elapsed, 1e-9)
                    self.log.write(self.step, means)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k.endswith("loss")})
                    window, count, t0 = {}, 0, time.perf_counter()
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save()
                if cfg.demo_every and self.step % cfg.demo_every == 0 and self.dist.is_main:
                    self.stage.demo(self.step)
        finally:
            bar.close()
        self.export()

    def _batches(self, total: int):
        """This rank's items for each step from the current one: loaded in DataLoader worker
        processes when ``data.num_workers`` > 0 (prefetching while the model trains)."""
        workers = self.cfg.data.num_workers
        if workers <= 0:
            return (self.load_batch(step) for step in range(self.step, total))
        loader = torch.utils.data.DataLoader(_StepItems(self), batch_size=None, num_workers=workers,
                                             sampler=range(self.step, total), prefetch_factor=2,
                                             persistent_workers=False, collate_fn=_as_is)
        return iter(loader)

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
                try:
                    D.unwrap(g.wrapped).load_state_dict(entry["model"])
                except RuntimeError as e:
                    # the code's architecture changed since the run started (e.g. a --preset
                    # small run of a88a94f, when the preset briefly had unet.use_pooled_context):
                    # name it instead of a wall of key names
                    first = str(e).strip().splitlines()[0]
                    raise TrainingError(f"checkpoint step {step} does not fit {g.name!r}: the model's "
                                        f"architecture differs from the run's ({first})") from None
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
