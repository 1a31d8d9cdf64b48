"""Seeded General MIDI pieces: one instrument, a tempo, a key, a chord progression with an
accompaniment pattern, a melody over it, optional drums, a loudness, and a duration.

Every attribute a caption names must be audible:
- tempo: without drums the accompaniment is rhythmic (a pulse or an arpeggio), so onsets mark
  the beat; with drums kick and snare do;
- key and mode: progressions start on the tonic and end on a dominant → tonic cadence, and
  minor keys raise the 7th only over the dominant;
- loudness: velocities (the timbre of soft and hard strokes), and the renderer's peak level;
- duration: the last note is released ``tail_seconds(instrument)`` before the stated duration
  (the instrument's measured release, a margin, and ``wav.END_SILENCE``), so the audio really
  ends, release and reverb gone, ``END_SILENCE`` before the end of the file.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

from . import theory
from .instruments import (CLAP, CLOSED_HAT, CRASH, FAMILIES, KICK, OPEN_HAT, SIDE_STICK, SNARE,
                          Instrument)
from .midi import DRUM_CHANNEL, ChannelSetup, Note, Song
from .wav import END_SILENCE

TEMPO_CLASSES = (("slow", 60, 84), ("medium", 85, 120), ("fast", 121, 160))  # BPM, inclusive
LOUDNESS_VELOCITY = {"soft": 50, "medium": 78, "loud": 108}  # base velocity of each class
DRUM_PATTERNS = ("rock", "dance", "light")
ACCOMPANIMENTS = ("block", "pulse", "arpeggio")
DURATION_RANGE = (3.0, 20.0)  # seconds; the model's window (11.9 s) lies inside
DRUM_PROBABILITY = 0.5
RELEASE_MARGIN = 0.25  # on top of an instrument's measured release: reverb, louder notes
CRASH_RING = 3.0  # seconds a crash cymbal needs to fall below -50 dB

MELODY_CHANNEL, CHORD_CHANNEL = 0, 1

# one-bar melody rhythms in beats; negative values are rests
RHYTHMS = ((1, 1, 1, 1), (2, 1, 1), (1, 1, 2), (1.5, 0.5, 1, 1), (0.5, 0.5, 1, 1, 1),
           (1, 0.5, 0.5, 2), (2, 2), (0.5, 0.5, 0.5, 0.5, 1, 1), (1, 1, 0.5, 0.5, 1),
           (1, 1, 1, -1), (2, -1, 1), (-1, 1, 1, 1))
PHRASE_ENDINGS = ((2, 2), (3, 1), (2, 1, 1), (4,), (1, 1, 2), (2, -2))

# drum patterns: (beat within the bar, GM drum key, velocity offset)
_DRUMS = {
    "rock": [(0, KICK, 0), (2, KICK, -4), (1, SNARE, 0), (3, SNARE, 0)]
            + [(b / 2, CLOSED_HAT, -14 if b % 2 else -8) for b in range(8)],
    "dance": [(b, KICK, 0) for b in range(4)] + [(1, CLAP, -4), (3, CLAP, -4)]
             + [(b + 0.5, OPEN_HAT, -16) for b in range(4)],
    "light": [(0, KICK, -8), (2, KICK, -12), (1, SIDE_STICK, -4), (3, SIDE_STICK, -4)]
             + [(b, CLOSED_HAT, -16) for b in range(4)],
}


def tail_seconds(instrument: Instrument) -> float:
    """Time between the last note-off and the end of the file."""
    return END_SILENCE + instrument.release + RELEASE_MARGIN


def tempo_class(bpm: float) -> str:
    for name, low, high in TEMPO_CLASSES:
        if low <= bpm <= high:
            return name
    raise ValueError(f"{bpm} BPM is outside the corpus's tempo classes "
                     f"({TEMPO_CLASSES[0][1]}–{TEMPO_CLASSES[-1][2]} BPM)")


@dataclass(frozen=True)
class PieceSpec:
    """The labelled attributes of a piece (everything a caption may say)."""
    instrument: Instrument
    bpm: int
    tonic: int                      # pitch class, 0 = C
    mode: str                       # "major" | "minor"
    progression: Tuple[str, ...]    # roman numerals, one chord per bar, cycled
    accompaniment: str              # "block" | "pulse" | "arpeggio"
    drums: Optional[str]            # None or a DRUM_PATTERNS name
    loudness: str                   # "soft" | "medium" | "loud"
    duration: float                 # seconds, two decimals (a whole number of samples at 44.1 kHz)

    @property
    def family(self) -> str:
        return self.instrument.family

    @property
    def tempo_class(self) -> str:
        return tempo_class(self.bpm)

    @property
    def key(self) -> str:
        return theory.key_name(self.tonic, self.mode)

    @property
    def tempo_us(self) -> int:
        return int(round(60e6 / self.bpm))

    @property
    def seconds_per_beat(self) -> float:
        # from the integer MIDI tempo, so label times match what the synthesizer plays
        return self.tempo_us / 1e6


@dataclass
class Piece:
    spec: PieceSpec
    notes: List[Note]
    chords: List[Tuple[float, float, str]]   # (start beat, length in beats, numeral)
    total_beats: float                        # the last note is released here
    melody_pan: int

    @property
    def sound_end(self) -> float:
        """Seconds at which the last note is released."""
        return self.total_beats * self.spec.seconds_per_beat

    def song(self) -> Song:
        """The MIDI song; the track ends at the stated duration so rendering runs that long."""
        spec = self.spec
        program = spec.instrument.program
        channels = {MELODY_CHANNEL: ChannelSetup(program, pan=self.melody_pan),
                    CHORD_CHANNEL: ChannelSetup(program, pan=128 - self.melody_pan)}
        if spec.drums is not None:
            channels[DRUM_CHANNEL] = ChannelSetup(0, volume=90)
        end_beats = math.ceil(spec.duration / spec.seconds_per_beat * 480) / 480
        return Song(name=f"{spec.instrument.name}, {spec.key}, {spec.bpm} BPM",
                    tempo_us=spec.tempo_us, channels=channels, notes=self.notes,
                    end_beats=end_beats, key_sharps=theory.key_signature(spec.tonic, spec.mode),
                    key_minor=spec.mode == "minor")


def sample_spec(rng: random.Random) -> PieceSpec:
    """Draw the attributes; classes first (family, tempo class) so each is equally common."""
    family = rng.choice(sorted(FAMILIES))
    instrument = rng.choice(FAMILIES[family])
    _, low, high = rng.choice(TEMPO_CLASSES)
    bpm = rng.randint(low, high)
    tonic = rng.randrange(12)
    mode = rng.choice(theory.MODES)
    progression = rng.choice(theory.PROGRESSIONS[mode])
    loudness = rng.choice(sorted(LOUDNESS_VELOCITY))
    drums = None
    if rng.random() < DRUM_PROBABILITY:
        drums = rng.choice({"soft": ("light", "rock"), "medium": DRUM_PATTERNS,
                            "loud": ("rock", "dance")}[loudness])
    # without drums only a rhythmic accompaniment makes the beat audible
    accompaniment = rng.choice(ACCOMPANIMENTS if drums else ("pulse", "arpeggio"))
    duration = round(rng.uniform(*DURATION_RANGE), 2)
    return PieceSpec(instrument, bpm, tonic, mode, progression, accompaniment, drums, loudness,
                     duration)


def _velocity(base: int, offset: int, rng: random.Random) -> int:
    return max(1, min(127, base + offset + rng.randint(-3, 3)))


def _voicing(spec: PieceSpec, numeral: str) -> Tuple[int, List[int]]:
    """(bass pitch, chord pitches) near the instrument's chord register."""
    pcs = theory.chord_pitch_classes(spec.tonic, numeral)
    center = spec.instrument.chord_center
    chord = theory.pitches_in_range(pcs, center - 5, center + 6)  # one of each pitch class
    bass = theory.pitches_in_range(pcs[:1], center - 17, center - 6)[0]
    return bass, chord


