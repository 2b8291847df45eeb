"""
Attention dropout without storing the mask
==========================================

In this file you will learn how FlashAttention drops out attention weights during training without ever
writing the ``[T_q, T_k]`` dropout mask to memory. You will learn about:

* what attention dropout is: each probability ``P_ij`` is zeroed with probability ``p`` and the survivors
  are scaled by ``1 / (1 - p)``, so ``out = (P * Z) V / (1 - p)`` with ``Z`` a random 0/1 mask, and the
  output is unchanged in expectation (``E[Z] = 1 - p``);
* *counter-based* random numbers (Philox, ``tl.rand(seed, offset)``): a random number is a pure function
  of a seed and a counter, not the next draw of a generator with state. So the backward pass regenerates
  exactly the mask the forward pass used, tile by tile, from the seed alone: eight bytes of state where
  a stored mask would take ``B * H * T_q * T_k`` bytes (256 MiB per head at 16k tokens);
* the counter of each score: ``((b * H + h) * R + i) * C + j`` for sequence ``b``, query head ``h``, query
  ``i`` and key ``j``, with ``R, C`` the grid's query and key lengths (:func:`counters`). Every score gets
  its own counter, the same in the forward kernel and in both backward kernels whatever their tile
  shapes, and in a split-K decoding step whatever the slice;
* where the mask enters. Forward: the normaliser ``l`` sums ``exp(s - m)`` over *every* allowed key (the
  softmax is taken before dropout), only the kept weights reach ``acc``, and the output is scaled by
  ``1 / (1 - p)`` once, at the end. Backward: ``dV = (P * Z)^T dO / (1 - p)``, and the same ``Z`` (and
  scale) on ``dP = dO V^T`` before ``dS = P * (dP - delta)``. ``delta = rowsum(dO * O)`` needs no change,
  because ``O`` is already the dropped output: ``sum_j P_ij Z_ij / (1 - p) (dO_i . v_j) = dO_i . O_i``;
* where the seed comes from (``_ops.draw_seed``): one draw from PyTorch's generator on q's device at each
  call, kept as a one-element tensor and saved for the backward pass. So ``torch.manual_seed`` makes a
  run repeatable, and each replay of a CUDA graph (and each call of a ``torch.compile``d model) draws a
  fresh seed, where a seed fixed in Python would replay one mask for ever.

:func:`dropout_mask` writes out the mask a call used, from the seed it drew, with the same counters and
the same test: for tests, and for looking at.
"""

import contextlib

import torch
import triton
import triton.language as tl

from attn_course.kernels._runtime import interpreter_scope, is_interpreted

from ._tiles import batch_chunks, launch_grid


def keep_scale(p: float) -> float:
    """What the kept weights are multiplied by: ``1 / (1 - p)``; ``0`` when ``p = 1`` (nothing is kept, and
    the output is zeros as PyTorch's dropout gives, not ``0 * inf``)."""
    return 0.0 if p >= 1.0 else 1.0 / (1.0 - p)


@triton.jit
def counters(first, b, heads, rows, H, R, C):
    """The first counter of each row: ``first + ((b * H + heads) * R + rows) * C`` in 64 bits (``heads`` a
    scalar, or one head per row when a decoding step packs a GQA group into a tile; ``first``: the counter of
    the launch's first sequence, when a batch too big for one grid is launched in parts). Add the key index
    for a score's counter."""
    return first + ((b.to(tl.int64) * H + heads) * R + rows) * C


@triton.jit
def kept(seed, offsets, p):
    """Bools shaped like ``offsets``: which scores survive dropout with probability ``p``
    (``uniform(seed, counter) >= p``, true with probability ``1 - p``)."""
    return tl.rand(seed, offsets) >= p


@triton.jit
def _dropout_mask(
    Seed, Mask,  # the call's seed (int64 [1]); this launch's sequences of the mask (B, H, R, C), uint8, contiguous
    H, R, C, p,
    first,  # the counter of the launch's first sequence
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # (see _tiles.launch_grid)
    seed = tl.load(Seed)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    base = counters(0, b, h, rows, H, R, C)  # (BLOCK_M,) int64: the rows' offsets into Mask (a counter is an index)
    for n0 in range(0, C, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        offsets = base[:, None] + cols[None, :]  # (BLOCK_M, BLOCK_N)
        ok = (rows[:, None] < R) & (cols[None, :] < C)
        tl.store(Mask + offsets, kept(seed, first + offsets, p).to(tl.uint8), mask=ok)


INTERPRET = is_interpreted(_dropout_mask)


def dropout_mask(seed: torch.Tensor, B: int, H: int, R: int, C: int, p: float) -> torch.Tensor:
    """The keep mask (bool ``[B, H, R, C]``, on ``seed``'s device) of a call that drew ``seed``: for a
    fixed-length batch ``R, C = T_q, T_k``; for a packed one ``R, C = max_seqlen_q, max_seqlen_k`` and
    sequence ``b`` uses ``[b, :, :len_q(b), :len_k(b)]`` (its own positions, from 0)."""
    mask = torch.empty(B, H, R, C, dtype=torch.uint8, device=seed.device)
    if mask.numel():
        block = 32
        with interpreter_scope() if INTERPRET else contextlib.nullcontext():
            for b0, b1 in batch_chunks(B):  # (one launch unless B passes the grid's limit, as the kernels do)
                _dropout_mask[launch_grid(R, block, H, b1 - b0)](seed, mask[b0:b1], H, R, C, p, b0 * H * R * C,
                                                                 BLOCK_M=block, BLOCK_N=block)
    return mask.bool()



def launch_args(seed, p: float, H: int, R: int, C: int, b0: int, placeholder: torch.Tensor) -> tuple:
    """The dropout arguments every kernel takes, ``(Seed, dropout_p, drop_scale, drop_R, drop_C, drop_first)``,
    for a launch whose first sequence is ``b0`` of a batch with ``H`` query heads and counters over ``R x C``
    scores per head (:func:`counters`): the forward and both backward kernels get them from here, so that
    they count alike. Without dropout (``seed`` None) ``placeholder`` stands in for the seed, never read."""
    return (placeholder if seed is None else seed, p, keep_scale(p), R, C, b0 * H * R * C)


if __name__ == "__main__":
    # A check: a call's output is attention with its regenerated mask, and the mask keeps 1 - p.
    from attn_course import attention
    from attn_course.kernels import dropout_mask, flash_attention, next_dropout_seed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    p, T = 0.1, 256 if device == "cuda" else 64
    q, k, v = (torch.randn(2, 4, T, 64, device=device) for _ in range(3))
    seed = next_dropout_seed(device)
    out = flash_attention(q, k, v, causal=True, dropout_p=p)
    keep = dropout_mask(seed, 2, 4, T, T, p)  # (B, H, T, T)
    _, weights = attention(q, k, v, causal=True, return_weights=True)
    err = (out - (weights * keep / (1 - p)) @ v).abs().max().item()
    print(f"dropout p={p}: kept {keep.float().mean().item():.4f} of the scores; "
          f"max |kernel - attention with that mask| = {err:.2e} ({device})")
