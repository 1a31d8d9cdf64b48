"""The synthetic corpus: MIDI files, pieces, captions, labels, the split, sound effects, and (where
fluidsynth and the GM SoundFont are installed) rendering a small corpus end to end."""
import json
import os
import random
import shutil

import numpy as np
import pytest

from fastaudio.corpus import build, captions, cli, music, render, sfx, split, theory, wav
from fastaudio.corpus.errors import CorpusError, MidiError, RenderError
from fastaudio.corpus.instruments import FAMILIES
from fastaudio.corpus.midi import (DRUM_CHANNEL, TICKS_PER_BEAT, ChannelSetup, Note, Song, _vlq,
                                   parse_midi, song_bytes)

HAVE_SYNTH = shutil.which("fluidsynth") is not None and os.path.isfile(render.DEFAULT_SOUNDFONT)
needs_synth = pytest.mark.skipif(
    not HAVE_SYNTH,
    reason=f"fluidsynth or {render.DEFAULT_SOUNDFONT} missing ({render.INSTALL_HINT})")

ITEMS = build.plan(seed=3, count=400)  # pure Python: MIDI and captions, no audio
MUSIC = [it for it in ITEMS if it.piece is not None]
SFX = [it for it in ITEMS if it.sfx is not None]


# ------------------------------------------------------------------------------------ MIDI

def test_vlq_known_values():
    assert [_vlq(v).hex() for v in (0, 0x40, 0x7F, 0x80, 0x2000, 0x3FFF, 0x4000, 0x0FFFFFFF)] == \
        ["00", "40", "7f", "8100", "c000", "ff7f", "818000", "ffffff7f"]


def test_midi_round_trip():
    notes = [Note(0, 1, 60, 100, 0), Note(0.5, 0.25, 64, 80, 1), Note(1, 2.5, 60, 90, 0),
             Note(3, 0.25, 36, 110, DRUM_CHANNEL)]
    channels = {0: ChannelSetup(73, pan=30), 1: ChannelSetup(48), DRUM_CHANNEL: ChannelSetup(0)}
    song = Song("test", tempo_us=600000, channels=channels, notes=notes, end_beats=5,
                key_sharps=-3, key_minor=True)
    parsed = parse_midi(song_bytes(song))
    assert parsed.format == 0 and parsed.ticks_per_beat == TICKS_PER_BEAT
    assert parsed.tempos == [(0, 600000)]
    assert parsed.programs == {0: 73, 1: 48, DRUM_CHANNEL: 0}
    assert parsed.controls[(0, 10)] == 30
    assert parsed.key_signature == (-3, True)
    assert parsed.end_tick == 5 * TICKS_PER_BEAT
    assert parsed.seconds(parsed.end_tick) == pytest.approx(3.0)  # 5 beats at 100 BPM
    got = sorted((n.channel, n.pitch, n.velocity, n.start_tick, n.end_tick) for n in parsed.notes)
    want = sorted((n.channel, n.pitch, n.velocity, round(n.start * TICKS_PER_BEAT),
                   round((n.start + n.duration) * TICKS_PER_BEAT)) for n in notes)
    assert got == want


def test_generated_pieces_round_trip():
    for item in MUSIC[:60]:
        piece = item.piece
        parsed = parse_midi(song_bytes(piece.song()))
        assert parsed.tempos == [(0, piece.spec.tempo_us)]
        assert parsed.programs[0] == parsed.programs[1] == piece.spec.instrument.program
        assert (DRUM_CHANNEL in parsed.programs) == (piece.spec.drums is not None)
        assert sorted((n.channel, n.pitch, n.start_tick) for n in parsed.notes) == \
            sorted((n.channel, n.pitch, round(n.start * TICKS_PER_BEAT)) for n in piece.notes)
        last_off = max(n.end_tick for n in parsed.notes)
        assert parsed.seconds(last_off) == pytest.approx(piece.sound_end, abs=1e-3)
        # the track (and so the rendering) lasts the whole stated duration
        assert parsed.seconds(parsed.end_tick) >= piece.spec.duration


@pytest.mark.parametrize("bad, message", [
    (Note(0, 1, 128, 100, 0), "pitch"), (Note(0, 1, 60, 0, 0), "velocity"),
    (Note(0, 1, 60, 100, 5), "no setup"), (Note(0, 0.0001, 60, 100, 0), "shorter than one tick"),
    (Note(0.5, 1, 62, 100, 0), "overlapping"), (Note(3.5, 1, 70, 100, 0), "after the end")])
