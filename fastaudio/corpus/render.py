"""MIDI → audio with the fluidsynth command line and a General MIDI SoundFont.

fluidsynth writes 32-bit float (no dither); the samples are read back, cut to the stated
duration, normalised and converted to 16 bits once, by ``wav.finish``. ``GAIN`` keeps the
synthesizer's output far below full scale (peaks of 0.005–0.28 over the first 100 items of seed
0; loud synth leads with drums are the loudest), and a render that reaches full scale is refused
as possibly clipped. One fluidsynth process per item, single-threaded (``synth.cpu-cores=1``),
so the builder's worker count is the number of busy cores; with the same fluidsynth and
SoundFont the samples are identical from run to run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np

from .errors import RenderError
from .wav import SAMPLE_RATE

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
INSTALL_HINT = "install them with: apt-get install fluidsynth fluid-soundfont-gm"
GAIN = 0.05  # fluidsynth's master gain (default 0.2): float output keeps quiet renders exact
CLIP_LEVEL = 0.999
TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Synth:
    executable: str
    soundfont: str
    version: str  # "FluidSynth runtime version 2.3.1": recorded so a resumed corpus can't mix synths


def find_synth(soundfont: str | None = None) -> Synth:
    """Locate fluidsynth and the SoundFont, or say how to install them."""
    executable = shutil.which("fluidsynth")
    if executable is None:
        raise RenderError(f"the fluidsynth program is not installed (not on PATH); {INSTALL_HINT}")
    soundfont = soundfont or DEFAULT_SOUNDFONT
    if not os.path.isfile(soundfont):
        hint = INSTALL_HINT if soundfont == DEFAULT_SOUNDFONT else "pass an existing .sf2 file"
        raise RenderError(f"SoundFont {soundfont} not found; {hint}")
    try:
        probe = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RenderError(f"cannot run {executable} --version: {e}") from None
    lines = [ln for ln in probe.stdout.splitlines() if "runtime version" in ln]
    if probe.returncode != 0 or not lines:
        raise RenderError(f"{executable} --version failed (exit {probe.returncode}): "
                          f"{(probe.stderr or probe.stdout).strip()[:300]}")
    return Synth(executable, os.path.abspath(soundfont), lines[0].strip())


def render_midi(synth: Synth, midi: bytes, where: str) -> np.ndarray:
    """Render SMF bytes to (frames, 2) float32 audio at 44.1 kHz (up to past the end of track)."""
    import soundfile as sf
    with tempfile.TemporaryDirectory(prefix="fastaudio-render-") as tmp:
        mid, out = os.path.join(tmp, "in.mid"), os.path.join(tmp, "out.wav")
        with open(mid, "wb") as f:
            f.write(midi)
        cmd = [synth.executable, "-n", "-i", "-q",
               "-F", out, "-T", "wav", "-O", "float", "-r", str(SAMPLE_RATE), "-g", str(GAIN),
               "-R", "1", "-C", "1",
               "-o", "synth.cpu-cores=1",
               # loads only the samples the piece uses: half the start-up time, same output
               "-o", "synth.dynamic-sample-loading=1",
               synth.soundfont, mid]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise RenderError(f"{where}: fluidsynth took over {TIMEOUT_SECONDS} s") from None
        except OSError as e:
            raise RenderError(f"{where}: cannot run fluidsynth: {e}") from None
        messages = (proc.stderr + proc.stdout).strip()
        # fluidsynth exits 0 even when it could not load the file, so the output is checked too
        if proc.returncode != 0 or not os.path.isfile(out) or os.path.getsize(out) == 0:
            raise RenderError(f"{where}: fluidsynth failed (exit {proc.returncode}): "
                              f"{messages[:500] or 'no output file'}")
        audio, rate = sf.read(out, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE or audio.shape[1] != 2:
        raise RenderError(f"{where}: fluidsynth wrote {audio.shape[1]} channels at {rate} Hz, "
                          f"expected 2 at {SAMPLE_RATE}")
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak >= CLIP_LEVEL:
        raise RenderError(f"{where}: fluidsynth's output reaches full scale (peak {peak:.3f}), "
                          f"so it may be clipped; lower render.GAIN ({GAIN})")
    return audio


def release_seconds(synth: Synth, program: int, chord_center: int, melody_pitch: int) -> float:
    """Seconds from the note-off of a loud chord (plus a melody note) on ``program`` until the
    sound stays 60 dB below its peak: what ``Instrument.release`` records."""
    from .midi import ChannelSetup, Note, Song, song_bytes
    notes = [Note(0, 2, p, 115, 0) for p in (chord_center - 12, chord_center, chord_center + 4,
                                            chord_center + 7)] + [Note(0, 2, melody_pitch, 115, 1)]
    song = Song(f"release of program {program}", 500000,  # 120 BPM: the note-off is at 1 s
                {0: ChannelSetup(program), 1: ChannelSetup(program)}, notes, end_beats=12)
    audio = render_midi(synth, song_bytes(song), where=f"program {program}")
    hop = SAMPLE_RATE // 20
    power = np.mean(audio[SAMPLE_RATE:].astype(np.float64) ** 2, axis=1)
    frames = len(power) // hop
    level = 10 * np.log10(power[:frames * hop].reshape(frames, hop).mean(1) + 1e-30)
    loud = np.flatnonzero(level > 20 * np.log10(np.abs(audio).max()) - 60)
    return 0.0 if len(loud) == 0 else (loud[-1] + 1) * hop / SAMPLE_RATE
