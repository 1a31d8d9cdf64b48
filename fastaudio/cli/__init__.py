"""The ``fastaudio`` command: generate, info, profile, train, latents, eval.

Each subcommand lives in its own module and registers itself with ``add_<name>_parser(sub)``,
setting ``handler``; what they share is in :mod:`.common`. Errors a user can fix (bad arguments,
missing files, unwritable outputs) print one line, ``fastaudio: error: …``, and exit with status
2; no traceback, no partial output file.
"""
from __future__ import annotations

import logging
import sys
from typing import List, Optional

from ..errors import FastAudioError
from .common import CLIError, Parser  # noqa: F401  (CLIError is part of the CLI's API)


def build_parser() -> Parser:
    from ..eval.cli import add_eval_parser
    from ..train.cli import add_train_parser
    from .generate import add_generate_parser
    from .info import add_info_parser
    from .profile import add_profile_parser
    p = Parser(prog="fastaudio", description="Stable Audio, fast: text to 44.1 kHz stereo audio "
               "(Stable Audio Open 1.0 / Small, SA1.0-style models).")
    p.add_argument("-v", "--verbose", action="store_true", help="log which kernels and backends run")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (add_generate_parser, add_info_parser, add_profile_parser, add_train_parser,
                add_eval_parser):
        add(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="fastaudio: %(message)s")
        return args.handler(args)
    except FastAudioError as e:
        print(f"fastaudio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastaudio: interrupted", file=sys.stderr)
        return 130
