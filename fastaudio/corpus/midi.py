"""A small Standard MIDI File (SMF) writer and reader.

The writer emits format 0 (one track): a name, one tempo, a 4/4 time signature, a key signature,
per-channel program/volume/pan/effect sends, the notes, and an end-of-track event placed where
the caller wants rendering to stop (fluidsynth renders up to the end of track, so the audio has
the intended length). Output is deterministic: events at the same tick are ordered by a fixed
key, so the same song always gives the same bytes.

The reader parses any format 0/1 file (running status, sysex, all meta events) back into notes,
tempos and programs; the tests use it for round trips and the renderer uses nothing else.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .errors import MidiError

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9  # GM percussion is MIDI channel 10, zero-based 9

# General MIDI controller numbers
CC_VOLUME, CC_PAN, CC_REVERB, CC_CHORUS = 7, 10, 91, 93


@dataclass(frozen=True)
class Note:
    """One note; times in beats (quarter notes) from the start."""
    start: float
    duration: float
    pitch: int
    velocity: int
    channel: int


@dataclass(frozen=True)
class ChannelSetup:
    program: int        # GM program 0..127 (ignored by synths on the drum channel)
    volume: int = 100   # CC7
    pan: int = 64       # CC10, 0 = left, 127 = right
    reverb: int = 40    # CC91 send
    chorus: int = 0     # CC93 send


@dataclass
class Song:
    """What the writer needs. ``end_beats``: where the track ends (rendering stops there)."""
    name: str
    tempo_us: int                      # microseconds per quarter note
    channels: Dict[int, ChannelSetup]
    notes: List[Note]
    end_beats: float
    key_sharps: int = 0                # key signature: -7..7 (flats negative)
    key_minor: bool = False


def _vlq(value: int) -> bytes:
    """MIDI variable-length quantity: 7 bits per byte, high bit set on all but the last."""
    if value < 0 or value > 0x0FFFFFFF:
        raise MidiError(f"delta time {value} cannot be encoded")
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def _tick(beats: float) -> int:
    return int(round(beats * TICKS_PER_BEAT))


def _check_notes(notes: List[Note], channels: Dict[int, ChannelSetup]) -> None:
    # A second note-on of a sounding (channel, pitch) would be cut by the first one's note-off,
    # so overlaps are a composition bug, reported rather than patched.
    last_end: Dict[Tuple[int, int], Tuple[int, Note]] = {}
    for n in sorted(notes, key=lambda n: (n.channel, n.pitch, n.start)):
        if not 0 <= n.pitch <= 127:
            raise MidiError(f"pitch {n.pitch} out of range 0..127 in {n}")
        if not 1 <= n.velocity <= 127:
            raise MidiError(f"velocity {n.velocity} out of range 1..127 in {n}")
        if n.channel not in channels:
            raise MidiError(f"note on channel {n.channel}, which has no setup: {n}")
        start, end = _tick(n.start), _tick(n.start + n.duration)
        if start < 0 or end <= start:
            raise MidiError(f"note shorter than one tick or before the start: {n}")
        key = (n.channel, n.pitch)
        if key in last_end and start < last_end[key][0]:
            raise MidiError(f"overlapping notes on channel {n.channel}, pitch {n.pitch}: "
                            f"{last_end[key][1]} and {n}")
        last_end[key] = (end, n)


def song_bytes(song: Song) -> bytes:
    """Encode ``song`` as a format-0 SMF."""
    if not 1 <= song.tempo_us <= 0xFFFFFF:
        raise MidiError(f"tempo {song.tempo_us} µs per beat cannot be encoded")
    if not -7 <= song.key_sharps <= 7:
        raise MidiError(f"key signature with {song.key_sharps} sharps is not a key")
    _check_notes(song.notes, song.channels)
    end_tick = _tick(song.end_beats)
    # (tick, order, tiebreak, payload): setup first, then note-offs, then note-ons at a tick
    events: List[Tuple[int, int, Tuple[int, ...], bytes]] = []
    name = song.name.encode("ascii", "replace")
    events.append((0, 0, (0,), b"\xff\x03" + _vlq(len(name)) + name))
    events.append((0, 0, (1,), b"\xff\x51\x03" + song.tempo_us.to_bytes(3, "big")))
    events.append((0, 0, (2,), b"\xff\x58\x04\x04\x02\x18\x08"))  # 4/4, 24 clocks, 8 32nds
    key = struct.pack("bB", song.key_sharps, int(song.key_minor))
    events.append((0, 0, (3,), b"\xff\x59\x02" + key))
    for ch in sorted(song.channels):
        s = song.channels[ch]
        for i, (status, data) in enumerate([
                (0xC0, bytes([s.program])),
                (0xB0, bytes([CC_VOLUME, s.volume])), (0xB0, bytes([CC_PAN, s.pan])),
                (0xB0, bytes([CC_REVERB, s.reverb])), (0xB0, bytes([CC_CHORUS, s.chorus]))]):
            if any(b > 127 for b in data):
                raise MidiError(f"channel {ch} setup value out of range 0..127: {s}")
            events.append((0, 0, (4, ch, i), bytes([status | ch]) + data))
    for n in song.notes:
        start, end = _tick(n.start), _tick(n.start + n.duration)
        if end > end_tick:
            raise MidiError(f"note ends after the end of the track ({song.end_beats} beats): {n}")
        events.append((start, 2, (n.channel, n.pitch),
                       bytes([0x90 | n.channel, n.pitch, n.velocity])))
        events.append((end, 1, (n.channel, n.pitch), bytes([0x80 | n.channel, n.pitch, 64])))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    track = bytearray()
    now = 0
    for tick, _, _, payload in events:
        track += _vlq(tick - now) + payload
        now = tick
    track += _vlq(end_tick - now) + b"\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


# ---------------------------------------------------------------------------------- reader

@dataclass
class ParsedNote:
    channel: int
    pitch: int
    velocity: int
    start_tick: int
    end_tick: int


@dataclass
class ParsedMidi:
    format: int
    ticks_per_beat: int
    tempos: List[Tuple[int, int]] = field(default_factory=list)        # (tick, µs per beat)
    programs: Dict[int, int] = field(default_factory=dict)             # channel → last program
    controls: Dict[Tuple[int, int], int] = field(default_factory=dict)  # (channel, cc) → value
    notes: List[ParsedNote] = field(default_factory=list)
    key_signature: Optional[Tuple[int, bool]] = None                   # (sharps, minor)
    end_tick: int = 0                                                  # latest end of track

    def seconds(self, tick: int) -> float:
        """Time of ``tick`` in seconds, following the tempo map (default 120 BPM)."""
        tempos = sorted(self.tempos) or [(0, 500000)]
        if tempos[0][0] > 0:
            tempos.insert(0, (0, 500000))
        t, prev_tick, prev_us = 0.0, 0, tempos[0][1]
        for at, us in tempos[1:]:
            if at >= tick:
                break
            t += (at - prev_tick) * prev_us / 1e6 / self.ticks_per_beat
            prev_tick, prev_us = at, us
        return t + (tick - prev_tick) * prev_us / 1e6 / self.ticks_per_beat


def _read_vlq(data: bytes, pos: int, where: str) -> Tuple[int, int]:
    value = 0
    for _ in range(4):
        if pos >= len(data):
            raise MidiError(f"{where}: truncated variable-length number")
        b = data[pos]
        pos += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            return value, pos
    raise MidiError(f"{where}: variable-length number longer than 4 bytes")


def parse_midi(data: bytes, where: str = "MIDI data") -> ParsedMidi:
    """Parse an SMF; notes are paired note-on/note-off (a note-on with velocity 0 is an off)."""
    if len(data) < 14 or data[:4] != b"MThd":
        raise MidiError(f"{where}: not a Standard MIDI File (no MThd header)")
    hlen, fmt, ntracks, division = struct.unpack(">IHHH", data[4:14])
    if division & 0x8000:
        raise MidiError(f"{where}: SMPTE time division is not supported")
    out = ParsedMidi(format=fmt, ticks_per_beat=division)
    pos = 8 + hlen
    for t in range(ntracks):
        if data[pos:pos + 4] != b"MTrk":
            raise MidiError(f"{where}: track {t} has no MTrk header")
        (length,) = struct.unpack(">I", data[pos + 4:pos + 8])
        pos, end = pos + 8, pos + 8 + length
        if end > len(data):
            raise MidiError(f"{where}: track {t} is truncated")
        tick, status = 0, 0
        sounding: Dict[Tuple[int, int], List[Tuple[int, int]]] = {}
        while pos < end:
            delta, pos = _read_vlq(data, pos, where)
            tick += delta
            if data[pos] & 0x80:
                status = data[pos]
                pos += 1
            elif status == 0 or status >= 0xF0:
                raise MidiError(f"{where}: running status without a previous channel event")
            if status == 0xFF:
                kind = data[pos]
                n, pos = _read_vlq(data, pos + 1, where)
                body = data[pos:pos + n]
                pos += n
                if kind == 0x51:
                    out.tempos.append((tick, int.from_bytes(body, "big")))
                elif kind == 0x59:
                    out.key_signature = (struct.unpack("b", body[:1])[0], bool(body[1]))
                elif kind == 0x2F:
                    out.end_tick = max(out.end_tick, tick)
                    break
                status = 0  # meta events cancel running status
            elif status in (0xF0, 0xF7):
                n, pos = _read_vlq(data, pos, where)
                pos += n
                status = 0
            else:
                kind, ch = status & 0xF0, status & 0x0F
                nbytes = 1 if kind in (0xC0, 0xD0) else 2
                a = data[pos]
                b = data[pos + 1] if nbytes == 2 else 0
                pos += nbytes
                if kind == 0x90 and b > 0:
                    sounding.setdefault((ch, a), []).append((tick, b))
                elif kind == 0x80 or (kind == 0x90 and b == 0):
                    started = sounding.get((ch, a))
                    if not started:
                        raise MidiError(f"{where}: note-off without note-on (channel {ch}, "
                                        f"pitch {a}, tick {tick})")
                    on_tick, velocity = started.pop(0)
                    out.notes.append(ParsedNote(ch, a, velocity, on_tick, tick))
                elif kind == 0xC0:
                    out.programs[ch] = a
                elif kind == 0xB0:
                    out.controls[(ch, a)] = b
        pos = end
        hanging = [k for k, v in sounding.items() if v]
        if hanging:
            raise MidiError(f"{where}: notes never released (channel, pitch): {hanging[:5]}")
    out.notes.sort(key=lambda n: (n.start_tick, n.channel, n.pitch))
    return out
