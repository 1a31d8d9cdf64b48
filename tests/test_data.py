"""The training data pipeline: manifests, decoding and audit, crops with timing, prompts,
deterministic sharding, and the latent cache. Audio files are synthesised in tmp_path."""
import json
import logging
import math
import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from fastaudio.data import (AudioDataset, AudioItem, DataError, LatentDataset, ShardedSampler,
                            audit, build_latent_cache, collate, load_audio, make_prompt,
                            metadata_prompt, read_manifest, scan_folder, write_manifest)

SR = 44100
RAMP_SCALE = 2.0 ** -20  # sample i of a ramp file holds i·2^-20, exact in float32 below 2^24


def write(path, data, sr=SR, subtype=None):
    data = np.asarray(data, dtype=np.float32)
    sf.write(str(path), data if data.ndim == 2 else data[:, None], sr, subtype=subtype)
    return str(path)


def noise(seconds, channels=2, sr=SR, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (int(seconds * sr), channels))


def ramp(path, n, sr=SR):
    """A float WAV whose samples encode their own index (right channel negated)."""
    i = np.arange(n, dtype=np.float64) * RAMP_SCALE
    return write(path, np.stack([i, -i], axis=1), sr, subtype="FLOAT")


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------

def test_read_manifest_jsonl(tmp_path):
    (tmp_path / "sub").mkdir()
    lines = [
        {"path": "sub/a.wav", "caption": "a calm piano", "genre": "jazz", "bpm": 120},
        {"path": "/abs/b.flac", "caption": None, "mood": ["calm", "dark"]},
        {"path": "c.wav"},
    ]
    text = json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n" + json.dumps(lines[2]) + "\n"
    (tmp_path / "sub" / "m.jsonl").write_text(text)
    items = read_manifest(str(tmp_path / "sub" / "m.jsonl"))
    assert [it.path for it in items] == [str(tmp_path / "sub" / "sub" / "a.wav"), "/abs/b.flac",
                                         str(tmp_path / "sub" / "c.wav")]
    assert items[0].caption == "a calm piano" and items[0].metadata == {"genre": "jazz", "bpm": 120}
    assert items[1].caption is None and items[1].metadata == {"mood": ["calm", "dark"]}
    assert items[2].caption is None and items[2].metadata == {}


def test_read_manifest_csv(tmp_path):
    (tmp_path / "m.csv").write_text(
        "\ufeffpath,caption,genre,tempo\n"  # with the byte-order mark spreadsheets write
        "a.wav,\"a calm piano, slow\",jazz,120 BPM\n"
        "\n"
        "/x/b.wav,,,90 BPM\n")
    items = read_manifest(str(tmp_path / "m.csv"))
    assert items[0] == AudioItem(str(tmp_path / "a.wav"), "a calm piano, slow",
                                 {"genre": "jazz", "tempo": "120 BPM"})
    # empty cells are "no value": no caption, no "genre: " in prompts
    assert items[1] == AudioItem("/x/b.wav", None, {"tempo": "90 BPM"})


@pytest.mark.parametrize("name,text,match", [
    ("m.jsonl", '{"path": "a.wav"}\n{"path": "b.wav"}\n{"path": "c.wav",\n', r"m\.jsonl line 3: not valid JSON"),
    ("m.jsonl", '{"path": "a.wav"}\n\n{"caption": "no path"}\n', r"line 3: missing or empty 'path'"),
    ("m.jsonl", '["a.wav"]\n', r"line 1: expected a JSON object"),
    ("m.jsonl", '{"path": "a.wav", "caption": 5}\n', r"line 1: 'caption' must be a string"),
    ("m.csv", "path,caption\na.wav,x\nb.wav,y,extra\n", r"m\.csv line 3: 3 fields, the header has 2"),
    ("m.csv", "file,caption\na.wav,x\n", r"line 1: the header has no 'path' column"),
    ("m.csv", "path,caption\n", r"holds no items"),
    ("m.txt", "a.wav\n", r"unknown manifest format"),
])
def test_read_manifest_errors(tmp_path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match) as e:
        read_manifest(str(tmp_path / name))
    assert name in str(e.value)


