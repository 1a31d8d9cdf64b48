"""The README's Python example and fastaudio/__init__.py's docstring example run as written,
against the shipped model (both use a small step count)."""
import os
import re
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_python_blocks():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def docstring_example():
    import fastaudio
    lines = fastaudio.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "import fastaudio")
    block = []
    for line in lines[start:]:
        if line and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


@pytest.fixture(autouse=True)
def _shipped_model():
    import fastaudio
    if fastaudio.default_model_path() is None:
        pytest.fail("this build carries no shipped model (fastaudio/assets/default)")


def test_readme_has_one_python_example_and_it_runs(capsys):
    blocks = readme_python_blocks()
    assert len(blocks) == 1, f"expected one ```python block in README.md, found {len(blocks)}"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 2, 220500]) torch.float32 44100" in printed
    assert "text_encoding" in printed and "[0]" in printed


def test_package_docstring_example_runs(capsys):
    code = docstring_example()
    assert "StableAudio.from_pretrained" in code
    scope = {}
    exec(compile(code, "fastaudio/__init__.py", "exec"), scope)
    assert "torch.Size([1, 2, 220500]) 44100" in capsys.readouterr().out
    assert scope["out"].audio.dtype.is_floating_point and scope["model"] is not None