def test_midi_writer_rejects_bad_notes(bad, message):
    song = Song("bad", 500000, {0: ChannelSetup(0)}, [Note(0, 1, 62, 100, 0), bad], end_beats=4)
    with pytest.raises(MidiError, match=message):
        song_bytes(song)


def test_midi_reader_rejects_garbage():
    with pytest.raises(MidiError, match="not a Standard MIDI File"):
        parse_midi(b"RIFF....")


# ---------------------------------------------------------------------- pieces and captions

def test_same_seed_same_item():
    for index in (0, 1, 17):
        a, b = build.plan_item(11, index), build.plan_item(11, index)
        assert a.caption == b.caption and a.metadata == b.metadata and a.labels == b.labels
        if a.piece is not None:
            assert song_bytes(a.piece.song()) == song_bytes(b.piece.song())
        else:
            np.testing.assert_array_equal(sfx.synthesize(a.sfx), sfx.synthesize(b.sfx))
    assert build.plan_item(11, 0).caption != build.plan_item(12, 0).caption
    assert random.Random(5).random() == random.Random(5).random()  # no global state touched


def test_attributes_are_all_used():
    specs = [it.piece.spec for it in MUSIC]
    assert {s.family for s in specs} == set(FAMILIES)
    assert {s.tempo_class for s in specs} == {"slow", "medium", "fast"}
    assert {s.mode for s in specs} == {"major", "minor"} and len({s.tonic for s in specs}) == 12
    assert {s.drums is None for s in specs} == {True, False}
    assert {s.loudness for s in specs} == {"soft", "medium", "loud"}
    assert 0.05 < len(SFX) / len(ITEMS) < 0.15
    assert {it.sfx.sound for it in SFX} == set(sfx.SOUNDS)
    for s in specs:
        assert music.TEMPO_CLASSES[0][1] <= s.bpm <= music.TEMPO_CLASSES[-1][2]
        assert s.tempo_class == ("slow" if s.bpm < 85 else "medium" if s.bpm <= 120 else "fast")


def test_durations_in_range():
    durations = [float(it.labels["duration"]) for it in ITEMS]
    assert min(durations) >= 3.0 and max(durations) <= 20.0
    window = 512 * 1024 / 44100  # the small preset's 11.9 s
    assert sum(d < window for d in durations) > 100 and sum(d > window for d in durations) > 100
    for it in ITEMS:
        duration, end = float(it.labels["duration"]), float(it.labels["sound_end"])
        assert wav.frames_for(duration) == round(duration * 44100)  # whole samples
        assert 0 < end <= duration - wav.END_SILENCE
        if it.piece is not None:  # release and reverb get their time
            assert end <= duration - music.tail_seconds(it.piece.spec.instrument) + 1e-6


def _has_any(text, words):
    return any(w in text for w in words)


def test_music_captions_mention_the_labels():
    for it in MUSIC:
        text, lab, meta = it.caption.lower(), it.labels, it.metadata
        assert lab["instrument"] in text
        assert lab["key"].lower() in text
        assert f"{lab['bpm']} bpm" in text
        assert _has_any(text, captions.LOUDNESS_WORDS[lab["loudness"]])
        assert _has_any(text, captions.TEMPO_WORDS[lab["tempo_class"]])
        if lab["has_drums"]:
            assert "drum" in text or "beat" in text
        else:
            assert "drum" not in text or "without drums" in text
        assert meta == {"instrument": lab["instrument"], "family": lab["family"],
                        "tempo": f"{lab['bpm']} BPM", "key": lab["key"],
                        "drums": f"{lab['drum_pattern']} beat" if lab["has_drums"] else "no",
                        "mood": meta["mood"], "loudness": lab["loudness"]}
        assert meta["mood"] in captions.MOODS[(lab["mode"], lab["tempo_class"])]
        assert "  " not in it.caption and " ," not in it.caption and not it.caption.endswith(",")
        assert " a a" not in text and not any(f" a {v}" in f" {text}" for v in "aeiou")
    assert len({it.caption.split(" ")[0] for it in MUSIC}) > 5  # the templates vary


def test_sfx_captions_mention_the_labels():
    for it in SFX:
        text, lab = it.caption.lower(), it.labels
        assert lab["kind"] == "sfx" and it.metadata["sound"] == lab["sound"]
        assert _has_any(text, captions.LOUDNESS_WORDS[lab["loudness"]])
        if lab["bpm"] is not None:
            assert f"{lab['bpm']} " in text and it.metadata["tempo"] == f"{lab['bpm']} BPM"
        word = {"rain": "rain", "wind": "wind", "beeps": "beep", "alarm": "alarm",
                "sweep": "sweep" if "sweep" in text else "sine", "clock": "clock"}[lab["sound"]]
        assert word in text
        if lab["sound"] == "sweep":
            assert ("rising" in text or " up " in text) == (lab["direction"] == "up")


