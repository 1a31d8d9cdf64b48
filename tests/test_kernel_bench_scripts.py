"""The prepared device script (benchmarks/gpu_session.sh) and the kernel benchmark's Python parts,
checked on the CPU: a GPU session is too short and too rare to find a typo in it."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.sh")


def test_gpu_session_script_parses():
    out = subprocess.run(["bash", "-n", SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_gpu_session_fits_one_call():
    """The whole session is capped at 9 minutes (every section's limit is cut to what is left
    of it): one call of the device tool (10 minutes at most), in a 15-minute device session
    that also pays for the machine's start."""
    import re
    text = open(SCRIPT, encoding="utf-8").read()
    total = int(re.search(r"FASTAUDIO_SESSION_S:-(\d+)", text).group(1))
    assert total <= 540
    assert text.count('timeout -k 5 "$(budget') + text.count('timeout -k 5 "$b"') >= 7


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path):
    """Every section's Python on tiny shapes on the CPU (kernels in the interpreter): rows come
    back for each, and nothing says Error or FAILED."""
    env = {**os.environ, "OUT": str(tmp_path), "TRITON_INTERPRET": "1",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    out = subprocess.run(["bash", SCRIPT, "--dry-run"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    for section in ("env", "checks", "kernels", "generate", "attention", "open"):
        assert f"== {section}" in log, log[-3000:]
    assert "checks: exit 0" in log and "kernels: exit 0" in log and "generate: exit 0" in log, log[-3000:]
    assert "attention: exit 0" in log and "open tiny 1 1 1: exit 0" in log, log[-3000:]
    results = os.listdir(tmp_path / "results")
    for subject in ("session.jsonl", "kernel_checks.jsonl", "kernels.jsonl", "generate.jsonl",
                    "attention_probe.jsonl"):
        assert subject in results, results
    probe = open(tmp_path / "attention_probe.jsonl").read()
    assert '"autotuned"' in probe and '"status": "ok"' in probe, probe[-2000:]


@pytest.mark.reference
def test_reference_loads_without_scipy():
    """The device script's `open` section carries the reference's wheels without scipy (35 MB of
    a 64 MiB carry): stable-audio-tools and k-diffusion's samplers must still load, with scipy's
    integrators stubbed (they raise if called). Checked in a subprocess that hides scipy."""
    code = r'''
import importlib.abc, importlib.util, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "scipy":
            raise ImportError("hidden")
sys.meta_path.insert(0, Hide())
find = importlib.util.find_spec
importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] == "scipy" else find(n, *a)
sys.path.insert(0, "tests")
import reference_impl as R
sat = R.sat()
assert callable(sat.kdiffusion.sampling.sample_dpmpp_3m_sde) and callable(sat.sampling.sample_rf)
try:
    sat.kdiffusion.sampling.integrate.quad(None, 0, 1)
except RuntimeError as e:
    print("stub raises:", e)
'''
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert "stub raises: scipy is not installed" in out.stdout
