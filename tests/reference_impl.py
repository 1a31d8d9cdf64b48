"""Load the reference implementation's own modules for fidelity tests.

stable-audio-tools (installed with ``--no-deps``) and descript-audio-codec provide the modules
Stable Audio 1.0 is built from. Their package ``__init__`` files import heavy, unrelated
dependencies (torchaudio, which does not load beside the CPU torch build, gradio, audiotools …),
so we load only the files that define the SA1.0 modules:

* ``stable_audio_tools/models/adp.py`` (the U-Net: needs torch, einops, einops-exts, packaging),
* ``dac/nn/layers.py`` and ``dac/model/dac.py`` (the DAC encoder/decoder), with a two-name stub
  for ``audiotools`` that those files import but the Encoder/Decoder classes never use.

Tests that need them are skipped when the packages are absent, unless
``FASTAUDIO_REQUIRE_REFERENCE=1`` (set by CI), which turns the skip into a failure.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest

REQUIRED = os.environ.get("FASTAUDIO_REQUIRE_REFERENCE", "0") == "1"


def _missing(what: str):
    if REQUIRED:
        pytest.fail(f"reference implementation unavailable: {what} (FASTAUDIO_REQUIRE_REFERENCE=1)")
    pytest.skip(f"reference implementation unavailable: {what}")


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _load_file(module_name: str, path: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


_cache: dict = {}


def adp():
    """stable_audio_tools.models.adp (UNetCFG1d and its blocks)."""
    if "adp" in _cache:
        return _cache["adp"]
    for dep in ("einops", "einops_exts", "packaging"):
        if importlib.util.find_spec(dep) is None:
            _missing(f"{dep} is not installed")
    root = _package_dir("stable_audio_tools")
    if root is None:
        _missing("stable-audio-tools is not installed (pip install --no-deps stable-audio-tools)")
    _cache["adp"] = _load_file("_ref_sat_adp", os.path.join(root, "models", "adp.py"))
    return _cache["adp"]


def dac():
    """dac.model.dac (Encoder, Decoder) and dac.nn.layers, without the package __init__."""
    if "dac" in _cache:
        return _cache["dac"]
    root = _package_dir("dac")
    if root is None or not os.path.exists(os.path.join(root, "model", "dac.py")):
        _missing("descript-audio-codec is not installed (pip install --no-deps descript-audio-codec)")
    import torch.nn as nn
    if "audiotools" not in sys.modules:
        stub = types.ModuleType("audiotools")
        stub.AudioSignal = type("AudioSignal", (), {})
        stub.ml = types.ModuleType("audiotools.ml")
        stub.ml.BaseModel = type("BaseModel", (nn.Module,), {"INTERN": [], "EXTERN": []})
        sys.modules["audiotools"] = stub
        sys.modules["audiotools.ml"] = stub.ml
    for pkg, sub in (("dac", ""), ("dac.nn", "nn"), ("dac.model", "model")):
        if pkg not in sys.modules or not hasattr(sys.modules[pkg], "__path__"):
            m = types.ModuleType(pkg)
            m.__path__ = [os.path.join(root, sub) if sub else root]
            sys.modules[pkg] = m
    import importlib
    layers = importlib.import_module("dac.nn.layers")
    model = importlib.import_module("dac.model.dac")
    _cache["dac"] = types.SimpleNamespace(layers=layers, model=model)
    return _cache["dac"]


def transformers_roberta():
    try:
        import transformers  # noqa: F401
        from transformers import RobertaConfig, RobertaModel
    except Exception as e:  # ImportError or a broken install
        _missing(f"transformers is not importable ({e})")
    return RobertaConfig, RobertaModel


def auraloss():
    """auraloss 0.4.0's ``freq`` and ``perceptual`` modules (A-weighting needs scipy).

    auraloss imports only torch and numpy at package level, so the package itself is imported;
    if that fails (a broken install), its two files are loaded on their own from the package
    folder, with its tiny ``utils`` beside them."""
    if "auraloss" in _cache:
        return _cache["auraloss"]
    if importlib.util.find_spec("scipy") is None:
        _missing("scipy is not installed (auraloss's A-weighting filter is designed with it)")
    root = _package_dir("auraloss")
    if root is None:
        _missing("auraloss is not installed (pip install --no-deps auraloss==0.4.0)")
    try:
        freq = importlib.import_module("auraloss.freq")
        perceptual = importlib.import_module("auraloss.perceptual")
    except ImportError:
        pkg = types.ModuleType("_ref_auraloss")
        pkg.__path__ = [root]
        sys.modules["_ref_auraloss"] = pkg
        for name in ("utils", "perceptual", "freq"):
            _load_file(f"_ref_auraloss.{name}", os.path.join(root, f"{name}.py"))
        freq, perceptual = sys.modules["_ref_auraloss.freq"], sys.modules["_ref_auraloss.perceptual"]
    _cache["auraloss"] = types.SimpleNamespace(freq=freq, perceptual=perceptual)
    return _cache["auraloss"]


def kdiffusion():
    """k_diffusion.sampling and .external (stable-audio-tools' sampler), without the package
    __init__ (which imports torchvision, CLIP and more). k_diffusion.utils imports PIL and
    torchvision at the top for image helpers the samplers never call; those two are stubbed."""
    if "kdiffusion" in _cache:
        return _cache["kdiffusion"]
    for dep in ("torchsde", "torchdiffeq"):
        if importlib.util.find_spec(dep) is None:
            _missing(f"{dep} is not installed (k-diffusion's samplers import it)")
    root = _package_dir("k_diffusion")
    if root is None:
        _missing("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1)")
    stubs = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    if "PIL" not in sys.modules and importlib.util.find_spec("PIL") is None:
        stubs += ["PIL", "PIL.Image"]
    # scipy serves only linear_multistep's coefficients (scipy.integrate.quad) and torchdiffeq's
    # scipy solver, which no stable-audio-tools sampler for these models uses: where it is absent (the GPU machine's carried wheels leave
    # its 35 MB out) a stub that raises if called stands in.
    no_scipy = "scipy" not in sys.modules and importlib.util.find_spec("scipy") is None
    if no_scipy:
        stubs += ["scipy", "scipy.integrate"]
    added = [name for name in stubs if name not in sys.modules]
    for name in added:
        sys.modules[name] = types.ModuleType(name)
    if no_scipy:  # any name imported from it (quad; torchdiffeq's solve_ivp) raises when called
        def stub(name):
            if name.startswith("__"):  # __file__, __spec__...: what inspect and importlib probe
                raise AttributeError(name)

            def unavailable(*args, **kwargs):
                raise RuntimeError(f"scipy is not installed: scipy.integrate.{name} is a stub")
            return unavailable
        sys.modules["scipy.integrate"].__getattr__ = stub
        sys.modules["scipy"].integrate = sys.modules["scipy.integrate"]
    if "PIL.Image" in sys.modules and not hasattr(sys.modules["PIL"], "Image"):
        sys.modules["PIL"].Image = sys.modules["PIL.Image"]
    if "k_diffusion" not in sys.modules or not hasattr(sys.modules["k_diffusion"], "__path__"):
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = [root]
        sys.modules["k_diffusion"] = pkg
    try:
        sampling = importlib.import_module("k_diffusion.sampling")
        external = importlib.import_module("k_diffusion.external")
    finally:  # other libraries probe for torchvision/PIL: leave no stub behind
        for name in added:
            sys.modules.pop(name, None)
    _cache["kdiffusion"] = types.SimpleNamespace(sampling=sampling, external=external)
    return _cache["kdiffusion"]


def unet_kwargs(cfg) -> dict:
    """Our UNetConfig as UNetCFG1d's keyword arguments. ``use_pooled_context`` is ours; the
    reference's equivalent is ``context_features`` plus a ``features`` tensor at every call,
    which only tests that pass that tensor may ask for."""
    import dataclasses
    kw = dataclasses.asdict(cfg)
    if kw.pop("use_pooled_context"):
        kw["context_features"] = cfg.context_embedding_features
    return kw


def sat():
    """stable-audio-tools' DiT-family modules and its generation path, as a namespace:
    ``dit``, ``transformer``, ``autoencoders``, ``bottleneck``, ``conditioners``, ``diffusion``,
    ``factory``, ``sampling``, ``generation``, ``blocks``.

    Those files import torchaudio (which does not load beside the CPU torch 2.13 build) and
    alias_free_torch for paths the Stable Audio Open models never take (resampling, anti-aliased
    activations); those names are stubbed with classes that raise if they are ever called.
    The package ``__init__`` (huggingface_hub downloads) is bypassed like the other loaders.
    k-diffusion (the reference's sampler) is loaded first with :func:`kdiffusion`.
    """
    if "sat" in _cache:
        return _cache["sat"]
    for dep in ("einops", "einops_exts", "packaging", "safetensors"):
        if importlib.util.find_spec(dep) is None:
            _missing(f"{dep} is not installed")
    root = _package_dir("stable_audio_tools")
    if root is None:
        _missing("stable-audio-tools is not installed (pip install --no-deps stable-audio-tools)")
    kd = kdiffusion()

    class _Unused:  # stands in for torchaudio / alias_free_torch classes the open models never build
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{type(self).__name__} is a test stub (torchaudio is not loadable here)")

    stubs = {}
    if importlib.util.find_spec("torchaudio") is None or "torchaudio" not in sys.modules:
        ta = types.ModuleType("torchaudio")
        ta.transforms = types.ModuleType("torchaudio.transforms")
        for name in ("Resample", "MelSpectrogram", "Spectrogram", "InverseSpectrogram"):
            setattr(ta.transforms, name, type(name, (_Unused,), {}))
        ta.functional = types.ModuleType("torchaudio.functional")
        stubs.update({"torchaudio": ta, "torchaudio.transforms": ta.transforms,
                      "torchaudio.functional": ta.functional})
    if importlib.util.find_spec("alias_free_torch") is None:
        aft = types.ModuleType("alias_free_torch")
        aft.Activation1d = type("Activation1d", (_Unused,), {})
        stubs["alias_free_torch"] = aft
    added = [n for n in stubs if n not in sys.modules]
    for n in added:
        sys.modules[n] = stubs[n]
    for pkg, sub in (("stable_audio_tools", ""), ("stable_audio_tools.models", "models"),
                     ("stable_audio_tools.inference", "inference"), ("stable_audio_tools.data", "data")):
        if pkg not in sys.modules or not hasattr(sys.modules[pkg], "__path__"):
            # a real spec: other loaders (and importlib.util.find_spec) look these packages up
            spec = importlib.machinery.ModuleSpec(pkg, None, is_package=True)
            spec.submodule_search_locations = [os.path.join(root, sub) if sub else root]
            sys.modules[pkg] = importlib.util.module_from_spec(spec)
    try:
        mods = {name: importlib.import_module(f"stable_audio_tools.{path}") for name, path in (
            ("sampling", "inference.sampling"), ("generation", "inference.generation"),
            ("blocks", "models.blocks"), ("transformer", "models.transformer"),
            ("dit", "models.dit"), ("bottleneck", "models.bottleneck"),
            ("autoencoders", "models.autoencoders"), ("conditioners", "models.conditioners"),
            ("diffusion", "models.diffusion"), ("factory", "models.factory"))}
    finally:  # other libraries probe for torchaudio: leave no stub behind
        for n in added:
            sys.modules.pop(n, None)
    mods["kdiffusion"] = kd
    _cache["sat"] = types.SimpleNamespace(**mods)
    return _cache["sat"]
