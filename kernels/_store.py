"""The one store rule the streaming kernels share: fp32 results cast to the output's element type,
rounded to nearest even for bf16 under the Triton interpreter too (its fp32 -> bf16 cast truncates,
GPUs round), so interpreter tests see what a GPU stores."""
import triton
import triton.language as tl


@triton.jit
def _round_for_bf16(v):
    """fp32 -> fp32 whose top 16 bits are v rounded to nearest even (interpreter only)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _cast_out(v, Ptr, ROUND_BF16: tl.constexpr):
    """v (fp32) in Ptr's element type, rounded to nearest under the interpreter too."""
    if ROUND_BF16:
        if Ptr.dtype.element_ty == tl.bfloat16:
            v = _round_for_bf16(v)
    return v.to(Ptr.dtype.element_ty)
