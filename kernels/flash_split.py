"""
Splitting the keys across programs (flash-decoding)
===================================================

In this file you will learn why one decoding step leaves most of a GPU idle, and how splitting the
*keys* between programs puts it back to work without changing the answer. You will learn about:

* occupancy: the forward kernel runs one program per (block of queries, head, sequence). Prefill has
  thousands of those. A decoding step has ``T_q = 1``: ``B * H`` programs in all (1 x 32 = 32 on a GPU
  with 132 multiprocessors), each walking all ``T_k`` keys alone while three quarters of the chip wait;
* splitting the key loop into ``S`` slices, each walked by its own program, which writes a *partial*
  result: the output normalised over its slice, ``out_s``, and the slice's logsumexp, ``lse_s``;
* combining the partials exactly. Softmax over a union of slices is a weighted mix of the softmaxes over
  each slice, the weights being each slice's share of the total mass::

      lse = log(sum_s exp(lse_s))            out = sum_s exp(lse_s - lse) * out_s

  which is the online softmax once more, now one slice at a time (a running max, a rescaled running sum),
  so a slice that saw no allowed key (``lse_s = -inf``) weighs nothing and a row that saw none at all
  gets zeros and ``lse = -inf``, as without splitting;
* choosing ``S`` (:func:`num_splits`): enough programs to fill the chip, no slice shorter than a few
  tiles, and no splitting at all where the grid is already full (prefill, training) or where programs
  run one after another anyway (the interpreter).

The forward kernel (``flash_fwd._attn_fwd`` with ``SPLIT_K``) walks slice ``pid % S`` of the keys its
block of queries may see and stores into the partial buffers of :func:`split_buffers`; the combine kernel
below reads those back once. The extra traffic is ``S`` float32 rows per query, against ``T_k`` keys and
values read: a few percent at most where the heuristic splits. The backward pass needs nothing new: it
reads only ``out`` and ``lse``, which the combine makes the same as an unsplit forward's (up to rounding).
"""

import torch
import triton
import triton.language as tl

from attn_course.kernels._variants import COMPILE_OPTIONS

from ._tiles import head_dim_tile, narrow, tile_mask

MAX_SPLITS = 128  # more slices only add partial results to write and combine
MIN_KEYS_PER_SPLIT = 256  # a slice's fixed costs (load q, write a partial row) want a few key tiles behind them
ROWS_PER_PROGRAM = 64  # the fewest query rows a GPU config gives a program: ceil(T_q / 64) bounds programs per head
PROGRAMS_PER_SM = 2  # decoding is bound by memory bandwidth: aim for two programs' loads in flight per SM


