"""
FlashAttention-2, forward pass
==============================

In this file you will learn how to write attention as **one** fused Triton kernel that never builds the
``[T_q, T_k]`` score matrix. You will learn about:

* the online softmax in a kernel: a running max ``m``, a running sum ``l`` and an unnormalised output
  ``acc`` per query row, rescaled whenever the max grows (the same loop as
  :func:`attn_course.flash_attention_reference`, now one program per block of queries);
* ``exp2`` with ``log2(e)`` folded into the softmax scale (``exp(x) = 2^(x log2 e)``: the GPU's ``ex2``
  instruction is what ``exp`` compiles to anyway, so we save a multiply per score);
* splitting the key loop into *full* tiles (no mask at all) and *masked* tiles (the causal diagonal,
  the sliding window's edges, the ragged tail), and skipping the tiles a causal mask hides;
* grouped-query attention by index arithmetic: query head ``h`` reads key/value head ``h // group``;
* packed variable-length batches (``cu_seqlens``) with the same kernel;
* splitting the keys of each row between several programs when there are too few rows to fill the GPU
  (a decoding step), their partial results combined exactly afterwards (``SPLIT_K``; see ``flash_split``);
* packing the query heads that share a key/value head into the rows of one program when decoding with
  GQA (``PACK_GQA``): one new token of 4 heads fills 4 rows of a 16-row tile instead of 1 row in each of 4
  programs, and the group's keys and values are read once instead of 4 times;
* saving the logsumexp ``lse = m + log(l)`` so the backward pass can recompute the probabilities;
* on Hopper, fetching tiles through *tensor descriptors* (TMA) instead of pointer arithmetic, and letting
  the compiler warp-specialise the key loop (``TMA`` / ``WARP_SPEC``; which variant runs is
  :mod:`attn_course.kernels._variants`' business).

Per program (one block of ``BLOCK_M`` queries of one head of one sequence), the memory traffic is
``Q`` block read once, ``K`` and ``V`` streamed through once, ``O`` and ``lse`` written once: ``O(T)``
extra memory, where the naive version writes and reads ``O(T^2)`` scores.
"""

import contextlib

import torch
import triton
import triton.language as tl

from attn_course.kernels import _fit, _mma_sync, _variants
from attn_course.kernels._ops import define_padding_rows, forward_buffers
from attn_course.kernels._runtime import interpreter_scope, is_interpreted

from . import flash_split
from ._tiles import (
    allowed,
    batch_chunks,
    batch_part,
    desc_batch,
    dot,
    head_dim_tile,
    key_slice,
    key_tiles,
    key_tiles_between,
    launch_grid,
    load_rows,
    narrow,
    needs_wide_offsets,
    overhang,
    packed_offsets,
    seq_bounds,
    store_rows,
    tile_mask,
)
from .flash_alibi import bias as alibi_bias
from .flash_alibi import launch_args as alibi_args
from .flash_alibi import slopes_of
from .flash_dropout import counters, kept, launch_args
from .flash_paged import deeper, load_paged, pages_of
from .flash_paged import launch_args as paged_args
from .flash_softcap import kernel_scales, tanh

LN2 = tl.constexpr(0.6931471805599453)  # ln(2): log(x) = log2(x) * LN2 (a constexpr: used inside the kernel)


