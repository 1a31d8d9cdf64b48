"""FlashAttention for the U-Net's transformer blocks: reference, Triton forward and backward.

Shapes: q (B, H, Lq, D), k and v (B, H, Lk, D), key_padding_mask (B, Lk) bool, True keeps a key.
SA1.0 runs self-attention over 4096/2048 latent frames at head dim 64 and 1024/256 frames at head
dim 80, and cross-attention from those frames to 79 context tokens with a ragged mask.

Design trade-offs
-----------------
* Forward: FlashAttention-2. One program owns BLOCK_M query rows of one (batch, head) and walks the
  keys BLOCK_N at a time with an online softmax (running max and sum in fp32, base-2 exponentials,
  fp32 accumulator); it stores the output and the row's logsumexp, which is all the backward needs.
  The key loop is split into full blocks (no column masks) and one masked tail block, so lengths
  such as 431 or 79 cost masks only once.
* Head dims that are not powers of two are split, not padded: tl.arange needs power-of-two
  extents, and padding D = 80 to 128 would waste 37.5 % of every tensor-core instruction (SDPA's
  and flash-attn's CUDA kernels round 80 up to 96). Instead each head is a power-of-two main part
  plus a power-of-two tail (80 = 64 + 16, 40 = 32 + 16, 72 = 64 + 16) and every product is two
  tl.dot calls; only when the split saves nothing (24 -> 32, 104 -> 128) is D padded with masks.
* Backward: two kernels, no atomics. A dK/dV kernel (a program owns BLOCK_N keys and loops over
  the queries) and a dQ kernel (a program owns BLOCK_M queries and loops over the keys). Both
  recompute P from the saved logsumexp, so the backward does 7 block products instead of the 5 of
  the single-kernel-with-atomic-dQ variant, but gradients are bitwise deterministic (the training
  stack's same-seed convergence tests compare runs), no fp32 dQ scratch has to be zeroed, read and
  converted, and there is no contention on dQ. Cross-attention has only 79 keys (one or two key
  blocks), which would leave the dK/dV grid with B*H programs each walking 4096 queries; the query
  range is then split over a third grid axis into fp32 partials that the host sums (deterministic).
* Mask modes. "zero" is stable-audio-tools': masked keys and values are multiplied by 0, so their
  logits are 0 (not -inf) and they keep softmax weight with a zero value. It is done in-kernel by
  loading masked key rows as zeros, which is exactly the reference's arithmetic, and their dK/dV
  are zeroed on store (the gradient of k * mask). "neg_inf" excludes masked keys with -inf logits;
  a row with every key excluded outputs 0 and stores logsumexp = +inf so the backward sees P = 0.
* Numerics: statistics and accumulators in fp32 always. On a GPU the tensor-core operands stay
  fp16/bf16 (P and dS are rounded to the input dtype before their products, as FlashAttention
  does); fp32 inputs use TF32 only when torch.backends.cuda.matmul.allow_tf32 says so. Under the
  Triton interpreter bf16 dot and bf16 arithmetic are wrong, so tiles are upcast to fp32 on load
  (the UPCAST constexpr).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, KernelInputError, device_reason, dtype_reason, first_reason

MASK_MODES = ("zero", "neg_inf")
_MASK_MODE_ID = {"none": 0, "zero": 1, "neg_inf": 2}
# Largest head dim served: beyond it the q, k, v and accumulator tiles of one program exceed the
# register file at the block sizes that keep tensor cores busy (the U-Net uses 64 and 80).
MAX_HEAD_DIM = 128

# Outputs are allocated filled with NaN so a tile the grid skipped fails the tests instead of
# passing on stale memory. On by default under the interpreter, FASTAUDIO_POISON=1 on a GPU.
POISON_OUTPUTS = INTERPRET or os.environ.get("FASTAUDIO_POISON", "0") == "1"
# Tests force the split dK/dV path (it is otherwise chosen from the GPU's SM count).
DKDV_SPLITS_OVERRIDE: Optional[int] = None

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


# ------------------------------------------------------------------------------------------------
# Reference
# ------------------------------------------------------------------------------------------------
def attention_ref(q, k, v, key_padding_mask=None, mask_mode="zero", softmax_scale=None, upcast=True):
    """Plain attention: softmax(q k^T * scale) v with the given key mask semantics.

    ``upcast`` computes in fp32 (fp64 stays fp64) and returns the input dtype; ``upcast=False``
    computes in the input dtype (the "torch in low precision" leg of the three-way tolerance rule).
    """
    _check_mask_mode(mask_mode)
    out_dtype = q.dtype
    if upcast and q.dtype != torch.float64:
        q, k, v = q.float(), k.float(), v.float()
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    if key_padding_mask is not None and mask_mode == "zero":
        keep = key_padding_mask[:, None, :, None].to(k.dtype)  # (B, 1, Lk, 1)
        k, v = k * keep, v * keep
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, Lq, Lk)
    if key_padding_mask is not None and mask_mode == "neg_inf":
        keep = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        has_key = keep.any(-1, keepdim=True)
        # Rows with no key get finite logits (then weight 0) so neither softmax nor its
        # gradient produces NaN that would leak into dk/dv of every key.
        s = torch.where(has_key, s.masked_fill(~keep, float("-inf")), 0.0)
        p = torch.where(has_key, torch.softmax(s, dim=-1), 0.0)
    else:
        p = torch.softmax(s, dim=-1)
    return torch.matmul(p.to(v.dtype), v).to(out_dtype)


def _check_mask_mode(mask_mode):
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode={mask_mode!r} is not one of {', '.join(MASK_MODES)}")


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(base, offs_r, offs_c, stride_r, stride_c, r_ok, c_ok,
               CHECK_R: tl.constexpr, CHECK_C: tl.constexpr, UPCAST: tl.constexpr):
    """Load a (rows, cols) tile; masks only where a constexpr says the edge can be ragged."""
    ptrs = base + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    if CHECK_R:
        if CHECK_C:
            t = tl.load(ptrs, mask=r_ok[:, None] & c_ok[None, :], other=0.0)
        else:
            t = tl.load(ptrs, mask=r_ok[:, None], other=0.0)
    else:
        if CHECK_C:
            t = tl.load(ptrs, mask=c_ok[None, :], other=0.0)
        else:
            t = tl.load(ptrs)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _round_to_bf16(x):
    """fp32 -> the nearest bf16 value (ties to even), still as fp32: the interpreter's own
    fp32 -> bf16 conversion truncates, which would double the output error under test."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _store_tile(base, val, offs_r, offs_c, stride_r, stride_c, r_ok, c_ok,
                CHECK_C: tl.constexpr, UPCAST: tl.constexpr):
    ptrs = base + offs_r[:, None] * stride_r + offs_c[None, :] * stride_c
    if UPCAST:
        if base.dtype.element_ty == tl.bfloat16:
            val = _round_to_bf16(val)
    val = val.to(base.dtype.element_ty)
    if CHECK_C:
        tl.store(ptrs, val, mask=r_ok[:, None] & c_ok[None, :])
    else:
        tl.store(ptrs, val, mask=r_ok[:, None])


