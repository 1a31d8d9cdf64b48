"""``fastaudio info``: versions, device, kernel and attention backends, and what a model is
(family, parameter counts, text encoder, sampling defaults)."""
from __future__ import annotations

import os

from .common import add_model_arguments, load_pipeline


def add_info_parser(sub) -> None:
    i = sub.add_parser("info", help="model, parameter counts, device, kernel and attention backends")
    add_model_arguments(i)
    i.set_defaults(handler=run_info)


def run_info(args) -> int:
    import torch
    from .. import __version__
    from ..nn.attention import available_backends
    from ..nn.dispatch import kernel_mode
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
    pipe = load_pipeline(args, device="cpu", dtype="fp32", execution="eager")
    cfg, model = pipe.config, pipe.model
    print(f"model: {cfg.name}  family {model.family}  window {cfg.window_seconds:.2f} s "
          f"({cfg.latent_length} latent frames), {cfg.sample_rate} Hz stereo")
    for name, count in model.parameter_counts().items():
        print(f"  {name:12s} {count / 1e6:9.2f} M parameters")
    print(f"text encoder: {model.text_encoder_description()}")
    s = cfg.sampling
    print(f"sampling defaults: {s.sampler}, {s.steps} steps, cfg {s.cfg_scale:g} "
          f"(rescale {s.cfg_rescale:g}), sigma {s.sigma_min:g}…{s.sigma_max:g}")
    return 0
