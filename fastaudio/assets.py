"""Files shipped inside the package: the default trained model."""
from __future__ import annotations

import os
from typing import Optional

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL = os.path.join(ASSETS, "default")


def default_model_path() -> Optional[str]:
    """The shipped model folder, or None when this build carries none."""
    if os.path.isfile(os.path.join(DEFAULT_MODEL, "model_config.json")) and \
            os.path.isfile(os.path.join(DEFAULT_MODEL, "model.safetensors")):
        return DEFAULT_MODEL
    return None
