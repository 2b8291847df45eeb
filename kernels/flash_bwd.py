"""
FlashAttention-2, backward pass
===============================

In this file you will learn how the backward pass gets ``dQ, dK, dV`` without the ``[T_q, T_k]``
probability matrix the forward pass never stored. You will learn about:

* **recomputation**: the forward saved one number per query row, ``lse = log sum_j exp(s_ij)``, so
  ``P_ij = exp(s_ij - lse_i)`` is one ``exp2`` away, tile by tile;
* the softmax gradient in FlashAttention-2's form. With ``dP = dO V^T`` and
  ``delta_i = sum_j P_ij dP_ij = sum_d dO_id O_id`` (a row dot product, computed first, see
  ``_bwd_preprocess``)::

      dV = P^T dO          dS = P * (dP - delta)          dQ = scale dS K          dK = scale dS^T Q

* **two passes without atomics**: one program per block of *keys* walks over the queries and
  accumulates ``dK, dV`` in registers (``_bwd_dkdv``); one program per block of *queries* walks over
  the keys and accumulates ``dQ`` (``_bwd_dq``). The probabilities are recomputed in both;
* **grouped-query attention**: a key/value head is shared by ``GROUP`` query heads, so its gradient is
  the sum over them: the ``_bwd_dkdv`` program loops over the group, still without atomics;
* the same full / masked tile split as the forward (``_tiles.py``), now also seen from the keys' side.
"""

import contextlib
import functools

import torch
import triton
import triton.language as tl

from attn_course.kernels import _fit, _mma_sync, _variants
from attn_course.kernels._ops import backward_buffers, define_padding_rows
from attn_course.kernels._runtime import interpreter_scope, is_interpreted

from ._tiles import (
    allowed,
    batch_chunks,
    batch_part,
    desc_batch,
    dot,
    head_dim_tile,
    key_tiles,
    launch_grid,
    load_rows,
    narrow,
    needs_wide_offsets,
    overhang,
    query_tiles,
    seq_bounds,
    store_rows,
    tile_mask,
)
from .flash_alibi import bias as alibi_bias
from .flash_alibi import launch_args as alibi_args
from .flash_alibi import slopes_of
from .flash_dropout import counters, kept, launch_args
from .flash_softcap import kernel_scales, tanh


