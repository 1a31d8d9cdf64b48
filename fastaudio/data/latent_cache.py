"""Pre-encoded latents: crops go through the frozen VAE once, the diffusion model trains on them.

The diffusion model trains on VAE latents of crops, and the VAE is frozen by then, so encoding
each crop once saves the encoder's cost (most of a training step's FLOPs at small U-Net sizes)
on every later epoch. ``build_latent_cache`` writes

* ``latents-00000.safetensors``, … : ``latents`` (rows, latent_dim, L) float16 or float32 (the
  VAE's mean, not a sample) and ``padding_mask`` (rows, L) bool at the latent rate;
* ``index.json``: per row what is needed to make prompts again (caption, metadata) and the
  timing (seconds_start, seconds_total), with the path, the item and which crop it is.

Row ``r`` is crop ``r % crops_per_item`` of item ``r // crops_per_item``; crop ``c`` is the crop
the dataset draws in epoch ``c``, so the cache holds ``crops_per_item`` different windows of long
files. Every file is written atomically, and each shard carries a fingerprint of everything that
determines its content (items, crop settings, VAE weights): a rerun skips the complete shards,
and a folder built from other data or another VAE is refused instead of being mixed in.

A latent frame is real when its first audio sample is (``padding_mask`` resized by nearest
neighbour, as stable-audio-tools does): frame j is real iff ``j·ratio < real samples``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_path, atomic_write_text
from .dataset import AudioDataset, Key, collate, split_key
from .errors import DataError
from .manifest import AudioItem
from .prompts import check_style, count_empty_prompts, make_prompt
from .rng import sample_rng

log = logging.getLogger("fastaudio.data")

CACHE_FORMAT = "fastaudio-latent-cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
DTYPES = {"float16": torch.float16, "float32": torch.float32}


def shard_name(k: int) -> str:
    return f"latents-{k:05d}.safetensors"


@dataclass
class CacheSummary:
    out_dir: str
    rows: int
    shards: int
    built: int       # shards encoded by this call
    skipped: int     # complete shards found from an earlier call


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

class _CropRows(Dataset):
    """Rows ``[start, stop)`` of the cache plan as dataset samples (for a DataLoader)."""

    def __init__(self, dataset: AudioDataset, crops_per_item: int, start: int, stop: int):
        self.dataset, self.crops, self.start, self.stop = dataset, crops_per_item, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item, crop = divmod(self.start + i, self.crops)
        s = self.dataset.sample(item, epoch=crop)
        s["item"], s["crop"] = item, crop
        return s


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fingerprint(dataset: AudioDataset, vae, crops_per_item: int, shard_size: int,
                 dtype_name: str) -> str:
    plan = {
        "items": [[it.path, it.caption, it.metadata] for it in dataset.items],
        "sample_size": dataset.sample_size, "sample_rate": dataset.sample_rate,
        "channels": dataset.channels, "random_crop": dataset.random_crop, "seed": dataset.seed,
        "phase_flip": dataset.phase_flip, "crops_per_item": crops_per_item,
        "shard_size": shard_size, "dtype": dtype_name, "vae": _weights_digest(vae),
    }
    try:
        text = json.dumps(plan, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise DataError(f"build_latent_cache: item metadata must be JSON-serialisable ({e})") from None
    return hashlib.sha256(text.encode()).hexdigest()


def _read_shard_header(path: str) -> Tuple[Dict[str, Any], Dict[str, List[int]]]:
    """``(our metadata, {tensor: shape})`` of a shard; raises on unreadable files."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {})["fastaudio"])
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return meta, shapes


def _complete_shard(path: str, fingerprint: str, rows: int, latent_dim: int,
                    length: int) -> Optional[List[Dict[str, Any]]]:
    """The rows of a finished shard at ``path``, or None when it must be (re)built."""
    if not os.path.exists(path):
        return None
    try:
        meta, shapes = _read_shard_header(path)
    except Exception as e:  # truncated or foreign file: atomic writes make this rare
        log.warning("rebuilding %s: unreadable (%s)", path, e)
        return None
    if meta.get("fingerprint") != fingerprint:
        raise DataError(f"{path} belongs to a latent cache built from other data, settings or "
                        "VAE weights; use a new folder or delete the old cache")
    if (shapes.get("latents") != [rows, latent_dim, length]
            or shapes.get("padding_mask") != [rows, length] or len(meta.get("rows", [])) != rows):
        log.warning("rebuilding %s: it has shapes %s, expected %d rows of (%d, %d)",
                    path, shapes, rows, latent_dim, length)
        return None
    return meta["rows"]


