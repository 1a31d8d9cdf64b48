"""The corpus's audio format, in one place: 44.1 kHz, stereo, 16-bit PCM WAV, exactly the stated
duration, peak-normalised to a level set by the loudness class.

Peak normalisation per loudness class (not to one level for all) keeps "soft" and "loud" audible
as levels as well as timbres: the renderer scales each item so its peak sits at
``PEAK_DBFS[loudness]``. Files are written with the standard library's ``wave`` module, so the
bytes depend on the samples alone (no tool version or timestamp in a header chunk).
"""
from __future__ import annotations

import wave

import numpy as np

from .errors import CorpusError, RenderError
from .files import public_atomic_path

SAMPLE_RATE = 44100
CHANNELS = 2
PEAK_DBFS = {"soft": -13.0, "medium": -7.0, "loud": -1.0}
# Every item's sound ends at least this long before the end of its file (the tests check the
# level there), and a fade of FADE_SECONDS at the very end removes any reverb residue.
END_SILENCE = 0.25
FADE_SECONDS = 0.05
SILENT_PEAK = 1e-5  # a render whose peak is below this (-100 dBFS) carries no sound


def frames_for(seconds: float) -> int:
    """Exact frame count of a duration given in hundredths of a second (441 frames each)."""
    frames = round(seconds * SAMPLE_RATE)
    if abs(frames - seconds * SAMPLE_RATE) > 1e-6 * SAMPLE_RATE:
        raise CorpusError(f"duration {seconds!r} s is not a whole number of samples at "
                          f"{SAMPLE_RATE} Hz")
    return frames


def finish(audio: np.ndarray, seconds: float, loudness: str, where: str) -> np.ndarray:
    """(frames, 2) float audio → (frames, 2) int16 of exactly ``seconds``, faded and normalised.

    Longer audio is cut (fluidsynth renders on past the end of the track). Shorter audio is an
    error, not padded: the MIDI track lasts the whole duration, so a short render means the
    synthesizer stopped early.
    """
    if audio.ndim != 2 or audio.shape[1] != CHANNELS:
        raise RenderError(f"{where}: expected (frames, {CHANNELS}) audio, got {audio.shape}")
    if loudness not in PEAK_DBFS:
        raise RenderError(f"{where}: unknown loudness {loudness!r}; known: {', '.join(PEAK_DBFS)}")
    n = frames_for(seconds)
    if audio.shape[0] < n:
        raise RenderError(f"{where}: {audio.shape[0] / SAMPLE_RATE:.3f} s of audio rendered, "
                          f"{seconds} s expected")
    out = audio[:n].astype(np.float64)  # a copy: the fade and gain below must not touch the input
    if not np.isfinite(out).all():
        raise RenderError(f"{where}: the rendered audio has NaN or infinite samples")
    fade = min(n, int(FADE_SECONDS * SAMPLE_RATE))
    out[n - fade:] *= np.linspace(1.0, 0.0, fade)[:, None]
    peak = float(np.abs(out).max())
    if peak < SILENT_PEAK:
        raise RenderError(f"{where}: the rendered audio is silent (peak {peak:.2e})")
    out *= 10 ** (PEAK_DBFS[loudness] / 20) / peak
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def write_wav(path: str, pcm: np.ndarray) -> None:
    """Write (frames, 2) int16 samples as a PCM WAV, atomically."""
    if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[1] != CHANNELS:
        raise CorpusError(f"{path}: expected (frames, {CHANNELS}) int16 samples, got "
                          f"{pcm.dtype} {pcm.shape}")
    with public_atomic_path(path) as tmp:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(CHANNELS)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm.astype("<i2").tobytes())


def check_wav(path: str, seconds: float) -> None:
    """Raise unless ``path`` is a stereo 44.1 kHz 16-bit WAV of exactly ``seconds``."""
    import soundfile as sf  # an independent reader, not the writer's own module
    try:
        info = sf.info(path)
    except (RuntimeError, OSError) as e:
        raise CorpusError(f"{path}: not a readable audio file ({e})") from None
    problems = []
    if info.format != "WAV" or info.subtype != "PCM_16":
        problems.append(f"format {info.format}/{info.subtype}, expected WAV/PCM_16")
    if info.channels != CHANNELS:
        problems.append(f"{info.channels} channels, expected {CHANNELS}")
    if info.samplerate != SAMPLE_RATE:
        problems.append(f"{info.samplerate} Hz, expected {SAMPLE_RATE}")
    if info.frames != frames_for(seconds):
        problems.append(f"{info.frames} frames, expected {frames_for(seconds)} ({seconds} s)")
    if problems:
        raise CorpusError(f"{path}: " + "; ".join(problems))