def num_splits(requested: int, *, B: int, H: int, T_q: int, T_k: int, sms: int | None) -> int:
    """How many slices to split each row's keys into.

    ``requested``: ``n >= 1`` asks for ``n`` (capped at :data:`MAX_SPLITS`; a slice may end up with no key,
    which costs a little and changes nothing); ``0`` lets this function choose, for ``sms`` multiprocessors
    (``None``: the interpreter, or no GPU, where programs run one after another and splitting only adds the
    combine). The choice: none while ``B * H * ceil(T_q / 64)`` programs already give every multiprocessor
    two; otherwise as many as fill it, but no slice under :data:`MIN_KEYS_PER_SPLIT` keys.

    This is a rule of thumb from the occupancy argument above, not a measurement: ``make bench`` times the
    decoding rows with and without it on the GPU it runs on.
    """
    if requested:
        return min(requested, MAX_SPLITS)
    if sms is None:
        return 1
    programs = triton.cdiv(T_q, ROWS_PER_PROGRAM) * H * B
    slots = PROGRAMS_PER_SM * sms
    if programs >= slots:
        return 1
    return max(1, min(slots // programs, T_k // MIN_KEYS_PER_SPLIT, MAX_SPLITS))


def multiprocessors(device: torch.device) -> int | None:
    """The number of SMs of a CUDA ``device``; ``None`` for anything else (the interpreter)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_buffers(q: torch.Tensor, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The uninitialised partial results of ``splits`` slices, for q ``[B, H, T_q, D]``:
    ``out_s`` ``[B, S, H, T_q, D]`` and ``lse_s`` ``[B, S, H, T_q]``, both float32 (rounding the partials to
    q's dtype would round twice). The batch comes first, so that a launch over part of the batch slices
    them like q."""
    B, H, T_q, D = q.shape
    part = torch.empty(B, splits, H, T_q, D, device=q.device, dtype=torch.float32)  # (B, S, H, T_q, D)
    part_lse = torch.empty(B, splits, H, T_q, device=q.device, dtype=torch.float32)  # (B, S, H, T_q)
    return part, part_lse


@triton.jit
def _combine_splits(
    Part, PartLse,  # partials: out_s (B, S, H, T_q, D) and lse_s (B, S, H, T_q), float32
    Out, Lse,  # results: out (B, H, T_q, D) in q's dtype, lse (B, H, T_q) float32
    stride_pb, stride_ps, stride_ph, stride_pt, stride_pd,
    stride_qb, stride_qs, stride_qh, stride_qt,  # (of PartLse)
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_lb, stride_lh, stride_lt,
    T_q, S,  # query rows per (sequence, head); number of slices
    HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr,  # the tiles' width and the head dim (see _tiles.head_dim_tile)
    BLOCK_M: tl.constexpr,  # query rows per program
    INTERP_BF16: tl.constexpr,  # a bfloat16 out in the interpreter: see _tiles.narrow
):
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # as the forward's grid, unsplit
    b64, h64 = b.to(tl.int64), h.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m.to(tl.int64)
    row_ok = offs_m < T_q
    tile_ok = tile_mask(offs_m, T_q, HEAD_DIM, D_REAL)  # (BLOCK_M, HEAD_DIM): real rows and columns
    Part += b64 * stride_pb + h64 * stride_ph
    PartLse += b64 * stride_qb + h64 * stride_qh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the slices' lse
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)  # running sum of exp(lse_s - m)
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, dtype=tl.float32)  # running sum of exp(lse_s - m) * out_s
    for _ in range(0, S):  # (the pointers step from slice to slice: 64-bit, however big S * H * T_q * D)
        lse_s = tl.load(PartLse + rows * stride_qt, mask=row_ok, other=float("-inf"))  # (BLOCK_M,)
        ptrs = Part + rows[:, None] * stride_pt + offs_d[None, :] * stride_pd  # (BLOCK_M, HEAD_DIM)
        out_s = tl.load(ptrs, mask=tile_ok, other=0.0)
        Part += stride_ps
        PartLse += stride_qs
        m_new = tl.maximum(m_i, lse_s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no slice with a key yet: weights exp(-inf) = 0
        alpha = tl.exp(m_i - m_use)  # (BLOCK_M,) rescales what was summed under the old max
        w = tl.exp(lse_s - m_use)  # (BLOCK_M,) this slice's mass, relative to the max
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + w[:, None] * out_s
        m_i = m_new

    alive = l_i > 0.0  # some slice saw an allowed key
    l_safe = tl.where(alive, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(alive, m_i + tl.log(l_safe), float("-inf"))
    Out += b64 * stride_ob + h64 * stride_oh
    Lse += b64 * stride_lb + h64 * stride_lh
    tl.store(Out + rows[:, None] * stride_ot + offs_d[None, :] * stride_od,
             narrow(out, Out.dtype.element_ty, INTERP_BF16), mask=tile_ok)
    tl.store(Lse + rows * stride_lt, lse, mask=row_ok)


COMBINE_ROWS = 16  # query rows per combine program: decoding has 1, and the combine is a few loads per row


def combine_splits(part: torch.Tensor, part_lse: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, grid,
                   interpreted: bool) -> None:
    """Write ``out`` ``[B, H, T_q, D]`` and ``lse`` ``[B, H, T_q]`` from the partials of
    :func:`split_buffers`. ``grid``: ``launch_grid``-shaped ``(blocks, H, B)`` for ``COMBINE_ROWS`` rows;
    ``interpreted``: whether the launch runs in Triton's interpreter."""
    S, D = part.shape[1], part.shape[-1]
    _combine_splits[grid](part, part_lse, out, lse, *part.stride(), *part_lse.stride(), *out.stride(),
                          *lse.stride(), out.shape[2], S, HEAD_DIM=head_dim_tile(D), D_REAL=D, BLOCK_M=COMBINE_ROWS,
                          INTERP_BF16=interpreted and out.dtype == torch.bfloat16, **COMPILE_OPTIONS)


if __name__ == "__main__":
    # A check: splitting the keys of one decoding step changes nothing but the rounding.
    from attn_course import attention
    from attn_course.kernels import flash_attention_kvcache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    T_k = 4096 if device == "cuda" else 300
    q = torch.randn(2, 8, 1, 64, device=device)
    k, v = (torch.randn(2, 2, T_k, 64, device=device) for _ in range(2))
    want = attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1))
    with torch.no_grad():
        for splits in (1, 3, 8):
            err = (flash_attention_kvcache(q, k, v, num_splits=splits) - want).abs().max().item()
            print(f"num_splits={splits}: max |kernel - attn_course.attention| = {err:.2e} ({device})")