def test_labels_are_json_and_complete():
    keys = set(MUSIC[0].labels)
    for it in ITEMS:
        assert set(it.labels) >= keys
        line = json.loads(it.manifest_line())
        assert line["path"] == it.audio_path and line["caption"] == it.caption
        assert {k: line[k] for k in it.metadata} == it.metadata
    assert theory.key_name(2, "minor") == "D minor" and theory.key_signature(2, "minor") == -1
    assert theory.key_signature(7, "major") == 1 and theory.key_signature(5, "major") == -1


def test_heldout_is_stratified():
    strata = {it.index: it.strata() for it in ITEMS}
    held = split.choose_heldout(strata, 0.1, seed=3)
    assert held == split.choose_heldout(strata, 0.1, seed=3)
    assert 40 <= len(held) <= 50
    for key in ("family", "tempo_class", "sound"):
        values = {v for it in ITEMS for k, v in it.strata() if k == key}
        in_held = {v for i in held for k, v in strata[i] if k == key}
        in_train = {v for i in strata if i not in held for k, v in strata[i] if k == key}
        assert in_held == values and in_train == values, key
    assert split.choose_heldout(strata, 0.0, seed=3) == set()


# ------------------------------------------------------------------------------ sound effects

@pytest.mark.parametrize("sound", sfx.SOUNDS)
def test_sound_effects(sound):
    spec = next(it.sfx for it in SFX if it.sfx.sound == sound)
    audio = sfx.synthesize(spec)
    assert audio.shape == (wav.frames_for(spec.duration), 2) and np.isfinite(audio).all()
    end = round(spec.sound_end * 44100)
    assert np.abs(audio[:end]).max() > 0.05 and np.abs(audio[end:]).max() == 0
    if spec.bpm is not None:  # events at the stated rate: count the onsets in the envelope
        env = np.abs(audio[:, 0]) > 0.02 * np.abs(audio).max()
        onsets = np.flatnonzero(env[1:] & ~env[:-1])
        gaps = np.diff(onsets[np.diff(np.r_[-10**9, onsets]) > 0.1 * 44100]) / 44100
        if sound == "alarm":  # two tones with a short gap between
            gaps = gaps[gaps > 0.5 * 60 / spec.bpm]
        assert np.median(gaps) == pytest.approx(60 / spec.bpm, rel=0.02)


# ------------------------------------------------------------------------------ audio files

def test_wav_finish_write_check(tmp_path):
    t = np.arange(wav.frames_for(3.5) + 1000) / 44100
    tone = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1) * 0.1
    pcm = wav.finish(tone, 3.5, "loud", "tone")
    assert pcm.shape == (wav.frames_for(3.5), 2) and pcm.dtype == np.int16
    assert np.abs(pcm).max() == round(32767 * 10 ** (wav.PEAK_DBFS["loud"] / 20))
    assert pcm[-1].tolist() == [0, 0]  # the end fade
    path = str(tmp_path / "x.wav")
    wav.write_wav(path, pcm)
    wav.check_wav(path, 3.5)
    with pytest.raises(CorpusError, match="frames, expected"):
        wav.check_wav(path, 3.49)
    with pytest.raises(RenderError, match="silent"):
        wav.finish(np.zeros((1000, 2)), 0.02, "soft", "zeros")
    with pytest.raises(RenderError, match="3.5 s expected"):
        wav.finish(tone[:1000], 3.5, "soft", "short")
    with pytest.raises(CorpusError, match="whole number of samples"):
        wav.frames_for(1.00001)


def test_missing_fluidsynth_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(RenderError, match="apt-get install fluidsynth fluid-soundfont-gm"):
        render.find_synth()


def test_missing_soundfont(monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: "/usr/bin/fluidsynth")
    monkeypatch.setattr(render, "DEFAULT_SOUNDFONT", "/nonexistent/FluidR3_GM.sf2")
    with pytest.raises(RenderError, match="apt-get install"):
        render.find_synth()
    with pytest.raises(RenderError, match="not found"):
        render.find_synth("/nonexistent/other.sf2")


