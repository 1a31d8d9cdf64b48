"""Reading checkpoint files and fitting their tensors to a model, for every model family:
readable-file checks, weight-norm layouts, and errors that name each missing, unexpected or
mis-shaped tensor."""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .errors import FastAudioError


class CheckpointError(FastAudioError, ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Reading tensors
# ---------------------------------------------------------------------------------------------

def read_state_dict(path: str) -> Dict[str, Tensor]:
    """Tensors of a .safetensors or .ckpt/.pt file; a clear error for corrupt or truncated files."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:  # SafetensorError, OSError: corrupt header, truncated data
            raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or "
                                  f"truncated?): {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, truncated, or not "
                              f"loadable with weights_only=True): {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return obj


def strip_training_wrapper(sd: Dict[str, Tensor], log=None) -> Dict[str, Tensor]:
    """A stable-audio-tools training wrapper's checkpoint keeps the model under ``diffusion.``
    and, when training kept one, an EMA copy of its denoiser (``diffusion.model``) under
    ``diffusion_ema.ema_model.``. Returned: the model's state dict as the reference's own
    ``export_model`` writes it - the EMA denoiser in place of the online one when there is an EMA
    (the weights the reference would ship), the rest of ``diffusion.`` as it is."""
    if not any(k.startswith("diffusion.") for k in sd):
        return sd
    out = {k[len("diffusion."):]: v for k, v in sd.items() if k.startswith("diffusion.")}
    ema_prefix = "diffusion_ema.ema_model."
    ema = {"model." + k[len(ema_prefix):]: v for k, v in sd.items() if k.startswith(ema_prefix)}
    if not ema:
        return out
    online = {k for k in out if k.startswith("model.")}
    if set(ema) != online:
        differ = sorted(set(ema) ^ online)
        raise CheckpointError(
            "the training checkpoint's EMA (diffusion_ema.ema_model.) and online denoiser "
            "(diffusion.model.) hold different tensors: " + ", ".join(differ[:6])
            + (f" (+{len(differ) - 6} more)" if len(differ) > 6 else ""))
    out.update(ema)
    if log is not None:
        log.info("stable-audio-tools training checkpoint: using its EMA denoiser weights (%d "
                 "tensors), as the reference's export_model does", len(ema))
    return out


def rename_prefixes(sd: Dict[str, Tensor], prefixes: List[Tuple[str, str]], what: str
                    ) -> Dict[str, Tensor]:
    """Our key names for a stable-audio-tools state dict: a training wrapper's ``diffusion.``
    prefix stripped (its EMA denoiser preferred, as the reference exports), then each (theirs, ours) prefix swapped; a key no prefix
    matches is an error naming it (``what`` says what the checkpoint should hold)."""
    import logging
    sd = strip_training_wrapper(sd, logging.getLogger("fastaudio"))
    out, unknown = {}, []
    for key, value in sd.items():
        for theirs, ours in prefixes:
            if key.startswith(theirs):
                out[ours + key[len(theirs):]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected tensors in the stable-audio-tools checkpoint (not part of "
                              f"{what}): " + ", ".join(unknown[:8])
                              + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""))
    return out


def _norm_except_dim0(v: Tensor) -> Tensor:
    return v.norm(2, dim=tuple(range(1, v.dim())), keepdim=True)


def normalize_weight_norm(sd: Dict[str, Tensor], expected: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """Bring weight-norm tensors into the layout the model expects: accepts weight_g/weight_v,
    torch parametrizations (original0/original1) and folded weights."""
    sd = dict(sd)
    for key in list(sd):
        if key.endswith(".parametrizations.weight.original0"):
            base = key[: -len("parametrizations.weight.original0")]
            sd[base + "weight_g"] = sd.pop(key)
            sd[base + "weight_v"] = sd.pop(base + "parametrizations.weight.original1")
    for key in list(sd):
        if key.endswith(".weight_g"):
            base = key[: -len("weight_g")]
            if base + "weight" in expected and base + "weight_g" not in expected:
                g, v = sd.pop(key), sd.pop(base + "weight_v")
                sd[base + "weight"] = g * (v / _norm_except_dim0(v))
        elif key.endswith(".weight"):
            base = key[: -len("weight")]
            if base + "weight_g" in expected and base + "weight" not in expected:
                w = sd.pop(key)
                sd[base + "weight_v"] = w
                sd[base + "weight_g"] = _norm_except_dim0(w)
    return sd


def check_state_dict(sd: Dict[str, Tensor], expected: Dict[str, Tensor], source: str,
                     allow_missing_prefixes: Tuple[str, ...] = (),
                     display: Optional[Callable[[str], str]] = None) -> None:
    """Raise naming every missing, unexpected or mis-shaped tensor (``display`` turns our key
    names back into the checkpoint's own, for the message)."""
    show = display or (lambda k: k)
    missing = [show(k) for k in expected if k not in sd and not k.startswith(allow_missing_prefixes)]
    unexpected = [show(k) for k in sd if k not in expected]
    shapes = [f"{show(k)}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sd if k in expected and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return
    def listing(title: str, items: List[str]) -> str:
        more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:6]) + more
    msg = f"checkpoint {source} does not fit the model configuration"
    if shapes:
        msg += listing("mis-shaped", shapes)
    if missing:
        msg += listing("missing", missing)
    if unexpected:
        msg += listing("unexpected", unexpected)
    if shapes:
        msg += "\n  (a checkpoint of another preset or configuration?)"
    raise CheckpointError(msg)