def _accompaniment(spec: PieceSpec, start: float, length: float, numeral: str,
                   rng: random.Random) -> List[Note]:
    bass, chord = _voicing(spec, numeral)
    base = LOUDNESS_VELOCITY[spec.loudness] - 10
    legato = 0.95 if spec.instrument.sustained else 1.0
    notes: List[Note] = []

    def add(offset: float, dur: float, pitch: int, accent: int) -> None:
        dur = min(dur, length - offset)
        if offset < length and dur > 0:
            notes.append(Note(start + offset, dur * legato, pitch, _velocity(base, accent, rng),
                              CHORD_CHANNEL))

    if spec.accompaniment == "block":
        for p in [bass] + chord:
            add(0, length, p, 4)
    elif spec.accompaniment == "pulse":
        for beat in range(4):
            if beat % 2 == 0:
                add(beat, 2 * 0.9, bass, 6 if beat == 0 else 0)
            for p in chord:
                add(beat, 0.8, p, 4 if beat == 0 else -2)
    elif spec.accompaniment == "arpeggio":
        tones = [bass] + chord + [chord[0] + 12]
        for step, index in enumerate((0, 1, 2, 3, 4, 3, 2, 1)):
            add(step / 2, 0.45, tones[index], 6 if step == 0 else (0 if step % 2 == 0 else -4))
    else:
        raise ValueError(f"unknown accompaniment {spec.accompaniment!r}")
    return notes


def _drums(spec: PieceSpec, body: float, rng: random.Random) -> List[Note]:
    base = LOUDNESS_VELOCITY[spec.loudness]
    notes: List[Note] = []
    if body * spec.seconds_per_beat >= CRASH_RING:  # an opening crash, where it can die away
        notes.append(Note(0, 0.25, CRASH, _velocity(base, -6, rng), DRUM_CHANNEL))
    for bar in range(math.ceil(body / 4)):
        for beat, key, offset in _DRUMS[spec.drums]:
            at = bar * 4 + beat
            if at < body:
                notes.append(Note(at, 0.25, key, _velocity(base, offset, rng), DRUM_CHANNEL))
    # the final chord is struck with a kick, then the drums stop; no crash there, its ring
    # would outlast the tail
    notes.append(Note(body, 0.25, KICK, _velocity(base, 0, rng), DRUM_CHANNEL))
    return notes


