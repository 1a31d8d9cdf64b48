"""fastaudio's Triton kernels (installed as ``fastaudio.kernels``).

One op per file, each in the same order: the plain PyTorch reference (``<op>_ref``), the
``@triton.jit`` kernels, the host launchers, the ``torch.library`` custom ops and the
``autograd.Function``. Modules are imported lazily by ``fastaudio.nn`` so that a machine
without Triton still runs every reference path.
"""