@triton.jit
def _bwd_preprocess(
    Out, dOut, Delta,  # pointers: out and its gradient (like q), delta (like lse)
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_gb, stride_gh, stride_gt, stride_gd,  # strides of dOut
    stride_lb, stride_lh, stride_lt,  # strides of Delta (the same layout as lse)
    cu_seqlens_q, T_q, H,
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_M: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """``delta_i = sum_d dO_id * O_id`` for one block of query rows, in float32."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # (see _tiles.launch_grid)
    q_start, T_q = seq_bounds(cu_seqlens_q, b, T_q, IS_VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM).to(tl.int64)
    row = (q_start + offs_m).to(tl.int64)
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    ok = offs_m < T_q
    mask = tile_mask(offs_m, T_q, HEAD_DIM, D_REAL)  # (BLOCK_M, HEAD_DIM): rows of the sequence, real columns
    o = tl.load(Out + b64 * stride_ob + h64 * stride_oh + row[:, None] * stride_ot + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)  # (BLOCK_M, HEAD_DIM)
    do = tl.load(dOut + b64 * stride_gb + h64 * stride_gh + row[:, None] * stride_gt + offs_d[None, :] * stride_gd,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(Delta + b64 * stride_lb + h64 * stride_lh + row * stride_lt, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _dkdv_tiles(
    dk, dv, k, v,  # accumulators (BLOCK_N, HEAD_DIM) in float32, and this program's key / value block
    Q, dOut, Lse, Delta,  # pointers at this (sequence, query head)'s first row
    desc_q, desc_do, tb, h, q_first,  # descriptors over q and dOut, and where this (sequence, query head) is
    stride_qt, stride_qd, stride_gt, stride_gd, stride_lt,
    offs_n,  # (BLOCK_N,) key indices of this block
    start, end,  # query range to walk, [start, end)
    T_q, T_k, window_left, window_right, qk_scale, cap,  # (see flash_fwd._attn_fwd)
    slope,  # this query head's ALiBi slope in log2 units (ALIBI)
    seed, drop_head, drop_C, dropout_p, drop_scale,  # dropout: this (sequence, head)'s first counter, etc.
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
    DROPOUT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr, WIDE: tl.constexpr,
):
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qT = load_rows(Q, desc_q, tb, h, m0, q_first, stride_qt, stride_qd, T_q, BLOCK_M, HEAD_DIM, D_REAL, MASKED, TMA,
                       True, WIDE)
        do = load_rows(dOut, desc_do, tb, h, m0, q_first, stride_gt, stride_gd, T_q, BLOCK_M, HEAD_DIM, D_REAL, MASKED,
                       TMA, False, WIDE)
        if MASKED:
            row_ok = offs_m < T_q
            lse = tl.load(Lse + offs_m * stride_lt, mask=row_ok, other=0.0)
            delta = tl.load(Delta + offs_m * stride_lt, mask=row_ok, other=0.0)
        else:
            lse = tl.load(Lse + offs_m * stride_lt)
            delta = tl.load(Delta + offs_m * stride_lt)
        sT = dot(k, qT, INTERP_BF16, IEEE) * qk_scale  # (BLOCK_N, BLOCK_M) scores, transposed, log2 units
        if SOFTCAP:  # (the cap's derivative, 1 - tanh^2, multiplies dS below)
            tT = tanh(sT)
            sT = cap * tT
        if ALIBI:  # (transposed: keys down, queries across)
            sT += alibi_bias(slope, offs_m[None, :], offs_n[:, None], T_q, T_k)
        pT = tl.math.exp2(sT - lse[None, :] * 1.4426950408889634)  # probabilities, recomputed
        if MASKED:  # also zeroes rows with no allowed key, whose lse is -inf
            pT = tl.where(tl.trans(allowed(offs_m, offs_n, T_q, T_k, window_left, window_right)), pT, 0.0)
        if DROPOUT:  # the forward's mask, regenerated (transposed: keys down, queries across)
            keepT = kept(seed, drop_head + offs_m[None, :].to(tl.int64) * drop_C + offs_n[:, None], dropout_p)
            dv += dot(narrow(tl.where(keepT, pT * drop_scale, 0.0), do.dtype, INTERP_BF16), do, INTERP_BF16, IEEE)
        else:
            dv += dot(narrow(pT, do.dtype, INTERP_BF16), do, INTERP_BF16, IEEE)  # (BLOCK_N, HEAD_DIM)
        dpT = dot(v, tl.trans(do), INTERP_BF16, IEEE)  # (BLOCK_N, BLOCK_M) = (dO V^T)^T
        if DROPOUT:
            dpT = tl.where(keepT, dpT * drop_scale, 0.0)  # the gradient reaches only the kept weights
        dsT = pT * (dpT - delta[None, :])
        if SOFTCAP:
            dsT = dsT * (1.0 - tT * tT)
        ds_low = narrow(dsT, qT.dtype, INTERP_BF16)  # (BLOCK_N, BLOCK_M) in the inputs' dtype, for the MMA
        dk += dot(ds_low, tl.trans(qT), INTERP_BF16, IEEE)  # (BLOCK_N, HEAD_DIM), scaled at the end
    return dk, dv


@triton.jit
def _bwd_dkdv(
    Q, K, V, dOut, Lse, Delta, dK, dV,  # pointers; dK, dV like k and v
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,  # dOut
    stride_lb, stride_lh, stride_lt,  # Lse and Delta
    stride_dkb, stride_dkh, stride_dkt, stride_dkd,  # dK and dV (allocated alike)
    desc_q, desc_k, desc_v, desc_do, desc_dq, desc_dk, desc_dv,  # descriptors when TMA (else unused)
    cu_seqlens_q, cu_seqlens_k, T_q, T_k,
    TUNE_T_Q, TUNE_T_K,  # the lengths rounded up to a power of two: the autotuner's key, unused here
    H_kv, GROUP,  # key/value heads; query heads per key/value head
    qk_scale, cap, scale,  # the score multipliers (see flash_fwd._attn_fwd), and the plain softmax scale
    window_left, window_right,
    Seed, dropout_p, drop_scale, drop_R, drop_C, drop_first,  # dropout, as in flash_fwd._attn_fwd
    Alibi, stride_ab, stride_ah,  # ALiBi slopes, as in flash_fwd._attn_fwd
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr,
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr, WIDE: tl.constexpr, DROPOUT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
):
    """One program: ``BLOCK_N`` keys of one key/value head of one sequence; sums over its query heads."""
    pid_n, h_kv, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # (see _tiles.launch_grid)
    q_start, T_q = seq_bounds(cu_seqlens_q, b, T_q, IS_VARLEN)
    k_start, T_k = seq_bounds(cu_seqlens_k, b, T_k, IS_VARLEN)
    n_start = pid_n * BLOCK_N
    if n_start >= T_k:
        return

    tb = desc_batch(b, IS_VARLEN)  # its coordinate in the descriptors
    b64, hkv64, k_start64 = b.to(tl.int64), h_kv.to(tl.int64), k_start.to(tl.int64)
    offs_n = n_start + tl.arange(0, BLOCK_N)
    Kh = K + b64 * stride_kb + hkv64 * stride_kh + k_start64 * stride_kt  # this (sequence, kv head)'s row 0
    Vh = V + b64 * stride_vb + hkv64 * stride_vh + k_start64 * stride_vt
    k = load_rows(Kh, desc_k, tb, h_kv, n_start, k_start, stride_kt, stride_kd, T_k, BLOCK_N, HEAD_DIM, D_REAL, True,
                  TMA, False, WIDE)
    v = load_rows(Vh, desc_v, tb, h_kv, n_start, k_start, stride_vt, stride_vd, T_k, BLOCK_N, HEAD_DIM, D_REAL, True,
                  TMA, False, WIDE)
    dk = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, HEAD_DIM], 0.0, dtype=tl.float32)

    lo, a, b_full, hi = query_tiles(n_start, T_q, T_k, window_left, window_right, BLOCK_M, BLOCK_N)
    # Through TMA, rows past a packed sequence's end are the next sequence's (see _tiles.overhang): this
    # block's own keys past T_k only feed their own dK, dV rows, never stored; the query tile that
    # overhangs T_q would feed every key, so it is read through pointers.
    TAIL = TMA and IS_VARLEN
    tail = overhang(T_q, lo, hi, TAIL, BLOCK_M)
    seed = 0
    if DROPOUT:
        seed = tl.load(Seed)
    for g in range(0, GROUP):  # the query heads that share this key/value head
        h = h_kv * GROUP + g
        h64 = h.to(tl.int64)
        drop_head = 0
        if DROPOUT:  # this (sequence, head)'s first counter
            drop_head = counters(drop_first, b, h, 0, H_kv * GROUP, drop_R, drop_C)
        slope = 0.0
        if ALIBI:
            slope = slopes_of(Alibi, stride_ab, stride_ah, b, h)
        Qh = Q + b64 * stride_qb + h64 * stride_qh + q_start.to(tl.int64) * stride_qt
        dOh = dOut + b64 * stride_gb + h64 * stride_gh + q_start.to(tl.int64) * stride_gt
        Lh = Lse + b64 * stride_lb + h64 * stride_lh + q_start.to(tl.int64) * stride_lt
        Dh = Delta + b64 * stride_lb + h64 * stride_lh + q_start.to(tl.int64) * stride_lt
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, dOh, Lh, Dh, desc_q, desc_do, tb, h, q_start,
                             stride_qt, stride_qd, stride_gt, stride_gd, stride_lt,
                             offs_n, lo, tl.minimum(a, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                             slope, seed, drop_head, drop_C, dropout_p, drop_scale,
                             HEAD_DIM, D_REAL, BLOCK_M, True, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, dOh, Lh, Dh, desc_q, desc_do, tb, h, q_start,
                             stride_qt, stride_qd, stride_gt, stride_gd, stride_lt,
                             offs_n, a, b_full, T_q, T_k, window_left, window_right, qk_scale, cap,
                             slope, seed, drop_head, drop_C, dropout_p, drop_scale,
                             HEAD_DIM, D_REAL, BLOCK_M, False, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
        dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, dOh, Lh, Dh, desc_q, desc_do, tb, h, q_start,
                             stride_qt, stride_qd, stride_gt, stride_gd, stride_lt,
                             offs_n, b_full, tl.minimum(hi, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                             slope, seed, drop_head, drop_C, dropout_p, drop_scale,
                             HEAD_DIM, D_REAL, BLOCK_M, True, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
        if TAIL:  # the query tile that overhangs the sequence's end, if any: through masked pointer loads
            dk, dv = _dkdv_tiles(dk, dv, k, v, Qh, dOh, Lh, Dh, desc_q, desc_do, tb, h, q_start,
                                 stride_qt, stride_qd, stride_gt, stride_gd, stride_lt,
                                 offs_n, tail, hi, T_q, T_k, window_left, window_right, qk_scale, cap,
                                 slope, seed, drop_head, drop_C, dropout_p, drop_scale,
                                 HEAD_DIM, D_REAL, BLOCK_M, True, DROPOUT, SOFTCAP, ALIBI,
                                 INTERP_BF16, IEEE, False, WIDE)

    # (dK and dV share a layout; a packed batch stores through pointers, which clip at its sequence's end)
    out_off = b64 * stride_dkb + hkv64 * stride_dkh + k_start64 * stride_dkt
    store_rows(dK + out_off, desc_dk, b, h_kv, n_start, narrow(dk * scale, dK.dtype.element_ty, INTERP_BF16),
               stride_dkt, stride_dkd, T_k, BLOCK_N, HEAD_DIM, D_REAL, TMA and not IS_VARLEN, WIDE)
    store_rows(dV + out_off, desc_dv, b, h_kv, n_start, narrow(dv, dV.dtype.element_ty, INTERP_BF16),
               stride_dkt, stride_dkd, T_k, BLOCK_N, HEAD_DIM, D_REAL, TMA and not IS_VARLEN, WIDE)


@triton.jit
def _dq_tiles(
    dq, q, do, lse, delta,  # accumulator (BLOCK_M, HEAD_DIM) float32; this block's q, dO; its lse, delta
    K, V, stride_kt, stride_kd, stride_vt, stride_vd,  # pointers at this (sequence, kv head)'s first row
    desc_k, desc_v, tb, h_kv, k_first,  # descriptors over k and v, and where this (sequence, kv head) is
    offs_m, start, end, T_q, T_k, window_left, window_right, qk_scale, cap,
    slope,  # this head's ALiBi slope in log2 units (ALIBI)
    seed, drop_rows, dropout_p, drop_scale,  # dropout: each row's first counter (see flash_dropout), etc.
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    DROPOUT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr, WIDE: tl.constexpr,
):
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kT = load_rows(K, desc_k, tb, h_kv, n0, k_first, stride_kt, stride_kd, T_k, BLOCK_N, HEAD_DIM, D_REAL, MASKED,
                       TMA, True, WIDE)
        vT = load_rows(V, desc_v, tb, h_kv, n0, k_first, stride_vt, stride_vd, T_k, BLOCK_N, HEAD_DIM, D_REAL, MASKED,
                       TMA, True, WIDE)
        s = dot(q, kT, INTERP_BF16, IEEE) * qk_scale  # (BLOCK_M, BLOCK_N)
        if SOFTCAP:
            t = tanh(s)
            s = cap * t
        if ALIBI:
            s += alibi_bias(slope, offs_m[:, None], offs_n[None, :], T_q, T_k)
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            p = tl.where(allowed(offs_m, offs_n, T_q, T_k, window_left, window_right), p, 0.0)
        dp = dot(do, vT, INTERP_BF16, IEEE)  # (BLOCK_M, BLOCK_N)
        if DROPOUT:  # the forward's mask, regenerated: the gradient reaches only the kept weights
            dp = tl.where(kept(seed, drop_rows[:, None] + offs_n[None, :], dropout_p), dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        ds_low = narrow(ds, kT.dtype, INTERP_BF16)  # (BLOCK_M, BLOCK_N) in the inputs' dtype, for the MMA
        dq += dot(ds_low, tl.trans(kT), INTERP_BF16, IEEE)  # (BLOCK_M, HEAD_DIM), scaled at the end
    return dq


@triton.jit
def _bwd_dq(
    Q, K, V, dOut, Lse, Delta, dQ,  # pointers; dQ like q
    stride_qb, stride_qh, stride_qt, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_gb, stride_gh, stride_gt, stride_gd,  # dOut
    stride_lb, stride_lh, stride_lt,  # Lse and Delta
    stride_dqb, stride_dqh, stride_dqt, stride_dqd,
    desc_q, desc_k, desc_v, desc_do, desc_dq, desc_dk, desc_dv,  # descriptors when TMA (else unused)
    cu_seqlens_q, cu_seqlens_k, T_q, T_k,
    TUNE_T_Q, TUNE_T_K,  # the lengths rounded up to a power of two: the autotuner's key, unused here
    H, GROUP, qk_scale, cap, scale, window_left, window_right,
    Seed, dropout_p, drop_scale, drop_R, drop_C, drop_first,  # dropout, as in flash_fwd._attn_fwd
    Alibi, stride_ab, stride_ah,  # ALiBi slopes, as in flash_fwd._attn_fwd
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr,
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr, TMA: tl.constexpr, WIDE: tl.constexpr, DROPOUT: tl.constexpr,
    SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,
):
    """One program: ``BLOCK_M`` queries of one head of one sequence, walking over the keys it may see."""
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # (see _tiles.launch_grid)
    h_kv = h // GROUP
    q_start, T_q = seq_bounds(cu_seqlens_q, b, T_q, IS_VARLEN)
    k_start, T_k = seq_bounds(cu_seqlens_k, b, T_k, IS_VARLEN)
    m_start = pid_m * BLOCK_M
    if m_start >= T_q:
        return

    tb = desc_batch(b, IS_VARLEN)  # its coordinate in the descriptors
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    offs_m = m_start + tl.arange(0, BLOCK_M)
    row_ok = offs_m < T_q
    q_start64 = q_start.to(tl.int64)
    Qh = Q + b64 * stride_qb + h64 * stride_qh + q_start64 * stride_qt  # this (sequence, head)'s row 0
    dOh = dOut + b64 * stride_gb + h64 * stride_gh + q_start64 * stride_gt
    q = load_rows(Qh, desc_q, tb, h, m_start, q_start, stride_qt, stride_qd, T_q, BLOCK_M, HEAD_DIM, D_REAL, True, TMA,
                  False, WIDE)
    do = load_rows(dOh, desc_do, tb, h, m_start, q_start, stride_gt, stride_gd, T_q, BLOCK_M, HEAD_DIM, D_REAL, True,
                   TMA, False, WIDE)
    rows = q_start64 + offs_m
    lse = tl.load(Lse + b64 * stride_lb + h64 * stride_lh + rows * stride_lt, mask=row_ok, other=float("inf"))
    lse = lse * 1.4426950408889634  # to log2 units, like the scores (+inf past T_q: p = 0 there)
    delta = tl.load(Delta + b64 * stride_lb + h64 * stride_lh + rows * stride_lt, mask=row_ok, other=0.0)
    Kh = K + b64 * stride_kb + h_kv.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kt
    Vh = V + b64 * stride_vb + h_kv.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vt
    dq = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)
    seed = 0
    drop_rows = offs_m  # (unused without dropout)
    if DROPOUT:
        seed = tl.load(Seed)
        drop_rows = counters(drop_first, b, h, offs_m, H, drop_R, drop_C)  # (BLOCK_M,) int64
    slope = 0.0
    if ALIBI:
        slope = slopes_of(Alibi, stride_ab, stride_ah, b, h)

    lo, a, b_full, hi = key_tiles(m_start, T_q, T_k, window_left, window_right, BLOCK_M, BLOCK_N)
    # (as in _bwd_dkdv: this block's own rows past T_q feed only their own dQ rows; the key tile that
    # overhangs T_k is read through pointers)
    TAIL = TMA and IS_VARLEN
    tail = overhang(T_k, lo, hi, TAIL, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, Kh, Vh, stride_kt, stride_kd, stride_vt, stride_vd, desc_k, desc_v, tb, h_kv,
                   k_start, offs_m, lo, tl.minimum(a, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                   slope, seed, drop_rows, dropout_p, drop_scale,
                   HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
    dq = _dq_tiles(dq, q, do, lse, delta, Kh, Vh, stride_kt, stride_kd, stride_vt, stride_vd, desc_k, desc_v, tb, h_kv,
                   k_start, offs_m, a, b_full, T_q, T_k, window_left, window_right, qk_scale, cap,
                   slope, seed, drop_rows, dropout_p, drop_scale,
                   HEAD_DIM, D_REAL, BLOCK_N, False, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
    dq = _dq_tiles(dq, q, do, lse, delta, Kh, Vh, stride_kt, stride_kd, stride_vt, stride_vd, desc_k, desc_v, tb, h_kv,
                   k_start, offs_m, b_full, tl.minimum(hi, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                   slope, seed, drop_rows, dropout_p, drop_scale,
                   HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, TMA, WIDE)
    if TAIL:
        dq = _dq_tiles(dq, q, do, lse, delta, Kh, Vh, stride_kt, stride_kd, stride_vt, stride_vd, desc_k, desc_v, tb,
                       h_kv, k_start, offs_m, tail, hi, T_q, T_k, window_left, window_right, qk_scale, cap,
                       slope, seed, drop_rows, dropout_p, drop_scale,
                       HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, INTERP_BF16, IEEE, False, WIDE)
    dQh = dQ + b64 * stride_dqb + h64 * stride_dqh + q_start64 * stride_dqt
    dq = narrow(dq * scale, dQ.dtype.element_ty, INTERP_BF16)
    store_rows(dQh, desc_dq, b, h, m_start, dq, stride_dqt, stride_dqd, T_q,
               BLOCK_M, HEAD_DIM, D_REAL, TMA and not IS_VARLEN, WIDE)  # (packed: pointers clip at the sequence's end)


INTERPRET = is_interpreted(_bwd_dq)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) for the GPU, one list per kernel: the autotuner tunes each on
# its own. The registers and spills of every one, on sm_90, are in benchmarks/results/kernel_resources_sm90.json
# (benchmarks/kernel_resources.py). dK/dV holds four (BLOCK_N, D) tiles per program (k, v and the two
# float32 accumulators), so it wants 8 warps and few query rows per step; dQ holds two, and needs BLOCK_M
# >= 64 for Hopper's wgmma (32-row tiles fall back to mma.sync).
DKDV_TILES = [(32, 64, 8, 2), (32, 64, 8, 3), (16, 128, 8, 2), (32, 128, 8, 2), (64, 64, 8, 3), (16, 64, 4, 3),
              (64, 128, 8, 2), (16, 64, 8, 2)]  # (the last: the one that does not spill with dropout at D = 128)
DQ_TILES = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3), (128, 32, 8, 3), (64, 64, 8, 2), (64, 128, 8, 3),
            (128, 128, 8, 2), (128, 16, 8, 3)]  # (the last: the one that does not spill with dropout and a softcap
# at D = 128 under triton 3.6)
# (kernel, head dim) -> the tiles that spill registers on sm_90 there, compiled by triton 3.9 (this
# machine's) or 3.6 (the GPU machines'): the autotuner does not try them (tests/test_kernels_compile.py
# checks that no tile it tries spills, against both reports: benchmarks/results/kernel_resources_sm90*.json).
SPILLS = {
    ("dkdv", 16): [(64, 64, 8, 3), (64, 128, 8, 2)],  # (triton 3.6; 16- and 32-wide tiles run the 64-wide lists)
    ("dkdv", 32): [(64, 64, 8, 3), (64, 128, 8, 2)],  # (triton 3.6, 24 to 208 bytes)
    ("dkdv", 64): [(64, 64, 8, 3), (64, 128, 8, 2)],  # (triton 3.6, through TMA)
    ("dkdv", 128): [(32, 128, 8, 2), (64, 64, 8, 3), (16, 64, 4, 3), (64, 128, 8, 2), (32, 64, 8, 3)],
    ("dq", 128): [(128, 128, 8, 2)],  # (triton 3.6, through TMA)
}
# Head dim 256: four (BLOCK_N, 256) tiles per dK/dV program leave room for 32 keys on 8 warps and no more
# (64 keys spill, so its products stay on mma.sync: wgmma wants 64 rows); dQ keeps 32-key steps. Through
# pointers none of these spills on sm_90; through TMA the dK/dV ones do, so `auto` runs the backward's
# pointer variant at D = 256 (TMA_HEAD_DIMS). Each list's last is there for the features: 16 keys per dK/dV
# program, 16-key dQ steps, the only tiles that do not spill with dropout and ALiBi (dK/dV, under triton 3.6)
# or dropout (dQ, both tritons) at D = 256 (FEATURE_SPILLS; untimed).
WIDE_DKDV_TILES = [(32, 32, 8, 2), (16, 32, 8, 2), (32, 16, 8, 2)]
WIDE_DQ_TILES = [(64, 32, 8, 2), (128, 32, 8, 2), (128, 16, 8, 2),  # (64, 32, 4, 2) spills 40 B under triton 3.6
                 (64, 16, 8, 2)]  # (the last: the one that fits an A10's, L4's or RTX 30 / 40's 99 KiB of shared memory
# per program, 84 KiB compiled for sm_80, where the others need 100 to 164 KiB: benchmarks/kernel_shared_memory.py)
# float32 (IEEE products on the CUDA cores) has tiles of its own, as the forward's (flash_fwd.FLOAT32_TILES): in
# float32 every 16-bit tile above but one (dK/dV's 16 x 64 at D = 128) spills registers on sm_90 (24 bytes to 32 KB;
# the wide dQ list's 128 x 16 12.7 KB) and through TMA every float32 tile surveyed spills (0.6 to 8.2 KB), so auto
# runs float32 through pointers (tma_pays). These spill nothing through pointers under triton 3.9 or 3.6 at their
# width or at the head dims padded to it (benchmarks/results/kernel_resources_sm90*.json, dtype "float32";
# tests/test_kernels_compile.py): dK/dV in 64-wide tiles has one such tile of the 21 probed, 16 x 32 on 8 warps (the
# others spill 8 bytes to 13 KB, at D = 40 or under 3.6 where least), which spills 8 to 24 bytes with dropout at
# D = 64; beside it 32 x 16 on 8 warps, which spills at D = 40 (8 to 40 bytes, but with ALiBi alone) and packed
# (16 under 3.9), but not with dropout at D = 64 (a padded head dim skips it: FLOAT32_SPILLS' PLAIN list). Keyed by
# kernel and width (_variants.float32_width: 32 also serves 16;
# there dK/dV has tiles of its own, on 4 warps mostly: 4 of the 34 probed spill nothing at D = 16 and 32, plain or
# with all three features, under either triton). With features or packed some spill (FLOAT32_SPILLS below), and such
# a launch skips them; with the autotuner off a launch runs the first tile its pruning keeps (dK/dV's 16 x 64 at 128
# wide reads q and dO a quarter as often as 16 x 16, which it falls back to with dropout). dQ's 128-wide list ends
# with 16 x 64 on 8 warps for GPUs before Hopper: compiled for sm_80 under triton 3.9 its other three spill 112 to
# 200 bytes at D = 80 and 128 (and 16 x 64 on 4 warps, the one of them that fits 99 KiB, 200), where it spills
# nothing on sm_80, sm_90 or sm_120 under either triton (on sm_90 8 to 16 bytes with dropout, under 3.6), in 84 KiB;
# an untuned launch on sm_80 runs it (_mma_sync). None is timed.
FLOAT32_TILES = {
    ("dkdv", 32): [(16, 32, 4, 2), (16, 32, 4, 3), (32, 16, 8, 3)],  # (16 x 32 on 8 warps spills 24 B here, triton 3.6)
    ("dq", 32): [(32, 64, 8, 2), (16, 64, 4, 2)],
    ("dkdv", 64): [(16, 32, 8, 2), (32, 16, 8, 2)],
    ("dq", 64): [(32, 64, 8, 2), (16, 64, 4, 2)],
    ("dkdv", 128): [(16, 64, 8, 2), (16, 16, 8, 2)],
    ("dq", 128): [(32, 64, 8, 3), (32, 64, 8, 2), (16, 64, 4, 2), (16, 64, 8, 2)],
    ("dkdv", 256): [(16, 16, 8, 2)],
    ("dq", 256): [(16, 16, 8, 2), (16, 16, 4, 2)],
}
# float32's tiles that spill registers on sm_90 through pointers under triton 3.9 or 3.6 with a feature, a pair or all
# three on, or for a packed batch (parts "dkdv dropout", "dq varlen", ... of the float32 rows of
# benchmarks/results/kernel_resources_sm90*.json): 8 to 80 bytes. Keyed and skipped as flash_fwd.FLOAT32_SPILLS (by
# the launch's constexprs, then by (kernel, width, padded)), and as there, where every tile spills in a part the list
# leaves out the least spilling, which the pruning keeps: dK/dV's 16 x 16 at 128 wide with dropout and ALiBi (8
# bytes, against 32 to 80), dQ's with dropout and ALiBi at D = 64 and 160 and with all three at D = 40 (8 to 24
# bytes), and with a softcap at D = 64 (16). PLAIN: without features, at a padded head dim (unpadded, none spills).
FLOAT32_SPILLS: dict[str, dict[tuple[str, int, bool], list[tuple[int, int, int, int]]]] = {
    "PLAIN": {
        ("dkdv", 64, True): [(32, 16, 8, 2)],
    },
    "DROPOUT": {
        ("dkdv", 32, False): [(16, 32, 4, 2), (16, 32, 4, 3)],
        ("dkdv", 64, False): [(16, 32, 8, 2)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dkdv", 128, False): [(16, 64, 8, 2)],
        ("dkdv", 128, True): [(16, 64, 8, 2)],
        ("dq", 32, False): [(32, 64, 8, 2)],
        ("dq", 64, False): [(16, 64, 4, 2)],
        ("dq", 64, True): [(32, 64, 8, 2)],
        ("dq", 128, False): [(16, 64, 4, 2), (16, 64, 8, 2), (32, 64, 8, 2)],
        ("dq", 128, True): [(16, 64, 8, 2), (32, 64, 8, 2)],
    },
    "SOFTCAP": {
        ("dkdv", 32, False): [(16, 32, 4, 2), (16, 32, 4, 3)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dq", 64, False): [(16, 64, 4, 2)],
    },
    "ALIBI": {
        ("dkdv", 32, False): [(16, 32, 4, 2), (16, 32, 4, 3)],
    },
    "DROPOUT+SOFTCAP": {
        ("dkdv", 32, False): [(16, 32, 4, 3), (32, 16, 8, 3)],
        ("dkdv", 64, False): [(16, 32, 8, 2)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dq", 32, False): [(32, 64, 8, 2)],
        ("dq", 64, False): [(16, 64, 4, 2)],
        ("dq", 64, True): [(32, 64, 8, 2)],
        ("dq", 128, False): [(16, 64, 4, 2), (32, 64, 8, 2)],
        ("dq", 128, True): [(16, 64, 4, 2), (32, 64, 8, 2)],
    },
    "DROPOUT+ALIBI": {
        ("dkdv", 32, False): [(32, 16, 8, 3)],
        ("dkdv", 64, False): [(16, 32, 8, 2)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dkdv", 128, False): [(16, 64, 8, 2)],
        ("dkdv", 128, True): [(16, 64, 8, 2)],
        ("dq", 64, True): [(32, 64, 8, 2)],
        ("dq", 128, False): [(16, 64, 8, 2)],
        ("dq", 128, True): [(16, 64, 8, 2)],
        ("dq", 256, True): [(16, 16, 4, 2)],
    },
    "SOFTCAP+ALIBI": {
        ("dkdv", 64, True): [(32, 16, 8, 2)],
    },
    "DROPOUT+SOFTCAP+ALIBI": {
        ("dkdv", 64, False): [(16, 32, 8, 2)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dkdv", 128, False): [(16, 64, 8, 2)],
        ("dkdv", 128, True): [(16, 64, 8, 2)],
        ("dq", 64, False): [(32, 64, 8, 2)],
        ("dq", 64, True): [(32, 64, 8, 2)],
        ("dq", 128, False): [(16, 64, 4, 2), (32, 64, 8, 2)],
        ("dq", 128, True): [(16, 64, 4, 2), (16, 64, 8, 2), (32, 64, 8, 2)],
        ("dq", 256, True): [(16, 16, 4, 2)],
    },
    "IS_VARLEN": {
        ("dkdv", 32, False): [(16, 32, 4, 3), (32, 16, 8, 3)],
        ("dkdv", 64, False): [(32, 16, 8, 2)],
        ("dkdv", 64, True): [(32, 16, 8, 2)],
        ("dq", 64, False): [(16, 64, 4, 2)],
    },
}
TMA_HEAD_DIMS = (16, 32, 64, 128)
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}
PREPROCESS_BLOCK = 64
_DESCRIPTORS = (("desc_q", "BLOCK_M"), ("desc_k", "BLOCK_N"), ("desc_v", "BLOCK_N"), ("desc_do", "BLOCK_M"),
                ("desc_dq", "BLOCK_M"), ("desc_dk", "BLOCK_N"), ("desc_dv", "BLOCK_N"))


# A packed batch's backward runs pointers under auto (tma_pays below), and for packed batches these of
# their 16-bit tiles spill registers on sm_90 under triton 3.9 or 3.6, up to 1464 bytes (at D = 16 and 32 dK/dV's
# 64 x 64 on 8 warps alone, under triton 3.6; parts "dkdv
# varlen" and "dq varlen" of both reports; tests/test_kernels_compile.py checks the lists against them):
# the autotuner skips them there.
PACKED_POINTER_SPILLS = {
    ("dkdv", 16): [(64, 64, 8, 3)],  # (triton 3.6, as at 32)
    ("dkdv", 32): [(64, 64, 8, 3)],
    ("dkdv", 64): [(64, 64, 8, 3), (64, 128, 8, 2)],  # (triton 3.6)
    ("dkdv", 128): [(32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3), (16, 64, 4, 3), (64, 128, 8, 2)],
    ("dq", 128): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3), (128, 128, 8, 2)],
    ("dq", 64): [(128, 128, 8, 2)],
}
# ... and these beside them where the head dim is padded to the tiles' width (D_REAL < HEAD_DIM; surveyed at
# D = 40 in 64-wide tiles, D = 80 in 128-wide ones): 8 bytes under triton 3.9 at D = 40
PADDED_PACKED_POINTER_SPILLS = {
    ("dq", 64): [(64, 128, 8, 3)],
}


def packed_pointer_spills(kernel: str, width: int, padded: bool) -> list[tuple[int, int, int, int]]:
    """The tiles a packed 16-bit batch's pointer ``kernel`` skips in tiles ``width`` columns wide (a padded head
    dim, ``padded``, skips its own list's too)."""
    return PACKED_POINTER_SPILLS.get((kernel, width), []) + \
        (PADDED_PACKED_POINTER_SPILLS.get((kernel, width), []) if padded else [])


def prune_for_packing(kernel: str, configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The pointer backward's pruning step: a packed batch (``IS_VARLEN``) of 16-bit inputs skips the tiles
    of :data:`PACKED_POINTER_SPILLS` (and, for a padded head dim, ``D_REAL < HEAD_DIM``, those of
    :data:`PADDED_PACKED_POINTER_SPILLS`). Triton's autotuner passes the launch's constexprs as keywords."""
    if not kwargs["IS_VARLEN"] or nargs["Q"].element_size() != 2:
        return configs
    spills = packed_pointer_spills(kernel, kwargs["HEAD_DIM"], _variants.padded(kwargs["HEAD_DIM"], kwargs))
    return [c for c in configs if _variants.tile_of(c) not in spills]


# With dropout (a Philox number per score, regenerated in both kernels), a softcap (a tanh per score, and
# its derivative) or ALiBi (a bias per score) these tiles spill registers on sm_90 under triton 3.9 or 3.6
# (parts "dkdv dropout", "dq softcap" etc. of benchmarks/results/kernel_resources_sm90*.json;
# tests/test_kernels_compile.py checks the lists): such a launch's autotuner skips them and its default tile
# is the first candidate not among them (surveyed through TMA; pointers use the same lists). Keyed by the
# kernels' constexpr, as in flash_fwd; with all three on, every dK/dV tile spills at D = 128 under triton 3.6,
# and the pruning keeps the one named by the fewest lists (16 x 64: 32 bytes there, none under 3.9). At D = 256
# (through pointers, what auto runs there) dropout leaves dQ only its 128 x 16 tile (64 x 16, added to fit a 99 KiB
# GPU, spills 8 to 120 bytes with dropout), and dropout with ALiBi leaves dK/dV only its 32 x 16. (D = 160, padded
# to 256-wide tiles: the same tiles spill.)
# In 16- and 32-wide tiles (surveyed through TMA, as auto runs them) every feature spills some tiles too (dK/dV's
# 64 x 64 on 8 warps with each), up to 2.5 KB in dQ with dropout and a softcap; each kernel keeps tiles that do not.
FEATURE_SPILLS: dict[str, dict[tuple[str, int], list[tuple[int, int, int, int]]]] = {
    "DROPOUT": {
        ("dkdv", 16): [(64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 16): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 32): [(32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 32): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 64): [(16, 64, 4, 3), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2),
                        (64, 64, 8, 3), (64, 128, 8, 2)],  # (all but DKDV_TILES' last, added for this)
        ("dq", 64): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dq", 128): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 256): [(32, 32, 8, 2)],
        ("dq", 256): [(64, 16, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2)],
    },
    "SOFTCAP": {
        ("dkdv", 16): [(64, 64, 8, 3)],
        ("dkdv", 32): [(64, 64, 8, 3)],
        ("dkdv", 64): [(64, 64, 8, 3), (64, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3),
                        (64, 128, 8, 2)],
        ("dq", 128): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dq", 256): [(64, 32, 8, 2)],
    },
    "ALIBI": {
        ("dkdv", 16): [(64, 64, 8, 3)],
        ("dkdv", 32): [(64, 64, 8, 3)],
        ("dkdv", 64): [(64, 64, 8, 3)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2),
                        (64, 64, 8, 3), (64, 128, 8, 2)],  # (all but DKDV_TILES' last)
        ("dkdv", 256): [(32, 32, 8, 2)],
        ("dq", 256): [(64, 32, 8, 2)],
    },
    # two features at once (parts "dq dropout+softcap" etc.): each pair's own spills
    "DROPOUT+SOFTCAP": {
        ("dkdv", 16): [(32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 16): [(64, 64, 4, 3), (64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 32): [(32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 32): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 64): [(16, 64, 4, 3), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 64): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2),
                        (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 128): [(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 32, 8, 3), (128, 64, 8, 3),
                      (128, 128, 8, 2)],
        ("dkdv", 256): [(32, 32, 8, 2)],
        ("dq", 256): [(64, 16, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2)],
    },
    "DROPOUT+ALIBI": {
        ("dkdv", 16): [(32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 16): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 32): [(16, 64, 4, 3), (32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 32): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 64): [(16, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3),
                       (64, 128, 8, 2)],
        ("dq", 64): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2),
                        (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 128): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 256): [(16, 32, 8, 2), (32, 32, 8, 2)],
        ("dq", 256): [(64, 16, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2)],
    },
    "SOFTCAP+ALIBI": {
        ("dkdv", 16): [(64, 64, 8, 3)],
        ("dkdv", 32): [(64, 64, 8, 3)],
        ("dkdv", 64): [(64, 64, 8, 3), (64, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3),
                        (64, 128, 8, 2)],
        ("dq", 128): [(64, 128, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 256): [(32, 32, 8, 2)],
        ("dq", 256): [(64, 32, 8, 2)],
    },
    "DROPOUT+SOFTCAP+ALIBI": {  # (all three; at D = 128 under triton 3.6 every dK/dV tile spills)
        ("dkdv", 16): [(32, 64, 8, 3), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 16): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 32): [(16, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3),
                       (64, 128, 8, 2)],
        ("dq", 32): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 64): [(16, 64, 4, 3), (32, 64, 8, 2), (32, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 3),
                       (64, 128, 8, 2)],
        ("dq", 64): [(64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 128): [(16, 64, 4, 3), (16, 64, 8, 2), (16, 128, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3),
                        (32, 128, 8, 2), (64, 64, 8, 3), (64, 128, 8, 2)],
        ("dq", 128): [(64, 32, 4, 3), (64, 64, 4, 3), (64, 64, 8, 2), (64, 128, 8, 3), (128, 32, 8, 3),
                      (128, 64, 8, 3), (128, 128, 8, 2)],
        ("dkdv", 256): [(16, 32, 8, 2), (32, 32, 8, 2)],
        ("dq", 256): [(64, 16, 8, 2), (64, 32, 8, 2), (128, 32, 8, 2)],
    },
}


def prune_for_features(kernel: str, configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """A launch with dropout, a softcap or ALiBi (``DROPOUT``, ``SOFTCAP``, ``ALIBI``) skips the tiles of
    :data:`FEATURE_SPILLS` (if every tile spills with them, keeps those that spill least:
    :func:`_variants.fewest_spills`); a float32 launch (``IEEE``) those of :data:`FLOAT32_SPILLS` with its features
    or packed (``IS_VARLEN``), at its head dim padded or not."""
    if kwargs.get("IEEE"):  # (the lists are 16-bit surveys; float32 has tiles and lists of its own)
        return _variants.fewest_float32_spills(configs, _variants.tile_of, FLOAT32_SPILLS, kernel, kwargs["HEAD_DIM"],
                                               kwargs)
    return _variants.fewest_spills(configs, _variants.tile_of, FEATURE_SPILLS, (kernel, kwargs["HEAD_DIM"]), **kwargs)


def prune(kernel: str, pointer: bool, configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The backward autotuner's pruning step: :func:`prune_for_packing` (pointer variant only), then
    :func:`prune_for_features`."""
    if pointer:
        configs = prune_for_packing(kernel, configs, nargs, **kwargs)
    return prune_for_features(kernel, configs, nargs, **kwargs)


def tma_pays(D: int, varlen: bool, dtype: torch.dtype) -> bool:
    """Whether ``auto`` tries the TMA variant for a backward at head dim ``D``: not at D = 256 (above), not for
    float32 (:data:`FLOAT32_TILES`: every float32 TMA tile spills), and not for a packed batch, whose TMA kernels
    also read the tile that overhangs each sequence through pointers (``_tiles.overhang``): its dK/dV then spills
    registers on sm_90 in every tile at D = 128 but the last (added for dropout; untimed) and in two at D = 64 (four
    under triton 3.6), where the pointer kernel has tiles that do not (parts "dkdv varlen" and "dq varlen" of
    benchmarks/results/kernel_resources_sm90*.json). ``ATTN_COURSE_KERNEL=tma`` still runs it."""
    return D in TMA_HEAD_DIMS and not varlen and dtype != torch.float32


def candidate_tiles(kernel: str, D: int, float32: bool = False) -> list[tuple[int, int, int, int]]:
    """Every tile shape considered for ``kernel`` ("dkdv" or "dq") at head dim ``D`` (what
    benchmarks/kernel_resources.py surveys); :func:`configs` offers the autotuner the ones that fit.
    ``float32``: float32's own (:data:`FLOAT32_TILES`)."""
    if float32:
        return FLOAT32_TILES[kernel, _variants.float32_width(D)]
    if D > 128:
        return WIDE_DQ_TILES if kernel == "dq" else WIDE_DKDV_TILES
    return DQ_TILES if kernel == "dq" else DKDV_TILES


def configs(kernel: str, variant: _variants.Variant, D: int, float32: bool = False) -> list[triton.Config]:
    """The autotuner's search space for ``kernel`` ("dkdv" or "dq") at head dim ``D`` (for float32 inputs,
    ``float32``: their own tiles)."""
    hook = _variants.tile_hook(_DESCRIPTORS) if variant.tma else None
    spills = [] if float32 else SPILLS.get((kernel, D), [])
    return [_variants.config(*t, hook) for t in candidate_tiles(kernel, D, float32) if t not in spills]


def default_config(kernel: str, D: int, itemsize: int, packed: bool = False, *, sm: int | None = None,
                   **features) -> triton.Config:
    """The config used when autotuning is off: the first candidate for 16-bit inputs (no spills at any
    head dim), or for a packed batch through pointers (``packed``) or with ``DROPOUT``, ``SOFTCAP`` or ``ALIBI``
    on in ``features`` (the launch's constexprs) the first that does not spill there; for float32 the first of its
    own list (:data:`FLOAT32_TILES`) that spills least with the launch's features (:data:`FLOAT32_SPILLS`).
    ``sm`` (an mma.sync GPU's surveyed target, 80 or 120: ``_mma_sync.target``): the tiles that spill there
    (``_mma_sync.SPILLS``) instead of float32's plain Hopper list, as one more list beside the features', and of
    the tiles named least the one that spills least there (``_mma_sync.least_spilling``)."""
    older = _mma_sync.spills(sm, kernel, itemsize == 4, D, features) if sm else {}
    if itemsize == 2:
        spills = packed_pointer_spills(kernel, D, _variants.padded(D, features)) if packed else []
        tiles = [t for t in candidate_tiles(kernel, D) if t not in spills]
        least = _variants.fewest_spills(tiles, tuple, FEATURE_SPILLS, (kernel, D), list(older), **features)
    else:  # (float32's plain list is Hopper's: on an mma.sync GPU, its target's instead)
        table = _mma_sync.hopper_proxies(FLOAT32_SPILLS, sm)
        least = _variants.fewest_float32_spills(candidate_tiles(kernel, D, True), tuple, table, kernel, D, features,
                                                list(older))
    return _variants.config(*_mma_sync.least_spilling(least, tuple, older))


def _views(x: torch.Tensor, varlen: bool):
    """(batch, head, time, dim) strides: packed [total_T, H, D] has no batch stride and time first."""
    if varlen:
        return (0, x.stride(1), x.stride(0), x.stride(2))
    return tuple(x.stride())


def attn_bwd_launch(dout, q, k, v, out, lse, *, scale, window, dlse=None, cu_seqlens_q=None, cu_seqlens_k=None,
                    max_seqlens=None, blocks=None, need_dq=True, need_dkdv=True, dropout_p=0.0, dropout_seed=None,
                    softcap=0.0, alibi_slopes=None, buffers=None):
    """``(dq, dk, dv)`` from the saved tensors; shapes and layouts as in ``flash_fwd.attn_fwd_launch``.
    ``dlse``: the loss's gradient with respect to lse (shaped like it), or ``None`` when lse played no part.
    ``need_dq=False`` / ``need_dkdv=False`` skip that kernel (its buffers are returned unwritten): a frozen
    q, or frozen k and v, costs no backward work. ``dropout_p``, ``dropout_seed``: the forward's (the mask
    is regenerated from them, see ``flash_dropout``). ``softcap``, ``alibi_slopes``: the forward's
    (``flash_softcap``, ``flash_alibi``). ``buffers``: ``(dq, dk, dv)`` to write, shaped like q, k, v, any
    strides but dk's and dv's alike (``None``: fresh contiguous ones)."""
    varlen = cu_seqlens_q is not None
    lse = lse.contiguous()  # (as the forward wrote it, unless broadcast, as vmap may: delta takes lse's strides)
    if _variants.may_use_tma(q.device) and _variants.tma_unready(dout) and not _variants.tma_unready(q, k, v):
        dout = dout.contiguous()  # e.g. the stride-0 gradient of out.sum(): one copy keeps the TMA path open
    if varlen:
        B = cu_seqlens_q.numel() - 1
        H, H_kv, D = q.shape[1], k.shape[1], q.shape[2]
        T_q, T_k = max_seqlens
        sl = (0, lse.stride(0), lse.stride(1))  # lse (H, total_q)
    else:
        B, H, T_q, D = q.shape
        H_kv, T_k = k.shape[1], k.shape[2]
        sl = lse.stride()  # lse (B, H, T_q)
    delta = torch.empty_like(lse)  # (B, H, T_q) or (H, total_q), float32
    dq, dk, dv = buffers or backward_buffers(q, k, v)  # (fresh: contiguous, like q, k, v)
    if varlen:
        define_padding_rows(q, zeros=(dq, dk, dv))
    sq, sk, sv, sg, so = (_views(x, varlen) for x in (q, k, v, dout, out))
    sdq, sdk = _views(dq, varlen), _views(dk, varlen)
    interp_bf16 = INTERPRET and q.dtype == torch.bfloat16  # see _tiles.dot and _tiles.narrow
    tile_d = head_dim_tile(D)  # (D itself, unless it is padded to a power of two)
    dropout = dropout_seed is not None and dropout_p > 0
    flags = dict(HEAD_DIM=tile_d, D_REAL=D, IS_VARLEN=varlen, INTERP_BF16=interp_bf16, IEEE=q.dtype == torch.float32,
                 DROPOUT=dropout, SOFTCAP=softcap > 0, ALIBI=alibi_slopes is not None,
                 WIDE=needs_wide_offsets(0 if varlen else 2, q, k, v, dout, dq, dk, dv))
    window_args = (*kernel_scales(scale, softcap), scale, window[0], window[1])
    tune_lengths = _variants.tuning_lengths(T_q, T_k)
    # one launch of each kernel per run of at most CUDA_MAX_GRID_YZ sequences (one run unless B is huge)
    parts = [(b1 - b0, *batch_part(b0, b1, (q, k, v, dout, out, lse, delta, dq, dk, dv),
                                   (cu_seqlens_q, cu_seqlens_k) if varlen else None),
              (*launch_args(dropout_seed if dropout else None, dropout_p, H, T_q, T_k, b0, q),
               *alibi_args(alibi_slopes, b0, b1, q)))  # (the dropout, then the ALiBi arguments)
             for b0, b1 in batch_chunks(B)]

    def launch(variant: _variants.Variant):
        plan = [("dkdv", _bwd_dkdv, T_k, "BLOCK_N", (H_kv, H // H_kv))] if need_dkdv else []
        plan += [("dq", _bwd_dq, T_q, "BLOCK_M", (H, H // H_kv))] if need_dq else []
        float32 = q.dtype == torch.float32  # (float32 has tiles of its own: an autotuner of its own)
        for name, kernel, T, block, heads in plan:
            packed = varlen and not variant.tma
            pruning = functools.partial(prune, name, not variant.tma)

            def offered(name=name, pruning=pruning):  # (see _variants.launch_plans)
                every = configs(name, variant, tile_d, float32)
                return _variants.pruned_first(every, pruning(every, {"Q": q}, **flags, TMA=variant.tma))

            def default(name=name, packed=packed):  # (autotuning off; on an mma.sync GPU, what spills there skipped)
                return default_config(name, tile_d, q.element_size(), packed, **flags, sm=_mma_sync.target(q.device))

            plans = _variants.launch_plans(INTERPRET, interpreter_meta=dict(blocks or INTERPRETER_BLOCKS),
                                           offered=offered, default=default)
            what = functools.partial(_fit.launch_name, name, variant.name, D, q.dtype)  # (formatted on failure)
            run_plan = functools.partial(launch_one, variant, name, kernel, T, block, heads, pruning, float32)
            _fit.first_that_fits(plans, run_plan, what, q.device)

    def launch_one(variant, name, kernel, T, block, heads, pruning, float32, tiles, meta, tune):
        if tune:
            kernel = _variants.autotuned(kernel, variant, lambda: configs(name, variant, tile_d, float32),
                                         tag=f"{D} float32" if float32 else D, prune=pruning)
        for n, (q_, k_, v_, do_, _, lse_, delta_, dq_, dk_, dv_), cus, drop in parts:
            descs = _variants.descriptors((q_, k_, v_, do_, dq_, dk_, dv_),
                                          [tiles[b] for _, b in _DESCRIPTORS], tile_d, variant)
            per_kernel = ((dk_, dv_, *sq, *sk, *sv, *sg, *sl, *sdk) if name == "dkdv" else
                          (dq_, *sq, *sk, *sv, *sg, *sl, *sdq))

            def grid(meta, T=T, block=block, heads=heads, n=n):
                return launch_grid(T, meta[block], heads[0], n)

            kernel[grid](q_, k_, v_, do_, lse_, delta_, *per_kernel, *descs, *cus, T_q, T_k, *tune_lengths, *heads,
                         *window_args, *drop, **flags, TMA=variant.tma, **meta)

    with interpreter_scope() if INTERPRET else contextlib.nullcontext():
        for n, (_, _, _, do_, out_, _, delta_, *_), cus, _ in parts:
            _bwd_preprocess[launch_grid(T_q, PREPROCESS_BLOCK, H, n)](
                out_, do_, delta_, *so, *sg, *sl, cus[0], T_q, H,
                HEAD_DIM=tile_d, D_REAL=D, BLOCK_M=PREPROCESS_BLOCK, IS_VARLEN=varlen, **_variants.COMPILE_OPTIONS,
            )
        if dlse is not None:  # lse's gradient enters as dS = P * (dP - (delta - dlse)); see _ops
            delta -= dlse.masked_fill(torch.isneginf(lse), 0.0)  # a row with no key: lse is a constant -inf
        chain = _variants.chain(q.device, (q, k, v, dout, dq, dk, dv), warp_spec=False,
                                tma_pays=tma_pays(tile_d, varlen, q.dtype))
        _variants.run(chain, (str(q.device), q.dtype, D, "backward"), launch)
    return dq, dk, dv


if __name__ == "__main__":
    # A check against autograd through the reference, then (on a GPU) forward + backward timings.
    from attn_course import attention
    from attn_course.cost import attention_flops
    from attn_course.kernels import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 113, 64, device=device, requires_grad=True) for _ in range(3))
    do = torch.randn(1, 4, 113, 64, device=device)
    grads = torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), do)
    ref = torch.autograd.grad(attention(q, k, v, causal=True), (q, k, v), do)
    for name, g, r in zip("qkv", grads, ref, strict=True):
        print(f"d{name}: max |kernel - autograd(attn_course.attention)| = {(g - r).abs().max().item():.2e}")
    if device == "cuda":
        for T in (1024, 4096, 16384):
            q, k, v = (torch.randn(4, 16, T, 128, device=device, dtype=torch.float16, requires_grad=True)
                       for _ in range(3))
            o = flash_attention(q, k, v, causal=True)
            g = torch.randn_like(o)
            ms = triton.testing.do_bench(lambda q=q, k=k, v=v, g=g: flash_attention(q, k, v, causal=True).backward(g),
                                         return_mode="median")
            tflops = attention_flops(4, 16, T, T, 128, causal=True, backward=True) / ms * 1e-9
            print(f"T={T:6d} D=128 causal fp16 fwd+bwd: {ms:.3f} ms, {tflops:.0f} TFLOP/s")