@triton.jit
def _fwd_tiles(
    acc, l_i, m_i, q,  # running state (BLOCK_M x HEAD_DIM, BLOCK_M, BLOCK_M) and the query block
    K, V, desc_k, desc_v, tb, h_kv, k_first,  # where the keys and values are (see _tiles.load_rows)
    Pages, page_size, stride_kp, stride_vp,  # with PAGED: the sequence's pages, their size and stride in the pool
    stride_kt, stride_kd, stride_vt, stride_vd,  # strides of K and V along time and head dim
    offs_m,  # (BLOCK_M,) the query position of each row of the block, within the sequence
    start, end,  # key range to walk, [start, end)
    T_q, T_k, window_left, window_right,
    qk_scale, cap,  # q . k times qk_scale is the score in log2 units, or with SOFTCAP tanh's argument
    slopes,  # (BLOCK_M,) each row's ALiBi slope in log2 units (ALIBI)
    seed, drop_rows, dropout_p,  # dropout (DROPOUT): the seed, each row's first counter (see flash_dropout)
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,  # build the (query, key) mask? False on full tiles
    DROPOUT: tl.constexpr, SOFTCAP: tl.constexpr, ALIBI: tl.constexpr,  # (see flash_softcap, flash_alibi)
    PAGED: tl.constexpr,  # keys and values in the pages of a pool (see flash_paged)
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr,  # see _tiles.dot and _tiles.narrow
    TMA: tl.constexpr, WARP_SPEC: tl.constexpr,  # see _variants
    WIDE: tl.constexpr,  # 64-bit offsets within a sequence (see _tiles)
):
    for n0 in tl.range(start, end, BLOCK_N, warp_specialize=WARP_SPEC):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if PAGED:  # each key's rows from its page (always through pointers: a tile's rows may span pages)
            page, row = pages_of(Pages, offs_n, page_size, T_k, MASKED)  # (BLOCK_N,), (BLOCK_N,)
            kT = load_paged(K, page, row, stride_kp, stride_kt, stride_kd, offs_n, T_k, HEAD_DIM, D_REAL, MASKED, True)
            v = load_paged(V, page, row, stride_vp, stride_vt, stride_vd, offs_n, T_k, HEAD_DIM, D_REAL, MASKED, False)
        else:
            kT = load_rows(K, desc_k, tb, h_kv, n0, k_first, stride_kt, stride_kd, T_k, BLOCK_N, HEAD_DIM, D_REAL,
                           MASKED, TMA, True, WIDE)
            v = load_rows(V, desc_v, tb, h_kv, n0, k_first, stride_vt, stride_vd, T_k, BLOCK_N, HEAD_DIM, D_REAL,
                          MASKED, TMA, False, WIDE)
        s = dot(q, kT, INTERP_BF16, IEEE) * qk_scale  # (BLOCK_M, BLOCK_N) scores in log2 units
        if SOFTCAP:  # capped smoothly at +-softcap (cap = softcap * log2(e))
            s = cap * tanh(s)
        if ALIBI:  # -slope * distance, added after the cap (as flash-attn does)
            s += alibi_bias(slopes[:, None], offs_m[:, None], offs_n[None, :], T_q, T_k)
        if MASKED:
            s = tl.where(allowed(offs_m, offs_n, T_q, T_k, window_left, window_right), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new
        alpha = tl.math.exp2(m_i - m_use)  # (BLOCK_M,) rescales what we summed under the old max
        p = tl.math.exp2(s - m_use[:, None])  # (BLOCK_M, BLOCK_N) unnormalised probabilities
        l_i = l_i * alpha + tl.sum(p, 1)  # (every allowed key: the softmax is taken before dropout)
        if DROPOUT:  # only the kept weights reach the output (scaled by 1 / (1 - p) once, at the end)
            p = tl.where(kept(seed, drop_rows[:, None] + offs_n[None, :], dropout_p), p, 0.0)
        acc = acc * alpha[:, None] + dot(narrow(p, v.dtype, INTERP_BF16), v, INTERP_BF16, IEEE)  # (BLOCK_M, HEAD_DIM)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse,  # pointers: q (B, H, T_q, D), k and v (B, H_kv, T_k, D), out like q, lse (B, H, T_q)
    stride_qb, stride_qh, stride_qt, stride_qd,  # strides of q (batch, head, time, dim); any layout works
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_lb, stride_lh, stride_lt,
    stride_os, stride_ls,  # from one key slice's partial out / lse to the next (SPLIT_K), else unused
    desc_q, desc_k, desc_v, desc_o,  # tensor descriptors over q, k, v, out when TMA (else unused)
    cu_seqlens_q, cu_seqlens_k,  # int32 (B + 1,) sequence starts when IS_VARLEN (then the batch strides are 0)
    seqused_k,  # int32 (B,) keys each sequence uses when HAS_SEQUSED_K (a key/value cache filled so far)
    cache_batch_idx, cache_leftpad,  # int32 (B,) each sequence's cache row and first key when CACHE_MAP
    block_table, stride_pb, page_size,  # int32 (B, pages per sequence) when PAGED, its row stride, rows per page
    T_q, T_k,  # lengths for a fixed-length batch (ignored when IS_VARLEN)
    TUNE_T_Q, TUNE_T_K,  # the lengths rounded up to a power of two: the autotuner's key, unused here
    H, GROUP,  # number of query heads; query heads per key/value head (1 = MHA, H = MQA)
    qk_scale, cap,  # softmax scale * log2(e); with SOFTCAP scale / softcap and softcap * log2(e)
    window_left, window_right,  # sliding window; a huge value means unbounded; causal is right = 0
    num_splits,  # key slices per row (SPLIT_K): program_id(0) is (query block) * num_splits + slice
    Seed, dropout_p, drop_scale,  # dropout (DROPOUT): the seed (int64 [1]), the rate, 1 / (1 - rate)
    drop_R, drop_C, drop_first,  # the counters' row and column strides, the launch's first counter
    Alibi, stride_ab, stride_ah,  # ALiBi slopes (ALIBI): float32 [B, H], or [H] with stride_ab = 0
    HEAD_DIM: tl.constexpr,  # the tiles' width along the head dim, a power of two (see _tiles.head_dim_tile)
    D_REAL: tl.constexpr,  # the head dim itself, <= HEAD_DIM: columns past it are padding, never read or stored
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per loop step
    IS_VARLEN: tl.constexpr,
    HAS_SEQUSED_K: tl.constexpr,  # sequence b sees only its first seqused_k[b] keys
    CACHE_MAP: tl.constexpr,  # ... of cache row cache_batch_idx[b], and only from key cache_leftpad[b] on
    PAGED: tl.constexpr,  # ... or in the pages block_table[b] lists, of a pool k, v (P, H_kv, page_size, D)
    INTERP_BF16: tl.constexpr, IEEE: tl.constexpr,
    TMA: tl.constexpr,  # tiles through the descriptors (packed batches: one [1, H, total_T, D] view each)
    WARP_SPEC: tl.constexpr,  # one masked key loop, warp-specialised by the compiler
    WIDE: tl.constexpr,  # 64-bit offsets within a sequence (see _tiles)
    SPLIT_K: tl.constexpr,  # walk one slice of the keys; Out and Lse are that slice's partial buffers (float32)
    PACK_GQA: tl.constexpr,  # program_id(1) is a key/value head; rows are (query position, head of its group)
    DROPOUT: tl.constexpr,  # attention dropout (see flash_dropout)
    SOFTCAP: tl.constexpr,  # logit soft-capping (see flash_softcap)
    ALIBI: tl.constexpr,  # ALiBi position biases (see flash_alibi)
):
    pid_m = tl.program_id(0)  # which block of queries (see _tiles.launch_grid)
    if SPLIT_K:
        split = pid_m % num_splits  # which slice of the keys
        pid_m = pid_m // num_splits
    if PACK_GQA:  # decoding with GQA: the GROUP query heads of one key/value head share a tile of rows,
        h_kv = tl.program_id(1)  # so its keys and values are read once for all of them, not GROUP times
        h = h_kv * GROUP  # (the group's first head; each row adds its own, see _tiles.packed_offsets)
    else:
        h = tl.program_id(1)
        h_kv = h // GROUP  # grouped-query attention: heads h_kv*GROUP ... share one key/value head
    b = tl.program_id(2)
    tb = desc_batch(b, IS_VARLEN)  # its coordinate in the descriptors
    # past a packed sequence's end, or a cache's filled part, memory holds other rows: with TMA the tile that
    # overhangs it is read through pointers (see _tiles.overhang), in a loop of its own, which is why the
    # host never warp-specialises these launches (the pass wants one key loop)
    TAIL = TMA and (IS_VARLEN or HAS_SEQUSED_K)
    q_start, T_q = seq_bounds(cu_seqlens_q, b, T_q, IS_VARLEN)
    k_start, T_k = seq_bounds(cu_seqlens_k, b, T_k, IS_VARLEN)
    if HAS_SEQUSED_K:  # a cache: keys past the filled part are never read (masked loads: see TAIL)
        T_k = tl.minimum(tl.load(seqused_k + b), T_k)
    kb = b  # the keys' and values' batch row
    if CACHE_MAP:  # keys [leftpad, seqused) of another row of the cache (see flash_attention_kvcache)
        kb = tl.load(cache_batch_idx + b)
        k_start = tl.load(cache_leftpad + b)
        T_k = T_k - k_start
    Pages = block_table  # (unused unless PAGED)
    if PAGED:  # the pool has no batch row: each key's page stands in for it (see flash_paged)
        Pages += b.to(tl.int64) * stride_pb
        kb = b * 0
        k_start = k_start * 0  # (packed: the sequence's keys from position 0 of its pages, not cu_seqlens_k[b])
    tkb = desc_batch(kb, IS_VARLEN)  # (their coordinate in the descriptors)
    m_start = pid_m * BLOCK_M
    if IS_VARLEN:  # (a constexpr guard: an early return would defeat the warp-specialisation pass)
        rows = T_q
        if PACK_GQA:
            rows = T_q * GROUP
        if m_start >= rows:  # packed batches: this sequence is shorter than the longest one
            return

    b64, h64 = b.to(tl.int64), h.to(tl.int64)  # 64-bit offsets: B * H * T * D can exceed 2^31
    Q += b64 * stride_qb + h64 * stride_qh + q_start.to(tl.int64) * stride_qt
    K += kb.to(tl.int64) * stride_kb + h_kv.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kt
    V += kb.to(tl.int64) * stride_vb + h_kv.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vt
    Out += b64 * stride_ob + h64 * stride_oh + q_start.to(tl.int64) * stride_ot
    Lse += b64 * stride_lb + h64 * stride_lh + q_start.to(tl.int64) * stride_lt
    if SPLIT_K:
        Out += split.to(tl.int64) * stride_os
        Lse += split.to(tl.int64) * stride_ls

    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    if PACK_GQA:  # rows gathered through pointers (a descriptor's tile is one head's consecutive rows)
        pos = offs_m // GROUP  # (BLOCK_M,) each row's query position
        row_ok = offs_m < T_q * GROUP
        q_rows = packed_offsets(offs_m, GROUP, stride_qt, stride_qh)  # (BLOCK_M,)
        tile_ok = tile_mask(offs_m, T_q * GROUP, HEAD_DIM, D_REAL)  # (BLOCK_M, HEAD_DIM): real rows and columns
        q = tl.load(Q + q_rows[:, None] + offs_d[None, :] * stride_qd, mask=tile_ok, other=0.0)
        m_last = tl.minimum((m_start + BLOCK_M - 1) // GROUP, T_q - 1)
        lo, a, b_full, hi = key_tiles_between(m_start // GROUP, m_last, T_q, T_k, window_left, window_right,
                                              BLOCK_N)
    else:
        pos = offs_m
        # (BLOCK_M, HEAD_DIM), stays in registers for the whole loop (through TMA, rows past T_q may be the
        # next sequence's: each row's softmax is its own, and such rows are never stored)
        q = load_rows(Q, desc_q, tb, h, m_start, q_start, stride_qt, stride_qd, T_q, BLOCK_M, HEAD_DIM, D_REAL, True,
                      TMA, False, WIDE)
        lo, a, b_full, hi = key_tiles(m_start, T_q, T_k, window_left, window_right, BLOCK_M, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)  # running sum of exp2(s - m)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)  # running sum of exp2(s - m) * v
    seed = 0
    drop_rows = pos  # (unused without dropout)
    if DROPOUT:  # each row's first counter: its sequence, its head (one per row when packed) and position
        seed = tl.load(Seed)
        if PACK_GQA:
            drop_rows = counters(drop_first, b, h + offs_m % GROUP, pos, H, drop_R, drop_C)  # (BLOCK_M,)
        else:
            drop_rows = counters(drop_first, b, h, pos, H, drop_R, drop_C)  # (BLOCK_M,)
    slopes = tl.zeros([BLOCK_M], dtype=tl.float32)  # (unused without ALiBi)
    if ALIBI:
        if PACK_GQA:  # each row a head of its own
            slopes = slopes_of(Alibi, stride_ab, stride_ah, b, h + offs_m % GROUP)  # (BLOCK_M,)
        else:
            slopes += slopes_of(Alibi, stride_ab, stride_ah, b, h)

    if SPLIT_K:  # keep this slice's share of the visible tiles: [s0, s1), whole tiles but for hi
        lo, a, b_full, hi = key_slice(lo, a, b_full, hi, split, num_splits, BLOCK_N)
    if WARP_SPEC:
        # one loop over every visible tile, each masked: the warp-specialisation pass (producer warps
        # issuing the TMA copies, consumer warpgroups doing the products and the softmax) handles a
        # kernel with one key loop and no branch inside it (a runtime `if` to skip the mask on full
        # tiles fails to compile, as do two loops); the mask costs a few integer ops per score

        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, desc_k, desc_v, tkb, h_kv, k_start,
                                   Pages, page_size, stride_kb, stride_vb,
                                   stride_kt, stride_kd, stride_vt, stride_vd, pos,
                                   lo, hi, T_q, T_k, window_left, window_right, qk_scale, cap,
                                   slopes, seed, drop_rows, dropout_p,
                                   HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, PAGED,
                                   INTERP_BF16, IEEE, TMA, True, WIDE)
    else:  # the window's left edge, then the full tiles, then the diagonal / right edge / ragged tail
        tail = overhang(T_k, lo, hi, TAIL, BLOCK_N)  # (hi unless TAIL; full tiles never overhang)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, desc_k, desc_v, tkb, h_kv, k_start,
                                   Pages, page_size, stride_kb, stride_vb,
                                   stride_kt, stride_kd, stride_vt, stride_vd, pos,
                                   lo, tl.minimum(a, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                                   slopes, seed, drop_rows, dropout_p,
                                   HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, PAGED,
                                   INTERP_BF16, IEEE, TMA, False, WIDE)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, desc_k, desc_v, tkb, h_kv, k_start,
                                   Pages, page_size, stride_kb, stride_vb,
                                   stride_kt, stride_kd, stride_vt, stride_vd, pos,
                                   a, b_full, T_q, T_k, window_left, window_right, qk_scale, cap,
                                   slopes, seed, drop_rows, dropout_p,
                                   HEAD_DIM, D_REAL, BLOCK_N, False, DROPOUT, SOFTCAP, ALIBI, PAGED,
                                   INTERP_BF16, IEEE, TMA, False, WIDE)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, desc_k, desc_v, tkb, h_kv, k_start,
                                   Pages, page_size, stride_kb, stride_vb,
                                   stride_kt, stride_kd, stride_vt, stride_vd, pos,
                                   b_full, tl.minimum(hi, tail), T_q, T_k, window_left, window_right, qk_scale, cap,
                                   slopes, seed, drop_rows, dropout_p,
                                   HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, PAGED,
                                   INTERP_BF16, IEEE, TMA, False, WIDE)
        if TAIL:  # the tile that overhangs the keys' end, if any: through masked pointer loads
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, K, V, desc_k, desc_v, tkb, h_kv, k_start,
                                       Pages, page_size, stride_kb, stride_vb,
                                       stride_kt, stride_kd, stride_vt, stride_vd, pos,
                                       tail, hi, T_q, T_k, window_left, window_right, qk_scale, cap,
                                       slopes, seed, drop_rows, dropout_p,
                                       HEAD_DIM, D_REAL, BLOCK_N, True, DROPOUT, SOFTCAP, ALIBI, PAGED,
                                       INTERP_BF16, IEEE, False, False, WIDE)

    # epilogue: normalise; a row that saw no allowed key has l = 0 and gets out = 0, lse = -inf
    # (with SPLIT_K: no allowed key *in this slice*; the combine gives such a slice no weight)
    alive = l_i > 0.0
    l_safe = tl.where(alive, l_i, 1.0)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * drop_scale
    lse = tl.where(alive, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # natural log
    if PACK_GQA:
        o_rows = packed_offsets(offs_m, GROUP, stride_ot, stride_oh)  # (BLOCK_M,)
        tl.store(Out + o_rows[:, None] + offs_d[None, :] * stride_od, narrow(out, Out.dtype.element_ty, INTERP_BF16),
                 mask=tile_ok)
        tl.store(Lse + packed_offsets(offs_m, GROUP, stride_lt, stride_lh), lse, mask=row_ok)
    else:  # through pointers for a split (desc_o describes out, not the partials) and for a packed batch,
        # whose tile may overhang its sequence into the next one's rows (the copy engine clips only at the end)
        store_rows(Out, desc_o, b, h, m_start, narrow(out, Out.dtype.element_ty, INTERP_BF16), stride_ot, stride_od,
                   T_q, BLOCK_M, HEAD_DIM, D_REAL, TMA and not SPLIT_K and not IS_VARLEN, WIDE)
        tl.store(Lse + offs_m * stride_lt, lse, mask=offs_m < T_q)


INTERPRET = is_interpreted(_attn_fwd)


# Tile shapes for the GPU, as (BLOCK_M, BLOCK_N, num_warps, num_stages); the autotuner keeps the fastest
# per shape, and skips configs that need more shared memory than the chip has. Through TMA none of those offered spills
# on sm_90 (the spill lists below). Through pointers (what runs where TMA refuses a tensor's strides, and on GPUs
# before Hopper) some do, more with masked columns: at D = 80 and 128 four or five of the six offered, 8 to 88
# bytes, at 160 and 256 two or three of the four (8 to 152), and at 40 (64-wide) two, 152 to 176 bytes (parts
# "forward" and "forward varlen", variant "pointer", of benchmarks/results/kernel_resources_sm90*.json). They are
# still offered: skipping them would leave one or two tiles at D >= 80, and the autotuner, which times them, drops
# a spilling tile that is slower (untimed). (sm_80, where pointers are the only variant, is not surveyed.)
GPU_TILES = [
    (128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 4), (128, 32, 4, 4),
    (64, 64, 4, 3), (64, 32, 4, 4), (64, 128, 4, 3), (128, 128, 8, 2),
]
# Warp-specialised tiles: one consumer warpgroup of 4 warps per 64 query rows plus a producer warpgroup.
# Checked to compile for sm_90 by tests/test_kernels_compile.py; 128-row tiles on 4 warps do not (the
# pass splits the query tile between two consumers but not its descriptor).
WS_TILES = [(64, 64, 4, 3), (64, 128, 4, 3), (64, 32, 4, 4), (64, 64, 4, 4)]
# Head dim 256: a (64, 256) float32 accumulator is already 128 registers per thread on 4 warps and each (64, 256)
# key or value tile is 32 KiB of shared memory per stage, so fewer rows, fewer stages, more warps. Through TMA (what
# Hopper runs; D = 160, padded to 256, too) none spills on sm_90; through pointers some spill 8 to 16 bytes, and at
# D = 160 64 x 64 on 8 warps 104 (triton 3.9): benchmarks/results/kernel_resources_sm90*.json, parts "forward".
WIDE_TILES = [(64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 4, 3), (64, 32, 8, 2)]
WIDE_WS_TILES = [(64, 32, 4, 3), (64, 32, 4, 2), (64, 64, 4, 2)]
# Decoding (T_q <= 16: one new token per sequence, or a few speculative ones): 16 query rows, the fewest a
# tl.dot takes. A 64- or 128-row tile would be nearly all padding: 4 to 128 times the products for the same
# keys and values, and an accumulator that at D = 128 fills the register file (255 registers and a spill on
# sm_90, against 134-192 for these: benchmarks/results/kernel_resources_sm90.json, part "decode"). The keys
# and values read, what a decoding step waits on, are the same whatever BLOCK_M. On Hopper these tiles run
# mma.sync rather than wgmma, which needs 64 rows. Float32 (no tensor cores to feed) gets the smallest. The last,
# 16 x 64 on 8 warps, is there for pointer launches at D = 40: on 4 warps 16 x 64 spills there through pointers
# (48 bytes on sm_90, paged 152; paged 64 to 88 on sm_80), and 16 x 128 through either variant, where it spills on
# none of sm_80, sm_90 and sm_120 under either triton (not offered where it spills 8 bytes: DECODE_SPILLS).
DECODE_ROWS = 16
DECODE_TILES = [(16, 64, 4, 3), (16, 128, 4, 2), (16, 64, 4, 4), (16, 128, 4, 3), (16, 64, 8, 3)]
WIDE_DECODE_TILES = [(16, 64, 4, 3), (16, 64, 4, 4), (16, 64, 4, 2)]  # (the last: 74 KiB of shared memory on sm_80,
# where the others need 138 and 202, fits an A10's, L4's or RTX 30 / 40's 99 KiB: benchmarks/kernel_shared_memory.py)
# float32 (full-precision products on the CUDA cores: IEEE, no tensor cores; each element twice a 16-bit one's bytes)
# has tile lists of its own, keyed by the tiles' width (_variants.float32_width: 32 also serves 16). Compiled
# for sm_90 in float32, every 16-bit prefill tile above spills registers (0.4 to 21 KB under triton 3.9), every
# decoding tile but two at D = 64 does (up to 9 KB), 13 of them overflow shared memory, and ptxas spends tens of
# seconds on each, which an autotuner offered them would spend on a float32 call's first launch. These are the tiles
# of those probed in float32 that spill nothing through pointers under triton 3.9 or 3.6 at their width and at the
# head dims padded to it (40, 80 and 160 surveyed): small query tiles, on 8 warps mostly
# (benchmarks/results/kernel_resources_sm90*.json, dtype "float32"; tests/test_kernels_compile.py checks them).
# Through TMA every float32 prefill tile spills (32 bytes to 2.8 KB), so auto runs float32 through pointers
# (tma_pays). With features, packed or paged some of these spill (FLOAT32_SPILLS below): such a launch skips them.
# With the autotuner off a launch runs the first tile its pruning keeps. None is timed.
FLOAT32_TILES = {
    64: [(32, 64, 8, 2), (32, 32, 4, 2), (64, 16, 8, 2), (16, 64, 4, 2), (16, 64, 8, 2), (32, 16, 4, 2)],
    128: [(32, 16, 8, 2), (16, 64, 4, 2), (16, 128, 8, 2), (16, 16, 8, 2)],
    256: [(16, 16, 8, 2)],
}
FLOAT32_DECODE_TILES = {
    64: [(16, 64, 8, 2), (16, 64, 4, 2), (16, 64, 4, 3)],
    128: [(16, 64, 8, 2), (16, 16, 4, 2)],
    256: [(16, 32, 8, 2)],
}
# (tiles 16 and 32 columns wide: the 64-wide lists, surveyed at D = 16 and 32 too)
FLOAT32_TILES[32], FLOAT32_DECODE_TILES[32] = FLOAT32_TILES[64], FLOAT32_DECODE_TILES[64]
# float32's tiles that spill registers on sm_90 through pointers (what auto runs for float32) under triton 3.9 or 3.6
# with a feature, a pair or all three on (parts "forward dropout", "forward dropout+alibi", ... of the float32 rows of
# benchmarks/results/kernel_resources_sm90*.json), for a packed batch ("forward varlen") or on a paged cache ("forward
# paged", "forward varlen paged", "decode paged"): 8 to 48 bytes but paged, up to 1.1 KB there (at D = 40). Keyed,
# as FEATURE_SPILLS, by the launch's constexprs (IS_VARLEN: packed; PAGED: paged), then by (kernel, width, padded)
# (_variants.float32_spills_key: "forward" or "decode"; the lists' width; a padded head dim, surveyed at 40, 80 and
# 160, has lists of its own). A float32 launch's autotuner skips the list of its combination of features and those of
# its layout, and its default is the first tile left (_variants.fewest_float32_spills). Where every tile spills in a
# part (a prompt's chunk on a paged cache at D = 160, whose list is one tile: 8 bytes), the list leaves out the least
# spilling, which the pruning then keeps; tests/test_kernels_compile.py checks the lists against both surveys.
FLOAT32_SPILLS: dict[str, dict[tuple[str, int, bool], list[tuple[int, int, int, int]]]] = {
    "DROPOUT": {
        ("forward", 64, False): [(32, 32, 4, 2)],
        ("forward", 64, True): [(32, 32, 4, 2), (32, 64, 8, 2)],
        ("forward", 128, False): [(16, 128, 8, 2)],
        ("forward", 128, True): [(16, 128, 8, 2)],
    },
    "SOFTCAP": {
        ("forward", 32, False): [(32, 32, 4, 2), (32, 64, 8, 2)],
        ("forward", 64, False): [(32, 64, 8, 2), (64, 16, 8, 2)],
        ("forward", 64, True): [(16, 64, 8, 2), (64, 16, 8, 2)],
    },
    "ALIBI": {
        ("forward", 32, False): [(16, 64, 4, 2)],
        ("forward", 64, False): [(32, 64, 8, 2)],
    },
    "DROPOUT+SOFTCAP": {
        ("forward", 32, False): [(32, 32, 4, 2)],
        ("forward", 64, False): [(16, 64, 4, 2), (16, 64, 8, 2), (32, 32, 4, 2)],
        ("forward", 64, True): [(16, 64, 8, 2), (32, 16, 4, 2), (32, 64, 8, 2), (64, 16, 8, 2)],
        ("forward", 128, False): [(16, 128, 8, 2)],
        ("forward", 128, True): [(16, 128, 8, 2)],
    },
    "DROPOUT+ALIBI": {
        ("forward", 64, False): [(16, 64, 4, 2), (32, 64, 8, 2)],
        ("forward", 64, True): [(16, 64, 8, 2), (32, 64, 8, 2)],
        ("forward", 128, False): [(16, 128, 8, 2), (32, 16, 8, 2)],
        ("forward", 128, True): [(16, 128, 8, 2), (32, 16, 8, 2)],
    },
    "SOFTCAP+ALIBI": {
        ("forward", 64, False): [(32, 64, 8, 2), (64, 16, 8, 2)],
        ("forward", 64, True): [(16, 64, 8, 2), (32, 16, 4, 2), (64, 16, 8, 2)],
    },
    "DROPOUT+SOFTCAP+ALIBI": {
        ("forward", 32, False): [(16, 64, 8, 2), (32, 32, 4, 2)],
        ("forward", 64, False): [(16, 64, 4, 2), (16, 64, 8, 2), (32, 32, 4, 2)],
        ("forward", 64, True): [(16, 64, 8, 2), (32, 32, 4, 2), (32, 64, 8, 2), (64, 16, 8, 2)],
        ("forward", 128, False): [(16, 128, 8, 2)],
        ("forward", 128, True): [(16, 128, 8, 2)],
    },
    "IS_VARLEN": {
        ("forward", 32, False): [(64, 16, 8, 2)],
        ("forward", 64, False): [(32, 32, 4, 2)],
        ("forward", 64, True): [(32, 16, 4, 2), (32, 64, 8, 2)],
    },
    "PAGED": {  # (each tile compiled deeper: flash_paged.deeper)
        ("decode", 32, False): [(16, 64, 8, 2)],
        ("decode", 64, False): [(16, 64, 4, 2), (16, 64, 4, 3)],
        ("decode", 64, True): [(16, 64, 4, 2), (16, 64, 4, 3)],
        ("forward", 32, False): [(16, 64, 4, 2), (16, 64, 8, 2), (32, 16, 4, 2), (32, 64, 8, 2)],
        ("forward", 64, False): [(32, 32, 4, 2)],
        ("forward", 64, True): [(16, 64, 4, 2), (32, 32, 4, 2)],
        ("forward", 128, False): [(16, 64, 4, 2), (32, 16, 8, 2)],
        ("forward", 128, True): [(32, 16, 8, 2)],
    },
}
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}
INTERPRETER_DECODE_BLOCKS = {"BLOCK_M": DECODE_ROWS, "BLOCK_N": 32}
_DESCRIPTORS = (("desc_q", "BLOCK_M"), ("desc_k", "BLOCK_N"), ("desc_v", "BLOCK_N"), ("desc_o", "BLOCK_M"))