class _Melody:
    """A melody that lands on chord tones on the beat and moves by step in between."""

    def __init__(self, spec: PieceSpec, rng: random.Random):
        self.spec, self.rng = spec, rng
        self.low, self.high = spec.instrument.melody
        tonic_tones = theory.pitches_in_range(
            theory.chord_pitch_classes(spec.tonic, theory.TONIC[spec.mode]), self.low, self.high)
        middle = (self.low + self.high) / 2
        self.pitch = min(tonic_tones, key=lambda p: (abs(p - middle), p))

    def next_pitch(self, numeral: str, on_beat: bool) -> int:
        rng = self.rng
        if on_beat:
            tones = theory.pitches_in_range(theory.chord_pitch_classes(self.spec.tonic, numeral),
                                            self.low, self.high)
            nearest = sorted(tones, key=lambda p: (abs(p - self.pitch), p))[:3]
            self.pitch = rng.choices(nearest, weights=(3, 2, 1)[:len(nearest)])[0]
        else:
            scale = theory.pitches_in_range(
                theory.scale_pitch_classes(self.spec.tonic, self.spec.mode, numeral),
                self.low, self.high)
            i = min(range(len(scale)), key=lambda k: abs(scale[k] - self.pitch))
            step = rng.choice((1, 1, 1, 2)) * rng.choice((-1, 1))
            if not 0 <= i + step < len(scale):
                step = -step  # turn back at the edge of the range
            self.pitch = scale[i + step]
        return self.pitch

    def final_pitch(self) -> int:
        tonics = theory.pitches_in_range([self.spec.tonic], self.low, self.high)
        self.pitch = min(tonics, key=lambda p: (abs(p - self.pitch), p))
        return self.pitch


def compose(spec: PieceSpec, rng: random.Random) -> Piece:
    """Write the notes of ``spec``: body bars over the progression, a cadence (subdominant,
    dominant), then a held tonic ending."""
    spb = spec.seconds_per_beat
    total = math.floor((spec.duration - tail_seconds(spec.instrument)) / spb * 2) / 2  # half-beats
    if total < 1:
        raise ValueError(f"{spec.duration} s at {spec.bpm} BPM leaves no room for a beat")
    # the ending: a tonic chord struck on a beat and held 2–2.5 beats (the whole piece if short)
    body = float(math.floor(total - 2)) if total >= 3 else 0.0
    hold = total - body
    chords: List[Tuple[float, float, str]] = []
    bars = math.ceil(body / 4)
    for bar in range(bars):
        start, length = bar * 4.0, min(4.0, body - bar * 4)
        numeral = spec.progression[bar % len(spec.progression)]
        if bar == bars - 1 and bars >= 2:
            # The cadence. The subdominant's root (the 4th degree) is the pitch that tells a key
            # from the key a fifth above, which overtones (the 3rd harmonic is a fifth up) favour.
            if length >= 3:
                chords.append((start, length - 2, theory.SUBDOMINANT[spec.mode]))
                start, length = start + length - 2, 2.0
            numeral = theory.DOMINANT
        chords.append((start, length, numeral))
    tonic = theory.TONIC[spec.mode]

    notes: List[Note] = []
    for start, length, numeral in chords:
        notes += _accompaniment(spec, start, length, numeral, rng)
    bass, chord = _voicing(spec, tonic)
    base = LOUDNESS_VELOCITY[spec.loudness]
    for p in [bass] + chord:
        notes.append(Note(body, hold, p, _velocity(base - 10, 4, rng), CHORD_CHANNEL))

    melody = _Melody(spec, rng)
    legato = 0.95 if spec.instrument.sustained else 0.9
    motif, answer = rng.choice(RHYTHMS), rng.choice(RHYTHMS)
    for start, length, numeral in chords:
        # four-bar phrases: a motif, an answer, the motif again, a cadence rhythm
        phrase_bar = int(start // 4) % 4
        if phrase_bar == 3:
            rhythm = rng.choice(PHRASE_ENDINGS)
        else:
            rhythm = answer if phrase_bar == 1 else motif
        at = 0.0
        for value in rhythm:
            if at >= length:
                break
            dur = min(abs(value), length - at)
            if value > 0:
                pitch = melody.next_pitch(numeral, on_beat=float(at).is_integer())
                accent = 6 if at == 0 else (2 if at == 2 else 0)
                notes.append(Note(start + at, dur * legato, pitch, _velocity(base, accent, rng),
                                  MELODY_CHANNEL))
            at += dur
    notes.append(Note(body, hold, melody.final_pitch(), _velocity(base, 6, rng), MELODY_CHANNEL))
    if spec.drums is not None:
        notes += _drums(spec, body, rng)
    notes.sort(key=lambda n: (n.start, n.channel, n.pitch))
    return Piece(spec, notes, chords, total, melody_pan=rng.randint(40, 88))


def generate_piece(rng: random.Random) -> Piece:
    """A random piece: ``compose(sample_spec(rng), rng)``."""
    return compose(sample_spec(rng), rng)
