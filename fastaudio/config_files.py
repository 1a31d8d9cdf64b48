"""Reading a ``model_config.json`` of any supported kind: the one place that tells them apart.

* fastaudio's own format (``"format": "fastaudio-model"``) → :mod:`fastaudio.config`;
* stable-audio-tools' ``model_config.json`` (recognised by ``model_type``), SA1.0-style
  (``adp_cfg_1d`` U-Net) → :mod:`fastaudio.reference_config`;
* stable-audio-tools' ``model_config.json`` with a ``dit`` diffusion model (Stable Audio Open
  1.0 and Small) → :mod:`fastaudio.open_config`.

``config.py`` reads only fastaudio's format and the readers of other formats build on it, so
this layer sits above both and nothing imports in a circle.
"""
from __future__ import annotations

import json
from typing import Any

from .config import ConfigError, config_from_obj


def is_stable_audio_tools(data: Any) -> bool:
    return isinstance(data, dict) and "model_type" in data


def diffusion_type(data: dict) -> Any:
    """``model.diffusion.type`` of a stable-audio-tools config, or None."""
    model = data.get("model")
    diff = model.get("diffusion") if isinstance(model, dict) else None
    return diff.get("type") if isinstance(diff, dict) else None


def read_model_config(data: Any, source: str = "config"):
    """A parsed JSON object → ModelConfig (SA1.0 family) or OpenModelConfig (DiT family)."""
    if not is_stable_audio_tools(data):
        return config_from_obj(data, source)
    kind = diffusion_type(data)
    if kind == "dit":
        from .open_config import open_config_from_reference
        return open_config_from_reference(data, source)
    if kind not in (None, "adp_cfg_1d"):
        raise ConfigError(f"{source}: model.diffusion.type = {kind!r} is not supported (dit: Stable "
                          "Audio Open 1.0 / Small; adp_cfg_1d: Stable Audio 1.0)")
    from .reference_config import config_from_reference
    return config_from_reference(data, source)


def load_config(path: str):
    """Read a ``model_config.json`` file (any supported kind); errors name the file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    return read_model_config(data, str(path))
