"""``fastaudio generate PROMPT --seconds S -o out.wav``: render a prompt to WAV/FLAC files."""
from __future__ import annotations

import sys

from .common import CLIError, add_model_arguments, load_pipeline, numbered_outputs, positive_float, \
    positive_int


def add_generate_parser(sub) -> None:
    g = sub.add_parser("generate", help="render a prompt to a WAV/FLAC file")
    g.add_argument("prompt")
    g.add_argument("--seconds", type=positive_float("--seconds"), required=True,
                   help="duration to render (seconds_total)")
    g.add_argument("-o", "--output", required=True, help="output file (.wav or .flac)")
    add_model_arguments(g)
    g.add_argument("--steps", type=positive_int("--steps"))
    g.add_argument("--cfg-scale", type=float)
    g.add_argument("--cfg-rescale", type=float)
    g.add_argument("--sigma-min", type=positive_float("--sigma-min"))
    g.add_argument("--sigma-max", type=positive_float("--sigma-max"))
    g.add_argument("--seed", type=int)
    g.add_argument("--sampler", help="v-objective models: dpmpp-3m-sde, dpmpp-2m-sde, dpmpp-2m, "
                   "euler; rectified-flow models: pingpong, euler (default: the model's)")
    g.add_argument("--negative-prompt")
    g.add_argument("--seconds-start", type=float, default=0.0)
    g.add_argument("--window", type=positive_float("--window"),
                   help="render this many seconds instead of the model's full window")
    g.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="backbone (and by default decoder) precision; default: bf16 for Stable "
                   "Audio Open Small on CPUs with AMX / AVX-512 BF16, else fp32 on CPUs, bf16 or "
                   "fp16 on GPUs (docs/benchmarking.md#cpu-fast-paths)")
    g.add_argument("--decoder-dtype", choices=["fp32", "bf16", "fp16"],
                   help="the VAE decoder's precision (default: as --dtype)")
    g.add_argument("--quantize", choices=["none", "int8"], default=None,
                   help="int8: the backbone's linear layers as dynamic int8 (CPU, fp32 backbone)")
    g.add_argument("--decode-chunk", type=positive_int("--decode-chunk"), metavar="FRAMES",
                   help="latent frames per VAE decoder chunk (default: 256 on CPUs, 1024 on GPUs)")
    g.add_argument("--threads", type=positive_int("--threads"),
                   help="CPU threads for torch (default: torch's, one per core)")
    g.add_argument("--device")
    g.add_argument("--execution", choices=["auto", "eager", "graph", "compile"], default="auto")
    g.add_argument("--format", choices=["wav", "flac"], help="default: from the file name")
    g.add_argument("--batch", type=positive_int("--batch"), default=1,
                   help="render several takes: out.wav → out-0.wav, out-1.wav, …")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(handler=run_generate)


def run_generate(args) -> int:
    from ..audio import check_writable, format_for, write_audio
    outputs = numbered_outputs(args.output, args.batch)
    fmt = args.format or None
    for path in outputs:  # fail before any work, leaving nothing behind
        format_for(path, fmt)
        check_writable(path, args.overwrite)
    from ..cpu_fast import CpuOptionError, configure, set_threads
    set_threads(args.threads)
    quantize = None if args.quantize in (None, "none") else args.quantize
    # int8 takes an fp32 backbone: without --dtype, ask for fp32 rather than the bf16 default
    dtype = args.dtype or ("fp32" if quantize else None)
    pipe = load_pipeline(args, args.device, dtype, args.execution)
    try:
        configure(pipe, decoder_dtype=args.decoder_dtype, quantize=quantize,
                  decode_chunk_frames=args.decode_chunk)
    except CpuOptionError as e:
        raise CLIError(str(e)) from None
    limit = pipe.config.window_seconds
    if args.seconds > limit:
        raise CLIError(f"--seconds {args.seconds:g} is past this model's limit of {limit:.2f} s")
    out = pipe.generate(args.prompt, seconds_total=args.seconds, seconds_start=args.seconds_start,
                        steps=args.steps, cfg_scale=args.cfg_scale, cfg_rescale=args.cfg_rescale,
                        sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                        negative_prompt=args.negative_prompt, seed=args.seed,
                        batch_size=args.batch, sampler=args.sampler, window=args.window,
                        progress=sys.stderr.isatty())
    for k, path in enumerate(outputs):
        write_audio(path, out.audio[k], out.sample_rate, fmt=fmt, overwrite=args.overwrite)
    t = out.timings
    seeds = ", ".join(str(s) for s in out.seeds)
    dec = "" if pipe.decoder_dtype == pipe.dtype else \
        f", decoder {str(pipe.decoder_dtype).replace('torch.', '')}"
    print(f"wrote {', '.join(outputs)}  ({args.seconds:g} s, seed {seeds}, "
          f"{pipe.device.type} {str(pipe.dtype).replace('torch.', '')}{dec}"
          f"{', int8 linears' if pipe.quantize else ''}, {pipe.execution})")
    print("timing: " + "  ".join(f"{k} {v:.2f} s" for k, v in t.items())
          + f"  | real-time factor {args.seconds * args.batch / max(t['total'], 1e-9):.2f}x")
    return 0
