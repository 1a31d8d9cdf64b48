"""Decoding training audio to the model's format, and auditing a dataset before training.

``load_audio`` reads any file libsndfile can (WAV, FLAC, OGG, MP3), resamples it with soxr
(high quality) when its rate differs from the model's, duplicates mono to stereo and keeps the
first two channels of multichannel files (as stable-audio-tools does). Every such change is
listed in the returned :class:`AudioInfo`, so nothing is converted silently.

``audit`` probes every file once, before training, and sorts it into ok / converted / bad, so
a corrupt or empty file stops the run (``on_bad="fail"``) or is dropped with a log line
(``on_bad="skip"``) before the first step, never as a crash hours into a run.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .errors import DataError
from .manifest import AudioItem

log = logging.getLogger("fastaudio.data")

RESAMPLE_QUALITY = "HQ"   # soxr's high quality preset: flat to ~0.9·Nyquist, > 120 dB rejection
_AUDIT_BLOCK = 1 << 18    # frames decoded at a time while auditing, so memory stays bounded


@dataclass
class AudioInfo:
    """What a file held and what was done to it on the way to ``(channels, samples)``."""
    path: str
    source_rate: int
    source_channels: int
    source_frames: int
    sample_rate: int
    num_samples: int
    actions: List[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------

def _libsndfile_reason(e: Exception) -> str:
    # libsndfile's messages start with "Error opening '<path>': "; the path is already ours.
    msg = str(e)
    return msg.split("': ", 1)[1] if msg.startswith("Error opening '") and "': " in msg else msg


def _probe_or_reason(path: str):
    """``(soundfile info, "")`` or ``(None, why the file cannot be used)``."""
    import soundfile as sf
    if not os.path.exists(path):
        return None, "file not found"
    if not os.path.isfile(path):
        return None, "not a file"
    if os.path.getsize(path) == 0:
        return None, "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return None, "unreadable (permission denied)"
    try:
        info = sf.info(path)
    except Exception as e:  # LibsndfileError / RuntimeError: unknown format or broken header
        return None, f"not a readable audio file ({_libsndfile_reason(e)})"
    if info.frames <= 0:
        return None, "holds no audio samples"
    if info.samplerate <= 0 or info.channels <= 0:
        return None, f"invalid header ({info.samplerate} Hz, {info.channels} channels)"
    return info, ""


def probe(path: str):
    """``soundfile.info`` with errors that name the file and say why it cannot be used."""
    info, reason = _probe_or_reason(path)
    if info is None:
        raise DataError(f"{path}: {reason}")
    return info


def _check_channels(channels: int) -> None:
    if channels not in (1, 2):
        raise DataError(f"channels must be 1 or 2, got {channels}")


def conversions(source_rate: int, source_channels: int, sample_rate: int, channels: int) -> List[str]:
    """The changes ``load_audio`` makes to a file of this format, in words."""
    _check_channels(channels)
    actions = []
    if source_rate != sample_rate:
        actions.append(f"resampled {source_rate} → {sample_rate} Hz")
    if channels == 2 and source_channels == 1:
        actions.append("mono duplicated to stereo")
    elif channels == 2 and source_channels > 2:
        actions.append(f"kept the first 2 of {source_channels} channels")
    elif channels == 1 and source_channels > 1:
        actions.append(f"{source_channels} channels averaged to mono")
    return actions


def _read(path: str, start: int = 0, frames: int = -1) -> np.ndarray:
    import soundfile as sf
    try:
        data, _ = sf.read(path, start=start, frames=frames, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports corrupt frames as LibsndfileError/RuntimeError
        raise DataError(f"{path}: corrupt audio data ({_libsndfile_reason(e)})") from None
    if not np.isfinite(data).all():
        raise DataError(f"{path}: contains NaN or Inf samples")
    return data


def _to_model_format(data: np.ndarray, source_rate: int, sample_rate: int, channels: int) -> Tensor:
    """(frames, source channels) float32 → (channels, samples) at ``sample_rate``."""
    # Pick channels first: resampling six channels to keep two would be wasted work.
    if channels == 2:
        data = np.repeat(data, 2, axis=1) if data.shape[1] == 1 else data[:, :2]
    elif data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    if source_rate != sample_rate and data.shape[0] > 0:
        soxr = _soxr()
        data = soxr.resample(np.ascontiguousarray(data), source_rate, sample_rate,
                             quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(data.T, dtype=np.float32))


def _soxr():
    try:
        import soxr
    except ImportError:
        raise DataError("resampling needs the soxr package: pip install soxr "
                        "(or pip install 'fastaudio[train]')") from None
    return soxr


def load_audio(path: str, sample_rate: int = 44100, channels: int = 2) -> Tuple[Tensor, AudioInfo]:
    """The whole file as ``(channels, N)`` float32 at ``sample_rate``, and what was done to it."""
    path = os.fspath(path)
    _check_channels(channels)
    info = probe(path)
    data = _read(path)
    if data.shape[0] == 0:
        raise DataError(f"{path}: holds no audio samples")
    audio = _to_model_format(data, info.samplerate, sample_rate, channels)
    return audio, AudioInfo(path, info.samplerate, info.channels, data.shape[0], sample_rate,
                            audio.shape[1], conversions(info.samplerate, info.channels,
                                                        sample_rate, channels))


def load_crop(path: str, sample_size: int, choose_offset: Callable[[int], int],
              sample_rate: int = 44100, channels: int = 2) -> Tuple[Tensor, int, int]:
    """``(audio (channels, ≤ sample_size), n, offset)``: the ``sample_size`` samples from
    ``offset = choose_offset(n)``, where ``n`` is the file's length at ``sample_rate``.

    A file already at ``sample_rate`` is read from ``offset`` only (a 95 s crop of a long track
    costs 95 s of decoding); others are decoded and resampled whole, because the resampled
    length and the samples near the crop edges depend on the whole signal.
    """
    path = os.fspath(path)
    _check_channels(channels)
    info = probe(path)
    if info.samplerate == sample_rate:
        n = info.frames
        offset = choose_offset(n)
        data = _read(path, start=offset, frames=min(sample_size, n - offset))
        # A header that overstates the length gives a short read; the caller masks what is
        # missing, exactly as for a short file, rather than stopping the run.
        audio = _to_model_format(data, sample_rate, sample_rate, channels)
    else:
        audio, full = load_audio(path, sample_rate, channels)
        n = full.num_samples
        offset = choose_offset(n)
        audio = audio[:, offset:offset + sample_size]
    return audio, n, offset


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------

STATUSES = ("ok", "converted", "bad")


@dataclass
class AuditEntry:
    """One file's verdict. ``note``: for converted files what is done to them, for bad ones why
    they cannot be used."""
    item: AudioItem
    status: str
    note: str = ""
    seconds: float = 0.0


@dataclass
class AuditReport:
    entries: List[AuditEntry]
    sample_rate: int
    channels: int
    min_seconds: float
    convert: bool

    def _with(self, status: str) -> List[AuditEntry]:
        return [e for e in self.entries if e.status == status]

    @property
    def ok(self) -> List[AuditEntry]:
        return self._with("ok")

    @property
    def converted(self) -> List[AuditEntry]:
        return self._with("converted")

    @property
    def bad(self) -> List[AuditEntry]:
        return self._with("bad")

    @property
    def items(self) -> List[AudioItem]:
        """The usable items (ok and converted), in the input order."""
        return [e.item for e in self.entries if e.status != "bad"]

    @property
    def usable_seconds(self) -> float:
        return sum(e.seconds for e in self.entries if e.status != "bad")

    def usable(self, on_bad: str) -> List[AudioItem]:
        """Apply the bad-file policy: ``"fail"`` raises :class:`DataError` listing every bad
        file; ``"skip"`` logs each bad file by name and returns the usable items."""
        _check_policy(on_bad)
        bad = self.bad
        if bad and on_bad == "fail":
            listing = "\n".join(f"  {e.item.path}: {e.note}" for e in bad)
            raise DataError(f"{len(bad)} of {len(self.entries)} audio files cannot be used "
                            f"(on_bad='fail'; 'skip' trains without them):\n{listing}")
        for e in bad:
            log.warning("skipping %s: %s", e.item.path, e.note)
        if not self.items:
            raise DataError(f"none of the {len(self.entries)} audio files can be used; "
                            f"see the audit:\n{self.summary()}")
        return self.items

    def summary(self) -> str:
        layout = "stereo" if self.channels == 2 else "mono"
        lines = [f"audio audit of {len(self.entries)} files ({self.sample_rate} Hz {layout}, "
                 f"at least {self.min_seconds:g} s, convert={self.convert}): "
                 f"{len(self.ok)} ok, {len(self.converted)} converted, {len(self.bad)} bad; "
                 f"{self.usable_seconds / 3600:.2f} h usable"]
        for status in ("converted", "bad"):
            entries = self._with(status)
            if entries:
                lines.append(f"{status} ({len(entries)}):")
                lines += [f"  {e.item.path}: {e.note}" for e in entries]
        return "\n".join(lines)

    __str__ = summary


def _audit_one(item: AudioItem, sample_rate: int, channels: int, min_seconds: float,
               convert: bool) -> AuditEntry:
    import soundfile as sf
    info, reason = _probe_or_reason(item.path)
    if info is None:
        return AuditEntry(item, "bad", reason)
    # Decode every frame: headers can be fine while the data is corrupt or holds NaN.
    frames = 0
    try:
        for block in sf.blocks(item.path, blocksize=_AUDIT_BLOCK, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                return AuditEntry(item, "bad", "contains NaN or Inf samples")
            frames += block.shape[0]
    except Exception as e:  # libsndfile errors on corrupt frames
        return AuditEntry(item, "bad", f"corrupt audio data ({_libsndfile_reason(e)})")
    if frames == 0:
        return AuditEntry(item, "bad", "holds no audio samples")
    seconds = frames / info.samplerate
    if seconds < min_seconds:
        return AuditEntry(item, "bad", f"too short ({seconds:.2f} s < {min_seconds:g} s)", seconds)
    actions = conversions(info.samplerate, info.channels, sample_rate, channels)
    if not actions:
        return AuditEntry(item, "ok", "", seconds)
    if convert:
        return AuditEntry(item, "converted", "; ".join(actions), seconds)
    return AuditEntry(item, "bad", f"needs conversion ({'; '.join(actions)}) and convert=False",
                      seconds)


def _check_policy(on_bad: str) -> None:
    if on_bad not in ("skip", "fail"):
        raise DataError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")


def audit(items: Sequence[AudioItem], sample_rate: int = 44100, min_seconds: float = 0.0,
          convert: bool = True, on_bad: Optional[str] = None, channels: int = 2,
          num_workers: int = 1, progress: bool = False) -> AuditReport:
    """Probe and fully decode every file; classify it ok / converted / bad.

    With ``on_bad`` the policy is applied at once (see :meth:`AuditReport.usable`):
    ``"fail"`` raises :class:`DataError` listing every bad file (after checking them all, so
    one run shows the whole list); ``"skip"`` logs each bad file once. Without it the report
    only describes; ``report.usable(on_bad)`` applies the policy later. ``num_workers`` threads
    decode in parallel (libsndfile releases the GIL).
    """
    if on_bad is not None:
        _check_policy(on_bad)
    _check_channels(channels)
    items = list(items)
    if not items:
        raise DataError("no audio items to audit")

    def one(item: AudioItem) -> AuditEntry:
        return _audit_one(item, sample_rate, channels, min_seconds, convert)

    from tqdm.auto import tqdm
    with tqdm(total=len(items), desc="auditing audio", unit="file", disable=not progress) as bar:
        if num_workers > 1:
            with ThreadPoolExecutor(num_workers) as pool:
                entries = []
                for entry in pool.map(one, items):
                    entries.append(entry)
                    bar.update(1)
        else:
            entries = []
            for item in items:
                entries.append(one(item))
                bar.update(1)

    report = AuditReport(entries, sample_rate, channels, min_seconds, convert)
    if any(e.status == "converted" and "resampled" in e.note for e in entries):
        _soxr()  # fail now, not at the first resampled file of the run
    log.info("%s", report.summary())
    if on_bad is not None:
        report.usable(on_bad)
    return report

