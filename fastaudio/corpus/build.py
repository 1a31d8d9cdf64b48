"""Build a corpus folder: plan the items, render them in parallel, write the manifests.

Layout of ``out``::

    corpus.json      what made it: seed, fluidsynth version, SoundFont; then counts
    audio/NNNNNN-<family or sound>.wav
    midi/NNNNNN-<family>.mid      (music items)
    train.jsonl, heldout.jsonl    {"path": "audio/…", "caption": …, <metadata>…, "labels": …}

Item ``i`` depends only on (seed, i): its own ``random.Random`` seeded with a string (hashed
with SHA-512 by Python, so independent of PYTHONHASHSEED and of the platform), a second one for
the caption's wording. Growing ``count`` keeps the earlier items; the same seed gives the same
bytes. Resuming keeps every file already there once it is checked to be this item's (WAV format
and length; MIDI bytes); files are written atomically, so a file at its final path is complete.
One builder per folder at a time: a start removes temporary files a killed run left behind.
"""
from __future__ import annotations

import glob
import json
import os
import random
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import captions
from .errors import CorpusError
from .files import write_bytes, write_text
from .midi import song_bytes
from .music import Piece, generate_piece
from .render import Synth, find_synth, render_midi
from .sfx import SfxSpec, sample_sfx, synthesize
from .split import Strata, choose_heldout
from .wav import SAMPLE_RATE, check_wav, finish, write_wav

FORMAT = "fastaudio-corpus"
VERSION = 1          # bump when a change alters the audio or labels of an existing (seed, index)
SFX_FRACTION = 0.1   # share of sound effects among the items


@dataclass
class Item:
    index: int
    stem: str
    caption: str
    metadata: Dict[str, str]
    labels: Dict[str, object]
    piece: Optional[Piece] = None
    sfx: Optional[SfxSpec] = None

    @property
    def audio_path(self) -> str:
        return f"audio/{self.stem}.wav"

    @property
    def midi_path(self) -> Optional[str]:
        return f"midi/{self.stem}.mid" if self.piece is not None else None

    def strata(self) -> Strata:
        keys = ("family", "tempo_class") if self.piece is not None else ("sound", "tempo_class")
        return tuple((k, self.labels[k]) for k in keys if self.labels[k] is not None)

    def manifest_line(self) -> str:
        for reserved in ("path", "caption", "labels"):
            if reserved in self.metadata:
                raise CorpusError(f"metadata key {reserved!r} clashes with a manifest field")
        record = {"path": self.audio_path, "caption": self.caption, **self.metadata,
                  "labels": self.labels}
        return json.dumps(record)


def plan_item(seed: int, index: int) -> Item:
    """Item ``index`` of the corpus with ``seed`` (pure: no files, no synthesizer)."""
    rng = random.Random(f"{FORMAT}/{VERSION}/{seed}/{index}")
    words = random.Random(f"{FORMAT}/{VERSION}/{seed}/{index}/caption")
    if rng.random() < SFX_FRACTION:
        spec = sample_sfx(rng)
        caption, metadata = captions.sfx_caption(spec, words)
        labels = captions.sfx_labels(spec)
        item = Item(index, f"{index:06d}-{spec.sound}", caption, metadata, labels, sfx=spec)
    else:
        piece = generate_piece(rng)
        caption, metadata = captions.music_caption(piece, words)
        labels = captions.music_labels(piece)
        item = Item(index, f"{index:06d}-{piece.spec.family}", caption, metadata, labels, piece=piece)
    item.labels.update(index=index, sample_rate=SAMPLE_RATE, midi=item.midi_path)
    return item


def plan(seed: int, count: int) -> List[Item]:
    return [plan_item(seed, i) for i in range(count)]


def render_item(item: Item, out: str, synth: Optional[Synth]) -> bool:
    """Write the item's files under ``out``; False when they were already there (kept)."""
    wav_path = os.path.join(out, item.audio_path)
    duration = float(item.labels["duration"])
    midi = song_bytes(item.piece.song()) if item.piece is not None else None
    if midi is not None:
        midi_path = os.path.join(out, item.midi_path)
        if not os.path.exists(midi_path):
            write_bytes(midi_path, midi)
        else:
            with open(midi_path, "rb") as f:
                if f.read() != midi:
                    raise CorpusError(f"{midi_path} exists but is not item {item.index} of this "
                                      f"corpus (another seed or version?); remove it to rebuild it")
    if os.path.exists(wav_path):
        try:
            check_wav(wav_path, duration)
        except CorpusError as e:
            raise CorpusError(f"{e} — it is not item {item.index} of this corpus; remove it to "
                              f"render it again") from None
        return False
    if midi is not None:
        if synth is None:
            raise CorpusError("a music item needs fluidsynth, and none was given")
        audio = render_midi(synth, midi, where=item.audio_path)
    else:
        audio = synthesize(item.sfx)
    pcm = finish(audio, duration, str(item.labels["loudness"]), where=item.audio_path)
    write_wav(wav_path, pcm)
    check_wav(wav_path, duration)
    return True


