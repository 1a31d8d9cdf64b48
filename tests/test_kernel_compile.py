"""The rebuilt GroupNorm and Snake kernels and the channels-last conv compile for sm80 and sm90
(Triton's own ptxas, no GPU needed): the interpreter runs a kernel's Python, not its lowering, so
constructs the compiler rejects (or lowers differently) would otherwise first show on a lent GPU.
The conv's lowering is also read: its loads must be 16-byte vectors issued as cp.async, its dots
mma.sync on sm80 and wgmma on sm90, and nothing spilled to local memory (the point of that kernel,
kernels/conv1d_cl.py)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r'''
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastaudio.kernels import conv1d_cl as cl, group_norm as gn, snake as sk

ALIGNED = ("L", "N")  # lengths the JIT would see divisible by 16 at the real shapes
vectorised = {}


def compile_(kernel, sig, consts, arch, warps=4, stages=None, aligned=ALIGNED):
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        else:
            signature[name] = sig.get(name, "i32")
            # what the JIT specialises at run time: 16-byte aligned pointers, lengths % 16 == 0
            if signature[name].startswith("*") or name in aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(kernel, signature, constexprs=consts, attrs=attrs)
    options = {"num_warps": warps} if stages is None else {"num_warps": warps, "num_stages": stages}
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    ptx = k.asm["ptx"]
    vectorised[kernel.__name__] = ".v4." in ptx or ".v2." in ptx
    if consts.get("SIN") == 2:  # the fast sine: no libdevice slow path, no local memory
        assert ".local" not in ptx, kernel.__name__
    return ptx

x = "*bf16"
gn_ptrs = {"X_ptr": x, "Y_ptr": x, "DY_ptr": x, "DX_ptr": x, "WS_ptr": "*fp32", "Stats_ptr": "*fp32",
           "Sums_ptr": "*fp32", "W_ptr": "*fp32", "Bias_ptr": "*fp32", "Scale_ptr": x,
           "Shift_ptr": x, "DScale_ptr": x, "DShift_ptr": x, "DW_ptr": "*fp32", "DB_ptr": "*fp32",
           "eps": "fp32"}
flags = dict(HAS_W=True, HAS_B=True, HAS_SCALE=True, HAS_SHIFT=True, SILU=True)
done = []
for arch in (80, 90):
    compile_(gn._gn_fwd_stats_kernel, gn_ptrs, dict(BLOCK_R=2, BLOCK_L=2048), arch, 8)
    compile_(gn._gn_fwd_apply_kernel, gn_ptrs,
             dict(**flags, ROUND_BF16=False, BLOCK_R=2, BLOCK_L=2048, BLOCK_S=64), arch, 8)
    compile_(gn._gn_bwd_sums_kernel, gn_ptrs,
             dict(**flags, NEED_DSCALE=True, NEED_DSHIFT=True, ROUND_BF16=False, BLOCK_R=2,
                  BLOCK_L=2048), arch, 8)
    compile_(gn._gn_bwd_dx_kernel, gn_ptrs,
             dict(**flags, ROUND_BF16=False, BLOCK_R=2, BLOCK_L=2048, BLOCK_CG=64), arch, 8)
    compile_(gn._gn_bwd_param_kernel, gn_ptrs,
             dict(HAS_SCALE=True, NEED_DW=True, NEED_DB=True, ROUND_BF16=False, BLOCK_C=1024), arch)
    for dt, sin in (("*bf16", 2), ("*fp32", 1)):
        for param in (0, 3):
            sp = {"X_ptr": dt, "Y_ptr": dt, "DY_ptr": dt, "DX_ptr": dt, "P1_ptr": "*fp32",
                  "P2_ptr": "*fp32", "Part_ptr": "*fp32", "Count_ptr": "*i32", "DP1_ptr": "*fp32",
                  "DP2_ptr": "*fp32"}
            compile_(sk._snake_fwd_kernel, sp, dict(PARAM=param, SIN=sin, ROUND_BF16=False,
                                                    BLOCK=sk._FWD_BLOCK), arch)
            compile_(sk._snake_bwd_kernel, sp,
                     dict(PARAM=param, NEED_DX=True, NEED_DP1=True, NEED_DP2=param != 0,
                          SIN=sin, ROUND_BF16=False, CHUNK=sk._BWD_CHUNK, BLOCK=sk._BWD_BLOCK,
                          BLOCK_P=64), arch)
    # the channels-last conv as the JIT sees a bf16 U-Net conv: channel strides specialised to 1,
    # channel counts and row strides divisible by 16; the tutorial's 128x128x64 tile, 3 stages
    cl_ints = ("C_in", "C_out", "sxb", "sxl", "srb", "srl", "syb", "syl")
    ptx = compile_(cl._conv1d_cl_fwd_kernel.fn, {n: "*bf16" for n in ("x_ptr", "w_ptr", "b_ptr",
                                                                        "r_ptr", "y_ptr")},
                   dict(HAS_BIAS=True, HAS_RES=True, UPCAST=False, PRECISION="ieee", OFF64=False,
                        BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, sxc=1, syc=1, src=1, sb=1),
                   arch, 8, 3, cl_ints)
    assert "cp.async" in ptx and ".v4." in ptx and ".local" not in ptx, arch
    assert ("wgmma" in ptx) if arch == 90 else ("mma.sync" in ptx), arch
    done.append(arch)
print("compiled for", done)
# the streaming kernels move 16-byte vectors (their loops carry contiguity hints)
for name in ("_gn_fwd_stats_kernel", "_gn_fwd_apply_kernel", "_gn_bwd_sums_kernel",
             "_gn_bwd_dx_kernel", "_snake_fwd_kernel", "_snake_bwd_kernel"):
    assert vectorised[name], name
print("vectorised", sorted(k for k, v in vectorised.items() if v))
'''


@pytest.mark.slow
def test_kernels_compile_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "compiled for [80, 90]" in out.stdout