def build_latent_cache(dataset: AudioDataset, vae, out_dir: str, crops_per_item: int = 1,
                       shard_size: int = 256, batch_size: int = 8,
                       device: Union[str, torch.device] = "cpu",
                       dtype: Union[str, torch.dtype] = "float16", num_workers: int = 0,
                       progress: bool = True) -> CacheSummary:
    """Encode ``crops_per_item`` crops of every item of ``dataset`` with ``vae.encode`` (the
    mean) into shards of ``shard_size`` rows under ``out_dir``; resumable (complete shards are
    kept). ``dtype``: "float16" (half the disk) or "float32"."""
    dtype_name = {torch.float16: "float16", torch.float32: "float32"}.get(dtype, dtype)
    if dtype_name not in DTYPES:
        raise DataError(f"build_latent_cache: dtype must be float16 or float32, got {dtype!r}")
    for name, v in (("crops_per_item", crops_per_item), ("shard_size", shard_size),
                    ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"build_latent_cache: {name} must be a positive integer, got {v!r}")
    if not isinstance(dataset, AudioDataset):
        raise DataError(f"build_latent_cache: needs an AudioDataset, got {type(dataset).__name__}")
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"latent cache folder {out_dir} is a file")
    os.makedirs(out_dir, exist_ok=True)

    ratio, latent_dim = int(vae.ratio), int(vae.latent_dim)
    length = math.ceil(dataset.sample_size / ratio)
    total = len(dataset) * crops_per_item
    n_shards = math.ceil(total / shard_size)
    fingerprint = _fingerprint(dataset, vae, crops_per_item, shard_size, dtype_name)
    index_path = os.path.join(out_dir, INDEX_NAME)
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                old = json.load(f).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            old = None  # unreadable: the shards' own fingerprints decide
        if old is not None and old != fingerprint:
            raise DataError(f"{out_dir} holds a latent cache built from other data, settings or "
                            "VAE weights; use a new folder or delete the old cache")

    from tqdm.auto import tqdm
    was_training = vae.training
    vae.eval()
    all_rows: List[Dict[str, Any]] = []
    shards, built, skipped = [], 0, 0
    try:
        with tqdm(total=total, desc="encoding latents", unit="crop", disable=not progress) as bar:
            for k in range(n_shards):
                start, stop = k * shard_size, min((k + 1) * shard_size, total)
                path = os.path.join(out_dir, shard_name(k))
                rows = _complete_shard(path, fingerprint, stop - start, latent_dim, length)
                if rows is None:
                    rows = _build_shard(path, dataset, vae, crops_per_item, start, stop,
                                        batch_size, device, DTYPES[dtype_name], num_workers,
                                        ratio, latent_dim, length, fingerprint, bar)
                    built += 1
                else:
                    skipped += 1
                    bar.update(stop - start)
                shards.append({"file": shard_name(k), "rows": stop - start})
                all_rows.extend(rows)
    finally:
        vae.train(was_training)

    index = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fingerprint,
        "latent_dim": latent_dim, "latent_length": length, "downsampling_ratio": ratio,
        "sample_rate": dataset.sample_rate, "sample_size": dataset.sample_size,
        "dtype": dtype_name, "crops_per_item": crops_per_item, "num_rows": total,
        "shards": shards, "rows": all_rows,
    }
    atomic_write_text(index_path, json.dumps(index, ensure_ascii=False) + "\n")
    log.info("latent cache %s: %d rows in %d shards (%d built, %d kept)",
             out_dir, total, n_shards, built, skipped)
    return CacheSummary(out_dir, total, n_shards, built, skipped)


def _build_shard(path, dataset, vae, crops_per_item, start, stop, batch_size, device, dtype,
                 num_workers, ratio, latent_dim, length, fingerprint, bar) -> List[Dict[str, Any]]:
    from safetensors.torch import save_file
    loader = DataLoader(_CropRows(dataset, crops_per_item, start, stop), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=collate)
    latents, masks, rows = [], [], []
    for batch in loader:
        with torch.inference_mode():
            z = vae.encode(batch["audio"].to(device), sample=False).float().cpu()
        if z.shape[1:] != (latent_dim, length):
            raise DataError(f"build_latent_cache: the VAE gave latents of shape {tuple(z.shape)}, "
                            f"expected (batch, {latent_dim}, {length})")
        real = batch["padding_mask"].sum(dim=1)                       # real samples per crop
        frames = torch.div(real + ratio - 1, ratio, rounding_mode="floor")
        masks.append(torch.arange(length)[None, :] < frames[:, None])
        latents.append(z)
        for b in range(z.shape[0]):
            item = dataset.items[int(batch["item"][b])]
            rows.append({"path": item.path, "caption": item.caption, "metadata": item.metadata,
                         "seconds_start": int(batch["seconds_start"][b]),
                         "seconds_total": int(batch["seconds_total"][b]),
                         "item": int(batch["item"][b]), "crop": int(batch["crop"][b])})
        bar.update(z.shape[0])
    stored = torch.cat(latents).to(dtype)
    if not torch.isfinite(stored).all():
        where = "after conversion to float16 (use dtype='float32')" \
            if torch.isfinite(torch.cat(latents)).all() else "from the VAE"
        raise DataError(f"{path}: non-finite latents {where}")
    meta = {"fastaudio": json.dumps({"fingerprint": fingerprint, "first_row": start, "rows": rows},
                                    ensure_ascii=False)}
    with atomic_path(path) as tmp:
        save_file({"latents": stored.contiguous(), "padding_mask": torch.cat(masks).contiguous()},
                  tmp, metadata=meta)
    return rows


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