def candidate_tiles(D: int, warp_spec: bool, float32: bool = False) -> list[tuple[int, int, int, int]]:
    """Every tile shape considered at head dim ``D`` (what benchmarks/kernel_resources.py surveys);
    :func:`configs` offers the autotuner those that do not spill or overflow. ``float32``: float32's own
    (:data:`FLOAT32_TILES`; never warp-specialised)."""
    if float32:
        return [] if warp_spec else FLOAT32_TILES[_variants.float32_width(D)]
    if D > 128:
        return WIDE_WS_TILES if warp_spec else WIDE_TILES
    return WS_TILES if warp_spec else GPU_TILES


def is_decoding(T_q: int) -> bool:
    """Whether a launch with (at most) ``T_q`` queries per sequence is a decoding step: 16-row tiles, and
    GQA groups packed into one program's rows."""
    return T_q <= DECODE_ROWS


# The decoding tiles that spill registers on sm_90 at a head dim through each variant (``"tma"`` for both TMA ones),
# under triton 3.9 or 3.6 (8 bytes; at D = 16 through TMA up to 24, under 3.6): the autotuner does not offer them
# there (:func:`decode_spills`). Padded head dims are the PADDED lists' (FEATURE_SPILLS).
DECODE_SPILLS = {
    "pointer": {16: [(16, 128, 4, 3)], 128: [(16, 128, 4, 3), (16, 64, 8, 3)]},
    "tma": {16: [(16, 128, 4, 2), (16, 128, 4, 3)], 64: [(16, 128, 4, 3), (16, 64, 8, 3)]},
}


