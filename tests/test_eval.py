"""Evaluation metrics against analytic cases, and an end-to-end run on the tiny preset."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from fastaudio.eval.attributes import (FamilyClassifier, KeyTemplates, chroma, chroma_agreement,
                                       estimate_tempo, frame_chroma, parse_key, tempo_correct)
from fastaudio.eval.metrics import (detect_end, frechet_distance, mean_kl, mrstft_distance, si_sdr,
                                    timing_table)

SR = 44100


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) * 2.0 + np.array([1.0, 0.0, -1.0])
    # N(0, I) vs N(μ, 4I): |μ|² + tr(I + 4I − 2·2I) = 2 + 3
    assert abs(frechet_distance(a, b) - 5.0) < 0.25
    assert frechet_distance(a, a) < 1e-8
    scipy = pytest.importorskip("scipy.linalg")
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) @ rng.normal(size=(4, 4))
    ca, cb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    want = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy.sqrtm(ca @ cb).real)
    assert abs(frechet_distance(x, y) - want) < 1e-6 * max(1, abs(want))


def test_kl_si_sdr_and_mrstft():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.9, 0.1]])
    want = 0.5 * (0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75))
    assert abs(mean_kl(p, q) - want) < 1e-9
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 44100, generator=g)
    noise = torch.randn(2, 44100, generator=g) * 0.1
    assert abs(float(si_sdr(3.0 * ref + noise * 3.0, ref)) - 20.0) < 0.2  # scale-invariant: 20 dB
    assert mrstft_distance(ref, ref) < 1e-6 and mrstft_distance(ref + noise, ref) > 0.01


def test_detect_end_and_timing_table():
    t = np.arange(int(5 * SR)) / SR
    audio = np.where(t < 2.0, 0.5 * np.sin(2 * np.pi * 440 * t), 1e-5 * np.sin(2 * np.pi * 50 * t))
    x = torch.tensor(np.stack([audio, audio]), dtype=torch.float32)
    assert abs(detect_end(x, SR) - 2.0) <= 0.05
    rows = timing_table([2, 2, 4], [2.1, 1.7, 6.0])
    assert rows[0]["requested_s"] == 2 and rows[0]["within_1s"] == 1.0 and rows[1]["within_1s"] == 0.0
    assert abs(rows[0]["abs_error_s"] - 0.2) < 1e-9


def _clicks(bpm, seconds=8.0):
    x = np.zeros(int(seconds * SR))
    period = int(SR * 60 / bpm)
    burst = np.exp(-np.arange(2000) / 200.0) * np.sin(2 * np.pi * 1000 * np.arange(2000) / SR)
    for start in range(0, len(x) - 2000, period):
        x[start:start + 2000] += burst
    return torch.tensor(np.stack([x, x]), dtype=torch.float32)


@pytest.mark.parametrize("bpm", [72, 100, 135])
def test_tempo_from_onset_autocorrelation(bpm):
    est = estimate_tempo(_clicks(bpm), SR)
    assert tempo_correct(est, bpm, 0.04, octaves=True), est
    assert not tempo_correct(bpm * 1.2, bpm, 0.08)


def _chord_audio(tonic_pc, mode, seconds=3.0):
    third = 3 if mode == "minor" else 4
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    for step, (root, q) in enumerate([(0, third), (5, third if mode == "major" else 3), (7, 4)]):
        seg = (t >= step) & (t < step + 1)
        for interval in (0, q, 7):
            f = 220 * 2 ** ((tonic_pc - 9 + root + interval) / 12)
            x[seg] += np.sin(2 * np.pi * f * t[seg])
    return torch.tensor(np.stack([x, x]) * 0.1, dtype=torch.float32)


def test_key_templates_fitted_on_examples_recover_the_key():
    names = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
    train = [(pc, m) for pc in (0, 5, 9) for m in ("major", "minor")]
    tpl = KeyTemplates.fit([chroma(_chord_audio(pc, m), SR) for pc, m in train],
                           [f"{names[pc]} {m}" for pc, m in train])
    for pc, m in [(2, "minor"), (7, "major"), (10, "minor")]:
        assert parse_key(tpl.predict(chroma(_chord_audio(pc, m), SR))) == (pc, m)


def _melody(semitones, seconds_per_note=0.5, rng=None):
    """Notes (semitones from A3 = 220 Hz) with two harmonics, one after another, stereo."""
    rng = rng or np.random.default_rng()
    n = int(seconds_per_note * SR)
    t = np.arange(n) / SR
    notes = []
    for s in semitones:
        f = 220 * 2 ** (s / 12)
        notes.append(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) + 0.4 * np.sin(4 * np.pi * f * t))
    x = 0.2 * np.concatenate(notes)
    return torch.tensor(np.stack([x, x]), dtype=torch.float32)


def test_frame_chroma_finds_the_sounding_pitch_class():
    x = _melody([0, 3, 7])  # A, C, E for half a second each
    c = frame_chroma(x, SR)
    hop_s = 2048 / SR
    for k, pc in enumerate((9, 0, 4)):  # the middle of each note, far from its neighbours' windows
        frame = int(round((0.5 * k + 0.25) / hop_s))
        assert int(np.argmax(c[frame])) == pc, (k, c[frame])
    # the whole-clip chroma is the frames' sum, normalised
    np.testing.assert_allclose(chroma(x, SR), c.sum(0) / c.sum(), rtol=1e-5)  # float32 sums


def test_chroma_agreement_sees_notes_not_levels():
    rng = np.random.default_rng()
    notes = list(rng.integers(0, 24, size=9))
    x = _melody(notes, rng=rng)
    assert chroma_agreement(x, x, SR) > 0.999
    assert chroma_agreement(0.3 * x, x, SR) > 0.999  # a level change keeps every note
    # the same rhythm a tritone away keeps none of them; so does noise with the clip's envelope
    shifted = _melody([n + 6 for n in notes], rng=rng)
    assert chroma_agreement(shifted, x, SR) < 0.2
    noise = torch.tensor(rng.normal(size=x.shape), dtype=torch.float32) * x.abs().mean()
    assert abs(chroma_agreement(noise, x, SR)) < 0.2
    # half the notes kept: in between
    half = _melody([n if k % 2 == 0 else n + 6 for k, n in enumerate(notes)], rng=rng)
    assert 0.25 < chroma_agreement(half, x, SR) < 0.85
    assert chroma_agreement(x, torch.zeros_like(x), SR) is None  # nothing to keep


def test_latent_features_use_only_the_clip_frames():
    """Frames past the clip (the padded tail) do not change the features; frames inside do, and
    the statistics equal a direct computation."""
    from fastaudio.eval.attributes import latent_features
    z = torch.randn(1, 3, 20, dtype=torch.float64)
    f = latent_features(z, 7)
    tail = z.clone()
    tail[..., 7:] = 100.0
    assert np.allclose(latent_features(tail, 7), f)
    head = z.clone()
    head[..., 2] += 1.0
    assert not np.allclose(latent_features(head, 7), f)
    zz = z[0, :, :7]
    want = torch.cat([zz.mean(1), zz.std(1, unbiased=False), (zz[:, 1:] - zz[:, :-1]).abs().mean(1)])
    assert np.allclose(f, want.numpy())


def test_family_classifier_separates_separable_data():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(4, 1, (30, 5))])
    y = ["a"] * 30 + ["b"] * 30
    clf = FamilyClassifier.fit(x, y)
    assert clf.predict(np.array([[0.0] * 5, [4.0] * 5])) == ["a", "b"]
    assert np.allclose(clf.probabilities(x).sum(1), 1)


@pytest.mark.slow
def test_evaluate_end_to_end_on_the_tiny_preset(tmp_path):
    from fastaudio import build_model
    from fastaudio.data.manifest import AudioItem
    from fastaudio.eval.run import References, evaluate, format_markdown, format_timing
    from fastaudio.pipeline import StableAudio
    items = []
    for k, (pc, mode, bpm, fam) in enumerate([(2, "minor", 72, "piano"), (7, "major", 135, "organ"),
                                              (0, "major", 100, "piano"), (9, "minor", 90, "organ")]):
        audio = _chord_audio(pc, mode, 1.4) + 0.3 * _clicks(bpm, 1.4)
        path = tmp_path / f"{k}.wav"
        sf.write(path, audio.T.numpy(), SR)
        names = ["C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B"]
        items.append(AudioItem(str(path), f"{fam} in {names[pc]} {mode}", {},
                               {"kind": "music", "family": fam, "bpm": bpm, "key": f"{names[pc]} {mode}",
                                "tempo_class": "slow" if bpm < 85 else "medium" if bpm <= 120 else "fast",
                                "duration": 1.4}))
    pipe = StableAudio(build_model("tiny", seed=0), device="cpu", dtype="fp32")
    refs = References.fit(items, pipe.model.conditioner.clap, SR, vae=pipe.model.vae,
                          window=pipe.config.window_seconds)
    assert refs.latent_family is not None and refs.latent_vae is pipe.model.vae
    res = evaluate(pipe, items[:2], refs, str(tmp_path / "out"), steps=2, items=2,
                   timing_seconds=(1.0,), timing_prompts=1, vae_items=1)
    for key in ("fd_clap", "fd_mel", "clap_score", "kl_family", "vae_si_sdr_db", "vae_mrstft",
                "fd_clap_vae", "fd_mel_vae", "clap_score_vae"):
        assert math.isfinite(res[key]), key
    for rates in (res["follow"], res["follow_vae"]):
        assert rates["family_latent_ok"] is not None and rates["family_ok"] is not None
    # another model's latents live in another space: the latent measure does not apply to it
    other = StableAudio(build_model("tiny", seed=1), device="cpu", dtype="fp32")
    res_other = evaluate(other, items[:2], refs, None, steps=1, items=2, timing_seconds=(1.0,),
                         timing_prompts=1, vae_items=1, round_trips=False)
    assert res_other["follow"]["family_latent_ok"] is None and "follow_vae" not in res_other
    assert res["vae_end_error_s"] is None  # a 1.4 s clip in the tiny preset's 1.49 s window: no tail
    assert res["follow_real"]["key_ok"] == 1.0  # the measures work on the real audio
    assert len(res["timing"]) == 1 and res["timing"][0]["n"] == 1
    table = format_markdown({"tiny": res, "other": res_other})
    assert "| FD (CLAP embeddings)" in table and "real audio through the VAE" in table
    assert "read off the latents" in table and format_timing({"tiny": res})
    widths = {line.count("|") for line in table.splitlines()}
    assert widths == {7}, widths  # measure, 2 models, real, via VAE, chance


def test_context_sensitivity_sees_whether_the_unet_uses_its_context():
    """A random U-Net reacts to its context; the same U-Net with every cross-attention output
    projection zeroed cannot (the probe then reads exactly 0)."""
    from fastaudio import build_model
    from fastaudio.eval.run import context_sensitivity
    torch.manual_seed(0)
    model = build_model("tiny", seed=3)
    prompts, seconds = ["a fast piano", "a slow organ in D minor"], [1.0, 2.0]
    live = context_sensitivity(model, prompts, seconds)
    # a freshly initialised U-Net reacts only weakly (measured ~1e-4 to 1e-3), but it does react
    assert live["prompt"] > 1e-5 and live["duration"] > 1e-5, live
    cross = [m for n, m in model.unet.named_modules() if n.endswith("cross_attention")]
    assert cross
    with torch.no_grad():
        for m in cross:
            for p in m.attention.to_out.parameters():
                p.zero_()
    dead = context_sensitivity(model, prompts, seconds)
    assert dead == {"prompt": 0.0, "duration": 0.0}, dead


def test_timing_seconds_argument(capsys):
    from fastaudio.cli import main
    from fastaudio.eval.cli import _seconds_list
    assert _seconds_list("4,6.5,11") == (4.0, 6.5, 11.0)
    for bad in ("4,x", "0,5", "-3", "nan", "inf,2"):
        code = main(["eval", "--heldout", "h.jsonl", "--train", "t.jsonl", "--out", "o",
                     "--timing-seconds", bad])
        assert code != 0 and "timing-seconds" in capsys.readouterr().err, bad


class _StubVAE:
    """encode = identity; decode adds a constant hum (``floor``) - the failure the first shipped VAE had."""
    def __init__(self, floor):
        self.floor = floor

    def encode(self, x):
        return x

    def decode(self, z):
        t = torch.arange(z.shape[-1], dtype=z.dtype)
        return z + self.floor * torch.sin(2 * math.pi * 220 * t / SR)


def test_vae_bounds_find_a_decoder_that_fills_silence():
    from fastaudio.eval.run import vae_bounds
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    clips = [0.5 * torch.randn(2, int(SR * s), generator=g) for s in (0.8, 1.7, 2.6)]  # in a 4 s window
    clean, hum = vae_bounds(_StubVAE(0.0), clips, SR, 4.0), vae_bounds(_StubVAE(0.05), clips, SR, 4.0)
    assert clean["vae_end_error_s"] < 0.06 and clean["vae_end_within_1s"] == 1.0, clean
    assert clean["vae_mrstft"] < 1e-3 and clean["vae_si_sdr_db"] > 60, clean
    assert clean["vae_chroma_agreement"] > 0.999, clean  # an exact round trip keeps every note
    # white noise has no notes: unrelated clips and a hummed round trip score near zero
    assert abs(clean["vae_chroma_agreement_unrelated"]) < 0.3, clean
    # a hum 20 dB under the music: the -40 dB detector hears sound to the window's end
    assert hum["vae_end_error_s"] > 1.3 and hum["vae_end_within_1s"] < 0.5, hum
    long_clip = vae_bounds(_StubVAE(0.0), [0.5 * torch.randn(2, int(SR * 3.5), generator=g)], SR, 4.0)
    assert long_clip["vae_end_error_s"] is None  # no room for a silent tail: not counted


def test_timing_seconds_past_the_window_are_refused(tmp_path, capsys):
    from fastaudio import build_model, save_model
    from fastaudio.cli import main
    folder = tmp_path / "tiny"
    save_model(build_model("tiny", seed=0), str(folder))  # a 1.49 s window
    code = main(["eval", "--model", str(folder), "--heldout", "h.jsonl", "--train", "t.jsonl",
                 "--out", str(tmp_path / "out"), "--timing-seconds", "1,4"])
    err = capsys.readouterr().err
    assert code != 0 and "[4.0]" in err and "window" in err, err
    assert not (tmp_path / "out").exists()
    from fastaudio.eval.run import EvalError, check_timing_seconds
    check_timing_seconds((1.0, 1.4), 1.49)  # the API refuses too, instead of skipping the row
    with pytest.raises(EvalError, match=r"\[4\.0\]"):
        check_timing_seconds((1.0, 4.0), 1.49)