class LatentDataset(Dataset):
    """``dataset[i]`` (or ``dataset[(epoch, i)]``) → dict with ``latents`` (latent_dim, L)
    float32, ``padding_mask`` (L,) bool, ``seconds_start``, ``seconds_total``, ``prompt``,
    ``path``. Prompts are made again each epoch from the stored caption and metadata, so a
    cached row still sees both prompt styles and different metadata subsets."""

    def __init__(self, cache_dir: str, seed: int = 0, prompt_style: str = "mixed"):
        self.cache_dir = cache_dir = os.fspath(cache_dir)
        self.seed = int(seed)
        self.prompt_style = check_style(prompt_style)
        self.epoch = 0
        index = self._read_index(cache_dir)
        self.latent_dim = index["latent_dim"]
        self.latent_length = index["latent_length"]
        self.sample_rate = index["sample_rate"]
        self.rows: List[Dict[str, Any]] = index["rows"]
        self._where: List[Tuple[str, int]] = []     # row → (shard path, row in shard)
        for shard in index["shards"]:
            path = os.path.join(cache_dir, shard["file"])
            self._check_shard(path, shard["rows"], index["fingerprint"])
            self._where.extend((path, r) for r in range(shard["rows"]))
        if len(self._where) != len(self.rows):
            raise DataError(f"{cache_dir}/{INDEX_NAME}: the shards hold {len(self._where)} rows, "
                            f"the index lists {len(self.rows)}")
        self._handles: Dict[str, Any] = {}
        items = [AudioItem(r["path"], r.get("caption"), r.get("metadata") or {}) for r in self.rows]
        empty = count_empty_prompts(items, prompt_style)
        if empty:
            log.info("LatentDataset: %d of %d rows have nothing for prompt style %r; they train "
                     "with the empty prompt", empty, len(items), prompt_style)

    @staticmethod
    def _read_index(cache_dir: str) -> Dict[str, Any]:
        if not os.path.isdir(cache_dir):
            raise DataError(f"latent cache folder not found: {cache_dir}")
        path = os.path.join(cache_dir, INDEX_NAME)
        if not os.path.isfile(path):
            raise DataError(f"{cache_dir} has no {INDEX_NAME}: not a latent cache, or "
                            "build_latent_cache did not finish (run it again to resume)")
        try:
            with open(path, encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: unreadable latent cache index ({e})") from None
        if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
            raise DataError(f"{path}: not a fastaudio latent cache index")
        if index.get("version") != CACHE_VERSION:
            raise DataError(f"{path}: cache version {index.get('version')!r}; this fastaudio reads "
                            f"{CACHE_VERSION}")
        needed = ("fingerprint", "latent_dim", "latent_length", "sample_rate", "shards", "rows")
        missing = [k for k in needed if k not in index]
        if missing:
            raise DataError(f"{path}: corrupt latent cache index (missing {', '.join(missing)})")
        return index

    def _check_shard(self, path: str, rows: int, fingerprint: str) -> None:
        if not os.path.isfile(path):
            raise DataError(f"latent cache shard missing: {path} (rerun build_latent_cache)")
        try:
            meta, shapes = _read_shard_header(path)
        except Exception as e:
            raise DataError(f"{path}: corrupt latent cache shard ({e})") from None
        if meta.get("fingerprint") != fingerprint:
            raise DataError(f"{path}: shard from another cache build than {INDEX_NAME}")
        want = {"latents": [rows, self.latent_dim, self.latent_length],
                "padding_mask": [rows, self.latent_length]}
        for name, shape in want.items():
            if shapes.get(name) != shape:
                raise DataError(f"{path}: {name} has shape {shapes.get(name)}, the index says {shape}")

    def __getstate__(self) -> Dict[str, Any]:
        # open shard handles are per process (mmaps); DataLoader workers open their own
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _shard(self, path: str):
        f = self._handles.get(path)
        if f is None:
            from safetensors import safe_open
            f = self._handles[path] = safe_open(path, "pt")
        return f

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key: Key) -> Dict[str, Any]:
        epoch, index = split_key(key, self.epoch, len(self.rows), "LatentDataset")
        return self.sample(index, epoch)

    def sample(self, index: int, epoch: int) -> Dict[str, Any]:
        row = self.rows[index]
        path, r = self._where[index]
        f = self._shard(path)
        item = AudioItem(row["path"], row.get("caption"), row.get("metadata") or {})
        # copies: the slices view the shard's memory map, and a training step that scales its
        # batch in place would otherwise change what later epochs read
        return {
            "latents": f.get_slice("latents")[r].to(torch.float32, copy=True),
            "padding_mask": f.get_slice("padding_mask")[r].to(torch.bool, copy=True),
            "seconds_start": int(row["seconds_start"]),
            "seconds_total": int(row["seconds_total"]),
            "prompt": make_prompt(item, sample_rng(self.seed, epoch, index, "prompt"),
                                  self.prompt_style),
            "path": row["path"],
        }