def decode_spills(variant: _variants.Variant, D: int) -> list[tuple[int, int, int, int]]:
    """:data:`DECODE_SPILLS` for a launch of ``variant`` in tiles ``D`` wide."""
    return DECODE_SPILLS["tma" if variant.tma else "pointer"].get(D, [])


def decode_tiles(D: int, float32: bool = False) -> list[tuple[int, int, int, int]]:
    """The 16-row tiles offered when ``T_q <= DECODE_ROWS`` (and only then: see :func:`prune_for_lengths`)."""
    if float32:
        return FLOAT32_DECODE_TILES[_variants.float32_width(D)]
    return WIDE_DECODE_TILES if D > 128 else DECODE_TILES


def offered_tiles(D: int, warp_spec: bool, float32: bool = False) -> list[tuple[int, int, int, int]]:
    """The candidate tiles (not the decoding ones) :func:`configs` offers at head dim ``D``: at D = 128 not
    128 query rows on 4 warps (they spill), nor warp-specialised 128-key tiles (they overflow shared memory);
    float32's own all."""
    if float32:
        return candidate_tiles(D, warp_spec, True)
    if warp_spec:
        return [t for t in candidate_tiles(D, True) if D != 128 or t[1] < 128]
    return [t for t in candidate_tiles(D, False) if D != 128 or not (t[0] == 128 and t[2] == 4)]


