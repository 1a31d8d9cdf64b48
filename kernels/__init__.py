"""fastaudio's Triton kernels (installed as ``fastaudio.kernels``).

One op per file, each in the same order: the plain PyTorch reference (``<op>_ref``), the
``@triton.jit`` kernels, the host launchers, the ``torch.library`` custom ops and the
``autograd.Function``. Modules are imported lazily by ``fastaudio.nn`` so that a machine
without Triton still runs every reference path. Nothing here imports ``fastaudio``.

Why the block below: this folder sits at the top of the repository, so whenever Python runs
from the repository root (``python -m pytest``, ``python -c``, a notebook) it is also importable
as a top-level ``kernels`` package, and it would then shadow PyPI's ``kernels`` package, which
transformers (5.25 on) imports. Imported under that name, this file hands the name over to the
next ``kernels`` found on ``sys.path`` past the repository root, or raises ModuleNotFoundError as
if the folder were not there. A folder without ``__init__.py`` would lose to a regular package by
itself, but setuptools' editable finder cannot then map it onto ``fastaudio.kernels``.
"""
if __name__ != "fastaudio.kernels":  # imported by accident as the top-level ``kernels``
    def _hand_over(name: str) -> None:
        import importlib.machinery
        import importlib.util
        import os
        import sys

        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rest = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != here]
        spec = importlib.machinery.PathFinder.find_spec(name, rest)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(
                f"No module named {name!r} (the folder {os.path.join(here, name)} is fastaudio's "
                "Triton kernels, importable only as fastaudio.kernels)", name=name)
        module = importlib.util.module_from_spec(spec)
        # the import system returns whatever sys.modules holds once this file has run
        sys.modules[name] = module
        spec.loader.exec_module(module)

    _hand_over(__name__)
    del _hand_over
