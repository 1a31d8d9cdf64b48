"""The held-out split: about ``fraction`` of the items, covering every class that has items.

Two passes over the items in a seeded hash order:
1. coverage: an item is held out when it brings a class value (a family, a tempo class, a sound)
   not yet in the held-out set, provided the training set keeps at least one item of each of
   its values; so every family and tempo class with two or more items appears on both sides;
2. fill: the rest of the quota is taken by systematic sampling over the items sorted by their
   class values, which spreads it over the strata in proportion to their sizes.
With few items the coverage pass alone may exceed the quota; coverage wins.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from typing import Dict, Hashable, List, Set, Tuple

Strata = Tuple[Tuple[str, Hashable], ...]  # (("family", "piano"), ("tempo_class", "slow"))


def choose_heldout(strata: Dict[int, Strata], fraction: float, seed: int) -> Set[int]:
    """Indices of the held-out items among ``strata`` (index → its class values)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    target = round(fraction * len(strata))
    if target == 0:
        return set()
    rank = {i: hashlib.sha256(f"heldout/{seed}/{i}".encode()).digest() for i in strata}
    order = sorted(strata, key=lambda i: rank[i])
    counts = Counter(v for values in strata.values() for v in values)
    held: Counter = Counter()
    chosen: List[int] = []
    for i in order:
        values = strata[i]
        new = any(held[v] == 0 and counts[v] >= 2 for v in values)
        if new and all(held[v] + 1 < counts[v] for v in values):
            chosen.append(i)
            held.update(values)
    need = target - len(chosen)
    if need > 0:
        taken = set(chosen)
        rest = sorted((i for i in order if i not in taken),
                      key=lambda i: (tuple((k, str(v)) for k, v in strata[i]), rank[i]))
        step = len(rest) / need
        chosen += [rest[int((k + 0.5) * step)] for k in range(need)]
    return set(chosen)
