"""The third thing flash-attn's ``return_attn_probs=True`` returns: a call's attention probabilities, with its
dropout pattern written into their signs.

flash-attn returns ``(out, softmax_lse, S_dmask)``, where ``S_dmask`` is ``None`` unless ``dropout_p > 0``.
With dropout it holds, for every query and key, the softmax weight the call used, negated where dropout
zeroed that weight: ``S_dmask >= 0`` is the keep mask, ``S_dmask.abs()`` the probabilities. Its own tests
use it to check dropout, and so can ours. It costs a ``[T_q, T_k]`` tensor per head: it is for testing and
small shapes, not for training.

The kernels never form that tensor. This module builds it after the call, from the two things that define
it: the weights from the package's one reference, :func:`attn_course.attention` (with the call's scale,
mask, window, cap and ALiBi bias), and the keep mask regenerated from the seed the call drew
(:func:`flash_dropout.dropout_mask`). So it shows what the kernel computed, up to the kernel's rounding.

Shapes, as flash-attn's but not rounded up to a multiple of 128 (code that crops flash-attn's to
``[:T_q, :T_k]`` reads ours the same):

    fixed length:  [B, H, T_q, T_k]
    packed (varlen): [B, H, max_seqlen_q, max_seqlen_k], sequence b in the corner
                     [b, :, :len_q(b), :len_k(b)], zeros elsewhere

flash-attn's entries are "possibly with different scaling" (unnormalised); ours are the normalised weights.
Query rows that see no key are zeros.
"""

from __future__ import annotations

import torch

from attn_course.attention import attention
from attn_course.masks import sliding_window_mask

from ._checks import UNBOUNDED
from ._runtime import kernel_module


def _weights(q, k, window, scale, softcap, slopes) -> torch.Tensor:
    """The float32 softmax weights ``[B, H, T_q, T_k]`` of q ``[B, H, T_q, D]`` against k ``[B, H_kv, T_k, D]``
    with the kernel's window ``(left, right)`` (causal already folded in), ``softcap`` and ALiBi ``slopes``
    (float32 ``[B, H]`` or ``None``)."""
    B, H, T_q, _ = q.shape
    T_k = k.shape[2]
    keys = k.float().repeat_interleave(H // k.shape[1], dim=1)  # (B, H, T_k, D): each query head's key head
    allowed = sliding_window_mask(T_q, T_k, window, device=q.device)  # (T_q, T_k)
    mask = allowed
    if slopes is not None:  # ALiBi: -slope * |i + T_k - T_q - j|, added after the cap; -inf where not allowed
        distance = (torch.arange(T_q, device=q.device)[:, None] + (T_k - T_q)
                    - torch.arange(T_k, device=q.device)[None, :]).abs()  # (T_q, T_k)
        bias = -slopes.float()[:, :, None, None] * distance  # (B, H, T_q, T_k)
        mask = bias.masked_fill(~allowed, float("-inf"))
    nothing = keys.new_zeros(B, H, T_k, 1)  # (B, H, T_k, 1): values to carry; only the weights are wanted
    return attention(q.float(), keys, nothing, mask, scale=scale, softcap=softcap, return_weights=True)[1]


def _signed(weights: torch.Tensor, keep: torch.Tensor, dtype) -> torch.Tensor:
    """``weights`` with the entries dropout zeroed negated, in ``dtype`` (same shape)."""
    return torch.where(keep, weights, -weights).to(dtype)


def _finite_window(window) -> tuple[int, int]:
    """The kernel's window (huge for an unbounded side) in the masks' form (``-1`` for unbounded)."""
    return tuple(-1 if side >= UNBOUNDED else side for side in window)


def _slopes(alibi_slopes, B: int, H: int):
    """ALiBi slopes ``[B, H]`` (flash-attn's ``[H]`` broadcast to every sequence), or ``None``."""
    return None if alibi_slopes is None else alibi_slopes.float().expand(B, H)


def fixed(q, k, seed, dropout_p: float, *, scale: float, window, softcap: float, alibi_slopes) -> torch.Tensor:
    """``S_dmask [B, H, T_q, T_k]`` in q's dtype of a :func:`flash_attention` call on q ``[B, H, T_q, D]`` and
    k ``[B, H_kv, T_k, D]`` that drew ``seed`` (the other arguments as the kernels took them)."""
    B, H, T_q, _ = q.shape
    T_k = k.shape[2]
    if not (B and H and T_q and T_k):  # (an empty batch, or no queries or keys: nothing to show)
        return q.new_zeros(B, H, T_q, T_k)
    keep = kernel_module("flash_dropout", q.device).dropout_mask(seed.reshape(1), B, H, T_q, T_k, dropout_p)
    weights = _weights(q, k, _finite_window(window), scale, softcap, _slopes(alibi_slopes, B, H))
    return _signed(weights, keep, q.dtype)  # (B, H, T_q, T_k)


def varlen(q, k, cu_q, cu_k, max_seqlen_q: int, max_seqlen_k: int, seed, dropout_p: float, *, scale: float,
           window, softcap: float, alibi_slopes, block_table=None) -> torch.Tensor:
    """``S_dmask [B, H, max_seqlen_q, max_seqlen_k]`` in q's dtype of a :func:`flash_attention_varlen` call on
    packed q ``[total_q, H, D]`` and k ``[total_k, H_kv, D]`` (with ``block_table``: a pool of pages
    ``[num_pages, H_kv, page_size, D]``) that drew ``seed``; ``cu_q``, ``cu_k`` as checked."""
    B, H = cu_q.numel() - 1, q.shape[1]
    probs = q.new_zeros(B, H, max_seqlen_q, max_seqlen_k)  # (B, H, R, C)
    if not (B and H and max_seqlen_q and max_seqlen_k):
        return probs
    keep = kernel_module("flash_dropout", q.device).dropout_mask(seed.reshape(1), B, H, max_seqlen_q,
                                                                 max_seqlen_k, dropout_p)  # (B, H, R, C)
    slopes = _slopes(alibi_slopes, B, H)
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    for b in range(B):
        (q0, q1), (k0, k1) = starts_q[b:b + 2], starts_k[b:b + 2]
        n_q, n_k = q1 - q0, k1 - k0
        if not (n_q and n_k):
            continue
        if block_table is None:
            keys = k[k0:k1]  # (n_k, H_kv, D)
        else:  # key j of the sequence: row j % page_size of page block_table[b, j // page_size]
            j = torch.arange(n_k, device=k.device)
            keys = k[block_table[b, j // k.shape[2]].long(), :, j % k.shape[2]]  # (n_k, H_kv, D)
        one_q, one_k = q[q0:q1].transpose(0, 1)[None], keys.transpose(0, 1)[None]  # (1, H, n_q, D), (1, H_kv, n_k, D)
        weights = _weights(one_q, one_k, _finite_window(window), scale, softcap,
                           None if slopes is None else slopes[b:b + 1])  # (1, H, n_q, n_k)
        probs[b, :, :n_q, :n_k] = _signed(weights[0], keep[b, :, :n_q, :n_k], q.dtype)
    return probs