@pytest.mark.parametrize("argv, message", [
    (["--count", "2"], "--out"), (["--out", "x", "--count", "0"], ">= 1"),
    (["--out", "x", "--count", "2", "--heldout-fraction", "1"], r"\[0, 1\)"),
    (["--out", "x", "--count", "2", "--workers", "two"], "integer")])
def test_cli_rejects_bad_arguments(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastaudio corpus: error:") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err)


# -------------------------------------------------------------------- rendering (fluidsynth)

def _two_music_seed():
    return next(s for s in range(100) if all(build.plan_item(s, i).piece for i in range(2)))


def _level_db(x, ref):
    return 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) / ref + 1e-12)


@needs_synth
def test_render_two_item_corpus(tmp_path, capsys):
    import soundfile as sf
    seed, out = _two_music_seed(), str(tmp_path / "corpus")
    argv = ["--out", out, "--count", "2", "--seed", str(seed), "--heldout-fraction", "0.5"]
    assert cli.main(argv) == 0
    assert "2 rendered, 0 kept" in capsys.readouterr().out
    lines = {}
    for name in ("train", "heldout"):
        with open(os.path.join(out, f"{name}.jsonl")) as f:
            lines[name] = [json.loads(ln) for ln in f]
    assert len(lines["train"]) == len(lines["heldout"]) == 1
    assert {ln["path"] for ln in lines["train"]}.isdisjoint(ln["path"] for ln in lines["heldout"])
    for line in lines["train"] + lines["heldout"]:
        lab = line["labels"]
        assert not os.path.isabs(line["path"]) and line["caption"] and line["instrument"]
        audio, rate = sf.read(os.path.join(out, line["path"]), dtype="int16", always_2d=True)
        info = sf.info(os.path.join(out, line["path"]))
        assert rate == 44100 and audio.shape == (round(lab["duration"] * 44100), 2)
        assert info.subtype == "PCM_16"
        peak = np.abs(audio).max()
        assert peak == round(32767 * 10 ** (wav.PEAK_DBFS[lab["loudness"]] / 20))  # not silent
        assert not np.array_equal(audio[:, 0], audio[:, 1])  # real stereo
        body = audio[: round(lab["sound_end"] * 44100)]
        assert _level_db(body, peak) > -30
        # the sound has ended: release and reverb have died away before the end of the file
        assert _level_db(audio[-round(wav.END_SILENCE * 44100):], peak) < -50
        with open(os.path.join(out, lab["midi"]), "rb") as f:
            assert parse_midi(f.read()).programs[0] == lab["program"]
    # resuming keeps the files; another folder with the same seed gets the same bytes
    audio_dir = os.path.join(out, "audio")
    before = {p: os.path.getmtime(os.path.join(audio_dir, p)) for p in os.listdir(audio_dir)}
    assert cli.main(argv) == 0 and "0 rendered, 2 kept" in capsys.readouterr().out
    assert before == {p: os.path.getmtime(os.path.join(audio_dir, p)) for p in before}
    twin = str(tmp_path / "twin")
    assert cli.main(["--out", twin] + argv[2:] + ["--workers", "1", "-q"]) == 0
    for sub in ("audio", "midi", "."):
        for name in sorted(os.listdir(os.path.join(out, sub))):
            path = os.path.join(out, sub, name)
            if os.path.isfile(path):
                with open(path, "rb") as a, open(os.path.join(twin, sub, name), "rb") as b:
                    assert a.read() == b.read(), path


@needs_synth
def test_resume_refuses_a_different_corpus(tmp_path, capsys):
    seed, out = _two_music_seed(), str(tmp_path / "c")
    assert cli.main(["--out", out, "--count", "1", "--seed", str(seed), "-q"]) == 0
    assert cli.main(["--out", out, "--count", "1", "--seed", str(seed + 1), "-q"]) == 2
    assert "different corpus" in capsys.readouterr().err
    # a file at an item's path that is not that item is reported, not overwritten
    item = build.plan_item(seed, 0)
    wav.write_wav(os.path.join(out, item.audio_path), np.ones((441, 2), np.int16))
    assert cli.main(["--out", out, "--count", "1", "--seed", str(seed), "-q"]) == 2
    assert "remove it to render it again" in capsys.readouterr().err


@needs_synth
def test_instrument_releases_are_as_declared():
    """The tails the composer leaves rest on these figures; a new SoundFont must re-measure them."""
    synth = render.find_synth()
    for ins in (i for members in FAMILIES.values() for i in members):
        measured = render.release_seconds(synth, ins.program, ins.chord_center, sum(ins.melody) // 2)
        assert measured <= ins.release, (ins.name, measured)
