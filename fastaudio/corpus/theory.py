"""Keys, scales, chords and progressions: the tonal vocabulary of the corpus.

Progressions start on the tonic and the composer ends every piece with a dominant → tonic
cadence, so a chroma-template key detector sees the key, and the mode, plainly.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
HARMONIC_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)  # the raised 7th, used over the dominant

_MAJ, _MIN, _DIM, _DOM7 = (0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 7, 10)

# roman numeral → (root, semitones above the tonic; chord intervals above the root)
CHORDS: Dict[str, Tuple[int, Tuple[int, ...]]] = {
    "I": (0, _MAJ), "ii": (2, _MIN), "iii": (4, _MIN), "IV": (5, _MAJ), "V": (7, _MAJ),
    "vi": (9, _MIN), "V7": (7, _DOM7),
    "i": (0, _MIN), "iv": (5, _MIN), "v": (7, _MIN), "III": (3, _MAJ), "VI": (8, _MAJ),
    "VII": (10, _MAJ), "ii°": (2, _DIM),
}

PROGRESSIONS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "major": (
        ("I", "V", "vi", "IV"), ("I", "IV", "V", "IV"), ("I", "vi", "IV", "V"),
        ("I", "IV", "I", "V"), ("I", "ii", "V", "I"), ("I", "iii", "IV", "V"), ("I", "vi", "ii", "V"),
    ),
    "minor": (
        ("i", "VI", "III", "VII"), ("i", "iv", "V", "i"), ("i", "VII", "VI", "V"),
        ("i", "iv", "VII", "III"), ("i", "VI", "iv", "V"), ("i", "iv", "i", "V"),
    ),
}

TONIC = {"major": "I", "minor": "i"}
SUBDOMINANT = {"major": "IV", "minor": "iv"}
DOMINANT = "V"  # major in both modes (harmonic minor), the strongest pull to the tonic


def key_name(tonic: int, mode: str) -> str:
    """``key_name(2, "minor") == "D minor"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return f"{PITCH_NAMES[tonic % 12]} {mode}"


def key_signature(tonic: int, mode: str) -> int:
    """Sharps (positive) or flats (negative) of the key, for the MIDI key-signature event."""
    major_tonic = tonic if mode == "major" else (tonic + 3) % 12  # relative major
    sharps = (7 * major_tonic) % 12  # each fifth up adds a sharp
    return sharps - 12 if sharps > 6 else sharps


def chord_pitch_classes(tonic: int, numeral: str) -> List[int]:
    """Pitch classes of ``numeral`` in the key on ``tonic``, root first."""
    if numeral not in CHORDS:
        raise ValueError(f"unknown chord {numeral!r}; known: {', '.join(CHORDS)}")
    root, intervals = CHORDS[numeral]
    return [(tonic + root + i) % 12 for i in intervals]


def scale_pitch_classes(tonic: int, mode: str, numeral: str) -> List[int]:
    """The scale a melody uses over ``numeral``: minor keys raise the 7th over the dominant."""
    if mode == "major":
        steps = MAJOR_SCALE
    elif mode == "minor":
        steps = HARMONIC_MINOR_SCALE if CHORDS[numeral][0] == 7 and CHORDS[numeral][1][1] == 4 \
            else NATURAL_MINOR_SCALE
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return [(tonic + s) % 12 for s in steps]


def pitches_in_range(pitch_classes: List[int], low: int, high: int) -> List[int]:
    """Every MIDI pitch in [low, high] whose class is in ``pitch_classes``, ascending."""
    wanted = set(pc % 12 for pc in pitch_classes)
    return [p for p in range(low, high + 1) if p % 12 in wanted]
