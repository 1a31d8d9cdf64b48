"""What a kernel call does on the host, in call order: every kernel launch of the given modules
(kernels/_common.launch_census) and every ATen op that reaches the dispatcher. The launch-count
tests of GroupNorm and Snake share it."""
from torch.utils._python_dispatch import TorchDispatchMode

from fastaudio.kernels import _common

# the only ATen ops a rebuilt kernel's host path may run: its output / workspace allocations
ALLOCATIONS = {"aten.empty.memory_format", "aten.full.default", "aten.empty_strided.default"}


class AtenTrace(TorchDispatchMode):
    """Appends ("aten", name) for every ATen op that reaches the dispatcher."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.log.append(("aten", str(func)))
        return func(*args, **(kwargs or {}))


def census(fn, *modules):
    """(fn's result, the log of ("launch", kernel) and ("aten", op) entries in call order)."""
    with _common.launch_census(*modules) as log, AtenTrace(log):
        out = fn()
    return out, log
