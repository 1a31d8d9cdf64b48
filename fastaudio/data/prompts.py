"""Text prompts in both of the paper's styles.

Stable Audio 1.0 trains on natural-language captions and on prompts built from metadata:
``key: value`` pairs of a random subset of the item's metadata, in random order, joined with
", " ("genre: jazz, tempo: 120 BPM, instrument: piano"). So the model learns both ways of
being asked. An item with neither gives the empty prompt, which trains the unconditional case.
"""
from __future__ import annotations

import json
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import DataError
from .manifest import AudioItem

STYLES = ("mixed", "caption", "metadata")


def check_style(style: str) -> str:
    if style not in STYLES:
        raise DataError(f"unknown prompt style {style!r}; styles: {', '.join(STYLES)}")
    return style


def _format_value(value: Any) -> Optional[str]:
    """A metadata value as prompt text; None for values that say nothing (None, "", [])."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)):
        parts = [p for p in (_format_value(v) for v in value) if p]
        return ", ".join(parts) or None
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else None
    return str(value)


def metadata_pairs(metadata: Dict[str, Any]) -> List[Tuple[str, str]]:
    """The (key, text) pairs a metadata prompt can use, sorted by key so the prompt does not
    depend on the order a manifest happened to list the keys in."""
    pairs = [(str(k), _format_value(v)) for k, v in metadata.items()]
    return sorted((k, v) for k, v in pairs if v)


def metadata_prompt(metadata: Dict[str, Any], rng: random.Random) -> str:
    """A random non-empty subset of the metadata, in random order, as "key: value, …"."""
    pairs = metadata_pairs(metadata)
    if not pairs:
        return ""
    chosen = rng.sample(pairs, rng.randint(1, len(pairs)))
    return ", ".join(f"{k}: {v}" for k, v in chosen)


def make_prompt(item: AudioItem, rng: random.Random, style: str = "mixed") -> str:
    """The training prompt of ``item``.

    ``"caption"``: the caption; ``"metadata"``: a metadata prompt; ``"mixed"``: either with
    probability 0.5 when the item has both, otherwise whichever it has. "" when the style finds
    nothing (the unconditional case; :func:`count_empty_prompts` reports how often).
    """
    check_style(style)
    caption = (item.caption or "").strip()
    has_meta = bool(metadata_pairs(item.metadata))
    if style == "caption":
        return caption
    if style == "metadata":
        return metadata_prompt(item.metadata, rng)
    # mixed: draw the coin even when only one kind exists, so the rest of this stream does not
    # depend on what the item has (keeps metadata subsets stable if a caption is added later)
    use_caption = rng.random() < 0.5
    if caption and has_meta:
        return caption if use_caption else metadata_prompt(item.metadata, rng)
    if caption:
        return caption
    return metadata_prompt(item.metadata, rng) if has_meta else ""


def count_empty_prompts(items: Sequence[AudioItem], style: str) -> int:
    """How many items always get the empty prompt under ``style``."""
    check_style(style)
    n = 0
    for item in items:
        has_caption = bool((item.caption or "").strip())
        has_meta = bool(metadata_pairs(item.metadata))
        if style == "caption":
            n += not has_caption
        elif style == "metadata":
            n += not has_meta
        else:
            n += not (has_caption or has_meta)
    return n