def test_read_manifest_missing(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(str(tmp_path / "none.jsonl"))


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_write_manifest_round_trip(tmp_path, ext):
    items = [AudioItem(str(tmp_path / "d" / "a.wav"), "piano", {"genre": "jazz"}),
             AudioItem("/elsewhere/b.wav", None, {"tempo": "90 BPM"})]
    path = str(tmp_path / f"m.{ext}")
    write_manifest(items, path)
    assert read_manifest(path) == items
    assert "d/a.wav" in open(path).read()  # paths under the manifest's folder stay relative
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary left


def test_scan_folder_with_sidecars(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ["b/deep/z.flac", "a.wav", "b/m.ogg", ".hidden/x.wav", "._a.wav"]:
        write(tmp_path / rel, noise(0.05))
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "a.txt").write_text("  a calm piano\n")
    (tmp_path / "b" / "m.json").write_text(json.dumps({"genre": "ambient", "caption": "pads"}))
    (tmp_path / "b" / "deep" / "z.json").write_text(json.dumps({"tempo": "90 BPM"}))
    items = scan_folder(str(tmp_path))
    assert [os.path.relpath(it.path, tmp_path) for it in items] == ["a.wav", "b/deep/z.flac", "b/m.ogg"]
    assert items[0].caption == "a calm piano" and items[0].metadata == {}
    assert items[1].caption is None and items[1].metadata == {"tempo": "90 BPM"}
    assert items[2].caption == "pads" and items[2].metadata == {"genre": "ambient"}

    (tmp_path / "b" / "m.txt").write_text("other caption")
    with pytest.raises(DataError, match="caption in both"):
        scan_folder(str(tmp_path))
    (tmp_path / "b" / "m.txt").unlink()
    (tmp_path / "b" / "deep" / "z.json").write_text("{bad json")
    with pytest.raises(DataError, match=r"z\.json line 1: not valid JSON"):
        scan_folder(str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        scan_folder(str(tmp_path / "nope"))


# --------------------------------------------------------------------------------------------
# Decoding and audit
# --------------------------------------------------------------------------------------------

def test_resample_keeps_frequency(tmp_path):
    n, f0 = 22050, 1000.0
    t = np.arange(n) / 22050
    path = write(tmp_path / "sine.wav", 0.5 * np.sin(2 * np.pi * f0 * t), sr=22050)
    audio, info = load_audio(path, sample_rate=SR)
    assert audio.dtype == torch.float32 and audio.shape[0] == 2
    assert abs(audio.shape[1] - 2 * n) <= 2
    assert torch.equal(audio[0], audio[1])  # mono duplicated
    assert info.actions == ["resampled 22050 → 44100 Hz", "mono duplicated to stereo"]
    spectrum = np.abs(np.fft.rfft(audio[0].numpy() * np.hanning(audio.shape[1])))
    peak_hz = np.argmax(spectrum) * SR / audio.shape[1]
    assert abs(peak_hz - f0) < 2.0
    # a real resampler keeps the amplitude (no aliasing/zero-stuffing artefacts)
    mid = audio[0, 1000:-1000]
    assert abs(mid.abs().max().item() - 0.5) < 0.01


def test_channel_conversions(tmp_path):
    data = noise(0.1, channels=6)
    audio, info = load_audio(write(tmp_path / "six.wav", data))
    assert np.allclose(audio.numpy(), data[:, :2].T, atol=1e-4)
    assert info.actions == ["kept the first 2 of 6 channels"]
    audio, info = load_audio(write(tmp_path / "st.wav", noise(0.1)))
    assert info.actions == [] and audio.shape == (2, 4410)


def make_audit_files(tmp_path):
    files = {}
    files["good"] = write(tmp_path / "good.wav", noise(1.5))
    good_flac = write(tmp_path / "tmp.flac", noise(1.5, seed=1))
    raw = bytearray(open(good_flac, "rb").read())
    for i in range(200, len(raw)):  # header intact, frames garbage
        raw[i] = (raw[i] * 7 + 13) % 256
    files["corrupt"] = str(tmp_path / "corrupt.flac")
    open(files["corrupt"], "wb").write(bytes(raw))
    os.remove(good_flac)
    files["empty"] = str(tmp_path / "empty.wav")
    open(files["empty"], "wb").close()
    files["text"] = str(tmp_path / "text.wav")
    open(files["text"], "w").write("this is not audio at all")
    files["short"] = write(tmp_path / "short.wav", noise(0.2))
    files["rate"] = write(tmp_path / "rate.wav", noise(1.5, sr=22050), sr=22050)
    files["mono"] = write(tmp_path / "mono.wav", noise(1.5, channels=1))
    nan = noise(1.5)
    nan[1000, 0] = np.nan
    files["nan"] = write(tmp_path / "nan.wav", nan, subtype="FLOAT")
    files["missing"] = str(tmp_path / "missing.wav")
    return files


def test_audit_classifies_and_skips(tmp_path, caplog):
    files = make_audit_files(tmp_path)
    items = [AudioItem(p) for p in files.values()]
    with caplog.at_level(logging.WARNING, logger="fastaudio.data"):
        report = audit(items, sample_rate=SR, min_seconds=1.0, on_bad="skip")
    status = {os.path.basename(e.item.path): (e.status, e.note) for e in report.entries}
    assert status["good.wav"] == ("ok", "")
    assert status["rate.wav"] == ("converted", "resampled 22050 → 44100 Hz")
    assert status["mono.wav"] == ("converted", "mono duplicated to stereo")
    bad = {k: v[1] for k, v in status.items() if v[0] == "bad"}
    assert set(bad) == {"corrupt.flac", "empty.wav", "text.wav", "short.wav", "nan.wav", "missing.wav"}
    assert "corrupt" in bad["corrupt.flac"]
    assert "empty" in bad["empty.wav"]
    assert "not a readable audio file" in bad["text.wav"]
    assert "too short" in bad["short.wav"]
    assert "NaN" in bad["nan.wav"]
    assert "not found" in bad["missing.wav"]
    assert [os.path.basename(it.path) for it in report.items] == ["good.wav", "rate.wav", "mono.wav"]
    summary = str(report)
    assert "1 ok, 2 converted, 6 bad" in summary
    for name in list(bad) + ["rate.wav", "mono.wav"]:
        assert name in summary
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 6 and all(sum(name in m for m in skipped) == 1 for name in bad)

    with pytest.raises(DataError) as e:
        audit(items, sample_rate=SR, min_seconds=1.0, on_bad="fail")
    assert "6 of 9 audio files cannot be used" in str(e.value)
    assert all(name in str(e.value) for name in bad)

    report = audit([AudioItem(files[k]) for k in ("good", "rate", "mono")], convert=False,
                   on_bad="skip", num_workers=2)
    assert [e.status for e in report.entries] == ["ok", "bad", "bad"]
    assert "convert=False" in report.entries[1].note
    # without a policy the audit only describes; usable() applies one to the same report
    described = audit(items, sample_rate=SR, min_seconds=1.0)
    assert len(described.bad) == 6
    assert [os.path.basename(it.path) for it in described.usable("skip")] == \
        ["good.wav", "rate.wav", "mono.wav"]
    with pytest.raises(DataError, match="6 of 9"):
        described.usable("fail")
    with pytest.raises(DataError, match="on_bad"):
        audit(items, on_bad="ignore")
    with pytest.raises(DataError, match="none of the 2"):
        audit([AudioItem(files["empty"]), AudioItem(files["text"])], on_bad="skip")


# --------------------------------------------------------------------------------------------
# Crops, timing, prompts, determinism
# --------------------------------------------------------------------------------------------

def crop_offset(audio):
    return int(round(audio[0, 0].item() / RAMP_SCALE))


def test_crops_match_timing_and_content(tmp_path):
    n = 10 * SR + SR // 2  # 10.5 s → seconds_total 11
    item = AudioItem(ramp(tmp_path / "ramp.wav", n))
    size = 3 * SR
    ds = AudioDataset([item], sample_size=size, seed=3)
    offsets = set()
    for epoch in range(12):
        s = ds[(epoch, 0)]
        audio = s["audio"]
        assert audio.shape == (2, size) and audio.dtype == torch.float32
        offset = crop_offset(audio)
        expect = (offset + torch.arange(size, dtype=torch.float64)) * RAMP_SCALE
        assert torch.equal(audio[0].double(), expect) and torch.equal(audio[1].double(), -expect)
        assert 0 <= offset <= n - size
        assert s["seconds_start"] == offset // SR == math.floor(offset / SR)
        assert s["seconds_total"] == 11
        assert s["padding_mask"].dtype == torch.bool and s["padding_mask"].all()
        offsets.add(offset)
    assert len(offsets) == 12  # uniform over ~330 k positions: all different
    assert AudioDataset([item], size, random_crop=False)[0]["seconds_start"] == 0
    assert crop_offset(AudioDataset([item], size, random_crop=False)[0]["audio"]) == 0


def test_short_file_padded_and_masked(tmp_path):
    data = noise(1.0)
    item = AudioItem(write(tmp_path / "short.wav", data, subtype="FLOAT"), "short one")
    s = AudioDataset([item], sample_size=2 * SR)[0]
    assert torch.equal(s["audio"][:, :SR], torch.from_numpy(data.T.astype(np.float32)))
    assert not s["audio"][:, SR:].any()
    assert s["padding_mask"][:SR].all() and not s["padding_mask"][SR:].any()
    assert (s["seconds_start"], s["seconds_total"], s["prompt"]) == (0, 1, "short one")
    assert s["path"] == item.path


def test_resampled_file_is_cropped_at_model_rate(tmp_path):
    item = AudioItem(write(tmp_path / "r.wav", noise(2.0, sr=22050), sr=22050))
    s = AudioDataset([item], sample_size=SR)[0]
    assert s["seconds_total"] == 2 and s["padding_mask"].all() and s["seconds_start"] in (0, 1)


def test_prompts_both_styles():
    full = AudioItem("x.wav", "a calm piano", {"genre": "jazz", "tempo": "120 BPM", "bpm": 120,
                                               "mood": ["calm", "dark"], "empty": ""})
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        p = make_prompt(full, rng, "metadata")
        parts = p.split(", ")
        assert p and all(":" in part or part == "dark" for part in parts)
        seen.add(p)
        assert "empty" not in p
    assert len(seen) > 20  # random subsets in random order
    assert any(p.startswith("tempo: 120 BPM") for p in seen) and any(p.startswith("genre") for p in seen)
    assert make_prompt(full, rng, "caption") == "a calm piano"
    mixed = [make_prompt(full, random.Random(i), "mixed") for i in range(400)]
    frac = sum(p == "a calm piano" for p in mixed) / len(mixed)
    assert 0.4 < frac < 0.6
    assert make_prompt(AudioItem("x", None, {"genre": "jazz"}), rng, "mixed") == "genre: jazz"
    assert make_prompt(AudioItem("x", "only caption"), rng, "mixed") == "only caption"
    assert make_prompt(AudioItem("x"), rng, "mixed") == ""
    assert make_prompt(AudioItem("x", "c"), rng, "metadata") == ""
    assert metadata_prompt({"a": 1}, rng) == "a: 1"
    with pytest.raises(DataError, match="prompt style"):
        make_prompt(full, rng, "tags")


def test_dataset_deterministic_and_resumable(tmp_path):
    items = [AudioItem(ramp(tmp_path / f"r{i}.wav", (4 + i) * SR), f"caption {i}",
                       {"genre": "jazz", "tempo": f"{100 + i} BPM", "key": "D minor"})
             for i in range(3)]

    def draw(ds, epoch):
        ds.set_epoch(epoch)
        return [(crop_offset(s["audio"]), s["prompt"]) for s in (ds[i] for i in range(len(ds)))]

    a = AudioDataset(items, sample_size=SR, seed=7)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    first = draw(a, 0)
    b = AudioDataset(items, sample_size=SR, seed=7)
    torch.manual_seed(2), random.seed(2), np.random.seed(2)  # global RNG state plays no part
    assert draw(b, 0) == first
    later = draw(a, 1)
    assert later != first
    assert draw(b, 1) == later and draw(b, 0) == first  # epochs replay exactly
    assert [b[(1, i)]["prompt"] for i in range(3)] == [p for _, p in later]
    assert draw(AudioDataset(items, sample_size=SR, seed=8), 0) != first
    # the prompt stream is separate: another style leaves the crops where they were
    c = AudioDataset(items, sample_size=SR, seed=7, prompt_style="caption")
    assert [o for o, _ in draw(c, 0)] == [o for o, _ in first]

    batch = collate([a[0], a[1]])
    assert batch["audio"].shape == (2, 2, SR) and batch["padding_mask"].shape == (2, SR)
    assert batch["seconds_start"].dtype == torch.long and batch["seconds_total"].tolist() == [4, 5]
    assert isinstance(batch["prompt"], list) and isinstance(batch["path"], list)


def test_dataloader_workers_follow_sampler_epoch(tmp_path):
    items = [AudioItem(ramp(tmp_path / f"r{i}.wav", 2 * SR)) for i in range(4)]
    ds = AudioDataset(items, sample_size=SR // 4, seed=1)
    sampler = ShardedSampler(len(ds), seed=5, yield_epoch=True)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=2,
                        persistent_workers=True)
    seen = []
    for epoch in range(2):
        for batch in loader:
            seen += [(epoch, p, crop_offset(a[None])) for p, a in zip(batch["path"], batch["audio"][:, 0])]
    expect = []
    for epoch in range(2):
        for i in sampler.indices(epoch):
            expect.append((epoch, items[i].path, crop_offset(ds.sample(i, epoch)["audio"])))
    assert seen == expect


# --------------------------------------------------------------------------------------------
# Sharded sampler
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,replicas", [(11, 2), (10, 3), (7, 7)])
def test_sharded_sampler_union_equals_single_process(n, replicas):
    for epoch in (0, 1):
        single = ShardedSampler(n, seed=4)
        single.set_epoch(epoch)
        order = list(single)
        assert sorted(order) == list(range(n))
        ranks = []
        for r in range(replicas):
            s = ShardedSampler(n, num_replicas=replicas, rank=r, seed=4)
            s.set_epoch(epoch)
            ranks.append(list(s))
            assert len(ranks[-1]) == len(s) == n // replicas
        interleaved = [ranks[r][k] for k in range(n // replicas) for r in range(replicas)]
        assert interleaved == order[: replicas * (n // replicas)]
    assert list(ShardedSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    padded = [list(ShardedSampler(5, 2, r, drop_last=False, shuffle=False)) for r in range(2)]
    assert padded == [[0, 2, 4], [1, 3, 0]]
    e0, e1 = ShardedSampler(50, seed=4).global_order(0), ShardedSampler(50, seed=4).global_order(1)
    assert e0 != e1


def test_sharded_sampler_resume():
    s = ShardedSampler(10, num_replicas=2, rank=1, seed=3)
    full = [list(ShardedSampler(10, 2, 1, seed=3).indices(e)) for e in range(3)]
    it = iter(s)
    got = [next(it) for _ in range(2)]
    state = s.state_dict()
    assert state["epoch"] == 0 and state["position"] == 2
    resumed = ShardedSampler(10, num_replicas=2, rank=1, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(0)  # the restored epoch: keeps the position
    assert got + list(resumed) == full[0]
    # finishing the epoch, then iterating again moves on to the next epoch
    assert list(resumed) == full[1]
    end = resumed.state_dict()
    again = ShardedSampler(10, 2, 1, seed=3)
    again.load_state_dict(end)
    assert (again.epoch, again.position) == (2, 0) and list(again) == full[2]
    # an explicit position (what a prefetching DataLoader's consumer actually trained on)
    s2 = ShardedSampler(10, 2, 1, seed=3)
    s2.load_state_dict(s.state_dict(position=4))
    assert list(s2) == full[0][4:]
    # a different process count continues at the same global position
    one = ShardedSampler(10, seed=3)
    one.load_state_dict(state)  # 2 ranks × 2 consumed = global position 4
    assert list(one) == one.global_order(0)[4:]
    with pytest.raises(DataError, match="seed"):
        ShardedSampler(10, 2, 1, seed=4).load_state_dict(state)
    with pytest.raises(DataError, match="rank"):
        ShardedSampler(10, 2, 2)


# --------------------------------------------------------------------------------------------
# Latent cache
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_vae():
    import fastaudio
    torch.manual_seed(0)
    return fastaudio.build_model("tiny").vae.eval()


@pytest.fixture
def one_thread():
    # The tiny VAE's convs are far too small to share out; on a busy 2-core machine a second
    # intra-op thread made them ~50x slower. Restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_latent_cache_round_trip_and_resume(tmp_path, tiny_vae, one_thread):
    size = 8 * 1024  # 8 latent frames
    items = [AudioItem(write(tmp_path / "a.wav", noise(0.6, seed=1)), "first", {"genre": "jazz"}),
             AudioItem(write(tmp_path / "b.wav", noise(0.1, seed=2)), None, {"tempo": "90 BPM"}),
             AudioItem(write(tmp_path / "c.wav", noise(0.5, seed=3)), "third")]
    ds = AudioDataset(items, sample_size=size, seed=2)
    out = tmp_path / "cache"
    summary = build_latent_cache(ds, tiny_vae, str(out), crops_per_item=2, shard_size=4,
                                 batch_size=3, dtype="float32", progress=False)
    assert (summary.rows, summary.shards, summary.built, summary.skipped) == (6, 2, 2, 0)
    assert sorted(os.listdir(out)) == ["index.json", "latents-00000.safetensors",
                                       "latents-00001.safetensors"]
    lat = LatentDataset(str(out), seed=0)
    assert len(lat) == 6
    sources = [ds.sample(*divmod(row, 2)) for row in range(6)]
    with torch.inference_mode():
        wants = tiny_vae.encode(torch.stack([s["audio"] for s in sources])).float()
    for row, (src, want) in enumerate(zip(sources, wants)):
        item = row // 2
        got = lat[row]
        assert got["latents"].shape == (8, 8) and got["latents"].dtype == torch.float32
        torch.testing.assert_close(got["latents"], want, rtol=1e-4, atol=1e-5)
        assert got["seconds_start"] == src["seconds_start"]
        assert got["seconds_total"] == src["seconds_total"]
        assert got["path"] == items[item].path
        real = math.ceil(int(src["padding_mask"].sum()) / 1024)
        assert got["padding_mask"].tolist() == [j < real for j in range(8)]
    assert lat[2]["padding_mask"].tolist() == [True] * 5 + [False] * 3  # 0.1 s = 4410 samples
    assert lat[2]["prompt"] == "tempo: 90 BPM"
    batch = collate([lat[0], lat[1]])
    assert batch["latents"].shape == (2, 8, 8) and batch["padding_mask"].dtype == torch.bool
    # crops of a long file differ between its rows; prompts are remade per epoch, reproducibly
    assert lat[0]["seconds_start"] != lat[1]["seconds_start"] or \
        not torch.equal(lat[0]["latents"], lat[1]["latents"])
    lat[0]["latents"].mul_(0)  # a sample is the caller's to change, not a view of the cache
    assert lat[0]["latents"].abs().sum() > 0
    lat.set_epoch(3)
    assert lat[0]["prompt"] == LatentDataset(str(out))[(3, 0)]["prompt"]

    # resume: the last shard is rebuilt identically, the first kept
    last = out / "latents-00001.safetensors"
    before = last.read_bytes()
    last.unlink()
    with pytest.raises(DataError, match="shard missing"):
        LatentDataset(str(out))
    summary = build_latent_cache(ds, tiny_vae, str(out), crops_per_item=2, shard_size=4,
                                 batch_size=3, dtype="float32", progress=False)
    assert (summary.built, summary.skipped) == (1, 1)
    assert last.read_bytes() == before
    # another dataset seed (other crops) must not be mixed into this folder
    with pytest.raises(DataError, match="other data"):
        build_latent_cache(AudioDataset(items, size, seed=3), tiny_vae, str(out),
                           crops_per_item=2, shard_size=4, dtype="float32", progress=False)

    half = build_latent_cache(ds, tiny_vae, str(tmp_path / "half"), shard_size=2, progress=False)
    lat16 = LatentDataset(str(tmp_path / "half"))
    assert half.shards == 2 and len(lat16) == 3
    torch.testing.assert_close(lat16[1]["latents"], lat[2]["latents"], rtol=2e-3, atol=2e-3)
    # a damaged shard (not written by us, e.g. a disk fault) is rebuilt, with a warning
    first = tmp_path / "half" / "latents-00000.safetensors"
    row0 = lat16[0]["latents"]
    damaged = first.read_bytes()[:100]
    first.unlink()  # a new inode: lat16's memory map of the old file stays valid
    first.write_bytes(damaged)
    with pytest.raises(DataError, match="corrupt latent cache shard"):
        LatentDataset(str(tmp_path / "half"))
    again = build_latent_cache(ds, tiny_vae, str(tmp_path / "half"), shard_size=2, progress=False)
    assert (again.built, again.skipped) == (1, 1)
    assert torch.equal(LatentDataset(str(tmp_path / "half"))[0]["latents"], row0)


def test_latent_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        LatentDataset(str(tmp_path / "none"))
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="no index.json"):
        LatentDataset(str(tmp_path / "c"))
    (tmp_path / "c" / "index.json").write_text("{trunc")
    with pytest.raises(DataError, match="unreadable latent cache index"):
        LatentDataset(str(tmp_path / "c"))
    (tmp_path / "c" / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a fastaudio latent cache"):
        LatentDataset(str(tmp_path / "c"))
