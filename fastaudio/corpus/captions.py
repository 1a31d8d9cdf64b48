"""Captions in Stable Audio's two prompt styles, and the machine-readable labels.

- natural language: varied templates and synonyms, e.g. "a slow solo grand piano melody in
  D minor, 70 BPM, soft". Every music caption names the instrument, the key, the BPM, a tempo
  word, a loudness word, and the drums when there are any; every sound-effect caption names the
  sound, its rate (BPM) where it has one, its direction and range for sweeps, and a loudness word.
- metadata: a flat dict of strings (``{"instrument": "grand piano", "tempo": "70 BPM", ...}``);
  the data pipeline turns it into a "key: value, key: value" prompt, choosing and ordering keys.
- labels: numbers and names for evaluation (bpm as a number, key tonic and mode, family, ...).

Wording is drawn from its own generator, so changing a template never changes the audio.
"""
from __future__ import annotations

import random
import re
from typing import Dict, Tuple

from . import theory
from .music import Piece
from .sfx import SfxSpec

LOUDNESS_WORDS = {"soft": ("soft", "quiet", "gentle"),
                  "medium": ("moderately loud", "medium-volume", "mid-volume"),
                  "loud": ("loud", "powerful", "forceful")}
TEMPO_WORDS = {"slow": ("slow", "unhurried", "laid-back"),
               "medium": ("mid-tempo", "moderate-tempo", "steady"),
               "fast": ("fast", "upbeat", "brisk", "quick")}
MOODS = {("major", "slow"): ("calm", "peaceful", "tender", "serene"),
         ("major", "medium"): ("cheerful", "warm", "bright", "pleasant"),
         ("major", "fast"): ("happy", "energetic", "joyful", "bright"),
         ("minor", "slow"): ("sad", "melancholic", "sombre", "mournful"),
         ("minor", "medium"): ("wistful", "moody", "melancholic", "pensive"),
         ("minor", "fast"): ("dark", "tense", "dramatic", "driving")}
DRUM_PHRASES = {"rock": ("with a rock beat", "with drums", "with a steady rock drum beat"),
                "dance": ("with a four-on-the-floor dance beat", "with dance drums", "with drums"),
                "light": ("with light drums", "with soft brushy drums", "with drums")}
DRUM_METADATA = {"rock": "rock beat", "dance": "dance beat", "light": "light beat"}
NO_DRUMS_PHRASES = ("", "", "without drums", "with no percussion")
PIECE_WORDS = ("melody", "tune", "piece", "theme", "song")
# the family, said now and then beside an instrument whose name does not say it, so that prompts
# naming only a family ("a brass melody") have something to match
FAMILY_WORDS = {"piano": "piano", "organ": "organ", "guitar": "guitar", "strings": "strings",
                "brass": "brass", "woodwind": "woodwind", "synth": "synthesizer",
                "mallets": "mallet percussion"}
FAMILY_MENTION_PROBABILITY = 0.3

MUSIC_TEMPLATES = (
    "a {loud} {tempo} {solo}{instrument} {piece} {drums} in {key}, {bpm} BPM",
    "{Loud} {instrument} playing a {mood} {tempo} {piece} in {key} at {bpm} BPM {drums}",
    "{Tempo} {mood} {piece} in {key} on {solo}{instrument} {drums}, {bpm} BPM, {loud}",
    "{solo}{instrument} {drums}: {mood}, {tempo}, {key}, {bpm} BPM, {loud}",
    "{bpm} BPM {mood} {piece} for {solo}{instrument} in {key}, {loud} and {tempo}, {drums}",
    "a {mood} {key} {piece}, {instrument} {drums}, {tempo} at {bpm} BPM, {loud}",
)

_ARTICLE = re.compile(r"\b([Aa])n? (?=([A-Za-z]))")


def _articles(text: str) -> str:
    """Make each "a"/"an" agree with the word after it."""
    return _ARTICLE.sub(lambda m: m.group(1) + ("n " if m.group(2).lower() in "aeiou" else " "), text)


def _tidy(text: str) -> str:
    """Drop the gaps and stray commas an empty phrase leaves behind; fix articles."""
    text = " ".join(text.split())
    for a, b in ((" ,", ","), (",,", ","), (" :", ":")):
        while a in text:
            text = text.replace(a, b)
    return _articles(text.strip(" ,"))


def music_caption(piece: Piece, rng: random.Random) -> Tuple[str, Dict[str, str]]:
    """(natural-language caption, metadata dict) of a piece."""
    spec = piece.spec
    loud = rng.choice(LOUDNESS_WORDS[spec.loudness])
    tempo = rng.choice(TEMPO_WORDS[spec.tempo_class])
    mood = rng.choice(MOODS[(spec.mode, spec.tempo_class)])
    if spec.drums is None:
        drums = rng.choice(NO_DRUMS_PHRASES)
        solo = "solo " if drums == "" and rng.random() < 0.5 else ""
    else:
        drums, solo = rng.choice(DRUM_PHRASES[spec.drums]), ""
    instrument = spec.instrument.name
    family_word = FAMILY_WORDS[spec.family]
    if rng.random() < FAMILY_MENTION_PROBABILITY and family_word.rstrip("s") not in instrument:
        instrument = f"{instrument} ({family_word})"
    template = rng.choice(MUSIC_TEMPLATES)
    caption = _tidy(template.format(
        loud=loud, Loud=loud.capitalize(), tempo=tempo, Tempo=tempo.capitalize(), mood=mood,
        instrument=instrument, solo=solo, drums=drums, key=spec.key, bpm=spec.bpm,
        piece=rng.choice(PIECE_WORDS)))
    metadata = {"instrument": spec.instrument.name, "family": spec.family,
                "tempo": f"{spec.bpm} BPM", "key": spec.key,
                "drums": DRUM_METADATA[spec.drums] if spec.drums else "no",
                "mood": mood, "loudness": spec.loudness}
    return caption, metadata


