"""Online (streaming) softmax: one pass for the max and the sum together.

A plain softmax reads the row three times: once for the max ``m``, once for ``l = sum exp(x - m)``,
once to normalise. The online version keeps a running max ``m`` and a running sum ``l`` that is always
expressed relative to the current max; when a new, larger max ``m'`` arrives, the old sum is rescaled::

    m' = max(m, x_j)
    l' = l * exp(m - m') + exp(x_j - m')

Forgetting the ``exp(m - m')`` rescale is the classic bug: the sum then mixes terms measured against
different maxima. This recurrence is what lets FlashAttention process keys tile by tile.
"""

from __future__ import annotations

import torch

from ._validate import require_float


def online_softmax(x: torch.Tensor, dim: int = -1, *, block: int = 1) -> torch.Tensor:
    """Softmax of ``x`` along ``dim``, computed with the streaming recurrence over blocks of ``block``
    elements (``block=1`` is the textbook element-by-element version). Equal to ``torch.softmax``,
    except on a slice that is entirely ``-inf``, where it returns zeros (the course's convention for
    fully masked rows) instead of NaN.
    """
    require_float(x, "x", what="online_softmax")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    xt = x.movedim(dim, -1)  # (..., N)
    work = xt.float() if xt.dtype in (torch.float16, torch.bfloat16) else xt
    m = torch.full(work.shape[:-1], float("-inf"), dtype=work.dtype, device=x.device)  # (...,)
    l = torch.zeros_like(m)  # (...,)
    for start in range(0, work.shape[-1], block):
        chunk = work[..., start : start + block]  # (..., block)
        m_new = torch.maximum(m, chunk.amax(dim=-1))
        m_safe = torch.where(torch.isneginf(m_new), 0.0, m_new)  # all -inf so far: nothing to rescale
        l = l * torch.exp(m - m_safe) + torch.exp(chunk - m_safe.unsqueeze(-1)).sum(dim=-1)
        m = m_new
    m_safe = torch.where(torch.isneginf(m), 0.0, m)
    l_safe = torch.where(l > 0, l, 1.0)
    out = torch.exp(work - m_safe.unsqueeze(-1)) / l_safe.unsqueeze(-1)  # the normalising pass
    return out.to(x.dtype).movedim(-1, dim)