def configs(variant: _variants.Variant, D: int, float32: bool = False, paged: bool = False) -> list[triton.Config]:
    """The autotuner's search space for ``variant`` at head dim ``D`` (for float32 inputs, ``float32``: their own
    tiles): the candidate tiles without warp specialisation, plus the warp-specialised ones when the variant allows
    it, plus the decoding tiles (which :func:`prune_for_lengths` keeps apart); on a paged cache, ``paged``, each
    compiled deeper (``flash_paged.deeper``: as many buffers for its keys and values as on a plain cache). At
    D = 128, 128 query rows on 4 warps spill registers on sm_90 (a 128 x 128 float32 accumulator is 128 registers
    per thread before anything else; see benchmarks/results/kernel_resources_sm90.json), so those are not tried,
    nor are warp-specialised 128-key tiles, which overflow shared memory."""
    hook = _variants.tile_hook(_DESCRIPTORS) if variant.tma else None
    space = [_variants.config(*t, hook, WARP_SPEC=False) for t in offered_tiles(D, False, float32)]
    if variant.warp_specialize:
        space += [_variants.config(*t, hook, WARP_SPEC=True) for t in offered_tiles(D, True, float32)]
    # (not the decoding tiles that spill; float32: not those already offered for prefills, each config once)
    skip = offered_tiles(D, False, True) if float32 else decode_spills(variant, D)
    space += [_variants.config(*t, hook, WARP_SPEC=False) for t in decode_tiles(D, float32) if t not in skip]
    return [deeper(c) for c in space] if paged else space


