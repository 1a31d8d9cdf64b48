"""Where Hugging Face keeps what a user has already downloaded, read without huggingface_hub and
without touching the network: fastaudio never downloads. Used to find T5 (models/t5_text.py) and
a checkpoint named by its hub id, ``--model stabilityai/stable-audio-open-small``
(checkpoints.py), in a cache filled by ``huggingface-cli download`` or by diffusers."""
from __future__ import annotations

import os
import re
from typing import List

# owner/name as the hub spells repository ids (no path separators beyond the one slash)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hf_hub_cache() -> str:
    """The Hugging Face hub cache folder, resolved as huggingface_hub does: ``HF_HUB_CACHE``,
    then the older ``HUGGINGFACE_HUB_CACHE``, then ``$HF_HOME/hub``, with ``HF_HOME`` defaulting
    to ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


# what ends a file path a user might mistype, never a model repository's name
_FILE_SUFFIXES = (".ckpt", ".safetensors", ".json", ".pt", ".pth", ".bin")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` (what a user copies from a model page), as opposed to a path: one slash,
    no file suffix, and no local folder named like the owner."""
    return (bool(_REPO_ID.match(text)) and not text.startswith(".")
            and not text.lower().endswith(_FILE_SUFFIXES)
            and not os.path.exists(text.split("/", 1)[0]))


def repo_cache_dir(repo_id: str) -> str:
    """The cache folder of one model repository (it may not exist)."""
    return os.path.join(hf_hub_cache(), "models--" + repo_id.replace("/", "--"))


def cache_snapshots(repo_id: str) -> List[str]:
    """The repository's snapshots: the one ``refs/main`` names first, then the others, newest
    first (a cache filled at a pinned revision has no refs/main)."""
    repo_dir = repo_cache_dir(repo_id)
    snap_root = os.path.join(repo_dir, "snapshots")
    ordered = []
    try:
        with open(os.path.join(repo_dir, "refs", "main")) as f:
            main = os.path.join(snap_root, f.read().strip())
        if os.path.isdir(main):
            ordered.append(main)
    except OSError:
        pass
    if os.path.isdir(snap_root):
        others = [os.path.join(snap_root, d) for d in os.listdir(snap_root)]
        others = sorted((d for d in others if os.path.isdir(d) and d not in ordered),
                        key=os.path.getmtime, reverse=True)
        ordered += others
    return ordered
