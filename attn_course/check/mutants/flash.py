"""Classic mistakes in the online softmax and FlashAttention's tiled forward (chapter 7).

The running statistics are a max ``m``, a sum ``l = sum exp(s - m)`` and an accumulator
``acc = sum exp(s - m) v``. When a tile raises the max from ``m`` to ``m'``, the old ``l`` and ``acc`` were
measured against ``m`` and must be rescaled by ``alpha = exp(m - m')``; forgetting that is *the* bug.
:func:`wrong_tiled` is a plain tiled forward in which each mistake is one keyword.
"""

from __future__ import annotations

import math

import torch

from ..base import Mutant

NEG_INF = float("-inf")

# --- online_softmax(x [..., n]) -----------------------------------------------------------------------


def wrong_online_softmax(x, *, rescale: str = "exp(m - m_new)", subtract_max: bool = True, guard: bool = True,
                         dim: int = -1) -> torch.Tensor:
    """The streaming softmax, one element at a time; right with the defaults."""
    x = x.movedim(dim, -1)  # (..., n)
    m = torch.full(x.shape[:-1], NEG_INF)  # (...,) running max
    l = torch.zeros(x.shape[:-1])  # (...,) running sum of exp(x - m)
    for j in range(x.shape[-1]):
        xj = x[..., j]
        m_new = torch.maximum(m, xj) if subtract_max else torch.zeros_like(m)
        ref = torch.where(torch.isneginf(m_new), 0.0, m_new) if guard else m_new
        alpha = {"exp(m - m_new)": torch.exp(m - ref), "none": torch.ones_like(m), "exp(m_new - m)": torch.exp(ref - m)}
        l = l * alpha[rescale] + torch.exp(xj - ref)
        m = m_new
    ref = torch.where(torch.isneginf(m), 0.0, m) if guard else m
    return (torch.exp(x - ref.unsqueeze(-1)) / l.unsqueeze(-1)).movedim(-1, dim)


ONLINE_SOFTMAX = (
    Mutant("forgot_rescale", "Your rows do not sum to 1: when the running max grew you did not rescale the running "
           "sum, so it mixes terms measured against different maxima.",
           "l = l * exp(m - m_new) + exp(x_j - m_new), then m = m_new.",
           lambda x: wrong_online_softmax(x, rescale="none")),
    Mutant("overflow_no_max", "Your output is NaN for large inputs: without a running max, exp() overflows.",
           "keep a running max m and sum exp(x_j - m), rescaling the sum when m grows.",
           lambda x: wrong_online_softmax(x, subtract_max=False)),
    Mutant("nan_on_leading_neg_inf", "Your row is NaN when it starts with -inf entries (masked keys): with m = -inf, "
           "exp(m - m_new) is exp(-inf - (-inf)) = exp(NaN).",
           "while the running max is still -inf, use 0 in its place (torch.where(torch.isneginf(m), 0, m)).",
           lambda x: wrong_online_softmax(x, guard=False)),
    Mutant("rescale_inverted",
           "Your running sum blows up: you rescaled it by exp(m_new - m) instead of exp(m - m_new).",
           "the old sum is measured against the old, smaller max: multiply it by exp(m - m_new) <= 1.",
           lambda x: wrong_online_softmax(x, rescale="exp(m_new - m)")),
    Mutant("softmax_wrong_axis", "Your softmax normalised over the first dim instead of the last.",
           "stream over the last dim: x[..., j].", lambda x: wrong_online_softmax(x, dim=0)),
)  # fmt: skip


# --- tiled_forward(q, k, v, causal, block_q, block_k) -> (out, lse) ---------------------------------


def wrong_tiled(q, k, v, causal=False, block_q=16, block_k=16, *, rescale=True, normalise=True, lse="m + log(l)",
                align="bottom-right", diagonal=0, drop_partial_tile=False, scale=None, guard=True):
    """A tiled attention forward returning ``(out, lse)``; right with the defaults. ``diagonal=-1`` hides
    the diagonal, ``align="top-left"`` uses PyTorch's causal alignment, ``guard=False`` lets rows with no
    allowed key turn into NaN, ``lse="log2"``/``"log(l)"`` get the logsumexp wrong."""
    T_q, T_k, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scale = 1 / math.sqrt(D) if scale is None else scale
    offset = T_k - T_q if align == "bottom-right" else 0
    out, lses = [], []
    for qs in range(0, T_q, block_q):
        qb = q[..., qs : qs + block_q, :]  # (..., bq, D)
        m = torch.full(qb.shape[:-1], NEG_INF)  # (..., bq)
        l = torch.zeros(qb.shape[:-1])  # (..., bq)
        acc = torch.zeros(*qb.shape[:-1], v.shape[-1])  # (..., bq, d_v)
        k_stop = T_k - block_k + 1 if drop_partial_tile else T_k
        for ks in range(0, max(k_stop, 0), block_k):
            s = qb @ k[..., ks : ks + block_k, :].transpose(-2, -1) * scale  # (..., bq, bk)
            if causal:
                i = torch.arange(qs, qs + qb.shape[-2]).unsqueeze(1) + offset  # (bq, 1)
                j = torch.arange(ks, ks + s.shape[-1]).unsqueeze(0)  # (1, bk)
                s = s.masked_fill(j > i + diagonal, NEG_INF)
            m_new = torch.maximum(m, s.amax(-1))
            ref = torch.where(torch.isneginf(m_new), 0.0, m_new) if guard else m_new
            alpha = torch.exp(m - ref) if rescale else torch.ones_like(m)
            p = torch.exp(s - ref.unsqueeze(-1))  # (..., bq, bk)
            l = alpha * l + p.sum(-1)
            acc = alpha.unsqueeze(-1) * acc + p @ v[..., ks : ks + block_k, :]
            m = m_new
        if guard:
            alive = l > 0
            out.append(acc / torch.where(alive, l, 1.0).unsqueeze(-1) if normalise else acc)
            log_l = torch.log(torch.where(alive, l, 1.0))
            value = {"m + log(l)": m + log_l, "log2": (m + log_l) / math.log(2), "log(l)": log_l}[lse]
            lses.append(torch.where(alive, value, NEG_INF))
        else:
            out.append(acc / l.unsqueeze(-1))
            lses.append(m + torch.log(l))
    return torch.cat(out, dim=-2), torch.cat(lses, dim=-1)  # (..., T_q, d_v), (..., T_q)


