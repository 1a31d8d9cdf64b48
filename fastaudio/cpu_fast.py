"""CPU fast paths for generation: the switches, and what the pipeline does with them.

Each option is a documented switch of :class:`fastaudio.pipeline.StableAudio` and of
``fastaudio generate``; what each costs in quality and gains in time on a 2-core x86 CPU is
bench.md's "CPU options" table (``benchmarks/bench_open_cpu_options.py``), measured against the
fp32 output of the same weights and noise (SNR of the decoded audio, relative error of the
latents). Why the default is what it is: docs/benchmarking.md#cpu-fast-paths.

* ``dtype`` (``--dtype``): the backbone's (DiT / U-Net) precision. ``bf16`` on a CPU runs the
  matmuls through oneDNN, which uses AMX tiles or AVX-512 BF16 instructions where the CPU has
  them (:func:`cpu_has_fast_bf16`); without them bf16 is emulated and slower than fp32.
* ``decoder_dtype`` (``--decoder-dtype``): the VAE decoder's precision, by default the same as
  ``dtype``. Its convolutions are most of a CPU generation's FLOPs.
* ``quantize="int8"`` (``--quantize int8``): the backbone's ``nn.Linear`` layers as dynamic int8
  (weights int8 with one scale per tensor, activations quantized per call; torch.ao's
  ``quantize_dynamic`` on the x86 engine, VNNI instructions). Needs an fp32 backbone.
* ``decode_chunk_frames`` (``--decode-chunk``): latent frames per decoder chunk.
* threads (``--threads``): :func:`torch.set_num_threads` for the process.
* ``execution="compile"``: the backbone frozen into its compiled graph (oneDNN prepacked weights),
  the decoder compiled (``fastaudio/compiled.py``); a one-off compilation per window length.

:func:`default_dtypes` is what ``dtype=None`` means: on a CPU with fast bf16 (AMX or AVX-512 BF16)
a rectified-flow Stable Audio Open model (SAO Small) runs in :data:`CPU_DEFAULT` precision, chosen
by measurement (the fastest option whose decoded audio stays above :data:`SNR_THRESHOLD_DB`
against fp32); SAO 1.0 (measured under the bar in bf16), other model families and other CPUs
keep fp32. ``dtype="fp32"`` always gives full precision.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional, Tuple

import torch
from torch import nn

from .errors import FastAudioError

log = logging.getLogger("fastaudio")

QUANTIZE = ("none", "int8")

# The quality bar a CPU default must clear: the SNR (dB) of its decoded audio against the fp32
# output of the same weights and noise. Justified in docs/benchmarking.md#cpu-fast-paths.
SNR_THRESHOLD_DB = 40.0

# What dtype=None means for Stable Audio Open models on a CPU with fast bf16: (backbone, decoder).
# SAO Small, 11.9 s, 2-core AMX CPU (bench.md "CPU options", commit e3f2eeb): bf16 everywhere
# 41.5 dB eager / 43.7 dB compiled against fp32, 4.9 s eager (128-frame chunks, channels-last
# convs) and 3.9 s compiled against 11.5 s fp32 eager; the fastest precision above the threshold
# (int8 DiT: slower than bf16 here, measured before the channels-last decode).
CPU_DEFAULT: Tuple[torch.dtype, torch.dtype] = (torch.bfloat16, torch.bfloat16)


class CpuOptionError(FastAudioError, ValueError):
    """A CPU option that cannot apply (unknown value, or a combination that cannot run)."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True when bf16 matmuls and convolutions run natively (AMX or AVX-512 BF16), so bf16 is
    faster than fp32 rather than emulated. ``FASTAUDIO_CPU_BF16=0|1`` overrides the detection."""
    import os
    forced = os.environ.get("FASTAUDIO_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    flags = cpu_flags()
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def is_open_model(model) -> bool:
    return str(getattr(model, "family", "")).startswith("stable-audio-open")


def default_dtypes(model, device: torch.device) -> Optional[Tuple[torch.dtype, torch.dtype]]:
    """(backbone, decoder) dtypes for ``dtype=None``, or None for the device's usual default.

    Only where bf16 was measured above :data:`SNR_THRESHOLD_DB`: rectified-flow Stable Audio Open
    models (SAO Small: 8 steps, no guidance; 41.5 dB eager, 43.7 dB compiled). SAO 1.0 (v
    objective, 100 steps, cfg 7) measured 35 dB at 5 s and 10 steps in bf16, under the bar: it
    keeps fp32 unless bf16 is asked for."""
    if (device.type == "cpu" and is_open_model(model) and getattr(model, "objective", None) == "rf"
            and cpu_has_fast_bf16()):
        return CPU_DEFAULT
    return None


def check_quantize(quantize: Optional[str], device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """The quantize setting, normalised (None for none); errors name what cannot run."""
    if quantize in (None, "none", False):
        return None
    if quantize not in QUANTIZE:
        raise CpuOptionError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if device.type != "cpu":
        raise CpuOptionError(f"quantize={quantize!r} is a CPU option (dynamic int8 runs on the "
                             f"x86/fbgemm engine); this pipeline runs on {device}")
    if dtype != torch.float32:
        raise CpuOptionError(f"quantize={quantize!r} needs an fp32 backbone (dynamic int8 takes "
                             f"fp32 activations); this pipeline's dtype is {dtype}")
    return quantize


def quantize_linears_int8(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` (in place) by torch.ao's dynamic int8 linear;
    returns how many were replaced. Inference only."""
    from torch.ao.quantization import quantize_dynamic
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    count = sum(isinstance(m, nn.Linear) for m in module.modules())
    # torch.ao's default dynamic qconfig: one weight scale per tensor (what bench.md measured)
    quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return count


