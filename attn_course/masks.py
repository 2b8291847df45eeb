"""Attention masks, all boolean with ``True`` = "this query may attend to this key".

Every mask here is a plain bool tensor, so masks compose with ``&`` (both must allow) and ``|``::

    causal_mask(T) & varlen_mask(cu_seqlens)      # causal attention inside each packed sequence

Causal and sliding-window masks with ``T_q != T_k`` are aligned **bottom-right**, as in FlashAttention
>= 2.1: query ``i`` sits at absolute position ``T_k - T_q + i``, so the last query always sees the last key.
With ``T_q = 2`` and ``T_k = 5`` the causal mask is::

    keys ->   0 1 2 3 4
    query 0   1 1 1 1 0        (absolute position 3)
    query 1   1 1 1 1 1        (absolute position 4)

PyTorch's ``is_causal=True`` is aligned top-left instead (query 0 would see key 0 only); for one-token
decoding against a KV cache (``T_q = 1``) top-left would let the new token see nothing but the first key.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._validate import check_positive_int, integer_scalar


def _positions(T_q: int, T_k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute query positions ``[T_q, 1]`` (bottom-right aligned) and key positions ``[1, T_k]``."""
    i = torch.arange(T_q, device=device).unsqueeze(1) + (T_k - T_q)  # (T_q, 1)
    j = torch.arange(T_k, device=device).unsqueeze(0)  # (1, T_k)
    return i, j


def causal_mask(T_q: int, T_k: int | None = None, *, device=None) -> torch.Tensor:
    """Bottom-right aligned causal mask ``[T_q, T_k]``: query ``i`` may see key ``j`` iff
    ``j <= i + (T_k - T_q)``.

    With ``T_q > T_k`` the first ``T_q - T_k`` rows see no key at all (and attention returns zeros there).
    """
    T_q = check_positive_int(T_q, "T_q")
    T_k = T_q if T_k is None else check_positive_int(T_k, "T_k")
    i, j = _positions(T_q, T_k, device)
    return j <= i


def sliding_window_mask(
    T_q: int, T_k: int | None = None, window: tuple[int, int] = (-1, -1), *, device=None
) -> torch.Tensor:
    """Local attention with flash-attn's ``window_size=(left, right)`` meaning.

    Query ``i`` (at absolute position ``i + T_k - T_q``, bottom-right aligned) may see key ``j`` iff
    ``i - left <= j <= i + right``; ``-1`` means unbounded on that side. ``window=(-1, 0)`` is causal,
    ``(-1, -1)`` is full attention, ``(2, 0)`` sees itself and the two keys before it::

        window=(2, 0), T=5      keys -> 0 1 2 3 4
                                q0      1 0 0 0 0
                                q1      1 1 0 0 0
                                q2      1 1 1 0 0
                                q3      0 1 1 1 0
                                q4      0 0 1 1 1
    """
    T_q = check_positive_int(T_q, "T_q")
    T_k = T_q if T_k is None else check_positive_int(T_k, "T_k")
    left, right = check_window(window)
    i, j = _positions(T_q, T_k, device)
    allowed = torch.ones(T_q, T_k, dtype=torch.bool, device=device)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed


def check_window(window) -> tuple[int, int]:
    """Validate a flash-attn style ``(left, right)`` window: two ints, each ``>= 0`` or ``-1``."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a pair (left, right), got {window!r}")
    for side, w in zip(("left", "right"), window, strict=True):
        if integer_scalar(w) is None:
            raise TypeError(f"window {side} must be an int, got {type(w).__name__} {w!r}")
        if w < -1:
            raise ValueError(f"window {side} must be >= 0, or -1 for unbounded; got {w} in {tuple(window)}")
    return int(window[0]), int(window[1])


def padding_mask(lengths, T: int, *, device=None) -> torch.Tensor:
    """Key-padding mask ``[B, 1, 1, T]``: in batch element ``b`` only the first ``lengths[b]`` keys are
    real tokens. It broadcasts over heads and queries against scores ``[B, H, T_q, T]``."""
    T = check_positive_int(T, "T")
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D sequence of ints (one per batch element), got {lengths!r}")
    if (lengths < 0).any() or (lengths > T).any():
        raise ValueError(f"every length must be in [0, T={T}], got lengths {lengths.tolist()}")
    j = torch.arange(T, device=lengths.device)  # (T,)
    return (j.unsqueeze(0) < lengths.unsqueeze(1))[:, None, None, :]  # (B, 1, 1, T)


def prefix_lm_mask(T: int, prefix_len: int, *, device=None) -> torch.Tensor:
    """Prefix-LM mask ``[T, T]``: the first ``prefix_len`` tokens (the prompt) are visible to every
    query (bidirectional), the rest is causal."""
    T = check_positive_int(T, "T")
    prefix_len = check_positive_int(prefix_len, "prefix_len", allow_zero=True)
    if prefix_len > T:
        raise ValueError(f"prefix_len must be <= T, got prefix_len={prefix_len} with T={T}")
    j = torch.arange(T, device=device).unsqueeze(0)  # (1, T)
    return causal_mask(T, device=device) | (j < prefix_len)


def check_cu_seqlens(cu_seqlens) -> torch.Tensor:
    """``cu_seqlens = [0, l1, l1+l2, ...]``: 1-D ints, starting at 0, non-decreasing."""
    if isinstance(cu_seqlens, torch.Tensor):
        cu = cu_seqlens
    elif isinstance(cu_seqlens, Sequence):
        cu = torch.tensor(list(cu_seqlens))
    else:
        raise TypeError(f"cu_seqlens must be a tensor or a list of ints, got {type(cu_seqlens).__name__}")
    if cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point or cu.dtype == torch.bool:
        raise ValueError(
            f"cu_seqlens must be a 1-D integer sequence [0, l1, l1+l2, ...] with at least 2 entries, "
            f"got {cu.tolist() if cu.dim() <= 1 else tuple(cu.shape)}"
        )
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu.tolist()}")
    if (cu[1:] < cu[:-1]).any():
        raise ValueError(f"cu_seqlens must be sorted (non-decreasing cumulative lengths), got {cu.tolist()}")
    return cu


def varlen_mask(cu_seqlens, *, device=None) -> torch.Tensor:
    """Block-diagonal mask ``[N, N]`` for sequences packed end to end (``N = cu_seqlens[-1]``):
    a token may attend only to tokens of its own sequence. ``cu_seqlens=[0, 2, 5]``::

        1 1 0 0 0
        1 1 0 0 0
        0 0 1 1 1
        0 0 1 1 1
        0 0 1 1 1
    """
    cu = check_cu_seqlens(cu_seqlens).to(device=device)
    lengths = cu[1:] - cu[:-1]  # (n_seqs,)
    seq_id = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)  # (N,)
    return seq_id.unsqueeze(1) == seq_id.unsqueeze(0)  # (N, N)
