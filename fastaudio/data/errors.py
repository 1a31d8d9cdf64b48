"""The one error the data pipeline raises on purpose."""
from ..errors import FastAudioError


class DataError(FastAudioError, ValueError):
    """A manifest, audio file, cache or data setting cannot be used; the message names the file
    (and the line, where there is one) and says what is wrong."""