def _hz(f: int) -> str:
    return f"{f // 1000} kHz" if f >= 1000 and f % 1000 == 0 else f"{f} Hz"


def sfx_caption(spec: SfxSpec, rng: random.Random) -> Tuple[str, Dict[str, str]]:
    """(natural-language caption, metadata dict) of a sound effect."""
    loud = rng.choice(LOUDNESS_WORDS[spec.loudness])
    bpm = spec.bpm
    if spec.sound == "rain":
        heavy = spec.intensity == "heavy"
        text = rng.choice((f"{loud}, {spec.intensity} rain falling",
                           f"{'a downpour of heavy' if heavy else 'a light drizzle of'} rain, {loud}",
                           f"the {loud} sound of {spec.intensity} rain on a roof"))
        description = f"{spec.intensity} rain"
    elif spec.sound == "wind":
        text = rng.choice((f"{loud}, {spec.intensity} wind blowing in gusts",
                           f"the {loud} sound of a {spec.intensity} wind",
                           f"{spec.intensity} gusty wind, {loud}"))
        description = f"{spec.intensity} wind"
    elif spec.sound == "beeps":
        text = rng.choice((f"{loud} electronic beeps at {bpm} BPM, {_hz(spec.low_hz)}",
                           f"a tone of {_hz(spec.low_hz)} beeping {bpm} times a minute, {loud}",
                           f"{loud} beep, beep, beep at {bpm} BPM"))
        description = f"{_hz(spec.low_hz)} beeps"
    elif spec.sound == "alarm":
        text = rng.choice((f"a {loud} two-tone alarm alternating at {bpm} BPM",
                           f"{loud} alarm siren switching between two tones, {bpm} BPM",
                           f"a two-tone warning alarm, {loud}, {bpm} BPM"))
        description = "two-tone alarm"
    elif spec.sound == "sweep":
        up = spec.direction == "up"
        a, b = (spec.low_hz, spec.high_hz) if up else (spec.high_hz, spec.low_hz)
        verb = "rising" if up else "falling"
        text = rng.choice((f"a {loud} sine sweep {verb} from {_hz(a)} to {_hz(b)}",
                           f"{loud} tone sweeping {'up' if up else 'down'} from {_hz(a)} to {_hz(b)}",
                           f"a {verb} sine tone, {_hz(a)} to {_hz(b)}, {loud}"))
        description = f"{verb} sine sweep from {_hz(a)} to {_hz(b)}"
    elif spec.sound == "clock":
        text = rng.choice((f"a {loud} ticking clock at {bpm} BPM",
                           f"the {loud} tick-tock of a clock, {bpm} ticks per minute",
                           f"clock ticking, {bpm} BPM, {loud}"))
        description = "ticking clock"
    else:
        raise ValueError(f"unknown sound {spec.sound!r}")
    text = _tidy(text)
    metadata = {"sound": spec.sound, "description": description}
    if bpm is not None:
        metadata["tempo"] = f"{bpm} BPM"
    metadata["loudness"] = spec.loudness
    return text[0].upper() + text[1:], metadata


def music_labels(piece: Piece) -> Dict[str, object]:
    spec = piece.spec
    return {"kind": "music", "family": spec.family, "instrument": spec.instrument.name,
            "program": spec.instrument.program, "bpm": spec.bpm, "tempo_class": spec.tempo_class,
            "key": spec.key, "key_tonic": theory.PITCH_NAMES[spec.tonic],
            "key_pitch_class": spec.tonic,
            "mode": spec.mode, "has_drums": spec.drums is not None, "drum_pattern": spec.drums,
            "accompaniment": spec.accompaniment, "progression": list(spec.progression),
            "loudness": spec.loudness, "duration": spec.duration,
            "sound_end": round(piece.sound_end, 3), "sound": None}


def sfx_labels(spec: SfxSpec) -> Dict[str, object]:
    labels: Dict[str, object] = {
        "kind": "sfx", "family": None, "instrument": None, "program": None, "bpm": spec.bpm,
        "tempo_class": spec.tempo_class, "key": None, "key_tonic": None, "key_pitch_class": None,
        "mode": None, "has_drums": False, "drum_pattern": None, "accompaniment": None,
        "progression": None, "loudness": spec.loudness, "duration": spec.duration,
        "sound_end": spec.sound_end, "sound": spec.sound}
    for name in ("intensity", "direction", "low_hz", "high_hz"):
        if getattr(spec, name) is not None:
            labels[name] = getattr(spec, name)
    return labels
