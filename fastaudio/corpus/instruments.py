"""The General MIDI palette: eight clearly distinct instrument families, a few programs each,
with the registers they sound natural in, and the drum kit.

``release`` is how long a chord played loud takes to fall 60 dB below its peak after the
note-off, with FluidR3_GM, reverb send 40 (measured with ``render.release_seconds``, rounded up;
the rendering tests check it); the composer stops playing that long (plus a margin) before the
end of the file. Steel-string acoustic guitar (program 25) was dropped: it rings for 5 s.

Families were chosen so that a classifier can tell them apart by ear: struck/decaying strings
(piano, guitar), sustained keyboards (organ), bowed strings, brass, woodwinds, synthesizers and
tuned percussion (mallets). Bass was left out: alone in a low register its pitch and key are
hard to hear, which would blur the key labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class Instrument:
    name: str                 # as captions say it: "grand piano"
    program: int              # General MIDI program, zero-based (0 = Acoustic Grand Piano)
    family: str
    melody: Tuple[int, int]   # melody range, MIDI pitches (inclusive)
    chord_center: int         # chord voicings sit within a fifth or so of this pitch
    sustained: bool           # holds its tone (organ, bowed, blown) rather than decaying
    release: float            # seconds from note-off to -60 dB (see above)


def _family(family: str, *members: Tuple[str, int, Tuple[int, int], int, bool, float]):
    return tuple(Instrument(name, program, family, melody, center, sustained, release)
                 for name, program, melody, center, sustained, release in members)


FAMILIES: Dict[str, Tuple[Instrument, ...]] = {
    "piano": _family("piano",
                     ("grand piano", 0, (60, 84), 55, False, 0.5),
                     ("bright piano", 1, (60, 84), 55, False, 0.5),
                     ("electric piano", 4, (60, 81), 55, False, 0.6)),
    "organ": _family("organ",
                     ("drawbar organ", 16, (60, 84), 55, True, 0.6),
                     ("rock organ", 18, (60, 84), 55, True, 0.7),
                     ("church organ", 19, (60, 81), 55, True, 1.4)),
    "guitar": _family("guitar",
                      ("nylon guitar", 24, (55, 79), 52, False, 1.1),
                      ("jazz guitar", 26, (55, 79), 52, False, 0.4),
                      ("clean electric guitar", 27, (55, 79), 52, False, 0.6)),
    "strings": _family("strings",
                       ("string ensemble", 48, (60, 84), 55, True, 0.8),
                       ("violin", 40, (62, 88), 62, True, 0.7),
                       ("cello", 42, (43, 67), 50, True, 0.7)),
    "brass": _family("brass",
                     ("trumpet", 56, (58, 82), 60, True, 0.6),
                     ("trombone", 57, (45, 70), 50, True, 0.7),
                     ("french horn", 60, (50, 74), 53, True, 0.8),
                     ("brass section", 61, (55, 79), 55, True, 0.8)),
    "woodwind": _family("woodwind",
                        ("alto saxophone", 65, (56, 80), 58, True, 0.7),
                        ("clarinet", 71, (55, 82), 58, True, 0.7),
                        ("flute", 73, (67, 93), 67, True, 0.7),
                        ("oboe", 68, (62, 86), 62, True, 0.7)),
    "synth": _family("synth",
                     ("square lead synth", 80, (60, 84), 55, True, 0.4),
                     ("sawtooth lead synth", 81, (60, 84), 55, True, 0.4),
                     ("polysynth", 90, (57, 81), 55, True, 1.4)),
    "mallets": _family("mallets",
                       ("marimba", 12, (60, 84), 55, False, 0.3),
                       ("vibraphone", 11, (60, 84), 57, False, 0.6),
                       ("xylophone", 13, (67, 91), 64, False, 0.3),
                       ("glockenspiel", 9, (72, 96), 72, False, 1.5)),
}

INSTRUMENTS: Dict[str, Instrument] = {i.name: i for members in FAMILIES.values() for i in members}

# General MIDI percussion key map (channel 10), the few sounds the patterns use
KICK, SIDE_STICK, SNARE, CLAP = 36, 37, 38, 39
CLOSED_HAT, PEDAL_HAT, OPEN_HAT = 42, 44, 46
CRASH, RIDE = 49, 51
