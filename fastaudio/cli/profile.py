"""``fastaudio profile``: a few sampler steps under torch.profiler (a Chrome trace and a table)."""
from __future__ import annotations

from .common import add_model_arguments, load_pipeline, positive_float, positive_int


def add_profile_parser(sub) -> None:
    pr = sub.add_parser("profile", help="a few sampler steps under torch.profiler")
    add_model_arguments(pr)
    pr.add_argument("--seconds", type=positive_float("--seconds"), default=10.0)
    pr.add_argument("--steps", type=positive_int("--steps"), default=3)
    pr.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    pr.add_argument("--device")
    pr.add_argument("--trace", default="fastaudio-trace.json", help="Chrome trace output")
    pr.add_argument("--top", type=positive_int("--top"), default=25)
    pr.set_defaults(handler=run_profile_command)


def run_profile_command(args) -> int:
    from ..profile import run_profile
    pipe = load_pipeline(args, args.device, args.dtype)
    run_profile(pipe, seconds=args.seconds, steps=args.steps, trace=args.trace, top=args.top)
    return 0
