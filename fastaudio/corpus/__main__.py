"""``python -m fastaudio.corpus``: see ``fastaudio.corpus.cli``."""
import sys

from .cli import main

sys.exit(main())
