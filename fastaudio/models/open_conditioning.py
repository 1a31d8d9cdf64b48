"""Stable Audio Open's conditioners, built from a stable-audio-tools ``conditioning`` config, and
the assembly of their outputs into the DiT's inputs.

    "conditioning": {"configs": [{"id": "prompt", "type": "t5",
                                  "config": {"t5_model_name": "t5-base", "max_length": 128}},
                                 {"id": "seconds_start", "type": "number",
                                  "config": {"min_val": 0, "max_val": 512}},
                                 {"id": "seconds_total", "type": "number",
                                  "config": {"min_val": 0, "max_val": 512}}],
                     "cond_dim": 768}

is SAO 1.0 (cross-attention ids prompt, seconds_start, seconds_total; global ids seconds_start,
seconds_total). SAO Small has ``max_length`` 64, only ``seconds_total`` with ``max_val`` 256,
cross-attention ids prompt, seconds_total and the global id seconds_total.

:class:`OpenConditioner` holds the conditioners in an ``nn.ModuleDict`` named ``conditioners``,
so its ``state_dict`` keys are the checkpoint's ``conditioner.conditioners.<id>.…`` keys minus
``conditioner.`` (:func:`conditioner_state` does that strip). T5 is not among them: it is not in
the checkpoint and :class:`~fastaudio.models.t5_text.T5Conditioner` keeps it out of the module
tree, as the reference does.

:meth:`OpenConditioner.assemble` is the reference's ``get_conditioning_inputs``: cross-attention
inputs concatenated along the sequence in the configured id order (a (B, C) input gets a
length-1 sequence axis), their masks likewise – the T5 mask is bool and the number masks are
float ones, so ``torch.cat`` yields a float mask, as the reference's does – and global inputs
concatenated along channels, then squeezed from (B, 1, C) to (B, C).
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..errors import FastAudioError
from ..strict import strict
from .number_conditioning import NumberConditioner
from .t5_text import T5Conditioner

log = logging.getLogger("fastaudio.conditioning")

Outputs = Dict[str, Tuple[Tensor, Optional[Tensor]]]
SUPPORTED_TYPES = ("t5", "number")
# the keyword arguments each type takes from its "config" (output_dim comes from cond_dim)
_T5_KEYS = {"t5_model_name", "max_length", "project_out", "enable_grad"}
_NUMBER_KEYS = {"min_val", "max_val"}


class ConditioningConfigError(FastAudioError, ValueError):
    """A conditioning config this engine cannot build, or inputs that do not fit it."""


def _build_one(entry: Mapping, cond_dim: int, encoder_dir, tokenizer_dir, t5_dtype) -> Tuple[str, nn.Module]:
    try:
        cid, ctype = entry["id"], entry["type"]
    except (KeyError, TypeError):
        raise ConditioningConfigError(f"conditioning entry {entry!r} needs an 'id' and a 'type'") from None
    options = dict(entry.get("config") or {})
    # the reference starts from {"output_dim": cond_dim} and lets the entry's config override it
    output_dim = int(options.pop("output_dim", cond_dim))
    if ctype == "t5":
        unknown = set(options) - _T5_KEYS
        if unknown:
            raise ConditioningConfigError(f"conditioner {cid!r} (t5): unknown options {sorted(unknown)}")
        if options.pop("enable_grad", False):
            raise ConditioningConfigError(
                f"conditioner {cid!r}: enable_grad (fine-tuning T5 with the model) is not supported; "
                "such a checkpoint would carry T5's weights, which this engine does not load")
        if encoder_dir is None:
            raise ConditioningConfigError(
                f"conditioner {cid!r} needs a T5 text encoder: pass text_encoder_dir (and "
                "tokenizer_dir), e.g. from fastaudio.models.t5_text.locate_t5")
        return cid, T5Conditioner(output_dim, encoder_dir, tokenizer_dir, dtype=t5_dtype, name=cid,
                                  **options)
    if ctype == "number":
        unknown = set(options) - _NUMBER_KEYS
        if unknown:
            raise ConditioningConfigError(f"conditioner {cid!r} (number): unknown options {sorted(unknown)}")
        return cid, NumberConditioner(output_dim, name=cid, **options)
    raise ConditioningConfigError(
        f"conditioner {cid!r} has type {ctype!r}, which this engine does not support "
        f"(supported: {', '.join(SUPPORTED_TYPES)})")


def _per_item(name: str, value, batch: int):
    """A scalar is shared by the batch; a list must have one entry per prompt."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
        if len(value) == 1:
            value = value[0]
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays, scalars
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ConditioningConfigError(f"{name}: {len(value)} values for a batch of {batch} prompts")
        return list(value)
    return [value] * batch


