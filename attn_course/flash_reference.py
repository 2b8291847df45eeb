"""FlashAttention-2's forward pass in plain PyTorch, one tile at a time.

The naive version builds the whole ``[T_q, T_k]`` score matrix. This one never does: for each block of
``block_q`` queries it walks over blocks of ``block_k`` keys, keeping only

    m    [block_q]           running max of the scores seen so far (per query row)
    l    [block_q]           running sum of exp(score - m)
    acc  [block_q, d_v]      running, *unnormalised* sum of exp(score - m) * v

and rescales all three whenever the running max grows (the online-softmax recurrence). At the end
``out = acc / l`` and ``lse = m + log(l)``, the logsumexp that the backward pass uses to recompute the
probabilities instead of storing them. Peak extra memory is ``O(block_q * block_k)``, not ``O(T_q T_k)``.

This is the readable model of the Triton kernel in :mod:`attn_course.kernels`: same loops, same
variables, same masking, same treatment of rows with no allowed key (``out = 0``, ``lse = -inf``).
"""

from __future__ import annotations

import torch

from ._validate import check_positive_int, check_qkv
from .attention import compute_dtype, default_scale


def flash_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiled attention. Shapes as :func:`attn_course.attention` (q ``[..., T_q, d_k]``, k
    ``[..., T_k, d_k]``, v ``[..., T_k, d_v]``, leading dims broadcast); ``causal`` is bottom-right aligned.

    Returns ``(out [..., T_q, d_v], lse [..., T_q])``; ``lse`` is the natural-log logsumexp of the scaled,
    masked scores (float32 for half inputs), ``-inf`` on rows with no allowed key.
    """
    check_qkv(q, k, v)
    check_positive_int(block_q, "block_q")
    check_positive_int(block_k, "block_k")
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    T_q, T_k, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    cdt = compute_dtype(q.dtype)
    q = q.expand(*lead, *q.shape[-2:])
    k = k.expand(*lead, *k.shape[-2:])
    v = v.expand(*lead, *v.shape[-2:])
    offset = T_k - T_q  # bottom-right alignment: query i sits at absolute position i + offset

    out = torch.empty(*lead, T_q, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(*lead, T_q, dtype=cdt, device=q.device)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        q_blk = q[..., qs:qe, :].to(cdt)  # (..., bq, d_k)
        m = torch.full((*lead, qe - qs), float("-inf"), dtype=cdt, device=q.device)  # (..., bq)
        l = torch.zeros_like(m)  # (..., bq)
        acc = torch.zeros(*lead, qe - qs, d_v, dtype=cdt, device=q.device)  # (..., bq, d_v)
        # Causal: keys after the last query's position can never be seen, so stop the loop there.
        k_end = min(T_k, qe - 1 + offset + 1) if causal else T_k
        for ks in range(0, max(k_end, 0), block_k):
            ke = min(ks + block_k, T_k)
            s = (q_blk @ k[..., ks:ke, :].to(cdt).transpose(-2, -1)) * scale  # (..., bq, bk)
            if causal and ke - 1 > qs + offset:  # only tiles that straddle the diagonal need a mask
                i = torch.arange(qs, qe, device=q.device).unsqueeze(1) + offset  # (bq, 1)
                j = torch.arange(ks, ke, device=q.device).unsqueeze(0)  # (1, bk)
                s = s.masked_fill(j > i, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))  # (..., bq)
            m_safe = torch.where(torch.isneginf(m_new), 0.0, m_new)  # rows with nothing allowed yet
            alpha = torch.exp(m - m_safe)  # (..., bq) rescales the old l and acc
            p = torch.exp(s - m_safe.unsqueeze(-1))  # (..., bq, bk) unnormalised probabilities
            l = alpha * l + p.sum(dim=-1)
            acc = alpha.unsqueeze(-1) * acc + p @ v[..., ks:ke, :].to(cdt)  # (..., bq, d_v)
            m = m_new
        alive = l > 0
        out[..., qs:qe, :] = (acc / torch.where(alive, l, 1.0).unsqueeze(-1)).to(q.dtype)
        lse[..., qs:qe] = torch.where(alive, m + torch.log(torch.where(alive, l, 1.0)), float("-inf"))
    return out, lse
