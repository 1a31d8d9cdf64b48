"""Test setup: on machines without CUDA the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, before any
test module (and torch) is loaded.
"""
import glob
import os

# a GPU's device node, whichever number the container gives it (/dev/nvidia0, /dev/nvidia3, ...)
_GPU_NODE = bool(glob.glob("/dev/nvidia[0-9]*"))
if os.environ.get("TRITON_INTERPRET") is None and not _GPU_NODE:
    os.environ["TRITON_INTERPRET"] = "1"
if _GPU_NODE:
    # Kernel outputs start as NaN on a GPU too, so a tile the grid skips fails a test instead of
    # passing on stale memory (under the interpreter the kernels poison by default).
    os.environ.setdefault("FASTAUDIO_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cuda":
    # fp32 comparisons in exact fp32 on a GPU: cuDNN convolutions default to TF32, and our kernels
    # follow these flags (kernels/conv1d.py, kernels/attention.py), so both sides stay IEEE
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture(autouse=True)
def _fresh_seed_and_dispatch_log():
    """Each test starts from the default kernel mode with an empty path log."""
    from fastaudio.nn import dispatch
    dispatch.set_kernel_mode(None)
    dispatch.reset_path_log()
    yield
    dispatch.set_kernel_mode(None)


@pytest.fixture
def conv2d_input_layouts(monkeypatch):
    """A list that records, for every F.conv2d / F.conv_transpose2d call, whether its input was
    channels-last in memory (the decoders' CPU channels-last path runs its convs as those)."""
    seen = []

    def spy(real):
        def call(x, *args, **kwargs):
            seen.append(x.is_contiguous(memory_format=torch.channels_last))
            return real(x, *args, **kwargs)
        return call
    for name in ("conv2d", "conv_transpose2d"):
        monkeypatch.setattr(torch.nn.functional, name, spy(getattr(torch.nn.functional, name)))
    return seen
