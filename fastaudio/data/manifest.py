"""Which audio files a dataset holds, with their captions and metadata.

A manifest is JSONL (one object a line: ``{"path": ..., "caption": ..., "genre": ...}``) or CSV
(a header naming ``path``, optionally ``caption``, any other columns). Every key other than
``path`` and ``caption`` becomes the item's metadata, which :mod:`fastaudio.data.prompts` turns
into "key: value" prompts. Relative paths are resolved against the manifest's own folder, so a
dataset folder with its manifest can be moved as a whole.

``scan_folder`` builds the same items from a folder of audio files with optional sidecars:
``song.txt`` holds the caption of ``song.wav``, ``song.json`` its metadata (a ``caption`` key
there is the caption too; having both is an error, since one of them would be ignored).

Manifests only say what should be there; whether each file can be decoded is
:func:`fastaudio.data.decode.audit`'s job.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from ..atomic import atomic_write_text
from .errors import DataError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
# "labels" holds machine-readable ground truth for evaluation (e.g. the synthetic corpus's bpm
# and key); it never becomes part of a prompt.
RESERVED_KEYS = ("path", "caption", "labels")


@dataclass
class AudioItem:
    """One audio file: an absolute path, an optional natural-language caption, metadata
    (any other keys, e.g. ``{"genre": "jazz", "tempo": "120 BPM"}``) and optional evaluation
    labels (a manifest's ``labels`` object, never used for prompts)."""
    path: str
    caption: Optional[str] = None
    metadata: Dict[str, Any] = field(default_factory=dict)
    labels: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_manifest(path: str) -> List[AudioItem]:
    """Items of a ``.jsonl`` or ``.csv`` manifest; malformed lines raise :class:`DataError`
    naming the file and line."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise DataError(f"{path}: unknown manifest format {ext or '(no extension)'!r}; "
                        "use .jsonl or .csv")
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark that is not part of the
        # first column's name
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read manifest {path}: {e.strerror}") from None
    folder = os.path.dirname(os.path.abspath(path))
    items = _parse_jsonl(text, path, folder) if ext == ".jsonl" else _parse_csv(text, path, folder)
    if not items:
        raise DataError(f"{path}: the manifest holds no items")
    return items


def _parse_jsonl(text: str, source: str, folder: str) -> List[AudioItem]:
    items = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) carry nothing
        where = f"{source} line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        items.append(_item_from_row(row, where, folder))
    return items


def _parse_csv(text: str, source: str, folder: str) -> List[AudioItem]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{source}: empty CSV file (it needs a header with a 'path' column)") from None
    except csv.Error as e:
        raise DataError(f"{source} line 1: malformed CSV header ({e})") from None
    header = [h.strip() for h in header]
    if "path" not in header:
        raise DataError(f"{source} line 1: the header has no 'path' column "
                        f"(columns: {', '.join(header) or 'none'})")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{source} line 1: duplicate columns {', '.join(dup)}")
    if "" in header:
        raise DataError(f"{source} line 1: a column has no name")
    items = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{source} line {reader.line_num}: malformed CSV ({e})") from None
        where = f"{source} line {reader.line_num}"
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise DataError(f"{where}: {len(cells)} fields, the header has {len(header)}")
        # An empty CSV cell means "no value": leaving it out keeps "genre: " out of prompts.
        row = {k: v for k, v in zip(header, cells) if v.strip() != ""}
        items.append(_item_from_row(row, where, folder))
    return items


def _item_from_row(row: Dict[str, Any], where: str, folder: str) -> AudioItem:
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{where}: missing or empty 'path'")
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise DataError(f"{where}: 'caption' must be a string, got {type(caption).__name__}")
    if caption is not None and not caption.strip():
        caption = None
    metadata = {k: v for k, v in row.items() if k not in RESERVED_KEYS}
    labels = row.get("labels") or {}
    if not isinstance(labels, dict):
        raise DataError(f"{where}: 'labels' must be an object, got {type(labels).__name__}")
    return AudioItem(_resolve(path.strip(), folder), caption, metadata, labels)


def _resolve(path: str, folder: str) -> str:
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(folder, path))


# --------------------------------------------------------------------------------------------
# Scanning a folder
# --------------------------------------------------------------------------------------------

def scan_folder(folder: str, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> List[AudioItem]:
    """Audio files under ``folder`` (recursively, sorted by relative path, hidden files and
    folders skipped), with captions from ``<name>.txt`` and metadata from ``<name>.json``."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"audio folder not found: {folder}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(folder):
        # Hidden entries are editor/OS droppings (.DS_Store, ._foo.wav) or our own temporary
        # files from atomic writes; none of them is training data.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in exts:
                found.append(os.path.join(root, name))
    if not found:
        raise DataError(f"no audio files ({', '.join(exts)}) under {folder}")
    found.sort(key=lambda p: os.path.relpath(p, folder))
    return [_item_with_sidecars(os.path.abspath(p)) for p in found]


def _item_with_sidecars(path: str) -> AudioItem:
    stem = os.path.splitext(path)[0]
    caption, metadata = None, {}
    txt, js = stem + ".txt", stem + ".json"
    if os.path.isfile(txt):
        try:
            with open(txt, encoding="utf-8") as f:
                caption = f.read().strip() or None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read caption file {txt}: {e}") from None
    if os.path.isfile(js):
        try:
            with open(js, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{js} line {e.lineno}: not valid JSON ({e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read metadata file {js}: {e}") from None
        if not isinstance(data, dict):
            raise DataError(f"{js}: expected a JSON object, got {type(data).__name__}")
        if "path" in data:
            raise DataError(f"{js}: a sidecar must not set 'path' (it belongs to {path})")
        if "caption" in data:
            if caption is not None:
                raise DataError(f"{path} has a caption in both {txt} and {js}; keep one")
            if data["caption"] is not None and not isinstance(data["caption"], str):
                raise DataError(f"{js}: 'caption' must be a string")
            caption = (data["caption"] or "").strip() or None
        metadata = {k: v for k, v in data.items() if k != "caption"}
    return AudioItem(path, caption, metadata)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def write_manifest(items: Iterable[AudioItem], path: str) -> None:
    """Write ``items`` as ``.jsonl`` or ``.csv``, atomically. Paths under the manifest's folder
    are written relative to it (the folder stays movable), others absolute. CSV keeps every
    value as text; use JSONL to keep numbers, lists and nested metadata."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    folder = os.path.dirname(os.path.abspath(path))
    rows = []
    for n, item in enumerate(items):
        clash = [k for k in item.metadata if k in RESERVED_KEYS]
        if clash:
            raise DataError(f"cannot write {path}: item {n} ({item.path}) has metadata key(s) "
                            f"{', '.join(clash)}, reserved for the item's own fields")
        rel = os.path.relpath(os.path.abspath(item.path), folder)
        outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
        p = os.path.abspath(item.path) if outside else rel
        row: Dict[str, Any] = {"path": p}
        if item.caption is not None:
            row["caption"] = item.caption
        row.update(item.metadata)
        if item.labels:
            row["labels"] = item.labels
        rows.append(row)
    if ext == ".jsonl":
        lines = []
        for n, row in enumerate(rows):
            try:
                lines.append(json.dumps(row, ensure_ascii=False))
            except (TypeError, ValueError) as e:
                raise DataError(f"cannot write {path}: item {n} ({row['path']}) has metadata "
                                f"that is not JSON: {e}") from None
        text = "".join(line + "\n" for line in lines)
    elif ext == ".csv":
        text = _csv_text(rows, path)
    else:
        raise DataError(f"{path}: unknown manifest format {ext or '(no extension)'!r}; "
                        "use .jsonl or .csv")
    atomic_write_text(path, text)


def _csv_text(rows: List[Dict[str, Any]], path: str) -> str:
    columns = ["path", "caption"]
    for row in rows:
        for k in row:
            if k not in columns:
                columns.append(k)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for n, row in enumerate(rows):
        cells = []
        for k in columns:
            v = row.get(k)
            if isinstance(v, (list, dict)):
                raise DataError(f"cannot write {path}: item {n} ({row['path']}) has a "
                                f"{type(v).__name__} under {k!r}; CSV holds text only, use .jsonl")
            cells.append("" if v is None else str(v))
        writer.writerow(cells)
    return buf.getvalue()
