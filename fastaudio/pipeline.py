"""Text to audio: ``StableAudio.generate(prompt, seconds_total)`` → :class:`GenerationOutput`.

``generate`` is built from four named stages, each public so a run can be taken apart,
reproduced or compared (and each under an NVTX range, timed in ``output.timings``):

1. :meth:`StableAudio.encode_prompt` – text and timing conditioning (the model family's own);
2. :meth:`StableAudio.prepare_latents` – standard-normal initial noise, one generator per item;
3. :meth:`StableAudio.sample` – the sampler over the guided backbone (U-Net or DiT), one CUDA
   graph replay per step on CUDA;
4. :meth:`StableAudio.decode` – the VAE in overlapping chunks; then trimmed to seconds_total.

The pipeline knows no model family: it asks the model for its conditioning, its guided backbone
and its objective (v or rectified flow, :mod:`fastaudio.diffusion.objectives`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .diffusion.cuda_graph import GraphCache, StepRunner
from .diffusion.objectives import objective
from .pipeline_args import (GenerationError, default_dtype, number, parse_device, parse_dtype,
                            positive_int, prompt_list, seed_list)
from .profiling import StageTimer

log = logging.getLogger("fastaudio")

EXECUTIONS = ("auto", "eager", "graph", "compile")
__all__ = ["StableAudio", "GenerationOutput", "GenerationError", "EXECUTIONS"]


@dataclass
class GenerationOutput:
    """What one :meth:`StableAudio.generate` call made.

    ``audio`` (B, 2, N) float32 at ``sample_rate`` (trimmed to seconds_total unless
    ``trim=False``); ``seeds`` one per item (``seeds[i]`` alone reproduces item i);
    ``latents`` (B, C, frames) the rendered window before decoding; ``timings`` seconds per stage
    and ``total``."""
    audio: Tensor
    sample_rate: int
    seeds: List[int]
    latents: Tensor
    timings: Dict[str, float]


def random_weights_model(name: str, seed: int = 0):
    """A preset with random weights, for benchmarks (``fastaudio.presets``)."""
    from .presets import build_preset_model
    return build_preset_model(name, seed=seed)


class StableAudio:
    """The text-to-audio pipeline around a model of any supported family.

    The model is prepared for inference in place (weight norm folded, backbone and VAE moved to
    the device and dtype, gradients off): pass a copy if you keep training it. ``dtype`` is the
    pipeline's: :meth:`to` changes it; ``generate(dtype=...)`` only confirms it (a different
    value raises rather than silently converting the weights for this and every later call).

    CPU switches (``fastaudio/cpu_fast.py``, docs/benchmarking.md#cpu-fast-paths):
    ``decoder_dtype`` (default: ``dtype``) runs the VAE decoder in its own precision;
    ``quantize="int8"`` makes the backbone's linear layers dynamic int8 (fp32 backbone, CPU).
    ``dtype=None`` on a CPU with native bf16 (AMX / AVX-512 BF16) gives a rectified-flow Stable
    Audio Open model (SAO Small) :data:`fastaudio.cpu_fast.CPU_DEFAULT` (chosen by measurement);
    fp32 elsewhere.
    """

    def __init__(self, model, device: Union[None, str, torch.device] = None,
                 dtype: Union[None, str, torch.dtype] = None, execution: str = "auto",
                 decode_chunk_frames: Optional[int] = None,
                 decoder_dtype: Union[None, str, torch.dtype] = None,
                 quantize: Optional[str] = None):
        from . import cpu_fast
        if execution not in EXECUTIONS:
            raise GenerationError(f"execution must be one of {', '.join(EXECUTIONS)}, got {execution!r}")
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        defaults = cpu_fast.default_dtypes(model, self.device) if self.dtype is None else None
        if defaults is not None:  # said once: a precision chosen for the user is not silent
            self.dtype = defaults[0]
            log.info("dtype not given: %s runs in %s (backbone) / %s (decoder) on this CPU with "
                     "native bf16 (fastaudio/cpu_fast.py; dtype='fp32' for full precision)",
                     model.family, str(defaults[0]).replace("torch.", ""),
                     str(defaults[1]).replace("torch.", ""))
        self.dtype = self.dtype or default_dtype(self.device)
        self.decoder_dtype = parse_dtype(decoder_dtype) or (
            defaults[1] if defaults is not None else self.dtype)
        try:
            self.quantize = cpu_fast.check_quantize(quantize, self.device, self.dtype)
        except cpu_fast.CpuOptionError as e:
            raise GenerationError(str(e)) from None
        if execution == "auto":
            execution = "graph" if self.device.type == "cuda" else "eager"
        if execution == "graph" and self.device.type != "cuda":
            raise GenerationError("execution='graph' needs a CUDA device (CUDA graphs)")
        self.execution = execution
        self.decode_chunk_frames = (decode_chunk_frames or cpu_fast.default_chunk_frames(
            self.device, self.decoder_dtype, execution) or model.default_decode_chunk_frames(self.device.type))
        self.objective = objective(model.objective)
        model.vae.fold_weight_norm()
        self.model = model.eval().requires_grad_(False)
        self._place()

    def _place(self) -> None:
        m = self.model
        m.conditioner.to(self.device)  # text encoders stay fp32: small, and closest to training
        m.backbone.to(self.device, self.dtype)
        if self.quantize:
            from .cpu_fast import quantize_backbone
            quantize_backbone(m.backbone)
        m.vae.to(self.device, self.decoder_dtype)
        self._graphs = GraphCache()
        self._compiled = self._compiled_decoder = None

    def to(self, device: Union[None, str, torch.device] = None,
           dtype: Union[None, str, torch.dtype] = None) -> "StableAudio":
        """Move the pipeline (weights, captured graphs dropped) to another device and/or dtype."""
        new_device = parse_device(device) if device is not None else self.device
        new_dtype = parse_dtype(dtype) or self.dtype
        if self.execution == "graph" and new_device.type != "cuda":
            raise GenerationError("execution='graph' needs a CUDA device (CUDA graphs)")
        if self.quantize and (new_device.type != "cpu" or new_dtype != torch.float32):
            raise GenerationError("a pipeline with quantize='int8' stays on the CPU in fp32")
        if self.decoder_dtype == self.dtype:  # a decoder that followed the dtype keeps following it
            self.decoder_dtype = new_dtype
        self.device, self.dtype = new_device, new_dtype
        self._place()
        return self

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, device=None, dtype=None, execution: str = "auto",
                        decoder_dtype=None, quantize: Optional[str] = None,
                        decode_chunk_frames: Optional[int] = None, **load_kwargs) -> "StableAudio":
        """A model folder of any supported layout (see :func:`fastaudio.load_model`)."""
        from .checkpoints import load_model
        return cls(load_model(path, **load_kwargs), device, dtype, execution,
                   decode_chunk_frames=decode_chunk_frames, decoder_dtype=decoder_dtype,
                   quantize=quantize)

    @classmethod
    def from_preset(cls, name: str, device=None, dtype=None, execution: str = "auto",
                    seed: int = 0, decoder_dtype=None, quantize: Optional[str] = None,
                    decode_chunk_frames: Optional[int] = None) -> "StableAudio":
        """Random weights of a named preset: for benchmarking, not for listening."""
        return cls(random_weights_model(name, seed=seed), device, dtype, execution,
                   decode_chunk_frames=decode_chunk_frames, decoder_dtype=decoder_dtype,
                   quantize=quantize)

    @property
    def config(self):
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.model.config.sample_rate

    # -- stages -----------------------------------------------------------------------------
    def window_frames(self, window: Optional[float], seconds_total: float) -> int:
        """Latent frames rendered: the full window, or ``window`` seconds rounded up to the
        backbone's length multiple."""
        cfg = self.config
        full = cfg.latent_length
        if window is None:
            return full
        window = number("window", window, 0, cfg.window_seconds)
        if window < seconds_total:
            raise GenerationError(f"window ({window:g} s) is shorter than seconds_total "
                                  f"({seconds_total:g} s)")
        frames = math.ceil(window * cfg.sample_rate / self.model.vae.ratio)
        multiple = cfg.latent_multiple
        return min(full, math.ceil(frames / multiple) * multiple)

    @torch.no_grad()
    def encode_prompt(self, prompt: Union[str, Sequence[str]], seconds_start: float = 0.0,
                      seconds_total: Optional[float] = None, negative_prompt: Optional[str] = None,
                      batch_size: int = 1):
        """The model family's conditioning object for these prompts and timings (what
        :meth:`sample` takes). ``seconds_total`` defaults to the model's window."""
        prompts = prompt_list(prompt, batch_size)
        cfg = self.config
        seconds_total = cfg.window_seconds if seconds_total is None else \
            number("seconds_total", seconds_total, 0, cfg.window_seconds)
        seconds_start = number("seconds_start", seconds_start, 0, self.model.max_seconds_start,
                               inclusive_low=True)
        negatives = None if negative_prompt is None else [negative_prompt] * len(prompts)
        return self.model.encode_conditioning(prompts, seconds_start, seconds_total, negatives)

    def _generators(self, seeds: Sequence[int]) -> List[torch.Generator]:
        return [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def prepare_latents(self, batch_size: int, frames: int, seeds: Sequence[int],
                        latents: Optional[Tensor] = None,
                        generators: Optional[List[torch.Generator]] = None) -> Tensor:
        """Standard-normal initial noise (B, C, frames) in fp32 on the pipeline's device: item i
        drawn from its own generator seeded with ``seeds[i]``; or ``latents`` checked and used
        as given (the sampler scales it, as the reference scales its noise)."""
        shape = (batch_size, self.model.vae.latent_dim, frames)
        if latents is not None:
            if not isinstance(latents, Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
                raise GenerationError(f"latents must have shape {shape} (batch, latent channels, "
                                      f"window frames), got {got}")
            if not latents.is_floating_point() or not torch.isfinite(latents).all():
                raise GenerationError("latents must be finite floating-point noise")
            return latents.to(self.device, torch.float32)
        gens = generators if generators is not None else self._generators(seeds)
        return torch.stack([torch.randn(shape[1:], generator=g, device=self.device, dtype=torch.float32)
                            for g in gens])

    @torch.no_grad()
    def sample(self, noise: Tensor, cond, steps: Optional[int] = None,
               cfg_scale: Optional[float] = None, cfg_rescale: Optional[float] = None,
               sampler: Optional[str] = None, sigma_min: Optional[float] = None,
               sigma_max: Optional[float] = None,
               generators: Optional[List[torch.Generator]] = None,
               callback: Optional[Callable[[dict], None]] = None, progress: bool = False) -> Tensor:
        """Run the sampler from standard-normal ``noise`` under ``cond`` (from
        :meth:`encode_prompt`); returns the latents (B, C, frames) in fp32. Unset arguments come
        from the model config's ``sampling`` section. ``generators`` (one per item) draw the SDE
        or pingpong noise."""
        s = self.config.sampling
        steps = positive_int("steps", s.steps if steps is None else steps)
        cfg_scale = number("cfg_scale", s.cfg_scale if cfg_scale is None else cfg_scale, 0, 100)
        cfg_rescale = number("cfg_rescale", s.cfg_rescale if cfg_rescale is None else cfg_rescale,
                             0, 1, inclusive_low=True)
        sampler = s.sampler if sampler is None else sampler
        obj = self.objective
        if sampler not in obj.plans:
            raise GenerationError(f"unknown sampler {sampler!r} for this {obj.name}-objective model "
                                  f"(choose from {', '.join(obj.plans)})")
        for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None:
                number(name, value, 0, 1e6)
        try:
            schedule = obj.schedule(steps, s, sigma_min, sigma_max, noise.shape[-1])
            plan = obj.plans[sampler](schedule)
        except ValueError as e:  # ScheduleError / SamplerError name the problem
            raise GenerationError(str(e)) from None
        x0 = obj.start(noise, schedule)
        from tqdm.auto import tqdm
        bar = tqdm(total=len(plan), desc="sampling", unit="step", leave=False) if progress else None
        try:
            runner = self._runner(x0, cond, cfg_scale, cfg_rescale)
            return runner.run(x0, plan, generators, callback, bar)
        finally:
            if bar is not None:
                bar.close()

    def _runner(self, x0: Tensor, cond, cfg_scale: float, cfg_rescale: float) -> StepRunner:
        if self.execution != "graph":
            guided = self.model.guided(cond, cfg_scale, cfg_rescale, forward=self._backbone_forward())
            return StepRunner(self.objective.denoiser(guided), x0)
        has_negative = getattr(cond, "negative_context", None) is not None or \
            getattr(cond, "negative_cross_attn_cond", None) is not None
        key = (tuple(x0.shape), self.dtype, cfg_scale, cfg_rescale, has_negative)

        def make() -> StepRunner:
            guided = self.model.guided(cond, cfg_scale, cfg_rescale)
            runner = StepRunner(self.objective.denoiser(guided), x0)
            runner.guided = guided
            runner.capture(pool=self._graphs.shared_pool())
            return runner
        runner = self._graphs.get(key, make)
        runner.guided.set_conditioning(cond)
        return runner

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, frames) → audio (B, 2, frames · downsampling) in fp32, in chunks."""
        audio = self.model.vae.decode(latents.to(self.device, self.decoder_dtype),
                                      chunk_frames=self.decode_chunk_frames,
                                      decoder=self._decoder_forward())
        return audio.float()

    # -- the whole run ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: Union[str, Sequence[str]], seconds_total: float,
                 seconds_start: float = 0, steps: Optional[int] = None,
                 cfg_scale: Optional[float] = None, negative_prompt: Optional[str] = None,
                 seed: Union[None, int, Sequence[int]] = None, batch_size: int = 1,
                 sampler: Optional[str] = None, dtype: Union[None, str, torch.dtype] = None,
                 window: Optional[float] = None, latents: Optional[Tensor] = None,
                 sigma_min: Optional[float] = None, sigma_max: Optional[float] = None,
                 callback: Optional[Callable[[dict], None]] = None,
                 cfg_rescale: Optional[float] = None, progress: bool = False,
                 trim: bool = True) -> GenerationOutput:
        """Render ``prompt`` for ``seconds_total`` seconds.

        Defaults (steps, cfg_scale, sampler, cfg_rescale, sigmas) come from the model config's
        ``sampling`` section. ``seed``: an int (item i gets seed + i), one per item, or None
        (random). ``latents``: the initial standard-normal noise (B, C, frames) instead of the
        seeded draw; the seeds then only drive SDE / pingpong step noise (default 0, so the same
        latents give the same audio). ``window`` renders fewer latent frames than the full window for short
        clips. ``callback`` receives k-diffusion's step dict after each step. ``trim=False``
        returns the whole rendered window.
        """
        cfg = self.config
        seconds_total = number("seconds_total", seconds_total, 0, cfg.window_seconds)
        wanted = parse_dtype(dtype)
        if wanted is not None and wanted != self.dtype:
            raise GenerationError(f"dtype={wanted} but this pipeline runs in {self.dtype}: build it "
                                  "with that dtype or call pipe.to(dtype=...) first")
        prompts = prompt_list(prompt, batch_size)
        if seed is None and latents is not None:
            seed = 0  # the run is then a function of the latents alone (step noise seeded 0, 1, …)
        seeds = seed_list(seed, len(prompts))
        frames = self.window_frames(window, seconds_total)
        timer = StageTimer(self.device)
        with timer.stage("text_encoding"):
            cond = self.encode_prompt(prompts, seconds_start, seconds_total, negative_prompt)
        generators = self._generators(seeds)
        noise = self.prepare_latents(len(prompts), frames, seeds, latents, generators)
        with timer.stage("sampling"):
            rendered = self.sample(noise, cond, steps, cfg_scale, cfg_rescale, sampler, sigma_min,
                                   sigma_max, generators, callback, progress)
        with timer.stage("decoding"):
            audio = self.decode(rendered)
        n = int(round(seconds_total * cfg.sample_rate))
        return GenerationOutput(audio=audio[..., :n] if trim else audio, sample_rate=self.sample_rate,
                                seeds=seeds, latents=rendered,
                                timings=dict(timer.seconds, total=timer.total))

    # -- compiled forms ---------------------------------------------------------------------
    def _backbone_forward(self):
        """The backbone under torch.compile in "compile" mode (frozen on a CPU), else None."""
        if self.execution != "compile":
            return None
        if self._compiled is None:
            self._compiled = self._compile(self.model.backbone, freeze_on_cpu=True)
        return self._compiled

    def _decoder_forward(self):
        """The VAE decoder under torch.compile in "compile" mode (chunks have one or two
        lengths, each compiled once), else None. Frozen on a CPU only in bf16
        (:func:`fastaudio.cpu_fast.freeze_decoder`: where freezing was measured faster)."""
        if self.execution != "compile":
            return None
        if self._compiled_decoder is None:
            from .cpu_fast import freeze_decoder
            self._compiled_decoder = self._compile(
                self.model.vae.decoder, freeze_on_cpu=freeze_decoder(self.device, self.decoder_dtype))
        return self._compiled_decoder

    @staticmethod
    def _compile(module: torch.nn.Module, freeze_on_cpu: bool):
        from .compiled import compile_for_inference
        return compile_for_inference(module, freeze_on_cpu)