def _tiled(**knobs):
    return lambda q, k, v, causal, block_q, block_k: wrong_tiled(q, k, v, causal, block_q, block_k, **knobs)


TILED_FORWARD = (
    Mutant("forgot_rescale", "Your output is wrong from the second key tile on: when the running max grew you did "
           "not rescale l and acc by alpha = exp(m_old - m_new).",
           "alpha = exp(m - m_new); l = alpha * l + p.sum(-1); acc = alpha[:, None] * acc + p @ v_tile.",
           _tiled(rescale=False)),
    Mutant("out_not_normalised", "Your output is the unnormalised accumulator: you did not divide by l at the end.",
           "out = acc / l[:, None] after the last key tile.", _tiled(normalise=False)),
    Mutant("lse_log2", "Your lse is the logsumexp in base 2 (off by a factor ln 2): fine inside a kernel that uses "
           "exp2, but the contract is the natural log.", "return lse * ln(2) (or m + log(l) with natural logs).",
           _tiled(lse="log2")),
    Mutant("lse_missing_max", "Your lse is log(l) without the running max: l is a sum relative to m, so "
           "logsumexp = m + log(l).", "lse = m + log(l).", _tiled(lse="log(l)")),
    Mutant("causal_top_left", "Your causal mask is aligned top-left; with T_q != T_k the course aligns it "
           "bottom-right (query i sits at position i + T_k - T_q).",
           "mask key j for query i when j > i + (T_k - T_q).", _tiled(align="top-left")),
    Mutant("causal_diagonal_excluded", "Your causal mask is off by one: no query sees the key at its own position.",
           "mask only keys strictly after the query (j > i + offset), keep j == i + offset.",
           _tiled(diagonal=-1)),
    Mutant("dropped_partial_tile", "The last keys are ignored when T_k is not a multiple of block_k: your loop "
           "skips the final, partial tile.", "loop with range(0, T_k, block_k) and slice k[ks:ks + block_k].",
           _tiled(drop_partial_tile=True)),
    Mutant("no_scale", "Your scores are sqrt(D) times too large: you did not scale them by 1/sqrt(D).",
           "s = q_tile @ k_tile.T * (1 / sqrt(D)).", _tiled(scale=1.0)),
    Mutant("nan_on_empty_rows", "Rows with no allowed key (causal with T_q > T_k) are NaN: their running max stays "
           "-inf and exp(-inf - (-inf)) is NaN.", "use 0 in place of a -inf running max, and give such rows out = 0, "
           "lse = -inf.", _tiled(guard=False)),
)  # fmt: skip


# --- triton_forward(q, k, v) -> out (no mask) ----------------------------------------------------------


def _padded_keys(q, k, v, block: int = 16):
    """What a kernel computes when the keys past T_k are loaded as zeros but not masked out."""
    pad = -k.shape[-2] % block
    k = torch.nn.functional.pad(k, (0, 0, 0, pad))  # (..., T_k + pad, D): zero keys score 0, not -inf
    v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def _triton(block_k: int = 16, **knobs):
    return lambda q, k, v: wrong_tiled(q, k, v, False, 16, block_k, **knobs)[0]


_FORGOT_RESCALE = (
    "forgot_rescale", "Your output is wrong once a row spans several key tiles: the running l and acc are "
    "not rescaled by alpha = exp(m_i - m_new) when the max grows.",
    "alpha = tl.exp(m_i - m_new); l_i = l_i * alpha + tl.sum(p, 1); acc = acc * alpha[:, None] + tl.dot(p, v).",
)

TRITON_FORWARD = (
    Mutant("no_scale", "Your scores are sqrt(D) times too large: the kernel does not scale q . k by 1/sqrt(D).",
           "multiply the tile of scores by sm_scale = 1 / sqrt(D) (or fold it into q).", _triton(scale=1.0)),
    # the same mistake with two key-tile sizes (a learner's BLOCK_N may be either)
    Mutant(*_FORGOT_RESCALE, _triton(rescale=False)),
    Mutant(*_FORGOT_RESCALE, _triton(rescale=False, block_k=32)),
    Mutant("out_not_normalised", "Your output is the unnormalised accumulator: divide by l_i at the end.",
           "acc = acc / l_i[:, None] before the store.", _triton(normalise=False)),
    Mutant("tail_not_masked", "Keys past T were loaded as zeros but not masked: they get score 0 and take weight "
           "from the real keys when T is not a multiple of the block size.",
           "load with mask=offs_n < T and set the scores of those columns to -inf (tl.where).", _padded_keys),
)  # fmt: skip
