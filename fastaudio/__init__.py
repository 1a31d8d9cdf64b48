"""fastaudio: the fastest complete implementation of Stable Audio 1.0."""
__version__ = "0.1.0"
