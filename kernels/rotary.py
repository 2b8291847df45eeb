"""Rotary position embeddings (RoPE) for generation against a key/value cache, applied the way flash-attn's
``flash_attn_with_kvcache(..., rotary_cos=, rotary_sin=)`` applies them.

A rotary embedding encodes a token's position ``p`` by turning pairs of its query's and key's dims through
angles ``p * theta_j``: a pair ``(a, b)`` becomes ``(a cos - b sin, a sin + b cos)``. A query at position
``m`` and a key at position ``n`` then score ``q . k`` as a function of ``m - n`` alone. The caller gives
the tables ``cos[p, j]`` and ``sin[p, j]``, ``[seqlen_ro, R / 2]`` for a rotary dim ``R <= D``; the dims
from ``R`` on are left alone. Two conventions pair the dims differently:

* interleaved (GPT-J, flash-attn's default): ``(0, 1), (2, 3), ...``;
* not interleaved (GPT-NeoX, Llama in Hugging Face): ``(j, j + R / 2)`` for ``j < R / 2``.

In a decoding step the new keys sit at positions ``cache_seqlens[b], cache_seqlens[b] + 1, ...``; they are
rotated *before* they are written into the cache, so the cache holds rotated keys and is never rotated
again. The queries are rotated at the same positions when attention is causal or windowed; otherwise
(as in flash-attn) every query of sequence ``b`` sits at position ``cache_seqlens[b]``. With
``cache_leftpad`` these are still the positions of the cache row, as in flash-attn (the first key sits at
``cache_leftpad[b]``): the score of a query and a key depends only on their distance, which is the same
counted from the row's start or from the first key.

flash-attn fuses the rotation into its kernel. Here it is a few PyTorch operations before the launch,
computed in float32 and rounded once to the inputs' dtype: one extra pass over q and the new keys, which
a decoding step (a handful of rows) barely notices.
"""

from __future__ import annotations

import torch


def check_rotary(cos, sin, q: torch.Tensor, T_cache: int, T_new: int, distinct_q: bool) -> None:
    """``cos`` and ``sin`` as :func:`rotate` takes them for q ``[B, H, T_q, D]`` and a cache of ``T_cache``
    positions taking ``T_new`` new keys; a ``ValueError`` (``TypeError`` for a non-tensor) naming the
    problem. ``distinct_q``: the queries take positions ``cache_seqlens + i`` (causal or windowed)."""
    for name, x in (("rotary_cos", cos), ("rotary_sin", sin)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [seqlen_ro, rotary_dim / 2], got {type(x).__name__}")
        if x.dim() != 2 or not x.dtype.is_floating_point:
            raise ValueError(f"{name} must be a 2-D floating tensor [seqlen_ro, rotary_dim / 2], got {x.dtype} of "
                             f"shape {tuple(x.shape)}")
        if x.device != q.device:
            raise ValueError(f"{name} must be on q's device ({q.device}), got {x.device}")
    if cos.shape != sin.shape:
        raise ValueError(f"rotary_cos and rotary_sin must have one shape, got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    D, half = q.shape[-1], cos.shape[1]
    if not 1 <= half <= D // 2:
        raise ValueError(f"rotary_cos has {half} columns: the rotary dim (twice that) must be between 2 and the "
                         f"head dim {D}")
    if T_new == 0:
        raise ValueError("rotary_cos/rotary_sin rotate the new keys as they are written into the cache: pass the "
                         "new k and v too (as flash-attn requires), or rotate q and k yourself before the call")
    needed = T_cache + (max(q.shape[2] - T_new, 0) if distinct_q else 0)  # the last position used, plus one
    if cos.shape[0] < needed:
        raise ValueError(f"rotary_cos has {cos.shape[0]} positions, but the cache holds {T_cache}"
                         + (f" and {q.shape[2]} queries reach {needed - 1}" if needed > T_cache else "")
                         + f": give at least {needed} rows")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
           interleaved: bool) -> torch.Tensor:
    """``x [B, H, T, D]`` with each token ``(b, t)`` rotated to position ``positions[b, t]`` (``[B, T]``
    ints, rows of ``cos`` and ``sin [seqlen_ro, R / 2]``): a new tensor in x's dtype, computed in float32
    (float64 for float64)."""
    R, work = 2 * cos.shape[1], torch.promote_types(x.dtype, torch.float32)  # (16-bit inputs: float32)
    c = cos[positions].to(work).unsqueeze(1)  # (B, 1, T, R/2): one angle per token and pair, for every head
    s = sin[positions].to(work).unsqueeze(1)  # (B, 1, T, R/2)
    pairs = x[..., :R].to(work)  # (B, H, T, R)
    if interleaved:
        a, b = pairs[..., 0::2], pairs[..., 1::2]  # (B, H, T, R/2) each: dims 0, 2, 4, ... and 1, 3, 5, ...
    else:
        a, b = pairs[..., :R // 2], pairs[..., R // 2:]  # (B, H, T, R/2) each: the two halves
    turned_a, turned_b = a * c - b * s, a * s + b * c  # (B, H, T, R/2) each
    if interleaved:
        turned = torch.stack((turned_a, turned_b), dim=-1).flatten(-2)  # (B, H, T, R/2, 2) -> (B, H, T, R)
    else:
        turned = torch.cat((turned_a, turned_b), dim=-1)  # (B, H, T, R)
    return torch.cat((turned.to(x.dtype), x[..., R:]), dim=-1)  # (B, H, T, D)


def positions_of(lengths: torch.Tensor, T: int, distinct: bool) -> torch.Tensor:
    """``[B, T]`` positions of ``T`` tokens that follow caches filled to ``lengths [B]``: ``lengths[b] + t``,
    or ``lengths[b]`` for every token when not ``distinct``."""
    steps = torch.arange(T, device=lengths.device) if distinct else torch.zeros(T, dtype=torch.long,
                                                                                device=lengths.device)
    return lengths.long()[:, None] + steps  # (B, T)
