"""The ``fastaudio`` command: generate, info, profile, train, eval.

Errors a user can fix (bad arguments, missing files, unwritable outputs) print one line,
``fastaudio: error: …``, and exit with status 2; no traceback, no partial output file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from .errors import FastAudioError

log = logging.getLogger("fastaudio")


class CLIError(FastAudioError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise CLIError(message)


def _positive_float(name):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text}")
        return value
    return parse


def _positive_int(name):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {text}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fastaudio", description="Stable Audio 1.0, fast: text to 44.1 kHz stereo audio.")
    p.add_argument("-v", "--verbose", action="store_true", help="log which kernels and backends run")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="render a prompt to a WAV/FLAC file")
    g.add_argument("prompt")
    g.add_argument("--seconds", type=_positive_float("--seconds"), required=True,
                   help="duration to render (seconds_total)")
    g.add_argument("-o", "--output", required=True, help="output file (.wav or .flac)")
    g.add_argument("--model", help="model folder or stable-audio-tools checkpoint (default: the "
                   "shipped model)")
    g.add_argument("--preset", help="random weights of a preset (benchmarking only)")
    g.add_argument("--steps", type=_positive_int("--steps"))
    g.add_argument("--cfg-scale", type=float)
    g.add_argument("--cfg-rescale", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--sampler", help="dpmpp-3m-sde, dpmpp-2m-sde, dpmpp-2m, euler")
    g.add_argument("--negative-prompt")
    g.add_argument("--seconds-start", type=float, default=0.0)
    g.add_argument("--window", type=_positive_float("--window"),
                   help="render this many seconds instead of the model's full window")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--device")
    g.add_argument("--execution", choices=["auto", "eager", "graph", "compile"], default="auto")
    g.add_argument("--format", choices=["wav", "flac"], help="default: from the file name")
    g.add_argument("--batch", type=_positive_int("--batch"), default=1,
                   help="render several takes: out.wav → out-0.wav, out-1.wav, …")
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--clap-checkpoint", help="LAION-CLAP checkpoint for stable-audio-tools models")

    i = sub.add_parser("info", help="model, parameter counts, device, kernel and attention backends")
    i.add_argument("--model")
    i.add_argument("--preset")

    pr = sub.add_parser("profile", help="a few sampler steps under torch.profiler")
    pr.add_argument("--model")
    pr.add_argument("--preset")
    pr.add_argument("--seconds", type=_positive_float("--seconds"), default=10.0)
    pr.add_argument("--steps", type=_positive_int("--steps"), default=3)
    pr.add_argument("--dtype", choices=["fp32", "bf16", "fp16"])
    pr.add_argument("--device")
    pr.add_argument("--trace", default="fastaudio-trace.json", help="Chrome trace output")
    pr.add_argument("--top", type=_positive_int("--top"), default=25)

    from .train.cli import add_train_parser
    add_train_parser(sub)
    from .eval.cli import add_eval_parser
    add_eval_parser(sub)
    return p


def _outputs(path: str, batch: int) -> List[str]:
    if batch == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}-{k}{ext}" for k in range(batch)]


def _load_pipeline(args, device=None, dtype=None, execution="auto"):
    from .assets import default_model_path
    from .pipeline import StableAudio
    if args.model and args.preset:
        raise CLIError("give --model or --preset, not both")
    if args.preset:
        print(f"fastaudio: preset {args.preset!r} with RANDOM weights: the output is noise "
              "(use it to benchmark)", file=sys.stderr)
        return StableAudio.from_preset(args.preset, device, dtype, execution)
    path = args.model or default_model_path()
    if path is None:
        print("fastaudio: no trained default model ships with this build: using the 'small' "
              "preset with RANDOM weights (the output is noise); pass --model PATH",
              file=sys.stderr)
        return StableAudio.from_preset("small", device, dtype, execution)
    kwargs = {}
    if getattr(args, "clap_checkpoint", None):
        kwargs["clap_checkpoint"] = args.clap_checkpoint
    return StableAudio.from_pretrained(path, device, dtype, execution, **kwargs)


def cmd_generate(args) -> int:
    from .audio import check_writable, format_for, write_audio
    from .diffusion.samplers import PLANS
    if args.sampler is not None and args.sampler not in PLANS:
        raise CLIError(f"unknown sampler {args.sampler!r} (choose from {', '.join(PLANS)})")
    outputs = _outputs(args.output, args.batch)
    fmt = args.format or None
    for path in outputs:  # fail before any work, leaving nothing behind
        format_for(path, fmt)
        check_writable(path, args.overwrite)
    pipe = _load_pipeline(args, args.device, args.dtype, args.execution)
    limit = pipe.config.window_seconds
    if args.seconds > limit:
        raise CLIError(f"--seconds {args.seconds:g} is past this model's limit of {limit:.1f} s")
    audio = pipe.generate(args.prompt, seconds_total=args.seconds, seconds_start=args.seconds_start,
                          steps=args.steps, cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale,
                          negative_prompt=args.negative_prompt, seed=args.seed,
                          batch_size=args.batch, sampler=args.sampler, window=args.window,
                          progress=sys.stderr.isatty())
    for k, path in enumerate(outputs):
        write_audio(path, audio[k], pipe.sample_rate, fmt=fmt, overwrite=args.overwrite)
    t = pipe.last_timings
    print(f"wrote {', '.join(outputs)}  ({args.seconds:g} s, seed {pipe.last_seed}, "
          f"{pipe.device.type} {str(pipe.dtype).replace('torch.', '')}, {pipe.execution})")
    print("timing: " + "  ".join(f"{k} {v:.2f} s" for k, v in t.items())
          + f"  | real-time factor {args.seconds * args.batch / max(t['total'], 1e-9):.2f}x")
    return 0


def cmd_info(args) -> int:
    import torch
    from . import __version__
    from .nn.attention import available_backends
    from .nn.dispatch import kernel_mode
    print(f"fastaudio {__version__}  torch {torch.__version__}")
    try:
        import triton
        tri = f"triton {triton.__version__}"
    except ImportError as e:
        tri = f"triton unavailable ({e})"
    interp = " (TRITON_INTERPRET=1: kernels run in the interpreter)" \
        if os.environ.get("TRITON_INTERPRET") == "1" else ""
    print(f"{tri}{interp}; FASTAUDIO_KERNELS={kernel_mode()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device: cuda {p.name} (sm{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB)")
    else:
        print("device: cpu (no CUDA device: Triton kernels, FlashAttention and CUDA graphs are off)")
    print("attention backends:")
    for name, reason in available_backends().items():
        print(f"  {name:10s} {'available' if reason is None else 'unavailable: ' + reason}")
    pipe = _load_pipeline(args, device="cpu", dtype="fp32", execution="eager")
    cfg = pipe.config
    print(f"model: {cfg.name}  window {cfg.window_seconds:.1f} s ({cfg.latent_length} latent "
          f"frames), {cfg.sample_rate} Hz stereo")
    for name, count in pipe.model.parameter_counts().items():
        print(f"  {name:12s} {count / 1e6:9.2f} M parameters")
    s = cfg.sampling
    print(f"sampling defaults: {s.sampler}, {s.steps} steps, cfg {s.cfg_scale:g} "
          f"(rescale {s.cfg_rescale:g}), sigma {s.sigma_min:g}…{s.sigma_max:g}")
    return 0


def cmd_profile(args) -> int:
    from .profile import run_profile
    pipe = _load_pipeline(args, args.device, args.dtype)
    run_profile(pipe, seconds=args.seconds, steps=args.steps, trace=args.trace, top=args.top)
    return 0


COMMANDS = {"generate": cmd_generate, "info": cmd_info, "profile": cmd_profile}


def main(argv: Optional[List[str]] = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="fastaudio: %(message)s")
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        return args.handler(args)
    except FastAudioError as e:
        print(f"fastaudio: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastaudio: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
