"""Deterministic, resumable sharding of a dataset's indices across training processes.

Each epoch has one global order, a permutation that depends only on ``(seed, epoch)``, never on
the number of processes. Rank ``r`` of ``R`` takes global positions ``r, r+R, r+2R, …`` of its
first ``R·⌊N/R⌋`` entries (``drop_last``) or of the order cycled to ``R·⌈N/R⌉`` entries. So the
R ranks' per-rank batches of ``b`` together hold exactly the global positions a single process
with batch ``R·b`` would see: changing the process count does not change what is trained on.

The state is ``(epoch, position)``: the epoch and how many of this rank's indices have been
consumed. ``state_dict()``/``load_state_dict()`` carry it across a restart, so a resumed run
continues from the exact next sample.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch.utils.data import Sampler

from .errors import DataError
from .rng import derive_seed

log = logging.getLogger("fastaudio.data")

_IDENTITY = ("num_items", "seed", "shuffle", "drop_last")


class ShardedSampler(Sampler):
    """This rank's share of each epoch's global order, resumable mid-epoch.

    ``yield_epoch=True`` yields ``(epoch, index)`` pairs, which :class:`AudioDataset` and
    :class:`LatentDataset` accept: the epoch then travels with every index, so crops follow the
    sampler's epoch even in persistent DataLoader workers, which never see a later
    ``dataset.set_epoch``.
    """

    def __init__(self, num_items: int, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, yield_epoch: bool = False):
        if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
            raise DataError(f"ShardedSampler: num_items must be a positive integer, got {num_items!r}")
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise DataError(f"ShardedSampler: num_replicas must be >= 1, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise DataError(f"ShardedSampler: rank {rank!r} is outside [0, {num_replicas})")
        if drop_last and num_items < num_replicas:
            raise DataError(f"ShardedSampler: {num_items} items cannot feed {num_replicas} "
                            "processes with drop_last=True (each would get none)")
        self.num_items = num_items
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.yield_epoch = yield_epoch
        self.epoch = 0
        self.position = 0

    # -- the orders -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """Indices this rank takes per epoch."""
        if self.drop_last:
            return self.num_items // self.num_replicas
        return math.ceil(self.num_items / self.num_replicas)

    def global_order(self, epoch: int) -> List[int]:
        """The single-process order of ``epoch`` (independent of ``num_replicas``)."""
        if not self.shuffle:
            return list(range(self.num_items))
        g = torch.Generator().manual_seed(derive_seed("fastaudio.sampler", self.seed, int(epoch)) >> 1)
        return torch.randperm(self.num_items, generator=g).tolist()

    def indices(self, epoch: int) -> List[int]:
        """This rank's indices for ``epoch``, in order."""
        order = self.global_order(epoch)
        total = len(self) * self.num_replicas
        if total > len(order):  # drop_last=False: cycle the order so every rank gets as many
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank:total:self.num_replicas]

    # -- iteration and state ----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first index. Setting the epoch the sampler is already in
        keeps its position, so a run that restores a state and then calls ``set_epoch`` with the
        restored epoch continues mid-epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def __iter__(self) -> Iterator[Union[int, Tuple[int, int]]]:
        if self.position >= len(self):
            # the epoch is used up and nobody called set_epoch: go on to the next one rather
            # than replaying the same order
            log.info("ShardedSampler: epoch %d finished; starting epoch %d", self.epoch, self.epoch + 1)
            self.epoch, self.position = self.epoch + 1, 0
        epoch = self.epoch
        indices = self.indices(epoch)
        for p in range(self.position, len(indices)):
            # count before yielding: after k next() calls the state says k were consumed
            self.position = p + 1
            yield (epoch, indices[p]) if self.yield_epoch else indices[p]

    def state_dict(self, position: Optional[int] = None) -> Dict[str, Any]:
        """``{"epoch", "position", …}``. ``position`` defaults to the indices handed out so far,
        which is what the training loop consumed when it iterates the sampler directly or via a
        DataLoader with ``num_workers=0``. A DataLoader with workers draws indices ahead
        (``prefetch_factor`` batches per worker): then pass the number this rank actually
        trained on in the current epoch (batches × per-process batch size)."""
        pos = self.position if position is None else int(position)
        if not 0 <= pos <= len(self):
            raise DataError(f"ShardedSampler.state_dict: position {pos} is outside [0, {len(self)}]")
        return {"epoch": self.epoch, "position": pos, "num_replicas": self.num_replicas,
                **{k: getattr(self, k) for k in _IDENTITY}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from ``state``. The same data and seed are required; a different number of
        processes is fine when the samples consumed so far split evenly across the new count."""
        missing = [k for k in ("epoch", "position", "num_replicas", *_IDENTITY) if k not in state]
        if missing:
            raise DataError(f"ShardedSampler state lacks {', '.join(missing)}")
        for k in _IDENTITY:
            if state[k] != getattr(self, k):
                raise DataError(f"ShardedSampler state was saved with {k}={state[k]!r}, this "
                                f"sampler has {k}={getattr(self, k)!r}: the sample order differs")
        epoch, position, replicas = int(state["epoch"]), int(state["position"]), int(state["num_replicas"])
        if replicas != self.num_replicas:
            consumed = position * replicas  # global positions consumed by all ranks together
            if consumed % self.num_replicas:
                raise DataError(f"ShardedSampler state: {consumed} samples consumed by "
                                f"{replicas} processes do not split evenly over "
                                f"{self.num_replicas}")
            position = consumed // self.num_replicas
        if not 0 <= position <= len(self):
            raise DataError(f"ShardedSampler state: position {position} is outside "
                            f"[0, {len(self)}]")
        if position == len(self):  # saved at the end of an epoch: the next sample opens the next
            epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position
