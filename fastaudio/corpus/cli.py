"""``fastaudio corpus`` / ``python -m fastaudio.corpus``: build the synthetic training corpus.

    python -m fastaudio.corpus --out /work/data/corpus --count 1000 --seed 0

Errors a user can fix print one line, ``fastaudio corpus: error: …``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..errors import FastAudioError
from .build import build_corpus
from .errors import CorpusError

PROG = "fastaudio corpus"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise CorpusError(message)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Render a captioned corpus of General MIDI music and "
                "sound effects (44.1 kHz stereo WAV + train/heldout JSONL manifests).")
    p.add_argument("--out", required=True, help="corpus folder (created; an existing corpus of the "
                   "same seed is completed, its files kept)")
    p.add_argument("--count", type=_int_at_least(1), required=True, help="number of items")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="corpus seed (default 0)")
    p.add_argument("--heldout-fraction", type=_fraction, default=0.1,
                   help="share of items in heldout.jsonl (default 0.1)")
    p.add_argument("--workers", type=_int_at_least(1), default=min(2, os.cpu_count() or 1),
                   help="items rendered at once, one process each (default 2)")
    p.add_argument("--soundfont", help="General MIDI .sf2 (default: Debian's FluidR3_GM)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    return p


def _progress_printer(stream):
    interactive = stream.isatty()
    state = {"last": -1}

    def show(done: int, total: int, kept: int, seconds: float) -> None:
        # a line per 5 % when logging to a file, a live line on a terminal
        step = max(1, total // 20)
        if not interactive and done != total and done // step == state["last"]:
            return
        state["last"] = done // step
        rendered = done - kept
        rate = rendered / seconds if seconds > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        text = (f"corpus: {done}/{total} items ({kept} kept), {rate:.2f} rendered/s, "
                f"{seconds:.0f} s elapsed, ~{left:.0f} s left")
        stream.write(("\r" + text + ("\n" if done == total else "")) if interactive else text + "\n")
        stream.flush()
    return show


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        summary = build_corpus(args.out, args.count, args.seed, args.heldout_fraction, args.workers,
                               args.soundfont,
                               progress=None if args.quiet else _progress_printer(sys.stderr))
    except FastAudioError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (run it again to resume)", file=sys.stderr)
        return 130
    hours = summary.audio_seconds / 3600
    print(f"{summary.out}: {summary.items} items ({summary.rendered} rendered, {summary.kept} kept), "
          f"{summary.train} train / {summary.heldout} held out, {hours:.2f} h of audio, "
          f"{summary.wall_seconds:.1f} s")
    return 0
