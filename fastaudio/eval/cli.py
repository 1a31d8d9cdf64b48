"""``fastaudio eval``: evaluate a model (and a random-weight baseline) on a held-out split."""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from ..atomic import atomic_write_text


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="FD, KL, CLAP score, timing accuracy and prompt following")
    e.add_argument("--model", help="model folder (default: the shipped model)")
    e.add_argument("--heldout", required=True, help="held-out manifest with labels")
    e.add_argument("--train", required=True, help="training manifest (fits the tempo/key/family measures)")
    e.add_argument("--out", required=True, help="folder for results.json, results.md and audio")
    e.add_argument("--items", type=int, default=100)
    e.add_argument("--steps", type=int)
    e.add_argument("--cfg-scale", type=float)
    e.add_argument("--timing-prompts", type=int, default=8)
    e.add_argument("--timing-seconds", type=_seconds_list, default=(3.0, 5.0, 8.0, 11.0),
                   help="comma-separated durations for the timing table (default 3,5,8,11)")
    e.add_argument("--baseline-random", action="store_true",
                   help="also evaluate the same architecture with random weights")
    e.add_argument("--embedder", action="append", default=[], choices=["openl3"],
                   help="an extra embedder for the Fréchet distance (needs its package); CLAP and "
                   "log-mel statistics are always used")
    e.add_argument("--device")
    e.set_defaults(handler=run_eval)


def _seconds_list(text: str):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated seconds, got {text!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"durations must be positive and finite, got {text!r}")
    return values


def _default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def run_eval(args) -> int:
    import torch

    from ..assets import default_model_path
    from ..cli.common import CLIError
    from ..data.manifest import read_manifest
    from ..models.stable_audio import build_model
    from ..pipeline import StableAudio
    from .run import References, check_timing_seconds, evaluate, format_markdown, format_timing
    path = args.model or default_model_path()
    if path is None:
        raise CLIError("no model to evaluate: pass --model (no default model ships in this build)")
    torch.manual_seed(0)
    pipe = StableAudio.from_pretrained(path, device=args.device, dtype="fp32")
    check_timing_seconds(args.timing_seconds, pipe.config.window_seconds)  # before minutes of work
    os.makedirs(args.out, exist_ok=True)
    heldout, train = read_manifest(args.heldout), read_manifest(args.train)
    refs = References.fit(train, pipe.model.conditioner.clap, pipe.sample_rate, vae=pipe.model.vae,
                          window=pipe.config.window_seconds)
    named = {}
    from .embedders import get_embedder
    extra = [get_embedder(name, sample_rate=pipe.sample_rate) for name in args.embedder]
    kw = dict(steps=args.steps, cfg_scale=args.cfg_scale, items=args.items,
              timing_prompts=args.timing_prompts, timing_seconds=args.timing_seconds,
              extra_embedders=extra)
    named["trained"] = evaluate(pipe, heldout, refs, os.path.join(args.out, "trained"), **kw)
    if args.baseline_random:
        rnd = StableAudio(build_model(pipe.config, seed=1), device=args.device, dtype="fp32")
        # the "through the VAE" column is the trained model's: not recomputed for random weights
        named["random weights"] = evaluate(rnd, heldout, refs, os.path.join(args.out, "random"),
                                           round_trips=False, **kw)
    atomic_write_text(os.path.join(args.out, "results.json"),
                      json.dumps(named, indent=2, default=_default) + "\n")
    md = format_markdown(named) + "\nTiming accuracy (the whole window rendered; where the sound ends):\n\n" \
        + format_timing(named)
    atomic_write_text(os.path.join(args.out, "results.md"), md)
    print(md)
    return 0
