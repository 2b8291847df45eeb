"""The reference: scaled dot-product attention, written out in full.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k) + mask) V

This is the one implementation that everything else in the course (the tiled reference, the Triton
kernels, the learners' exercises) is checked against, so it favours clarity over speed: it materialises
the whole ``[..., T_q, T_k]`` score matrix.
"""

from __future__ import annotations

import math

import torch

from ._validate import HALF_DTYPES, check_mask, check_qkv, check_softcap
from .masks import causal_mask


def default_scale(d_k: int) -> float:
    """``1 / sqrt(d_k)``: keeps the variance of ``q . k`` at 1 when q and k have unit-variance entries."""
    return 1.0 / math.sqrt(d_k)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are softmaxed in float32; float32 and float64 stay as they are."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def masked_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim where ``-inf`` entries are blocked keys.

    A row whose keys are *all* blocked has no distribution to speak of; ``torch.softmax`` would return
    ``exp(-inf) / 0 = NaN`` there. We return a row of zeros instead, and make sure no NaN leaks into
    the gradient either (the dead rows are replaced *before* the softmax, not patched after it).
    """
    dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (..., T_q, 1)
    weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)  # (..., T_q, T_k)
    return weights.masked_fill(dead, 0.0)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    softcap: float = 0.0,
    return_weights: bool = False,
):
    """Scaled dot-product attention.

    Args:
        q: queries ``[..., T_q, d_k]``.
        k: keys ``[..., T_k, d_k]``.
        v: values ``[..., T_k, d_v]``. The leading dims of q, k and v broadcast.
        mask: a bool tensor broadcastable to ``[..., T_q, T_k]`` (True = may attend), or an additive
            float mask (``0`` = attend, ``-inf`` = blocked).
        causal: apply a bottom-right aligned causal mask (see :mod:`attn_course.masks`), combined with
            ``mask`` if both are given.
        scale: multiplies the scores; defaults to ``1 / sqrt(d_k)``.
        softcap: if positive, each scaled score ``s`` becomes ``softcap * tanh(s / softcap)`` before the
            masks: a smooth cap at ``+-softcap`` (Gemma 2's logit soft-capping, flash-attn's ``softcap``).
            Scores much smaller than the cap pass almost unchanged. ``0`` (the default): no cap.
        return_weights: also return the attention weights.

    Returns:
        ``out [..., T_q, d_v]`` in the input dtype, or ``(out, weights [..., T_q, T_k])``. A query row
        with no allowed key gets zeros in both, never NaN.
    """
    check_qkv(q, k, v)
    T_q, T_k = q.shape[-2], k.shape[-2]
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    softcap = check_softcap(softcap)
    cdt = compute_dtype(q.dtype)

    scores = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (..., T_q, T_k)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    if mask is not None:
        check_mask(mask, scores.shape)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.to(cdt)
    if causal:
        scores = scores.masked_fill(~causal_mask(T_q, T_k, device=q.device), float("-inf"))

    weights = masked_softmax(scores)  # (..., T_q, T_k)
    out = weights @ v.to(cdt)  # (..., T_q, d_v)
    if return_weights:
        return out.to(q.dtype), weights.to(q.dtype)
    return out.to(q.dtype)
