"""Text to audio: ``StableAudio.generate(prompt, seconds_total)`` → (B, 2, N) at 44.1 kHz.

Stages, each under an NVTX range and timed in ``pipe.last_timings``:
text encoding (CLAP + timing tables) → sampling (DPM-Solver++ over the guided U-Net, one CUDA
graph replay per step on CUDA) → decoding (the VAE in overlapping chunks) → trim to
seconds_total.
"""
from __future__ import annotations

import logging
import math
import numbers
import random
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .checkpoints import load_model
from .diffusion.cuda_graph import GraphCache, StepRunner
from .diffusion.guidance import GuidedV
from .diffusion.samplers import PLANS, make_plan
from .diffusion.schedule import VDenoiser
from .diffusion.sigmas import get_sigmas
from .errors import FastAudioError
from .models.stable_audio import StableAudioModel, build_model
from .profiling import StageTimer

log = logging.getLogger("fastaudio")

EXECUTIONS = ("auto", "eager", "graph", "compile")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


class GenerationError(FastAudioError, ValueError):
    """Arguments to generate() that cannot be served; the message names the argument."""


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise GenerationError(f"unknown dtype {dtype!r} (fp32, bf16, fp16)") from None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _number(name: str, value, low: float, high: float, inclusive_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise GenerationError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or (value == low and not inclusive_low) or value > high:
        lo = ">=" if inclusive_low else ">"
        raise GenerationError(f"{name} must be {lo} {low:g} and <= {high:g}, got {value:g}")
    return value


def parse_device(device: Union[None, str, torch.device]) -> torch.device:
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise GenerationError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerationError(f"device {device!r}: no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GenerationError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    elif dev.type != "cpu":
        raise GenerationError(f"device {device!r}: fastaudio runs on cpu or cuda")
    return dev


def random_weights_model(name: str, seed: int = 0):
    """A preset with random weights, for benchmarks. A preset whose text tower reads RoBERTa's BPE
    (stable-audio-1.0) ships no tokenizer files, so its prompts go through the byte tokenizer
    instead, with a log line: with random weights the tokens mean nothing either way, and the text
    tower's cost is the same (max_length positions)."""
    model = build_model(name, seed=seed)
    clap = model.conditioner.clap
    if clap.tokenizer is None:
        from .models.tokenizer import ByteTokenizer
        log.warning("preset %r with random weights: no RoBERTa tokenizer files, prompts are read as "
                    "UTF-8 bytes (benchmark use only)", name)
        clap.tokenizer = ByteTokenizer()
    return model


class StableAudio:
    """The text-to-audio pipeline around a :class:`StableAudioModel`.

    The model is prepared for inference in place (weight norm folded, U-Net and VAE moved to the
    device and dtype, gradients off): pass a copy if you keep training it.
    """

    def __init__(self, model: StableAudioModel, device: Union[None, str, torch.device] = None,
                 dtype: Union[None, str, torch.dtype] = None, execution: str = "auto",
                 decode_chunk_frames: Optional[int] = None):
        if execution not in EXECUTIONS:
            raise GenerationError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
        self.device = parse_device(device)
        # VAE decoding chunks: 1024 latent frames on a GPU (a 96 x 1 M-sample bf16 activation is
        # ~200 MB; the 32-frame overlap then costs 3 %); 256 on a CPU, where cache locality beats
        # the overlap's cost (small preset, 512 frames, 2-core x86, 5 runs each, twice: chunks of
        # 128 / 256 / none decode in 0.56-0.66 / 0.45-0.53 / 0.55-0.58 s).
        self.decode_chunk_frames = decode_chunk_frames or (1024 if self.device.type == "cuda" else 256)
        self.dtype = parse_dtype(dtype) or default_dtype(self.device)
        if execution == "auto":
            execution = "graph" if self.device.type == "cuda" else "eager"
        if execution == "graph" and self.device.type != "cuda":
            raise GenerationError("execution='graph' needs a CUDA device (CUDA graphs)")
        self.execution = execution
        model.vae.fold_weight_norm()
        self.model = model.eval().requires_grad_(False)
        self._place()
        self._graphs = GraphCache()
        self._compiled = self._compiled_decoder = None
        self.last_timings: dict = {}
        self.last_seed: Optional[int] = None
        self.last_latents: Optional[torch.Tensor] = None  # the last call's latents (whole window)

    def _place(self) -> None:
        m = self.model
        m.conditioner.to(self.device)  # the text tower stays fp32: small, and closest to training
        m.unet.to(self.device, self.dtype)
        m.vae.to(self.device, self.dtype)
        self._graphs = GraphCache()
        self._compiled = self._compiled_decoder = None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, device=None, dtype=None, execution: str = "auto",
                        **load_kwargs) -> "StableAudio":
        """A fastaudio model folder or a stable-audio-tools checkpoint (see ``load_model``)."""
        return cls(load_model(path, **load_kwargs), device, dtype, execution)

    @classmethod
    def from_preset(cls, name: str, device=None, dtype=None, execution: str = "auto",
                    seed: int = 0) -> "StableAudio":
        """Random weights of a named preset: for benchmarking, not for listening."""
        return cls(random_weights_model(name, seed=seed), device, dtype, execution)

    @property
    def config(self):
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    # -- generation -------------------------------------------------------------------------
    def window_frames(self, window: Optional[float], seconds_total: float) -> int:
        """Latent frames rendered: the full window, or ``window`` seconds rounded up to the
        U-Net's length multiple."""
        cfg = self.config
        full = cfg.latent_length
        if window is None:
            return full
        window = _number("window", window, 0, cfg.window_seconds)
        if window < seconds_total:
            raise GenerationError(f"window ({window:g} s) is shorter than seconds_total "
                                  f"({seconds_total:g} s)")
        frames = math.ceil(window * cfg.sample_rate / cfg.vae.downsampling_ratio)
        multiple = cfg.latent_multiple
        return min(full, math.ceil(frames / multiple) * multiple)

    @torch.no_grad()
    def generate(self, prompt: Union[str, Sequence[str]], seconds_total: float,
                 seconds_start: float = 0, steps: Optional[int] = None,
                 cfg_scale: Optional[float] = None, negative_prompt: Optional[str] = None,
                 seed: Optional[int] = None, batch_size: int = 1, sampler: Optional[str] = None,
                 dtype: Union[None, str, torch.dtype] = None, window: Optional[float] = None,
                 callback: Optional[Callable[[dict], None]] = None,
                 cfg_rescale: Optional[float] = None, progress: bool = False,
                 trim: bool = True) -> Tensor:
        """Render ``prompt`` for ``seconds_total`` seconds: (batch, 2, round(seconds·44100)).

        Defaults (steps, cfg_scale, sampler, cfg_rescale, sigmas) come from the model config's
        ``sampling`` section. ``window`` renders fewer latent frames than the full window for
        short clips (default: the full window, as the paper). ``callback`` receives
        k-diffusion's step dict after each step. ``trim=False`` returns the whole rendered
        window (the timing evaluation looks at where the sound ends).
        """
        cfg, s = self.config, self.config.sampling
        seconds_total = _number("seconds_total", seconds_total, 0, cfg.window_seconds)
        seconds_start = _number("seconds_start", seconds_start, 0, float(cfg.conditioning.seconds_max),
                                inclusive_low=True)
        steps = s.steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise GenerationError(f"steps must be a positive integer, got {steps!r}")
        cfg_scale = _number("cfg_scale", s.cfg_scale if cfg_scale is None else cfg_scale, 0, 100)
        cfg_rescale = _number("cfg_rescale", s.cfg_rescale if cfg_rescale is None else cfg_rescale,
                              0, 1, inclusive_low=True)
        sampler = s.sampler if sampler is None else sampler
        if sampler not in PLANS:
            raise GenerationError(f"unknown sampler {sampler!r} (choose from {', '.join(PLANS)})")
        prompts = self._prompts(prompt, batch_size)
        new_dtype = parse_dtype(dtype)
        if new_dtype is not None and new_dtype != self.dtype:
            log.info("switching the U-Net and VAE to %s", new_dtype)
            self.dtype = new_dtype
            self._place()
        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 31)
        frames = self.window_frames(window, seconds_total)

        timer = StageTimer(self.device)
        cond = self.model.conditioner
        with timer.stage("text_encoding"):
            context, mask = cond(prompts, seconds_start, seconds_total)
            neg_ctx = neg_mask = None
            if negative_prompt is not None:
                neg_ctx, neg_mask = cond([negative_prompt] * len(prompts), seconds_start, seconds_total)
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        sigmas = get_sigmas(s.schedule, steps, s.sigma_min, s.sigma_max, s.rho)
        plan = make_plan(sampler, sigmas)
        noise = torch.randn((len(prompts), cfg.vae.latent_dim, frames), generator=generator,
                            device=self.device, dtype=torch.float32)
        with timer.stage("sampling"):
            latents = self._sample(noise * sigmas[0], plan, context, mask, neg_ctx, neg_mask,
                                   cfg_scale, cfg_rescale, generator, callback, progress)
        with timer.stage("decoding"):
            audio = self.model.vae.decode(latents.to(self.dtype), chunk_frames=self.decode_chunk_frames,
                                          decoder=self._decoder_forward())
        n = int(round(seconds_total * cfg.sample_rate))
        self.last_latents = latents.detach()  # the whole window, before decoding
        self.last_timings = dict(timer.seconds, total=timer.total)
        self.last_seed = int(seed)
        return (audio[..., :n] if trim else audio).float()

    def _prompts(self, prompt, batch_size) -> List[str]:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise GenerationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(prompt, str):
            return [prompt] * batch_size
        prompts = list(prompt)
        if batch_size not in (1, len(prompts)):
            raise GenerationError(f"{len(prompts)} prompts but batch_size={batch_size}")
        if not prompts:
            raise GenerationError("no prompt given")
        return prompts

    def _unet_forward(self):
        if self.execution != "compile":
            return None
        if self._compiled is None:
            self._compiled = self._compile(self.model.unet, freeze_on_cpu=True)
        return self._compiled

    def _decoder_forward(self):
        """The VAE decoder under torch.compile in "compile" mode (fuses Snake's elementwise chain
        with its neighbours; chunks have one or two lengths, each compiled once), else None."""
        if self.execution != "compile":
            return None
        if self._compiled_decoder is None:
            # not frozen: measured no faster on a CPU (fastaudio/compiled.py)
            self._compiled_decoder = self._compile(self.model.vae.decoder, freeze_on_cpu=False)
        return self._compiled_decoder

    @staticmethod
    def _compile(module: torch.nn.Module, freeze_on_cpu: bool):
        """torch.compile for inference (static shapes; with ``freeze_on_cpu``, on a CPU, frozen
        prepacked weights, recompiled if the weights change): see fastaudio/compiled.py."""
        from .compiled import compile_for_inference
        return compile_for_inference(module, freeze_on_cpu)

    def _sample(self, x0, plan, context, mask, neg_ctx, neg_mask, cfg_scale, cfg_rescale,
                generator, callback, progress) -> Tensor:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plan), desc="sampling", unit="step", leave=False) if progress else None
        try:
            if self.execution == "graph":
                key = (tuple(x0.shape), self.dtype, cfg_scale, cfg_rescale, neg_ctx is not None)

                def make() -> StepRunner:
                    guided = GuidedV(self.model.unet, context, mask, cfg_scale, cfg_rescale,
                                     neg_ctx, neg_mask)
                    runner = StepRunner(VDenoiser(guided), x0)
                    runner.capture(pool=self._graphs.shared_pool())
                    return runner
                runner = self._graphs.get(key, make)
                runner.denoiser.v_model.set_conditioning(context, mask, neg_ctx, neg_mask)
            else:
                guided = GuidedV(self.model.unet, context, mask, cfg_scale, cfg_rescale,
                                 neg_ctx, neg_mask, forward=self._unet_forward())
                runner = StepRunner(VDenoiser(guided), x0)
            return runner.run(x0, plan, generator, callback, bar)
        finally:
            if bar is not None:
                bar.close()
