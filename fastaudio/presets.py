"""Every named preset, of every model family, built with random weights (for sizes, tests and
benchmarks; not for listening): ``build_preset_model(name)``.

SA1.0-family presets (``stable-audio-1.0``, ``small``, ``tiny``) come from
:mod:`fastaudio.config`; Stable Audio Open presets (``stable-audio-open-1.0``,
``stable-audio-open-small``) from :mod:`fastaudio.open_config`.
"""
from __future__ import annotations

import logging
from typing import List

log = logging.getLogger("fastaudio")


def preset_names() -> List[str]:
    from .config import PRESETS
    from .open_config import OPEN_PRESETS
    return list(PRESETS) + list(OPEN_PRESETS)


def build_preset_model(name: str, seed: int = 0, device=None):
    """A preset's model with random weights. A SA1.0 preset whose text tower reads RoBERTa's
    BPE (stable-audio-1.0) ships no tokenizer files, so its prompts go through the byte
    tokenizer instead, with a log line: with random weights the tokens mean nothing either way,
    and the text tower's cost is the same (max_length positions)."""
    from .config import PRESETS
    if name not in PRESETS:
        from .open_config import OPEN_PRESETS, open_preset
        if name in OPEN_PRESETS:
            from .models.open_audio import build_open_model
            return build_open_model(open_preset(name), seed=seed, device=device)
        from .config import ConfigError
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    from .models.stable_audio import build_model
    model = build_model(name, seed=seed, device=device)
    clap = model.conditioner.clap
    if clap.tokenizer is None:
        from .models.tokenizer import ByteTokenizer
        log.warning("preset %r with random weights: no RoBERTa tokenizer files, prompts are read as "
                    "UTF-8 bytes (benchmark use only)", name)
        clap.tokenizer = ByteTokenizer()
    return model
