"""torch.compile for inference: what ``execution="compile"`` runs.

Static shapes everywhere: one specialised graph per latent length (windows are few), never the
slower shape-generic code dynamo switches to after seeing a second length.

On a CPU the graph is also *frozen*: inductor's ``freezing`` turns the weights into constants, so
oneDNN gets them prepacked in its blocked layout and each convolution is fused with the pointwise
ops around it; convs are traced as (N, C, 1, L) conv2d because inductor packs only 4-D/5-D convs
(``fastaudio.nn.conv.convs_as_2d``). Measured on the small preset's guided U-Net step (512
frames, batch 2, fp32, 2-core x86, torch 2.13): 74-80 ms compiled, 66 ms frozen with 2-D convs;
freezing alone changed nothing (conv1d stays unpacked) and 2-D convs without freezing were slower
(87 ms). GPUs keep plain compilation (unmeasured there; CUDA graphs are the GPU default).

Freezing bakes a copy of the weights into the compiled code, so changing them in place
afterwards (``load_state_dict`` into the same model) would silently keep the old ones. Every call
therefore compares the parameters' and buffers' version counters (a few microseconds) and
recompiles when any changed, with a log line.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Tuple

import torch
from torch import nn

from .nn.conv import convs_as_2d

log = logging.getLogger("fastaudio")


def compile_for_inference(module: nn.Module) -> Callable[..., Any]:
    """``module``'s forward compiled for inference on the device its weights live on."""
    device = next(module.parameters()).device
    if device.type == "cpu":
        return FrozenCompiled(module)
    return torch.compile(module, dynamic=False)


def _versions(module: nn.Module) -> Tuple[Tuple[int, int, int], ...]:
    # data_ptr catches a tensor swapped for another (module.weight = ...), _version an in-place write
    return tuple((id(t), t.data_ptr(), t._version)
                 for t in (*module.parameters(), *module.buffers()))


class FrozenCompiled:
    """A CPU module compiled with frozen weights; recompiled when its weights change.

    Inference only: call it under ``torch.no_grad()`` (freezing needs gradients off; with them on,
    inductor compiles without freezing)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self._compiled = torch.compile(module, dynamic=False)
        self._versions = _versions(module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        versions = _versions(self.module)
        if versions != self._versions:
            log.info("%s: weights changed since compilation; recompiling with the new weights",
                     type(self.module).__name__)
            # dynamo's cache lives on the forward's code object and its guards do not look at
            # weight values: the frozen graph would be reused unless the cache is dropped.
            torch._dynamo.reset()
            self._compiled = torch.compile(self.module, dynamic=False)
            self._versions = versions
        with torch._inductor.config.patch(freezing=True), convs_as_2d():
            return self._compiled(*args, **kwargs)