@dataclass
class Summary:
    out: str
    items: int
    rendered: int
    kept: int
    train: int
    heldout: int
    audio_seconds: float
    wall_seconds: float
    removed_temporaries: int = 0
    families: Dict[str, int] = field(default_factory=dict)


def _identity(seed: int, synth: Synth) -> Dict[str, object]:
    return {"format": FORMAT, "version": VERSION, "seed": seed, "sample_rate": SAMPLE_RATE,
            "synth": synth.version, "soundfont": os.path.basename(synth.soundfont),
            "soundfont_bytes": os.path.getsize(synth.soundfont)}


def _check_identity(path: str, identity: Dict[str, object]) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            existing = json.load(f)
    except (OSError, ValueError) as e:
        raise CorpusError(f"{path}: cannot read it ({e}); is this folder a corpus?") from None
    diff = [f"{k}: {existing.get(k)!r} there, {v!r} now" for k, v in identity.items()
            if existing.get(k) != v]
    if diff:
        raise CorpusError(f"{os.path.dirname(path)} holds a different corpus ({'; '.join(diff)}); "
                          f"choose another --out or remove it")


def build_corpus(out: str, count: int, seed: int, heldout_fraction: float = 0.1, workers: int = 2,
                 soundfont: Optional[str] = None,
                 progress: Optional[Callable[[int, int, int, float], None]] = None) -> Summary:
    """Build (or complete) the corpus in ``out``; ``progress(done, total, kept, seconds)``."""
    if count < 1:
        raise CorpusError(f"count must be >= 1, got {count}")
    if workers < 1:
        raise CorpusError(f"workers must be >= 1, got {workers}")
    if not 0 <= heldout_fraction < 1:
        raise CorpusError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    synth = find_synth(soundfont)
    start = time.perf_counter()
    for sub in ("audio", "midi"):
        try:
            os.makedirs(os.path.join(out, sub), exist_ok=True)
        except OSError as e:
            raise CorpusError(f"cannot create {os.path.join(out, sub)}: {e}") from None
    identity = _identity(seed, synth)
    info_path = os.path.join(out, "corpus.json")
    if os.path.exists(info_path):
        _check_identity(info_path, identity)
    else:
        write_text(info_path, json.dumps(identity, indent=1) + "\n")
    stale = glob.glob(os.path.join(out, "audio", ".*.tmp.wav")) + \
        glob.glob(os.path.join(out, "midi", ".*.tmp.mid"))
    for path in stale:
        os.remove(path)

    items = plan(seed, count)
    done = kept = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="corpus") as pool:
        pending = {pool.submit(render_item, item, out, synth): item for item in items}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    item = pending.pop(future)
                    try:
                        rendered = future.result()
                    except (CorpusError, OSError) as e:  # OSError: a full disk, a lost folder
                        raise CorpusError(f"item {item.index} ({item.caption!r}): {e}") from None
                    done += 1
                    kept += not rendered
                    if progress is not None:
                        progress(done, count, kept, time.perf_counter() - start)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise

    heldout = choose_heldout({it.index: it.strata() for it in items}, heldout_fraction, seed)
    for name, chosen in (("train", False), ("heldout", True)):
        lines = [it.manifest_line() for it in items if (it.index in heldout) == chosen]
        write_text(os.path.join(out, f"{name}.jsonl"), "".join(ln + "\n" for ln in lines))
    families: Dict[str, int] = {}
    for it in items:
        key = str(it.labels["family"] or f"sfx:{it.labels['sound']}")
        families[key] = families.get(key, 0) + 1
    seconds = round(sum(float(it.labels["duration"]) for it in items), 2)
    info = dict(identity, count=count, heldout_fraction=heldout_fraction,
                train=count - len(heldout), heldout=len(heldout), audio_seconds=seconds,
                items_by_family=dict(sorted(families.items())))
    write_text(info_path, json.dumps(info, indent=1) + "\n")
    return Summary(out, count, count - kept, kept, count - len(heldout), len(heldout), seconds,
                   time.perf_counter() - start, len(stale), families)
