"""The base of every error fastaudio raises on purpose, so callers (and the CLI) can tell a
clear, user-facing error from a bug."""


class FastAudioError(Exception):
    """An input, file or setting that fastaudio cannot use; the message says which and why."""
