"""The repository's top-level kernels/ folder must never stand in for PyPI's ``kernels`` package.

Python run from the repository root (``python -m pytest``, ``python -c``) has the root on
sys.path, so ``import kernels`` finds this folder first; transformers 5.25 imports PyPI's
``kernels`` and failed on it (issue 20). kernels/__init__.py hands the name over to the next
``kernels`` on sys.path, or raises ModuleNotFoundError when there is none.
"""
import importlib
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(ROOT, "kernels")


@contextmanager
def fresh_kernels_import(path):
    """``import kernels`` as a new process would, with ``path`` as sys.path; restores after."""
    saved_modules = {k: v for k, v in sys.modules.items() if k == "kernels" or k.startswith("kernels.")}
    saved_path = list(sys.path)
    for k in saved_modules:
        del sys.modules[k]
    sys.path[:] = path
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for k in [k for k in sys.modules if k == "kernels" or k.startswith("kernels.")]:
            del sys.modules[k]
        sys.modules.update(saved_modules)
        sys.path[:] = saved_path
        importlib.invalidate_caches()


def _is_ours(module) -> bool:
    return os.path.abspath(module.__file__).startswith(OURS + os.sep)


def test_a_kernels_package_later_on_sys_path_wins(tmp_path):
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("WHO = 'the real one'\n")
    (fake / "sub.py").write_text("X = 3\n")
    with fresh_kernels_import([ROOT, str(tmp_path / "site")] + sys.path):
        import kernels
        import kernels.sub
        assert not _is_ours(kernels), kernels.__file__
        assert kernels.WHO == "the real one" and kernels.sub.X == 3
        assert sys.modules["kernels"] is kernels


def test_pypi_kernels_is_what_import_kernels_finds_from_the_repo_root():
    if importlib.util.find_spec("kernels", None) is None:
        pytest.skip("PyPI's kernels package is not installed")
    with fresh_kernels_import([ROOT] + [p for p in sys.path if os.path.abspath(p or ".") != ROOT]):
        try:
            import kernels
        except ModuleNotFoundError:
            pytest.skip("PyPI's kernels package is not installed")
        assert not _is_ours(kernels), f"import kernels resolved to this repository: {kernels.__file__}"


def test_without_another_kernels_package_the_import_fails_cleanly():
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n    print('MNF', e.name, e)\n"
            "else:\n    print('IMPORTED', kernels.__file__)\n")
    # -S: no site-packages, so nothing but this folder could answer to the name
    out = subprocess.run([sys.executable, "-S", "-c", code, ROOT], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MNF kernels"), out.stdout
    assert "fastaudio.kernels" in out.stdout


@pytest.mark.slow
def test_transformers_imports_from_the_repo_root():
    pytest.importorskip("transformers")
    code = "import transformers, kernels; from transformers import T5EncoderModel; print(kernels.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not out.stdout.strip().startswith(OURS + os.sep), out.stdout


def test_fastaudio_kernels_still_imports():
    import fastaudio.kernels
    import fastaudio.kernels.snake as snake
    assert os.path.abspath(snake.__file__).startswith(OURS + os.sep) or "site-packages" in snake.__file__
    assert fastaudio.kernels.__name__ == "fastaudio.kernels"