class OpenConditioner(nn.Module):
    """The configured conditioners by id; ``forward`` returns ``{id: (tensor, mask)}``."""

    def __init__(self, conditioners: Mapping[str, nn.Module], cross_attention_ids: Sequence[str] = (),
                 global_ids: Sequence[str] = (), default_keys: Optional[Mapping[str, str]] = None):
        super().__init__()
        self.conditioners = nn.ModuleDict(dict(conditioners))
        self.cross_attention_ids = list(cross_attention_ids)
        self.global_ids = list(global_ids)
        self.default_keys = dict(default_keys or {})
        for cid in self.cross_attention_ids + self.global_ids:
            if cid not in self.conditioners:
                raise ConditioningConfigError(
                    f"conditioning id {cid!r} is used by the diffusion model but not configured "
                    f"(configured: {', '.join(self.conditioners) or 'none'})")

    @classmethod
    def from_config(cls, conditioning: Mapping, cross_attention_ids: Sequence[str] = (),
                    global_ids: Sequence[str] = (), text_encoder_dir: Optional[str] = None,
                    tokenizer_dir: Optional[str] = None, t5_dtype: Optional[torch.dtype] = None
                    ) -> "OpenConditioner":
        """From a model config's ``model.conditioning`` section; the ids come from its
        ``model.diffusion`` section (``cross_attention_cond_ids``, ``global_cond_ids``)."""
        try:
            cond_dim, entries = int(conditioning["cond_dim"]), conditioning["configs"]
        except (KeyError, TypeError, ValueError):
            raise ConditioningConfigError("the conditioning config needs 'cond_dim' and 'configs'") from None
        for key in ("pre_encoded_keys",):
            if conditioning.get(key):
                raise ConditioningConfigError(f"conditioning {key} is not supported")
        built = {}
        for entry in entries:
            cid, module = _build_one(entry, cond_dim, text_encoder_dir, tokenizer_dir, t5_dtype)
            if cid in built:
                raise ConditioningConfigError(f"conditioning id {cid!r} is configured twice")
            built[cid] = module
        return cls(built, cross_attention_ids, global_ids, conditioning.get("default_keys"))

    # -- running the conditioners ----------------------------------------------------------------

    def encode(self, inputs: Mapping[str, list], device=None) -> Outputs:
        """Each conditioner on its own input list, found by id (or through ``default_keys``, as
        the reference's MultiConditioner does)."""
        out = {}
        for cid, module in self.conditioners.items():
            key = cid if inputs.get(cid) is not None else self.default_keys.get(cid, cid)
            if inputs.get(key) is None:
                raise ConditioningConfigError(f"the model conditions on {cid!r}; no value was given for it")
            out[cid] = module(inputs[key], device)
        return out

    def forward(self, prompts: Union[str, Sequence[str]], seconds_start=None, seconds_total=None,
                device=None) -> Outputs:
        """``{id: (tensor, mask)}`` for prompts and timing. A scalar number is shared by all
        prompts. A timing value the model has no conditioner for is ignored with a warning
        (SAO Small has no seconds_start) – an error under ``FASTAUDIO_STRICT=1``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        batch = len(prompts)
        inputs: Dict[str, list] = {"prompt": prompts}
        for name, value in (("seconds_start", seconds_start), ("seconds_total", seconds_total)):
            if value is None:
                continue
            if name not in self.conditioners:
                message = f"{name} was given but this model has no {name} conditioner; it is ignored"
                if strict():
                    raise ConditioningConfigError(f"FASTAUDIO_STRICT=1: {message}")
                log.warning(message)
                continue
            inputs[name] = _per_item(name, value, batch)
        return self.encode(inputs, device)

    # -- assembling the DiT's inputs -------------------------------------------------------------

    def assemble(self, outputs: Outputs, cross_attention_ids: Optional[Sequence[str]] = None,
                 global_ids: Optional[Sequence[str]] = None
                 ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        """(cross_attn_cond, cross_attn_mask, global_cond) as the reference's
        ``get_conditioning_inputs``; the ids default to the ones given at construction."""
        cross_ids = self.cross_attention_ids if cross_attention_ids is None else list(cross_attention_ids)
        glob_ids = self.global_ids if global_ids is None else list(global_ids)
        return assemble(outputs, cross_ids, glob_ids)


def assemble(outputs: Outputs, cross_attention_ids: Sequence[str], global_ids: Sequence[str]
             ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    cross = mask = glob = None
    for cid in list(cross_attention_ids) + list(global_ids):
        if cid not in outputs:
            raise ConditioningConfigError(
                f"no conditioner output for id {cid!r} (have: {', '.join(outputs)})")
    if cross_attention_ids:
        tensors, masks = [], []
        for cid in cross_attention_ids:
            t, m = outputs[cid]
            if t.dim() == 2:  # one vector per item: a sequence of length one
                t, m = t.unsqueeze(1), m.unsqueeze(1)
            tensors.append(t)
            masks.append(m)
        cross, mask = torch.cat(tensors, dim=1), torch.cat(masks, dim=1)
    if global_ids:
        glob = torch.cat([outputs[cid][0] for cid in global_ids], dim=-1)
        if glob.dim() == 3:
            glob = glob.squeeze(1)
    return cross, mask, glob


def conditioner_state(checkpoint_state: Mapping[str, Tensor],
                      prefix: str = "conditioner.") -> Dict[str, Tensor]:
    """The ``conditioner.`` tensors of a stable-audio-tools state dict, with that prefix removed,
    ready for ``OpenConditioner.load_state_dict``."""
    return {k[len(prefix):]: v for k, v in checkpoint_state.items() if k.startswith(prefix)}