@triton.jit
def _fwd_key_block(acc_a, acc_b, m_i, l_i, q_a, q_b,
                   k_ptr, v_ptr,  # first row of this key block in (Lk, D) of one (batch, head)
                   keep_ptr,      # first key of this block in KEEP's row for this batch
                   n_left, qk_scale, offs_n, offs_da, offs_db,
                   stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
                   HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                   MASK_MODE: tl.constexpr, CHECK_KEYS: tl.constexpr, UPCAST: tl.constexpr,
                   DOT_PREC: tl.constexpr):
    key_in = offs_n < n_left
    keep = key_in
    if MASK_MODE != 0:
        keep = tl.load(keep_ptr + offs_n * stride_mn, mask=key_in, other=0) != 0
    # "zero" mode loads a dropped key's k and v as zeros: logit 0, value 0, as the reference.
    load_ok = key_in
    if MASK_MODE == 1:
        load_ok = keep
    k_a = _load_tile(k_ptr, offs_n, offs_da, stride_kn, stride_kd, load_ok, offs_da < HEAD_DIM,
                     CHECK_KEYS or MASK_MODE == 1, BLOCK_DA > HEAD_DIM, UPCAST)
    s = tl.dot(q_a, tl.trans(k_a), input_precision=DOT_PREC)
    if BLOCK_DB > 0:
        k_b = _load_tile(k_ptr, offs_n, offs_db, stride_kn, stride_kd, load_ok, offs_db < HEAD_DIM,
                         CHECK_KEYS or MASK_MODE == 1, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        s += tl.dot(q_b, tl.trans(k_b), input_precision=DOT_PREC)
    s = s * qk_scale  # log2 domain: exp2(s) == exp(q.k * scale)
    if MASK_MODE == 2:
        s = tl.where(keep[None, :], s, float("-inf"))
    elif CHECK_KEYS:
        s = tl.where(key_in[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = m_new
    if MASK_MODE == 2:
        # No key kept so far in this row: subtract 0 instead of -inf so p and alpha are 0, not NaN.
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_use[:, None])
    alpha = tl.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    v_a = _load_tile(v_ptr, offs_n, offs_da, stride_vn, stride_vd, load_ok, offs_da < HEAD_DIM,
                     CHECK_KEYS or MASK_MODE == 1, BLOCK_DA > HEAD_DIM, UPCAST)
    acc_a = tl.dot(p.to(v_a.dtype), v_a, acc_a * alpha[:, None], input_precision=DOT_PREC)
    if BLOCK_DB > 0:
        v_b = _load_tile(v_ptr, offs_n, offs_db, stride_vn, stride_vd, load_ok, offs_db < HEAD_DIM,
                         CHECK_KEYS or MASK_MODE == 1, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        acc_b = tl.dot(p.to(v_b.dtype), v_b, acc_b * alpha[:, None], input_precision=DOT_PREC)
    return acc_a, acc_b, m_new, l_i


@triton.jit
def _attn_fwd_kernel(
    Q,      # (B, H, Lq, D) any strides
    K,      # (B, H, Lk, D) any strides
    V,      # (B, H, Lk, D) any strides
    KEEP,   # (B, Lk) uint8, nonzero keeps the key; unused when MASK_MODE == 0
    O,      # (B, H, Lq, D) any strides, input dtype
    LSE,    # (B, H, Lq) fp32 contiguous: natural-log logsumexp of the scaled logits (+inf: no key)
    sm_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_mb, stride_mn,
    H, Lq, Lk,
    LQ_BUCKET, LK_BUCKET,  # power-of-two buckets of Lq, Lk: autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_MODE: tl.constexpr,  # 0 none, 1 zero, 2 neg_inf
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_da = tl.arange(0, BLOCK_DA)
    q_ok = start_m + offs_m < Lq

    # int64 base offsets; the per-element offsets inside a block stay small.
    q_ptr = Q + b * stride_qb + h * stride_qh + start_m.to(tl.int64) * stride_qm
    q_a = _load_tile(q_ptr, offs_m, offs_da, stride_qm, stride_qd, q_ok, offs_da < HEAD_DIM,
                     True, BLOCK_DA > HEAD_DIM, UPCAST)
    acc_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    # Without a tail the b-tiles are placeholders that are never read (the compiler drops them).
    offs_db = offs_da
    q_b = q_a
    acc_b = acc_a
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        q_b = _load_tile(q_ptr, offs_m, offs_db, stride_qm, stride_qd, q_ok, offs_db < HEAD_DIM,
                         True, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        acc_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    qk_scale = sm_scale * _LOG2E

    # Block pointers advance by BLOCK_N rows per step (64-bit pointer arithmetic).
    k_ptr = K + b * stride_kb + h * stride_kh
    v_ptr = V + b * stride_vb + h * stride_vh
    keep_ptr = KEEP + b * stride_mb
    n_full = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc_a, acc_b, m_i, l_i = _fwd_key_block(
            acc_a, acc_b, m_i, l_i, q_a, q_b, k_ptr, v_ptr, keep_ptr,
            Lk - start_n, qk_scale, offs_n, offs_da, offs_db,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_MODE, False, UPCAST, DOT_PREC)
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
        keep_ptr += BLOCK_N * stride_mn
    if n_full < Lk:  # ragged last key block
        acc_a, acc_b, m_i, l_i = _fwd_key_block(
            acc_a, acc_b, m_i, l_i, q_a, q_b, k_ptr, v_ptr, keep_ptr,
            Lk - n_full, qk_scale, offs_n, offs_da, offs_db,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_MODE, True, UPCAST, DOT_PREC)

    if MASK_MODE == 2:
        empty = l_i == 0.0  # every key excluded: output 0, logsumexp +inf (P = 0 in backward)
        l_div = tl.where(empty, 1.0, l_i)
        lse = tl.where(empty, float("inf"), (m_i + tl.log2(l_div)) * _LN2)
    else:
        l_div = l_i
        lse = (m_i + tl.log2(l_i)) * _LN2
    inv_l = 1.0 / l_div
    o_ptr = O + b * stride_ob + h * stride_oh + start_m.to(tl.int64) * stride_om
    _store_tile(o_ptr, acc_a * inv_l[:, None], offs_m, offs_da, stride_om, stride_od,
                q_ok, offs_da < HEAD_DIM, BLOCK_DA > HEAD_DIM, UPCAST)
    if BLOCK_DB > 0:
        _store_tile(o_ptr, acc_b * inv_l[:, None], offs_m, offs_db, stride_om, stride_od,
                    q_ok, offs_db < HEAD_DIM, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
    tl.store(LSE + pid_bh * Lq + start_m + offs_m, lse, mask=q_ok)


@triton.jit
def _bwd_delta_kernel(
    O,      # (B, H, Lq, D) any strides
    DO,     # (B, H, Lq, D) any strides
    DELTA,  # (B, H, Lq) fp32 contiguous: rowsum(dO * O)
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, Lq,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = start_m + offs_m < Lq
    o = _load_tile(O + b * stride_ob + h * stride_oh + start_m.to(tl.int64) * stride_om,
                   offs_m, offs_d, stride_om, stride_od, ok, offs_d < HEAD_DIM,
                   True, BLOCK_D > HEAD_DIM, True)
    do = _load_tile(DO + b * stride_dob + h * stride_doh + start_m.to(tl.int64) * stride_dom,
                    offs_m, offs_d, stride_dom, stride_dod, ok, offs_d < HEAD_DIM,
                    True, BLOCK_D > HEAD_DIM, True)
    tl.store(DELTA + pid_bh * Lq + start_m + offs_m, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _dkdv_query_block(dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b,
                      q_ptr, do_ptr,       # first row of this query block in (Lq, D)
                      lse_ptr, delta_ptr,  # first row of this query block in (Lq,)
                      m_left, qk_scale, offs_m, offs_da, offs_db,
                      stride_qm, stride_qd, stride_dom, stride_dod,
                      HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                      CHECK_Q: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr):
    q_ok = offs_m < m_left
    q_a = _load_tile(q_ptr, offs_m, offs_da, stride_qm, stride_qd, q_ok, offs_da < HEAD_DIM,
                     CHECK_Q, BLOCK_DA > HEAD_DIM, UPCAST)
    do_a = _load_tile(do_ptr, offs_m, offs_da, stride_dom, stride_dod, q_ok, offs_da < HEAD_DIM,
                      CHECK_Q, BLOCK_DA > HEAD_DIM, UPCAST)
    if CHECK_Q:
        # Rows past Lq: lse = +inf makes their P exactly 0, so they add nothing.
        lse = tl.load(lse_ptr + offs_m, mask=q_ok, other=float("inf"))
        delta = tl.load(delta_ptr + offs_m, mask=q_ok, other=0.0)
    else:
        lse = tl.load(lse_ptr + offs_m)
        delta = tl.load(delta_ptr + offs_m)
    # Transposed block (keys x queries) so that dK and dV come out as plain products.
    s_t = tl.dot(k_a, tl.trans(q_a), input_precision=DOT_PREC)
    dp_t = tl.dot(v_a, tl.trans(do_a), input_precision=DOT_PREC)
    q_b = q_a
    do_b = do_a
    if BLOCK_DB > 0:
        q_b = _load_tile(q_ptr, offs_m, offs_db, stride_qm, stride_qd, q_ok, offs_db < HEAD_DIM,
                         CHECK_Q, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        do_b = _load_tile(do_ptr, offs_m, offs_db, stride_dom, stride_dod, q_ok, offs_db < HEAD_DIM,
                          CHECK_Q, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        s_t += tl.dot(k_b, tl.trans(q_b), input_precision=DOT_PREC)
        dp_t += tl.dot(v_b, tl.trans(do_b), input_precision=DOT_PREC)
    p_t = tl.exp2(s_t * qk_scale - (lse * _LOG2E)[None, :])
    ds_t = p_t * (dp_t - delta[None, :])
    dv_a = tl.dot(p_t.to(do_a.dtype), do_a, dv_a, input_precision=DOT_PREC)
    dk_a = tl.dot(ds_t.to(q_a.dtype), q_a, dk_a, input_precision=DOT_PREC)
    if BLOCK_DB > 0:
        dv_b = tl.dot(p_t.to(do_b.dtype), do_b, dv_b, input_precision=DOT_PREC)
        dk_b = tl.dot(ds_t.to(q_b.dtype), q_b, dk_b, input_precision=DOT_PREC)
    return dk_a, dk_b, dv_a, dv_b


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q,      # (B, H, Lq, D) any strides
    K,      # (B, H, Lk, D) any strides
    V,      # (B, H, Lk, D) any strides
    KEEP,   # (B, Lk) uint8, nonzero keeps the key; unused when MASK_MODE == 0
    DO,     # (B, H, Lq, D) any strides
    LSE,    # (B, H, Lq) fp32 contiguous, from the forward
    DELTA,  # (B, H, Lq) fp32 contiguous, rowsum(dO * O)
    DK,     # (S, B, H, Lk, D): fp32 partials per query split, or dk itself when S == 1
    DV,     # (S, B, H, Lk, D): same layout as DK
    sm_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dks, stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvs, stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    stride_mb, stride_mn,
    H, Lq, Lk,
    LQ_BUCKET, LK_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_MODE: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    n_splits = tl.num_programs(2)
    b = pid_bh // H
    h = pid_bh % H
    start_n = pid_n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_da = tl.arange(0, BLOCK_DA)
    key_in = start_n + offs_n < Lk
    keep = key_in
    if MASK_MODE != 0:
        keep = tl.load(KEEP + b * stride_mb + (start_n + offs_n) * stride_mn, mask=key_in, other=0) != 0
    load_ok = key_in
    if MASK_MODE == 1:
        load_ok = keep  # "zero" mode: dropped keys take part as k = v = 0

    k_ptr = K + b * stride_kb + h * stride_kh + start_n.to(tl.int64) * stride_kn
    v_ptr = V + b * stride_vb + h * stride_vh + start_n.to(tl.int64) * stride_vn
    k_a = _load_tile(k_ptr, offs_n, offs_da, stride_kn, stride_kd, load_ok, offs_da < HEAD_DIM,
                     True, BLOCK_DA > HEAD_DIM, UPCAST)
    v_a = _load_tile(v_ptr, offs_n, offs_da, stride_vn, stride_vd, load_ok, offs_da < HEAD_DIM,
                     True, BLOCK_DA > HEAD_DIM, UPCAST)
    dk_a = tl.zeros([BLOCK_N, BLOCK_DA], dtype=tl.float32)
    dv_a = tl.zeros([BLOCK_N, BLOCK_DA], dtype=tl.float32)
    offs_db = offs_da
    k_b = k_a
    v_b = v_a
    dk_b = dk_a
    dv_b = dv_a
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        k_b = _load_tile(k_ptr, offs_n, offs_db, stride_kn, stride_kd, load_ok, offs_db < HEAD_DIM,
                         True, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        v_b = _load_tile(v_ptr, offs_n, offs_db, stride_vn, stride_vd, load_ok, offs_db < HEAD_DIM,
                         True, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        dk_b = tl.zeros([BLOCK_N, BLOCK_DB], dtype=tl.float32)
        dv_b = tl.zeros([BLOCK_N, BLOCK_DB], dtype=tl.float32)
    qk_scale = sm_scale * _LOG2E

    # This program's share of the queries: whole query blocks, split pid_s of n_splits.
    chunk = tl.cdiv(tl.cdiv(Lq, n_splits), BLOCK_M) * BLOCK_M
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, Lq)
    full_hi = tl.minimum(hi, (Lq // BLOCK_M) * BLOCK_M)
    lo64 = lo.to(tl.int64)
    q_ptr = Q + b * stride_qb + h * stride_qh + lo64 * stride_qm
    do_ptr = DO + b * stride_dob + h * stride_doh + lo64 * stride_dom
    lse_ptr = LSE + pid_bh * Lq + lo64
    delta_ptr = DELTA + pid_bh * Lq + lo64
    for start_m in range(lo, full_hi, BLOCK_M):
        dk_a, dk_b, dv_a, dv_b = _dkdv_query_block(
            dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, q_ptr, do_ptr, lse_ptr, delta_ptr,
            Lq - start_m, qk_scale, offs_m, offs_da, offs_db,
            stride_qm, stride_qd, stride_dom, stride_dod,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, False, UPCAST, DOT_PREC)
        q_ptr += BLOCK_M * stride_qm
        do_ptr += BLOCK_M * stride_dom
        lse_ptr += BLOCK_M
        delta_ptr += BLOCK_M
    # The pointers now sit at max(full_hi, lo): the ragged last query block, if this split owns it.
    tail = tl.maximum(full_hi, lo)
    if tail < hi:
        dk_a, dk_b, dv_a, dv_b = _dkdv_query_block(
            dk_a, dk_b, dv_a, dv_b, k_a, k_b, v_a, v_b, q_ptr, do_ptr, lse_ptr, delta_ptr,
            Lq - tail, qk_scale, offs_m, offs_da, offs_db,
            stride_qm, stride_qd, stride_dom, stride_dod,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, True, UPCAST, DOT_PREC)

    # Masked keys get no gradient: in "zero" mode they entered as k * 0, v * 0; in "neg_inf"
    # mode their P is 0 in the forward (the recomputed P above ignored the mask to save a select
    # per element, which only touched these rows).
    if MASK_MODE != 0:
        dk_a = tl.where(keep[:, None], dk_a, 0.0)
        dv_a = tl.where(keep[:, None], dv_a, 0.0)
        if BLOCK_DB > 0:
            dk_b = tl.where(keep[:, None], dk_b, 0.0)
            dv_b = tl.where(keep[:, None], dv_b, 0.0)
    dk_ptr = DK + pid_s.to(tl.int64) * stride_dks + b * stride_dkb + h * stride_dkh \
        + start_n.to(tl.int64) * stride_dkn
    dv_ptr = DV + pid_s.to(tl.int64) * stride_dvs + b * stride_dvb + h * stride_dvh \
        + start_n.to(tl.int64) * stride_dvn
    _store_tile(dk_ptr, dk_a * sm_scale, offs_n, offs_da, stride_dkn, stride_dkd,
                key_in, offs_da < HEAD_DIM, BLOCK_DA > HEAD_DIM, UPCAST)
    _store_tile(dv_ptr, dv_a, offs_n, offs_da, stride_dvn, stride_dvd,
                key_in, offs_da < HEAD_DIM, BLOCK_DA > HEAD_DIM, UPCAST)
    if BLOCK_DB > 0:
        _store_tile(dk_ptr, dk_b * sm_scale, offs_n, offs_db, stride_dkn, stride_dkd,
                    key_in, offs_db < HEAD_DIM, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        _store_tile(dv_ptr, dv_b, offs_n, offs_db, stride_dvn, stride_dvd,
                    key_in, offs_db < HEAD_DIM, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)


@triton.jit
def _dq_key_block(dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta,
                  k_ptr, v_ptr,  # first row of this key block in (Lk, D)
                  keep_ptr,      # first key of this block in KEEP's row
                  n_left, qk_scale, offs_n, offs_da, offs_db,
                  stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
                  HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
                  MASK_MODE: tl.constexpr, CHECK_KEYS: tl.constexpr, UPCAST: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    key_in = offs_n < n_left
    keep = key_in
    if MASK_MODE != 0:
        keep = tl.load(keep_ptr + offs_n * stride_mn, mask=key_in, other=0) != 0
    load_ok = key_in
    if MASK_MODE == 1:
        load_ok = keep
    k_a = _load_tile(k_ptr, offs_n, offs_da, stride_kn, stride_kd, load_ok, offs_da < HEAD_DIM,
                     CHECK_KEYS or MASK_MODE == 1, BLOCK_DA > HEAD_DIM, UPCAST)
    v_a = _load_tile(v_ptr, offs_n, offs_da, stride_vn, stride_vd, load_ok, offs_da < HEAD_DIM,
                     CHECK_KEYS or MASK_MODE == 1, BLOCK_DA > HEAD_DIM, UPCAST)
    s = tl.dot(q_a, tl.trans(k_a), input_precision=DOT_PREC)
    dp = tl.dot(do_a, tl.trans(v_a), input_precision=DOT_PREC)
    k_b = k_a
    if BLOCK_DB > 0:
        k_b = _load_tile(k_ptr, offs_n, offs_db, stride_kn, stride_kd, load_ok, offs_db < HEAD_DIM,
                         CHECK_KEYS or MASK_MODE == 1, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        v_b = _load_tile(v_ptr, offs_n, offs_db, stride_vn, stride_vd, load_ok, offs_db < HEAD_DIM,
                         CHECK_KEYS or MASK_MODE == 1, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        s += tl.dot(q_b, tl.trans(k_b), input_precision=DOT_PREC)
        dp += tl.dot(do_b, tl.trans(v_b), input_precision=DOT_PREC)
    p = tl.exp2(s * qk_scale - lse2[:, None])
    # Keys past Lk (and dropped keys in "zero" mode) were loaded as zero rows, so their dS * k
    # term vanishes without a select; only "neg_inf" must drop P of real, excluded keys.
    if MASK_MODE == 2:
        p = tl.where(keep[None, :], p, 0.0)
    ds = p * (dp - delta[:, None])
    dq_a = tl.dot(ds.to(k_a.dtype), k_a, dq_a, input_precision=DOT_PREC)
    if BLOCK_DB > 0:
        dq_b = tl.dot(ds.to(k_b.dtype), k_b, dq_b, input_precision=DOT_PREC)
    return dq_a, dq_b


@triton.jit
def _attn_bwd_dq_kernel(
    Q,      # (B, H, Lq, D) any strides
    K,      # (B, H, Lk, D) any strides
    V,      # (B, H, Lk, D) any strides
    KEEP,   # (B, Lk) uint8; unused when MASK_MODE == 0
    DO,     # (B, H, Lq, D) any strides
    LSE,    # (B, H, Lq) fp32 contiguous
    DELTA,  # (B, H, Lq) fp32 contiguous
    DQ,     # (B, H, Lq, D) any strides, input dtype
    sm_scale,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    stride_mb, stride_mn,
    H, Lq, Lk,
    LQ_BUCKET, LK_BUCKET,  # autotune keys only
    HEAD_DIM: tl.constexpr, BLOCK_DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    MASK_MODE: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    start_m = pid_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_da = tl.arange(0, BLOCK_DA)
    q_ok = start_m + offs_m < Lq
    q_ptr = Q + b * stride_qb + h * stride_qh + start_m.to(tl.int64) * stride_qm
    do_ptr = DO + b * stride_dob + h * stride_doh + start_m.to(tl.int64) * stride_dom
    q_a = _load_tile(q_ptr, offs_m, offs_da, stride_qm, stride_qd, q_ok, offs_da < HEAD_DIM,
                     True, BLOCK_DA > HEAD_DIM, UPCAST)
    do_a = _load_tile(do_ptr, offs_m, offs_da, stride_dom, stride_dod, q_ok, offs_da < HEAD_DIM,
                      True, BLOCK_DA > HEAD_DIM, UPCAST)
    dq_a = tl.zeros([BLOCK_M, BLOCK_DA], dtype=tl.float32)
    offs_db = offs_da
    q_b = q_a
    do_b = do_a
    dq_b = dq_a
    if BLOCK_DB > 0:
        offs_db = BLOCK_DA + tl.arange(0, BLOCK_DB)
        q_b = _load_tile(q_ptr, offs_m, offs_db, stride_qm, stride_qd, q_ok, offs_db < HEAD_DIM,
                         True, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        do_b = _load_tile(do_ptr, offs_m, offs_db, stride_dom, stride_dod, q_ok, offs_db < HEAD_DIM,
                          True, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)
        dq_b = tl.zeros([BLOCK_M, BLOCK_DB], dtype=tl.float32)
    # Rows past Lq (and rows with no kept key) carry lse = +inf: their P is 0.
    lse2 = tl.load(LSE + pid_bh * Lq + start_m + offs_m, mask=q_ok, other=float("inf")) * _LOG2E
    delta = tl.load(DELTA + pid_bh * Lq + start_m + offs_m, mask=q_ok, other=0.0)
    qk_scale = sm_scale * _LOG2E

    k_ptr = K + b * stride_kb + h * stride_kh
    v_ptr = V + b * stride_vb + h * stride_vh
    keep_ptr = KEEP + b * stride_mb
    n_full = (Lk // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq_a, dq_b = _dq_key_block(
            dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta, k_ptr, v_ptr, keep_ptr,
            Lk - start_n, qk_scale, offs_n, offs_da, offs_db,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_MODE, False, UPCAST, DOT_PREC)
        k_ptr += BLOCK_N * stride_kn
        v_ptr += BLOCK_N * stride_vn
        keep_ptr += BLOCK_N * stride_mn
    if n_full < Lk:
        dq_a, dq_b = _dq_key_block(
            dq_a, dq_b, q_a, q_b, do_a, do_b, lse2, delta, k_ptr, v_ptr, keep_ptr,
            Lk - n_full, qk_scale, offs_n, offs_da, offs_db,
            stride_kn, stride_kd, stride_vn, stride_vd, stride_mn,
            HEAD_DIM, BLOCK_DA, BLOCK_DB, MASK_MODE, True, UPCAST, DOT_PREC)

    dq_ptr = DQ + b * stride_dqb + h * stride_dqh + start_m.to(tl.int64) * stride_dqm
    _store_tile(dq_ptr, dq_a * sm_scale, offs_m, offs_da, stride_dqm, stride_dqd,
                q_ok, offs_da < HEAD_DIM, BLOCK_DA > HEAD_DIM, UPCAST)
    if BLOCK_DB > 0:
        _store_tile(dq_ptr, dq_b * sm_scale, offs_m, offs_db, stride_dqm, stride_dqd,
                    q_ok, offs_db < HEAD_DIM, BLOCK_DA + BLOCK_DB > HEAD_DIM, UPCAST)


# ------------------------------------------------------------------------------------------------
# Autotuning: one config under the interpreter; per-architecture candidate lists on a GPU.
# ------------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, num_warps, num_stages). sm80 has 164 KB of shared memory per SM and likes
# 64-key blocks with 3-4 stages; sm90 has 228 KB, runs wgmma on 64-row warpgroups and keeps
# 128-key blocks busy with 8 warps. Every candidate was compiled for sm80 and sm90 at head dims
# 64 and 80 in all mask modes with ptxas (no GPU needed): configs that spilled more than a few
# hundred bytes were dropped; none of the sm90 ones spills, a few sm80 ones spill <= 280 bytes
# in the masked variants and are left to the autotuner's timing.
_FWD_CANDIDATES = {
    "sm80": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 4), (128, 64, 8, 4),
             (64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 4), (128, 128, 8, 2)],
    "sm90": [(128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 4),
             (64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 4)],
}
# dK/dV: BLOCK_N keys are held, BLOCK_M queries stream. dQ: the reverse.
_DKDV_CANDIDATES = {
    "sm80": [(32, 128, 8, 3), (32, 64, 4, 3), (32, 64, 4, 4), (64, 64, 8, 3), (64, 128, 8, 2)],
    "sm90": [(32, 128, 8, 3), (64, 128, 8, 2), (64, 64, 4, 3), (32, 64, 4, 4), (64, 64, 8, 3)],
}
_DQ_CANDIDATES = {
    "sm80": [(128, 32, 8, 3), (64, 32, 4, 3), (64, 32, 4, 4), (128, 64, 8, 2), (64, 64, 8, 3)],
    "sm90": [(128, 32, 4, 3), (128, 64, 8, 3), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4),
             (128, 64, 8, 2)],
}
_INTERPRET_CONFIG = (32, 32, 4, 1)  # small blocks still exercise multi-block loops and tails


def _configs(candidates):
    if INTERPRET:
        # Several configs would make the autotuner benchmark, which needs a GPU driver.
        rows = [_INTERPRET_CONFIG]
    else:
        rows = list(dict.fromkeys(candidates["sm80"] + candidates["sm90"]))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in rows]


def _pruner(candidates):
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        q = args["Q"]
        major = torch.cuda.get_device_capability(q.device)[0] if q.is_cuda else 8
        wanted = set(candidates["sm90" if major >= 9 else "sm80"])
        lq, lk = args["LQ_BUCKET"], args["LK_BUCKET"]
        kept = [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted
                # blocks far larger than the sequence only add masked work (Lq = 1, 79 keys)
                and c.kwargs["BLOCK_M"] <= max(64, lq) and c.kwargs["BLOCK_N"] <= max(32, lk)]
        kept = kept or configs[:1]
        if q.dtype == torch.float32:
            # fp32 tiles are twice the registers (and IEEE products run without tensor cores):
            # the larger blocks spill, so only the smallest tiles are worth timing. fp32 is a
            # correctness path here; the dispatcher prefers SDPA for it.
            smallest = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] for c in kept)
            kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] == smallest]
        return kept
    return prune


def _autotuned(kernel, candidates):
    return triton.autotune(
        configs=_configs(candidates),
        key=["LQ_BUCKET", "LK_BUCKET", "HEAD_DIM", "MASK_MODE"],
        prune_configs_by={"early_config_prune": _pruner(candidates)},
    )(kernel)


_attn_fwd = _autotuned(_attn_fwd_kernel, _FWD_CANDIDATES)
_attn_bwd_dkdv = _autotuned(_attn_bwd_dkdv_kernel, _DKDV_CANDIDATES)
_attn_bwd_dq = _autotuned(_attn_bwd_dq_kernel, _DQ_CANDIDATES)


# ------------------------------------------------------------------------------------------------
# Host launchers
# ------------------------------------------------------------------------------------------------
def head_dim_split(d: int) -> Tuple[int, int]:
    """(BLOCK_DA, BLOCK_DB): a power-of-two main part and tail covering d (tail 0 if unneeded)."""
    padded = max(16, triton.next_power_of_2(d))
    main = max(16, 1 << (d.bit_length() - 1))  # largest power of two <= d; tl.dot needs K >= 16
    if main >= d:
        return padded, 0
    tail = max(16, triton.next_power_of_2(d - main))
    if main + tail >= padded:  # the split would not save anything (24 -> 16 + 16 = 32)
        return padded, 0
    return main, tail


def _bucket(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _dot_precision(dtype) -> str:
    if INTERPRET or dtype != torch.float32:
        return "ieee"  # ignored for fp16/bf16 operands; exact fp32 in the interpreter
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _new(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    dtype = dtype or like.dtype
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _new_like(t: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(t)  # keeps t's layout (e.g. a (B, L, H, D) buffer viewed as B, H, L, D)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def _new_output(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # (B, Lq, H, D) memory viewed as (B, H, Lq, D): the U-Net's "b h n d -> b n (h d)" is then free.
    B, H, Lq, _ = q.shape
    return _new((B, Lq, H, v.shape[-1]), q).transpose(1, 2)


def _mask_args(key_padding_mask, like):
    if key_padding_mask is None:
        return like, 0, 0  # never dereferenced (MASK_MODE == 0)
    keep = key_padding_mask.view(torch.uint8)  # bool and uint8 share the byte layout
    return keep, keep.stride(0), keep.stride(1)


def _mode_id(key_padding_mask, mask_mode) -> int:
    return 0 if key_padding_mask is None else _MASK_MODE_ID[mask_mode]


def _fwd_launch(q, k, v, key_padding_mask, mask_mode, softmax_scale, config=None,
                head_split=None):
    """``config`` (BLOCK_M, BLOCK_N, num_warps, num_stages) forces one launch configuration
    (no autotuner) and ``head_split`` (BLOCK_DA, BLOCK_DB) the head-dim split: the attention
    fault probe (benchmarks/attention_fault_probe.py) varies them one at a time."""
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    o = _new_output(q, v)
    lse = _new((B, H, Lq), q, torch.float32)
    if q.numel() == 0:
        return o, lse
    if Lk == 0:  # no key at all: nothing to attend to
        return o.zero_(), lse.fill_(float("inf"))
    da, db = head_dim_split(D) if head_split is None else head_split
    keep, smb, smn = _mask_args(key_padding_mask, q)
    args = (q, k, v, keep, o, lse, softmax_scale,
            *q.stride(), *k.stride(), *v.stride(), *o.stride(), smb, smn,
            H, Lq, Lk, _bucket(Lq), _bucket(Lk))
    meta = dict(HEAD_DIM=D, BLOCK_DA=da, BLOCK_DB=db,
                MASK_MODE=_mode_id(key_padding_mask, mask_mode), UPCAST=INTERPRET,
                DOT_PREC=_dot_precision(q.dtype))
    if config is None:
        grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](*args, **meta)
    else:
        bm, bn, warps, stages = config
        _attn_fwd_kernel[(triton.cdiv(Lq, bm), B * H)](
            *args, **meta, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
    return o, lse


def forward_candidates(major: int):
    """The forward's autotune candidates for a compute capability major (8: sm80 list, 9+: sm90),
    as (BLOCK_M, BLOCK_N, num_warps, num_stages)."""
    return list(_FWD_CANDIDATES["sm90" if major >= 9 else "sm80"])


def _dkdv_splits(q, Lq, Lk, BH) -> int:
    """How many query ranges the dK/dV grid splits into (1 unless the key grid is too small)."""
    if DKDV_SPLITS_OVERRIDE is not None:
        return max(1, min(DKDV_SPLITS_OVERRIDE, triton.cdiv(Lq, 16)))
    if not q.is_cuda:
        return 1
    n_sm = torch.cuda.get_device_properties(q.device).multi_processor_count
    programs = triton.cdiv(Lk, 128) * BH  # with the largest key block any config uses
    if programs >= n_sm:
        return 1
    # Two waves of programs, but every split still walks at least 128 queries.
    return max(1, min(triton.cdiv(2 * n_sm, programs), Lq // 128))


def _bwd_launch(do, q, k, v, o, lse, key_padding_mask, mask_mode, softmax_scale):
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    dq, dk, dv = _new_like(q), _new_like(k), _new_like(v)
    if q.numel() == 0 or Lk == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    da, db = head_dim_split(D)
    keep, smb, smn = _mask_args(key_padding_mask, q)
    mode = _mode_id(key_padding_mask, mask_mode)
    common = dict(HEAD_DIM=D, BLOCK_DA=da, BLOCK_DB=db, MASK_MODE=mode, UPCAST=INTERPRET,
                  DOT_PREC=_dot_precision(q.dtype))

    delta = _new((B, H, Lq), q, torch.float32)
    block_m = _INTERPRET_CONFIG[0] if INTERPRET else 64
    _bwd_delta_kernel[(triton.cdiv(Lq, block_m), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, Lq,
        HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), BLOCK_M=block_m)

    splits = _dkdv_splits(q, Lq, Lk, B * H)
    if splits == 1:
        dk_buf, dv_buf = dk.unsqueeze(0), dv.unsqueeze(0)
    else:  # fp32 partial sums per query range, added up below (deterministic, no atomics)
        dk_buf = _new((splits, B, H, Lk, D), q, torch.float32)
        dv_buf = _new((splits, B, H, Lk, D), q, torch.float32)
    grid = lambda meta: (triton.cdiv(Lk, meta["BLOCK_N"]), B * H, splits)  # noqa: E731
    _attn_bwd_dkdv[grid](
        q, k, v, keep, do, lse, delta, dk_buf, dv_buf, softmax_scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk_buf.stride(), *dv_buf.stride(),
        smb, smn, H, Lq, Lk, _bucket(Lq), _bucket(Lk), **common)
    if splits > 1:
        dk.copy_(dk_buf.sum(0))
        dv.copy_(dv_buf.sum(0))

    grid = lambda meta: (triton.cdiv(Lq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _attn_bwd_dq[grid](
        q, k, v, keep, do, lse, delta, dq, softmax_scale,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), smb, smn,
        H, Lq, Lk, _bucket(Lq), _bucket(Lk), **common)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# torch.library custom ops (opaque to torch.compile, shapes given by the fake implementations)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastaudio::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: Optional[torch.Tensor], mask_mode: str,
                        softmax_scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (out (B, H, Lq, D), logsumexp (B, H, Lq) fp32, natural log)."""
    return _fwd_launch(q, k, v, key_padding_mask, mask_mode, softmax_scale)


@flash_attention_fwd.register_fake
def _(q, k, v, key_padding_mask, mask_mode, softmax_scale):
    B, H, Lq, _ = q.shape
    o = q.new_empty((B, Lq, H, v.shape[-1])).transpose(1, 2)
    return o, q.new_empty((B, H, Lq), dtype=torch.float32)


@torch.library.custom_op("fastaudio::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        o: torch.Tensor, lse: torch.Tensor,
                        key_padding_mask: Optional[torch.Tensor], mask_mode: str,
                        softmax_scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dq, dk, dv), each in the layout of its input."""
    return _bwd_launch(do, q, k, v, o, lse, key_padding_mask, mask_mode, softmax_scale)


@flash_attention_bwd.register_fake
def _(do, q, k, v, o, lse, key_padding_mask, mask_mode, softmax_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FlashAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, mask_mode, softmax_scale):
        o, lse = torch.ops.fastaudio.flash_attention_fwd(q, k, v, key_padding_mask, mask_mode,
                                                         softmax_scale)
        ctx.save_for_backward(q, k, v, o, lse, key_padding_mask)
        ctx.mask_mode = mask_mode
        ctx.softmax_scale = softmax_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, key_padding_mask = ctx.saved_tensors
        dq, dk, dv = torch.ops.fastaudio.flash_attention_bwd(
            do, q, k, v, o, lse, key_padding_mask, ctx.mask_mode, ctx.softmax_scale)
        return dq, dk, dv, None, None, None


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------
def flash_attention_unsupported_reason(q, k, v, key_padding_mask=None) -> Optional[str]:
    """Why the Triton kernel cannot serve these inputs, or None when it can."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k, v must be 4-D (B, H, L, D)"
    B, H, Lq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3]:
        return f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if k.shape[-1] != D or v.shape[-1] != D:
        return f"head dims differ (q {D}, k {k.shape[-1]}, v {v.shape[-1]})"
    if D > MAX_HEAD_DIM:
        return f"head dim {D} > {MAX_HEAD_DIM} (the tiles would not fit in registers)"
    if B * H > 65535:
        return f"B*H = {B * H} > 65535 (the grid's second axis holds one (batch, head) each)"
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, k.shape[2]):
        return f"key_padding_mask shape {tuple(key_padding_mask.shape)} is not (B, Lk) = {(B, k.shape[2])}"
    reason = first_reason(device_reason(q, k, v, key_padding_mask), dtype_reason(q, k, v))
    if reason is not None:
        return reason
    if len({q.dtype, k.dtype, v.dtype}) != 1:
        return f"mixed dtypes {q.dtype}, {k.dtype}, {v.dtype}"
    if len({t.device for t in (q, k, v)}) != 1 or (
            key_padding_mask is not None and key_padding_mask.device != q.device):
        return "tensors on different devices"
    if q.is_cuda and q.dtype == torch.bfloat16 and torch.cuda.get_device_capability(q.device)[0] < 8:
        return "bf16 tensor-core products need sm80 or newer"
    return None


def flash_attention(q, k, v, key_padding_mask=None, mask_mode="zero", softmax_scale=None):
    """softmax(q k^T * scale) v with the Triton FlashAttention kernels; differentiable.

    q (B, H, Lq, D), k/v (B, H, Lk, D), key_padding_mask (B, Lk) bool (True keeps). The output
    has shape (B, H, Lq, D) and (B, Lq, H, D) memory order. Raises KernelInputError naming
    why when the kernel cannot serve the inputs (see flash_attention_unsupported_reason).
    """
    _check_mask_mode(mask_mode)
    reason = flash_attention_unsupported_reason(q, k, v, key_padding_mask)
    if reason is not None:
        raise KernelInputError(f"flash_attention: {reason}")
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask != 0
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _FlashAttentionFn.apply(q, k, v, key_padding_mask, mask_mode, scale)
