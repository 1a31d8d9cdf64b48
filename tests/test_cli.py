"""The fastaudio command: files it writes, and one-line errors for bad arguments."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from fastaudio.cli import main

FAST = ["--preset", "tiny", "--steps", "2"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("ext, fmt", [("wav", "WAV"), ("flac", "FLAC")])
def test_generate_writes_a_readable_file(tmp_path, capsys, ext, fmt):
    path = tmp_path / f"out.{ext}"
    code, out, err = run(capsys, "generate", "a calm piano", "--seconds", "1.25", "-o", str(path),
                         "--seed", "3", *FAST)
    assert code == 0, err
    data, sr = sf.read(path)
    info = sf.info(path)
    assert info.format == fmt and sr == 44100 and data.shape == (round(1.25 * 44100), 2)
    assert np.isfinite(data).all()
    assert "timing:" in out and "RANDOM weights" in err
    assert not [f for f in os.listdir(tmp_path) if f != path.name]  # no temporary left behind


def test_batch_writes_one_file_per_take(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--seconds", "0.5", "-o", str(tmp_path / "t.wav"),
                       "--batch", "2", *FAST)
    assert code == 0, err
    assert sorted(os.listdir(tmp_path)) == ["t-0.wav", "t-1.wav"]


@pytest.mark.parametrize("args, match", [
    (["--seconds", "0"], "--seconds must be > 0"),
    (["--seconds", "-2"], "--seconds must be > 0"),
    (["--seconds", "abc"], "must be a number"),
    (["--seconds", "500"], "past this model's limit"),
    (["--seconds", "1", "--steps", "0"], "--steps must be >= 1"),
    (["--seconds", "1", "--sampler", "magic"], "unknown sampler 'magic'"),
    (["--seconds", "1", "--format", "mp4"], "invalid choice"),
])
def test_bad_arguments_give_one_line(tmp_path, capsys, args, match):
    out = tmp_path / "o.wav"
    code, _, err = run(capsys, "generate", "x", "-o", str(out), "--preset", "tiny", *args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("fastaudio: error:")]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    assert not out.exists()


def test_unknown_model_unwritable_and_existing_outputs(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "x", "--seconds", "1", "-o", str(tmp_path / "a.wav"),
                       "--model", str(tmp_path / "missing"))
    assert code == 2 and "model path not found" in err
    code, _, err = run(capsys, "generate", "x", "--seconds", "1", "-o", "/nonexistent/dir/a.wav")
    assert code == 2 and "does not exist" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if os.access(ro, os.W_OK):  # running as root: permissions do not bind
        pytest.skip("permission bits do not apply to this user")
    code, _, err = run(capsys, "generate", "x", "--seconds", "1", "-o", str(ro / "a.wav"), *FAST)
    assert code == 2 and "not writable" in err


def test_existing_output_needs_overwrite(tmp_path, capsys):
    path = tmp_path / "keep.wav"
    path.write_bytes(b"precious")
    code, _, err = run(capsys, "generate", "x", "--seconds", "0.5", "-o", str(path), *FAST)
    assert code == 2 and "exists" in err and path.read_bytes() == b"precious"
    code, _, err = run(capsys, "generate", "x", "--seconds", "0.5", "-o", str(path), "--overwrite", *FAST)
    assert code == 0 and sf.info(path).frames == 22050


def test_info_lists_model_and_backends(capsys):
    code, out, _ = run(capsys, "info", "--preset", "tiny")
    assert code == 0
    assert "attention backends:" in out and "sdpa" in out and "unet" in out and "M parameters" in out


def test_profile_writes_a_chrome_trace(tmp_path, capsys):
    trace = tmp_path / "trace.json"
    code, out, err = run(capsys, "profile", "--preset", "tiny", "--seconds", "0.5", "--steps", "2",
                         "--trace", str(trace))
    assert code == 0, err
    assert trace.exists() and trace.stat().st_size > 0
    assert "Self CPU" in out and "stages:" in out


def test_console_script_runs_without_traceback(tmp_path):
    out = tmp_path / "o.wav"
    proc = subprocess.run([sys.executable, "-m", "fastaudio.cli", "generate", "x", "--seconds", "-1",
                           "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fastaudio: error:") and "Traceback" not in proc.stderr
