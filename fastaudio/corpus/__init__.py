"""A synthetic, captioned training corpus for fastaudio's small model, rendered on a CPU.

General MIDI pieces (``music``: eight instrument families, tempo, key and mode, drums,
loudness, 3–20 s) written as MIDI (``midi``) and rendered with fluidsynth (``render``), plus a
tenth of numpy sound effects (``sfx``); captions in natural-language and metadata styles with
machine-readable labels (``captions``); a stratified held-out split (``split``); the folder,
manifests and resuming (``build``); the command (``cli``: ``python -m fastaudio.corpus``).
"""
from .build import Item, Summary, build_corpus, plan, plan_item, render_item
from .cli import main
from .errors import CorpusError, MidiError, RenderError

__all__ = ["Item", "Summary", "build_corpus", "plan", "plan_item", "render_item", "main",
           "CorpusError", "MidiError", "RenderError"]
