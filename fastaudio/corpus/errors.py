"""Errors of the corpus builder; all are ``FastAudioError`` so the CLI prints them as one line."""
from ..errors import FastAudioError


class CorpusError(FastAudioError):
    """A corpus cannot be built: a bad argument, an unusable output folder or a failed item."""


class MidiError(CorpusError):
    """A MIDI file cannot be written (a note out of range, overlapping notes) or parsed."""


class RenderError(CorpusError):
    """An item cannot be rendered to audio: fluidsynth missing or failing, or a bad result."""