# A Philox number per score (dropout), a tanh (softcap) or a bias (ALiBi) costs registers: at these head dims
# these tiles, (BLOCK_M, BLOCK_N, warps, stages, warp-specialised), spill on sm_90 under triton 3.9 or 3.6 with
# that feature on (parts "forward dropout", "forward softcap", ... of benchmarks/results/kernel_resources_sm90*.json;
# tests/test_kernels_compile.py checks the lists against both). Such a launch's autotuner skips them
# (prune_for_lengths), and its default tile is the first candidate not among them. Keyed by the kernel's
# constexpr, or by a combination ("DROPOUT+SOFTCAP": both on, surveyed as the part "forward dropout+softcap");
# a launch skips every list its features name (_variants.fewest_spills). (Surveyed through TMA, what Hopper
# runs; the pointer variant uses the same lists.) At D = 256 with dropout every tile spills but 64 x 32 on 8 warps,
# each warp-specialised one too (8 to 160 bytes): such a launch's autotuner tries that tile alone. (D = 160, padded
# to 256-wide tiles, spills in the same tiles: surveyed, no list of its own.) Narrow heads are no lighter here: in
# 16- and 32-wide tiles dropout, alone or with the others, spills the 128-row and 128-key tiles, up to 2.5 KB with
# a softcap (the per-score work grows with the tile, not the head); a softcap or ALiBi alone spills nothing.
FEATURE_SPILLS: dict[str, dict[int, list[tuple[int, int, int, int, bool]]]] = {
    "DROPOUT": {
        16: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        32: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        64: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
             (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
             (128, 128, 8, 3, False)],
        128: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
              (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
              (128, 128, 8, 3, False)],
        256: [(64, 32, 4, 3, False), (64, 64, 8, 2, False), (128, 32, 8, 2, False), (64, 32, 4, 2, True),
              (64, 32, 4, 3, True), (64, 64, 4, 2, True)],
    },
    "SOFTCAP": {
        128: [(128, 64, 4, 3, False), (128, 64, 4, 4, False)],
    },
    "ALIBI": {
        128: [(128, 64, 4, 3, False), (128, 64, 4, 4, False)],
    },
    # two features at once (parts "forward dropout+softcap" etc.): each pair's own spills
    "DROPOUT+SOFTCAP": {
        16: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        32: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        64: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
             (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
             (128, 128, 8, 3, False)],
        128: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
              (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
              (128, 128, 8, 3, False)],
        256: [(64, 32, 4, 3, False), (64, 64, 8, 2, False), (128, 32, 8, 2, False), (64, 32, 4, 2, True),
              (64, 32, 4, 3, True), (64, 64, 4, 2, True)],
    },
    "DROPOUT+ALIBI": {
        16: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        32: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        64: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False), (128, 64, 4, 3, False),
             (128, 64, 4, 4, False), (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        128: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
              (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
              (128, 128, 8, 3, False)],
        256: [(64, 32, 4, 3, False), (64, 64, 8, 2, False), (128, 32, 8, 2, False), (64, 32, 4, 2, True),
              (64, 32, 4, 3, True), (64, 64, 4, 2, True)],
    },
    "SOFTCAP+ALIBI": {
        128: [(128, 32, 4, 4, False), (128, 64, 4, 3, False), (128, 64, 4, 4, False)],
    },
    "DROPOUT+SOFTCAP+ALIBI": {  # (all three: part "forward dropout+softcap+alibi")
        16: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        32: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
             (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        64: [(64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False), (128, 64, 4, 3, False),
             (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        128: [(64, 64, 4, 3, False), (64, 128, 4, 3, False), (64, 128, 4, 3, True), (128, 32, 4, 4, False),
              (128, 64, 4, 3, False), (128, 64, 4, 4, False), (128, 64, 8, 3, False), (128, 128, 8, 2, False),
              (128, 128, 8, 3, False)],
        256: [(64, 32, 4, 3, False), (64, 64, 8, 2, False), (128, 32, 8, 2, False), (64, 32, 4, 2, True),
              (64, 32, 4, 3, True), (64, 64, 4, 2, True)],
    },
    # a paged cache (pointers, a page lookup per key, each tile compiled deeper: flash_paged.deeper): parts "decode
    # paged", "forward paged" (a prompt's chunk) and "forward varlen paged" (a packed batch of them)
    "PAGED": {
        64: [(128, 64, 4, 3, False), (128, 64, 4, 4, False)],  # (8 bytes, packed)
        128: [(64, 128, 4, 3, False), (128, 32, 4, 4, False), (128, 64, 4, 3, False), (128, 64, 4, 4, False),
              (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
        256: [(16, 64, 4, 3, False), (16, 64, 4, 4, False), (64, 32, 4, 3, False), (64, 64, 8, 2, False)],
    },
    # a padded head dim (D_REAL < HEAD_DIM: its columns masked on every pointer load and store), surveyed at
    # D = 40 in 64-wide tiles and D = 80 in 128-wide ones (rows with "D": 40 and 80). Decoding at D = 40 spills in
    # 16 x 128 through either variant (32 to 976 bytes) and through pointers in 16 x 64 on 4 warps too (48 bytes,
    # paged 152, under triton 3.9: PADDED+POINTER, for pointer launches alone), where 16 x 64 on 8 warps, offered to
    # pointer launches in 64-wide tiles (DECODE_SPILLS), spills in neither (tests/test_kernels_compile.py)
    "PADDED": {
        64: [(16, 128, 4, 2, False), (16, 128, 4, 3, False), (64, 128, 4, 3, False)],
        128: [(16, 128, 4, 2, False)],  # (triton 3.6, through pointers; at D = 128 its 3-stage twin instead)
    },
    "PADDED+POINTER": {
        64: [(16, 64, 4, 3, False), (16, 64, 4, 4, False)],
    },
    # a padded head dim on a paged cache (parts "forward paged" and "forward varlen paged" at D = 40; beyond
    # PADDED's and PAGED's tiles): 8 to 128 bytes. (At D = 80 and 160 nothing beyond PAGED's tiles spills.)
    "PADDED+PAGED": {
        64: [(64, 64, 4, 3, False), (128, 32, 4, 4, False), (128, 128, 8, 2, False), (128, 128, 8, 3, False)],
    },
}


def prune_for_lengths(configs: list[triton.Config], nargs: dict, **kwargs) -> list[triton.Config]:
    """The autotuner's pruning step: for ``T_q <= DECODE_ROWS`` (by the tuning key's rounded length) only the
    decoding tiles (:func:`decode_tiles`), otherwise only the others (by tile, not by its 16 rows: float32's prefill
    tiles have 16-row ones too; a tile in both lists serves both), and with dropout, a softcap or ALiBi
    (``DROPOUT``, ``SOFTCAP``, ``ALIBI``: constexprs the autotuner passes as keywords) none of their
    :data:`FEATURE_SPILLS`, nor, for a padded head dim (``D_REAL < HEAD_DIM``; a caller that names no ``D_REAL``
    means the tile's own width), the ``PADDED`` list (on a paged cache ``PADDED+PAGED`` too, and for a pointer
    launch, ``TMA`` false or absent, ``PADDED+POINTER``); the autotuner then times what is left. (Those lists are
    16-bit surveys: a float32 launch, ``IEEE``, has tiles of its own and skips those of :data:`FLOAT32_SPILLS`
    instead.)"""
    width, float32 = kwargs["HEAD_DIM"], bool(kwargs.get("IEEE"))
    if is_decoding(nargs["TUNE_T_Q"]):
        wanted = decode_tiles(width, float32)
    else:
        wanted = offered_tiles(width, False, float32) + offered_tiles(width, True, float32)
    kept = [c for c in configs if _variants.tile_of(c) in wanted]
    if float32:
        kernel = "decode" if is_decoding(nargs["TUNE_T_Q"]) else "forward"
        return _variants.fewest_float32_spills(kept, _variants.tile_of, FLOAT32_SPILLS, kernel, width, kwargs)
    flags = spill_flags(width, kwargs, kwargs.get("TMA", False))
    return _variants.fewest_spills(kept, lambda c: (*_variants.tile_of(c), c.kwargs["WARP_SPEC"]), FEATURE_SPILLS,
                                   width, **flags)


def spill_flags(width: int, constexprs: dict, tma: bool) -> dict:
    """A launch's constexprs as :data:`FEATURE_SPILLS` names them: ``PADDED`` for a padded head dim (``D_REAL <
    width``) and ``POINTER`` for a pointer launch (``tma`` false), beside its features."""
    return dict(constexprs, PADDED=_variants.padded(width, constexprs), POINTER=not tma)


def default_config(variant: _variants.Variant, D: int, itemsize: int, T_q: int | None = None, *,
                   sm: int | None = None, **features) -> triton.Config:
    """The one config used when autotuning is off: 16-row tiles for ``T_q <= DECODE_ROWS`` (decoding); else
    big query tiles for 16-bit inputs, smaller ones where a wide head would overflow shared memory, and the
    warp-specialised variant with WS on. ``features``: the launch's constexprs; where that tile spills with them
    (``DROPOUT``, ``SOFTCAP``, ``ALIBI`` or ``PAGED`` on, or a padded head dim, ``D_REAL < D``:
    :data:`FEATURE_SPILLS`), the first tile :func:`configs` offers that spills least then
    (:func:`_variants.fewest_spills`). float32 (``itemsize`` 4): the first of its own list (:data:`FLOAT32_TILES`,
    :data:`FLOAT32_DECODE_TILES`) that spills least with the launch's features (:data:`FLOAT32_SPILLS`).
    ``sm`` (an mma.sync GPU's surveyed target, 80 or 120: ``_mma_sync.target``): the tiles that spill there
    (``_mma_sync.SPILLS``) instead of Hopper's padded and paged lists, as one more list beside the features', and
    of the tiles named least the one that spills least there (``_mma_sync.least_spilling``)."""
    decoding = T_q is not None and is_decoding(T_q)
    kernel = "decode" if decoding else "forward"
    part = f"{kernel} paged" if features.get("PAGED") else kernel  # (paged tiles are listed as they are here)
    older = _mma_sync.spills(sm, part, itemsize == 4, D, features) if sm else {}
    if itemsize == 4:  # (float32's lists, less what spills with the launch's features: FLOAT32_SPILLS)
        tiles = decode_tiles(D, True) if decoding else candidate_tiles(D, False, True)
        table = _mma_sync.hopper_proxies(FLOAT32_SPILLS, sm)
        least = _variants.fewest_float32_spills(tiles, tuple, table, kernel, D, features, list(older))
        return _variants.config(*_mma_sync.least_spilling(least, tuple, older), WARP_SPEC=False)
    features = spill_flags(D, features, variant.tma)
    table = _mma_sync.hopper_proxies(FEATURE_SPILLS, sm)
    named = [(*t, False) for t in older]  # (as FEATURE_SPILLS names a tile; none surveyed there is warp-specialised)
    if decoding:  # (on a paged cache the first decoding tile may spill: PAGED at 256)
        least = _variants.fewest_spills(decode_tiles(D), lambda t: (*t, False), table, D, named, **features)
        return _variants.config(*_mma_sync.least_spilling(least, tuple, older), WARP_SPEC=False)
    ws = variant.warp_specialize
    tile = usual_tile(D, ws)
    if (*tile, ws) in _variants.feature_spills(table, D, **features) + named:
        least = _variants.fewest_spills(offered_tiles(D, ws), lambda t: (*t, ws), table, D, named, **features)
        tile = _mma_sync.least_spilling(least, tuple, {} if ws else older)
    return _variants.config(*tile, WARP_SPEC=ws)


def usual_tile(D: int, warp_spec: bool) -> tuple[int, int, int, int]:
    """:func:`default_config`'s 16-bit tile before any feature: the first warp-specialised candidate with WS on; at
    D = 256 the first wide tile; else 128 query rows (on 8 warps at D = 128)."""
    if warp_spec:
        return candidate_tiles(D, True)[0]
    if D > 128:
        return WIDE_TILES[0]
    return 128, 64, 4 if D <= 64 else 8, 3


def tma_pays(dtype: torch.dtype) -> bool:
    """Whether ``auto`` tries the TMA variants for a forward of ``dtype`` inputs: not for float32, whose TMA
    prefill tiles all spill registers on sm_90 (32 bytes to 2.8 KB) where :data:`FLOAT32_TILES` through pointers
    spill none. ``ATTN_COURSE_KERNEL=tma`` still runs it."""
    return dtype != torch.float32


def grid_rows(T_q: int, H: int, H_kv: int) -> tuple[bool, int, int]:
    """``(pack, rows, heads)``: whether a launch packs each GQA group's query heads into one program's rows
    (a decoding step: ``T_q``, for a packed batch its longest sequence, at most ``DECODE_ROWS``), and the
    rows per (sequence, head) and the heads its grid spans."""
    pack = is_decoding(T_q) and H > H_kv
    return (pack, T_q * (H // H_kv), H_kv) if pack else (pack, T_q, H)


def planned_splits(num_splits: int, B: int, H: int, H_kv: int, T_q: int, T_k: int, device: torch.device,
                   varlen: bool = False) -> int:
    """The key slices a launch uses: ``num_splits`` (0: :func:`flash_split.num_splits`' rule, for the grid
    the launch will have); never more than one for packed (varlen) batches."""
    if varlen:
        return 1
    _, rows, heads = grid_rows(T_q, H, H_kv)
    sms = None if INTERPRET else flash_split.multiprocessors(device)
    return flash_split.num_splits(num_splits, B=B, H=heads, T_q=rows, T_k=T_k, sms=sms)


def _strides(x: torch.Tensor, ndim: int):
    """Strides padded on the left with zeros to ``ndim`` dims (a packed [T, H, D] has no batch stride)."""
    return (0,) * (ndim - x.dim()) + tuple(x.stride())


def attn_fwd_launch(q, k, v, *, scale, window, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                    max_seqlen_k=None, seqused_k=None, num_splits=0, dropout_p=0.0, dropout_seed=None, softcap=0.0,
                    alibi_slopes=None, cache_map=None, block_table=None, blocks=None):
    """Run the forward kernel. Inputs are already checked by :mod:`attn_course.kernels.flash_attention`.

    Fixed length: q ``[B, H, T_q, D]``, k, v ``[B, H_kv, T_k, D]`` -> out like q, lse ``[B, H, T_q]``;
    with ``seqused_k`` (int32 ``[B]``), sequence ``b`` sees only its first ``seqused_k[b]`` keys (a cache).
    Packed: q ``[total_q, H, D]``, k, v ``[total_k, H_kv, D]`` -> out like q, lse ``[H, total_q]``.
    ``window = (left, right)`` with huge numbers for unbounded sides. ``num_splits``: key slices per row
    (fixed length only; ``0``: :func:`flash_split.num_splits` chooses). ``dropout_p`` with ``dropout_seed``
    (int64 ``[1]`` on q's device; ``None``: no dropout): see ``flash_dropout``; a packed batch's counters
    then run over ``max_seqlen_q x max_seqlen_k``. ``softcap > 0``: scores capped smoothly at
    ``+-softcap`` (see ``flash_softcap``). ``alibi_slopes``: float32 ``[B, H]`` or ``[H]``, ALiBi's slopes
    (see ``flash_alibi``). ``cache_map``: ``None`` or int32 ``(cache_batch_idx, cache_leftpad)``, each ``[B]``
    (with ``seqused_k``): sequence ``b`` reads keys ``cache_leftpad[b] ... seqused_k[b] - 1`` of the cache's
    row ``cache_batch_idx[b]``. ``block_table``: ``None`` or int32 ``[B, pages_per_seq]`` (with ``seqused_k``, or
    packed with ``cu_seqlens_k`` giving the key counts): k and v are then a pool of pages ``[num_pages, H_kv,
    page_size, D]`` and sequence ``b``'s key ``j`` is row ``j % page_size`` of page ``block_table[b, j //
    page_size]`` (see ``flash_paged``; always the pointer variant). ``blocks``: the interpreter's tiles.
    """
    varlen = cu_seqlens_q is not None
    if varlen:
        B = cu_seqlens_q.numel() - 1
        H, D = q.shape[1], q.shape[2]
        T_q, T_k = max_seqlen_q, 0  # grid size; the kernel reads the real lengths from cu_seqlens
        # view the packed tensors as (batch=1 stride 0, head, time, dim): time is dim 0 of the packed layout
        sq, sk, sv = ((0, x.stride(1), x.stride(0), x.stride(2)) for x in (q, k, v))
        if block_table is not None:  # k and v: pools (page, head, row, dim), as in a fixed-length launch
            sk, sv = k.stride(), v.stride()
        out, lse = forward_buffers(q, varlen)  # out like q, lse (H, total_q)
        define_padding_rows(q, zeros=(out,), minus_inf=(lse,))
        so = (0, out.stride(1), out.stride(0), out.stride(2))
        sl = (0, lse.stride(0), lse.stride(1))
        H_kv = k.shape[1]
    else:
        B, H, T_q, D = q.shape
        H_kv, T_k = k.shape[1], k.shape[2]
        if block_table is not None:  # a pool of pages: a sequence holds up to its pages' positions
            T_k = block_table.shape[1] * k.shape[2]
        sq, sk, sv = _strides(q, 4), _strides(k, 4), _strides(v, 4)
        out, lse = forward_buffers(q, varlen)  # out (B, H, T_q, D) contiguous, lse (B, H, T_q)
        so, sl = out.stride(), lse.stride()
    pack, rows, heads = grid_rows(T_q, H, H_kv)
    splits = planned_splits(num_splits, B, H, H_kv, T_q, T_k, q.device, varlen)
    if splits > 1:  # the kernel writes one partial result per slice; the combine writes out and lse
        part, part_lse = flash_split.split_buffers(q, splits)  # (B, S, H, T_q, D), (B, S, H, T_q) float32
        so = (part.stride(0), *part.stride()[2:])  # (batch, head, time, dim): the slice is stride_os
        sl = (part_lse.stride(0), *part_lse.stride()[2:])
        split_strides = (part.stride(1), part_lse.stride(1))
        targets = (part, part_lse)
    else:
        split_strides, targets = (0, 0), (out, lse)
    interp_bf16 = INTERPRET and q.dtype == torch.bfloat16  # see _tiles.dot and _tiles.narrow
    strides = (*sq, *sk, *sv, *so, *sl, *split_strides)
    scalars = (T_q, T_k, *_variants.tuning_lengths(T_q, T_k), H, H // H_kv, *kernel_scales(scale, softcap), window[0],
               window[1], splits)
    dropout = dropout_seed is not None and dropout_p > 0
    drop_R, drop_C = (max_seqlen_q, max_seqlen_k or 0) if varlen else (T_q, T_k)  # (see flash_dropout.counters)
    tile_d = head_dim_tile(D)  # (D itself, unless it is padded to a power of two)
    flags = dict(HEAD_DIM=tile_d, D_REAL=D, IS_VARLEN=varlen, HAS_SEQUSED_K=seqused_k is not None,
                 CACHE_MAP=cache_map is not None, PAGED=block_table is not None,
                 INTERP_BF16=interp_bf16, IEEE=q.dtype == torch.float32, SPLIT_K=splits > 1, PACK_GQA=pack,
                 DROPOUT=dropout, SOFTCAP=softcap > 0, ALIBI=alibi_slopes is not None,
                 WIDE=needs_wide_offsets(0 if varlen else 2, q, k, v, targets[0][:, 0] if splits > 1 else out))

    decoding = is_decoding(T_q)  # (packed: the longest sequence)
    paged = block_table is not None  # (its tiles compiled deeper: flash_paged.deeper)
    page_size = k.shape[2] if paged else 1  # (a pool's rows per page)

    def launch(variant: _variants.Variant):
        # (in the interpreter, tma+ws runs the single-loop code path: checked there too)
        interpreter_meta = dict(blocks or (INTERPRETER_DECODE_BLOCKS if decoding else INTERPRETER_BLOCKS),
                                WARP_SPEC=variant.warp_specialize and not decoding)
        float32 = q.dtype == torch.float32  # (float32 has tiles of its own: an autotuner of its own)

        def offered():  # (see _variants.launch_plans)
            every, nargs = configs(variant, tile_d, float32, paged), {"TUNE_T_Q": _variants.tuning_lengths(T_q)[0]}
            return _variants.pruned_first(every, prune_for_lengths(every, nargs, **flags, TMA=variant.tma))

        def default():  # (autotuning off; on an mma.sync GPU the tiles that spill there skipped: _mma_sync)
            c = default_config(variant, tile_d, q.element_size(), T_q, **flags, sm=_mma_sync.target(q.device))
            return deeper(c) if paged else c

        plans = _variants.launch_plans(INTERPRET, interpreter_meta=interpreter_meta, offered=offered, default=default)
        _fit.first_that_fits(plans, lambda tiles, meta, tune: launch_with(variant, tiles, meta, tune, float32),
                             lambda: _fit.launch_name("forward", variant.name, D, q.dtype), q.device)

    def launch_with(variant: _variants.Variant, tiles: dict, meta: dict, tune: bool, float32: bool):
        kernel = _attn_fwd
        if tune:  # (SPLIT_K in the key: a slice has fewer keys to walk; a paged cache: configs of its own)
            tag = f"{D} float32" if float32 else D
            kernel = _variants.autotuned(_attn_fwd, variant, lambda: configs(variant, tile_d, float32, paged),
                                         tag=f"{tag} paged" if paged else tag,
                                         extra_key=["SPLIT_K", "PACK_GQA", "PAGED"], prune=prune_for_lengths)
        for b0, b1 in batch_chunks(B):  # (one launch unless B passes the grid's limit)
            tensors, cus = batch_part(b0, b1, (q, k, v, *targets), (cu_seqlens_q, cu_seqlens_k) if varlen else None)
            used = tensors[0] if seqused_k is None else seqused_k[b0:b1]  # (b1 - b0,) or a placeholder
            mapped = (used, used) if cache_map is None else (cache_map[0][b0:b1], cache_map[1][b0:b1])
            if cache_map is not None or block_table is not None:  # the whole cache: sequences pick their rows
                tensors = (tensors[0], k, v, *tensors[3:])
            described = (*tensors[:3], out[b0:b1] if splits > 1 else tensors[3])  # desc_o: over out, always
            descs = _variants.descriptors(described, [tiles[block] for _, block in _DESCRIPTORS], tile_d, variant)

            def grid(meta, n=b1 - b0):
                return launch_grid(rows, meta["BLOCK_M"], heads, n, splits)

            drop = launch_args(dropout_seed if dropout else None, dropout_p, H, drop_R, drop_C, b0, used)
            alibi = alibi_args(alibi_slopes, b0, b1, used)  # (the slopes' rows of these sequences)
            pages = paged_args(block_table, b0, b1, used)  # (and their rows of the block table)
            kernel[grid](*tensors, *strides, *descs, *cus, used, *mapped, *pages, page_size, *scalars, *drop, *alibi,
                         **flags, TMA=variant.tma, **meta)
            if splits > 1:
                flash_split.combine_splits(*tensors[3:], out[b0:b1], lse[b0:b1],
                                           launch_grid(T_q, flash_split.COMBINE_ROWS, H, b1 - b0), INTERPRET)

    with interpreter_scope() if INTERPRET else contextlib.nullcontext():
        # (packed batches and caches read a sequence's overhanging tile in a loop of its own, which the
        # warp-specialisation pass, wanting one key loop, does not take)
        chain = _variants.chain(q.device, (q, k, v, out), warp_spec=not (varlen or seqused_k is not None),
                                tma_pays=tma_pays(q.dtype))
        if block_table is not None:  # (a copy engine's box is consecutive rows; a tile's rows may span pages)
            chain = [_variants.VARIANTS["pointer"]]
        _variants.run(chain, (str(q.device), q.dtype, D, "forward"), launch)
    return out, lse


if __name__ == "__main__":
    # A check against torch, then (on a GPU) a small benchmark; `make bench` runs the full one.
    from attn_course import attention
    from attn_course.cost import attention_flops
    from attn_course.kernels import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 203, 64, device=device, dtype=torch.float16) for _ in range(3))
    for causal in (False, True):
        err = (flash_attention(q, k, v, causal=causal).float() - attention(q.float(), k.float(), v.float(),
                                                                          causal=causal)).abs().max().item()
        print(f"forward causal={causal}: max |kernel - attn_course.attention| = {err:.2e} ({device})")
    if device == "cuda":
        for T in (1024, 4096, 16384):
            q, k, v = (torch.randn(4, 16, T, 128, device=device, dtype=torch.float16) for _ in range(3))
            ms = triton.testing.do_bench(lambda q=q, k=k, v=v: flash_attention(q, k, v, causal=True),
                                         return_mode="median")
            tflops = attention_flops(4, 16, T, T, 128, causal=True) / ms * 1e-9
            print(f"T={T:6d} D=128 causal fp16: {ms:.3f} ms, {tflops:.0f} TFLOP/s")
    else:
        print("no GPU: the kernel ran in Triton's interpreter, slow by design; the benchmark needs CUDA")
