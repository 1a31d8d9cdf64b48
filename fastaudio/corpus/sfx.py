"""Cheap sound effects synthesised with numpy: rain, wind, beeps, a two-tone alarm, sine
sweeps and a ticking clock.

Each has a caption-worthy parameter that is plainly audible: the rate (in BPM, same tempo
classes as the music) of beeps, alarms and clocks; the direction and range of a sweep; the
intensity of rain and wind. Like the music, each sound ends a little before the end of its file.
Filtering is done in the frequency domain (one FFT per signal): simple, exact and fast enough.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .music import DURATION_RANGE, LOUDNESS_VELOCITY, TEMPO_CLASSES, tempo_class
from .wav import END_SILENCE, SAMPLE_RATE

SOUNDS = ("rain", "wind", "beeps", "alarm", "sweep", "clock")
RATED_SOUNDS = ("beeps", "alarm", "clock")  # the ones with a tempo


@dataclass(frozen=True)
class SfxSpec:
    sound: str
    duration: float               # seconds, two decimals
    sound_end: float              # the sound has faded out by here
    loudness: str
    noise_seed: int               # seeds numpy's generator for the waveform
    bpm: Optional[int] = None     # beeps, alarm, clock
    intensity: Optional[str] = None  # rain: light/heavy; wind: gentle/strong
    direction: Optional[str] = None  # sweep: up/down
    low_hz: Optional[int] = None     # sweep range; beep/alarm/clock tones
    high_hz: Optional[int] = None

    @property
    def tempo_class(self) -> Optional[str]:
        return tempo_class(self.bpm) if self.bpm is not None else None


def sample_sfx(rng: random.Random) -> SfxSpec:
    sound = rng.choice(SOUNDS)
    duration = round(rng.uniform(*DURATION_RANGE), 2)
    # fade-out ends 0.3–1.0 s before the end of the file
    sound_end = round(duration - rng.uniform(END_SILENCE + 0.05, 1.0), 2)
    loudness = rng.choice(sorted(LOUDNESS_VELOCITY))
    noise_seed = rng.getrandbits(63)
    bpm = intensity = direction = low = high = None
    if sound in RATED_SOUNDS:
        _, lo, hi = rng.choice(TEMPO_CLASSES)
        bpm = rng.randint(lo, hi)
    if sound in ("rain", "wind"):
        weak, strong = ("light", "heavy") if sound == "rain" else ("gentle", "strong")
        intensity = rng.choice((weak, strong))
        # the level follows the intensity: "loud, gentle wind" would contradict itself
        loudness = rng.choice(("soft", "medium") if intensity == weak else ("medium", "loud"))
    elif sound == "sweep":
        direction = rng.choice(("up", "down"))
        low, high = rng.choice((100, 200, 300, 500)), rng.choice((2000, 4000, 8000))
    elif sound in ("beeps", "clock"):
        tones = (440, 880, 1000, 1500, 2000) if sound == "beeps" else (1800, 2500, 3200)
        low = high = rng.choice(tones)
    elif sound == "alarm":
        low = rng.choice((500, 600, 700, 800))
        high = int(low * rng.choice((1.25, 1.5)))
    else:
        raise ValueError(f"unknown sound {sound!r}; known: {', '.join(SOUNDS)}")
    return SfxSpec(sound, duration, sound_end, loudness, noise_seed, bpm, intensity, direction,
                   low, high)


def _band_noise(g: np.random.Generator, n: int, low: float, high: float, tilt: float) -> np.ndarray:
    """Noise with a smooth band-pass between ``low`` and ``high`` Hz and a 1/f**tilt slope."""
    spectrum = np.fft.rfft(g.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    f[0] = f[1]
    shape = f ** (-tilt / 2) / np.sqrt((1 + (low / f) ** 4) * (1 + (f / high) ** 4))
    x = np.fft.irfft(spectrum * shape, n)
    return x / (np.abs(x).max() + 1e-12)


def _slow_envelope(g: np.random.Generator, n: int, rates=(0.07, 0.13, 0.29), floor=0.2) -> np.ndarray:
    """A smooth random envelope in [floor, 1] from a few slow sines (gusts, swells)."""
    t = np.arange(n) / SAMPLE_RATE
    env = sum(np.sin(2 * np.pi * r * (1 + 0.3 * g.random()) * t + 2 * np.pi * g.random())
              for r in rates)
    env = (env - env.min()) / (env.max() - env.min() + 1e-12)
    return floor + (1 - floor) * env


def _tone(f: float, length: int, harmonics: bool) -> np.ndarray:
    t = np.arange(length) / SAMPLE_RATE
    x = np.sin(2 * np.pi * f * t)
    if harmonics:  # a buzzier, square-ish beep
        x = x + np.sin(6 * np.pi * f * t) / 3 + np.sin(10 * np.pi * f * t) / 5
    ramp = min(length // 2, int(0.005 * SAMPLE_RATE))  # 5 ms ramps: no clicks
    env = np.ones(length)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[length - ramp:] = np.linspace(1, 0, ramp)
    return x * env


def _events(spec: SfxSpec, n_sound: int, make) -> np.ndarray:
    """Place ``make(k)`` (a 1-D array) at every beat k of ``spec.bpm`` that fits before the end."""
    out = np.zeros(n_sound)
    period = 60.0 / spec.bpm
    k = 0
    while True:
        at = int(round(k * period * SAMPLE_RATE))
        event = make(k)
        if at + len(event) > n_sound:
            break
        out[at:at + len(event)] += event
        k += 1
    return out


def synthesize(spec: SfxSpec) -> np.ndarray:
    """(frames, 2) float audio of ``spec`` (unnormalised), ``spec.duration`` long."""
    g = np.random.default_rng(spec.noise_seed)
    n = round(spec.duration * SAMPLE_RATE)
    n_sound = round(spec.sound_end * SAMPLE_RATE)
    fade = int(0.25 * SAMPLE_RATE)
    if spec.sound == "rain":
        heavy = spec.intensity == "heavy"
        chans = []
        for _ in range(2):  # independent noise per channel: a wide, diffuse image
            hiss = _band_noise(g, n_sound, 400, 9000, 0.6) * (0.5 if heavy else 0.25)
            drops = np.zeros(n_sound)
            count = g.poisson((60 if heavy else 12) * spec.sound_end)
            drops[g.integers(0, n_sound, count)] = g.uniform(0.2, 1.0, count)
            kernel = np.exp(-np.arange(int(0.012 * SAMPLE_RATE)) / (0.002 * SAMPLE_RATE))
            kernel *= g.standard_normal(len(kernel))
            drops = np.convolve(drops, kernel)[:n_sound]
            chans.append(hiss * _slow_envelope(g, n_sound, floor=0.7) + 0.6 * drops)
        x = np.stack(chans, axis=1)
    elif spec.sound == "wind":
        strong = spec.intensity == "strong"
        chans = []
        gust = _slow_envelope(g, n_sound, floor=0.1 if strong else 0.3)
        for _ in range(2):
            body = _band_noise(g, n_sound, 60, 700 if strong else 400, 1.0)
            whistle = _band_noise(g, n_sound, 600, 1100, 0.0)
            chans.append(body * gust + (0.35 if strong else 0.1) * whistle * gust ** 3)
        x = np.stack(chans, axis=1)
    elif spec.sound in ("beeps", "alarm"):
        length = int(min(0.18, 0.4 * 60 / spec.bpm) * SAMPLE_RATE)
        square = g.random() < 0.5
        if spec.sound == "beeps":
            mono = _events(spec, n_sound, lambda k: _tone(spec.low_hz, length, square))
        else:  # two tones alternating, each filling most of the beat
            length = int(0.7 * 60 / spec.bpm * SAMPLE_RATE)
            mono = _events(spec, n_sound,
                           lambda k: _tone(spec.high_hz if k % 2 else spec.low_hz, length, square))
        x = np.stack([mono, mono], axis=1)
        fade = 0
    elif spec.sound == "sweep":
        t = np.arange(n_sound) / SAMPLE_RATE
        f0, f1 = spec.low_hz, spec.high_hz
        if spec.direction == "down":
            f0, f1 = f1, f0
        k = math.log(f1 / f0) / spec.sound_end
        phase = 2 * np.pi * f0 * (np.exp(k * t) - 1) / k  # exponential sweep: even in pitch
        mono = np.sin(phase)
        fade = int(0.02 * SAMPLE_RATE)
        mono[:fade] *= np.linspace(0, 1, fade)
        x = np.stack([mono, mono], axis=1)
    elif spec.sound == "clock":
        length = int(0.03 * SAMPLE_RATE)
        decay = np.exp(-np.arange(length) / (0.004 * SAMPLE_RATE))

        def tick(k: int) -> np.ndarray:  # "tick" and a lower "tock": a struck resonance
            f = spec.low_hz if k % 2 == 0 else spec.low_hz * 0.75
            return np.sin(2 * np.pi * f * np.arange(length) / SAMPLE_RATE) * decay
        mono = _events(spec, n_sound, tick)
        x = np.stack([mono, 0.9 * mono], axis=1)
        fade = 0
    else:
        raise ValueError(f"unknown sound {spec.sound!r}; known: {', '.join(SOUNDS)}")
    if fade:
        x[n_sound - fade:] *= np.linspace(1, 0, fade)[:, None]
    out = np.zeros((n, 2))
    out[:n_sound] = x
    return out
