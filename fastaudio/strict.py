"""``FASTAUDIO_STRICT=1``: the one switch that turns every logged fallback into an error.

Read at each use (tests and benchmarks set it per process), case-insensitive: 1, true, yes.
Kernels dispatch (``fastaudio.nn``), tokenizers and text encoders (prompt truncation) read it
here, so no layer has to import another just for the switch.
"""
from __future__ import annotations

import os


def strict() -> bool:
    return os.environ.get("FASTAUDIO_STRICT", "0").strip().lower() in ("1", "true", "yes")