def is_quantized(module: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())


def quantize_backbone(module: nn.Module) -> None:
    """Dynamic int8 linears in ``module``, once (a second call finds them quantized)."""
    if not is_quantized(module):
        n = quantize_linears_int8(module)
        log.info("%s: %d linear layers as dynamic int8", type(module).__name__, n)


def freeze_decoder(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``execution="compile"`` freezes the VAE decoder's weights into its graph: on a CPU
    in bf16, where oneDNN then gets prepacked weights and the Snake activations fuse around the
    convs (SAO's decoder, 256 frames, 2-core AMX CPU: 2.8 s frozen, 6.6 s plain compile, 8.5 s
    eager; docs/benchmarking.md#cpu-fast-paths). fp32 keeps plain compilation, as measured for
    the SA1.0 decoder (docs/benchmarking.md#cpu-compile-mode)."""
    return device.type == "cpu" and dtype == torch.bfloat16


# Decoder chunk for an eager bf16 decoder on a CPU, in latent frames: SAO Small's 256 frames
# decoded in 7.5 s as two 128-frame chunks against 9.7 s whole on (N, C, L) memory (2-core AMX
# CPU, bench.md "CPU options" at 5bdf5e2); on channels-last memory the two tie (3.6-3.8 s either
# way, pipe.decode, 2 runs each) and 128 keeps half the activation memory. Compiled (frozen)
# decoders keep the model's default (256: 3.3 s against 4.0 s).
EAGER_BF16_CHUNK_FRAMES = 128


def default_chunk_frames(device: torch.device, decoder_dtype: torch.dtype,
                         execution: str) -> Optional[int]:
    """The decoder chunk for these settings where the CPU measurements differ from the model's
    default, else None (the model's own default)."""
    if device.type == "cpu" and decoder_dtype == torch.bfloat16 and execution != "compile":
        return EAGER_BF16_CHUNK_FRAMES
    return None


def set_threads(threads: Optional[int]) -> None:
    """torch's intra-op thread count for this process (None: leave it)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise CpuOptionError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(int(threads))


def configure(pipe, decoder_dtype=None, quantize: Optional[str] = None,
              decode_chunk_frames: Optional[int] = None) -> None:
    """Apply CPU options to an existing pipeline (what ``fastaudio generate`` does after loading):
    any option left None is kept as the pipeline has it."""
    from .pipeline_args import parse_dtype
    changed = False
    if decoder_dtype is not None:
        dt = parse_dtype(decoder_dtype)
        changed |= dt != pipe.decoder_dtype
        pipe.decoder_dtype = dt
    if quantize not in (None, "none"):
        pipe.quantize = check_quantize(quantize, pipe.device, pipe.dtype)
        changed = True
    if decode_chunk_frames is not None:
        if int(decode_chunk_frames) < 1:
            raise CpuOptionError(f"decode_chunk_frames must be >= 1, got {decode_chunk_frames}")
        pipe.decode_chunk_frames = int(decode_chunk_frames)
    elif changed and decoder_dtype is not None:  # the chunk that suits the new decoder dtype
        pipe.decode_chunk_frames = (default_chunk_frames(pipe.device, pipe.decoder_dtype, pipe.execution)
                                    or pipe.model.default_decode_chunk_frames(pipe.device.type))
    if changed:
        pipe._place()
