"""torch.compile for inference: what ``execution="compile"`` runs.

Static shapes everywhere: one specialised graph per latent length (windows are few), never the
slower shape-generic code dynamo switches to after seeing a second length.

On a CPU the U-Net's graph is also *frozen*: inductor's ``freezing`` turns the weights into
constants, so oneDNN gets them prepacked in its blocked layout and each convolution is fused with
the pointwise ops around it; convs are traced as (N, C, 1, L) conv2d because inductor packs only
4-D/5-D convs (``fastaudio.nn.conv.convs_as_2d``). Each window length's graph then holds its own
prepacked copy of the weights. The VAE decoder, and every module on a GPU, get plain compilation.
Why (CPU timings and memory): docs/benchmarking.md#cpu-compile-mode.

Freezing bakes a copy of the weights into the compiled code, and dynamo's guards only check the
weights' addresses, so weights changed in place afterwards (``load_state_dict`` into the same
model) would silently keep the old values - even through a new wrapper, since dynamo's cache
outlives it. Every call therefore compares the weights' (identity, version counter, address) with
those the module was last frozen with (one record per module, shared by all wrappers) and, when
any changed, logs it and resets dynamo. That reset is process-wide:
every compiled graph in the process is rebuilt on its next call. Writes through ``tensor.data``
bypass the version counter and are not seen; rebuild the pipeline after those. Calls are
serialised by a lock (the inductor settings and the conv flag are process-global while a call
traces); run other torch.compile work in this process from the same thread.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Callable, List, Tuple

import torch
from torch import nn

from .nn.conv import convs_as_2d

log = logging.getLogger("fastaudio")

# module -> the weights' state its frozen graphs were built from (all wrappers share it)
_frozen_from: "weakref.WeakKeyDictionary[nn.Module, Tuple]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def compile_for_inference(module: nn.Module, freeze_on_cpu: bool = True) -> Callable[..., Any]:
    """``module``'s forward compiled for inference; frozen (see above) when its weights live on a
    CPU and ``freeze_on_cpu``."""
    device = next(module.parameters()).device
    if device.type == "cpu" and freeze_on_cpu:
        return FrozenCompiled(module)
    return torch.compile(module, dynamic=False)


class FrozenCompiled:
    """A CPU module compiled with frozen weights, rebuilt when its weights change. Inference
    only: every call runs under ``torch.no_grad()`` (freezing needs gradients off)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._compiled = torch.compile(module, dynamic=False)
        # the slots that hold the weights, listed once: walking the module tree every call costs
        # ~1 ms for the small U-Net, reading these ~0.1 ms
        self._slots: List[Tuple[dict, str]] = [
            (table, name) for m in module.modules()
            for table in (m._parameters, m._buffers) for name in table]

    def _weights_state(self) -> Tuple:
        return tuple((id(t), t._version, t.data_ptr()) for t in
                     (table[name] for table, name in self._slots) if t is not None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            state = self._weights_state()
            built_from = _frozen_from.get(self.module)
            if built_from is not None and built_from != state:
                log.info("%s: weights changed since they were frozen into its compiled graph; "
                         "resetting dynamo (process-wide) to recompile with the new weights",
                         type(self.module).__name__)
                torch._dynamo.reset()
                _frozen_from.clear()  # every graph is gone: each module records anew
            _frozen_from[self.module] = state
            with torch.no_grad(), torch._inductor.config.patch(freezing=True), convs_as_2d():
                return self._compiled(*args, **kwargs)
