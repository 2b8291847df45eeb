"""Classic mistakes in scaled dot-product attention, ``softmax(Q K^T / sqrt(d_k) + mask) V``.

Every mistake is one knob of :func:`wrong_weights`, a deliberately plain implementation; the catalogue
entries below turn it into functions with the learners' signatures::

    weights_*(q, k, mask=None) -> weights [..., T_q, T_k]      ("attention_weights")
    sdpa_*(q, k, v, mask=None) -> out [..., T_q, d_v]         ("scaled_dot_product_attention", "masked_attention")
"""

from __future__ import annotations

import math
import re

import torch

from ..base import Mutant
from ..protocol import Raised

NEG_INF = float("-inf")


def wrong_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: str = "1/sqrt(d_k)",
    softmax_dim: int = -1,
    transpose_k: bool = True,
    mask_step: str = "before softmax",
    fill: float = NEG_INF,
    invert_mask: bool = False,
    zero_dead_rows: bool = True,
) -> torch.Tensor:
    """Attention weights ``[..., T_q, T_k]``, right with the defaults; each keyword is one classic mistake.

    ``scale``: ``"1/sqrt(d_k)"`` (right), ``"1"`` (forgot it) or ``"1/d_k"`` (scaled twice).
    ``mask_step``: ``"before softmax"`` (right), ``"after softmax"`` (zeroed afterwards, not renormalised),
    or ``"ignored"``. ``fill``: what blocked scores become (``-inf`` is right; ``0`` lets them through,
    ``-1e9`` turns a fully masked row into a uniform average). ``zero_dead_rows=False`` leaves
    ``softmax([-inf, ..., -inf]) = NaN`` on rows with no allowed key.
    """
    d_k = q.shape[-1]
    factor = {"1/sqrt(d_k)": 1 / math.sqrt(d_k), "1": 1.0, "1/d_k": 1 / d_k}[scale]
    kt = k.transpose(-2, -1) if transpose_k else k  # (..., d_k, T_k) when right
    scores = (q @ kt) * factor  # (..., T_q, T_k)
    if mask is not None and invert_mask:
        mask = ~mask
    if mask is not None and mask_step == "before softmax":
        scores = scores.masked_fill(~mask, fill)
    weights = torch.softmax(scores, dim=softmax_dim)  # (..., T_q, T_k)
    if mask is not None and mask_step == "after softmax":
        weights = weights * mask
    if mask is not None and zero_dead_rows and mask_step == "before softmax":
        dead = ~mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
        weights = weights.masked_fill(dead, 0.0) if fill == NEG_INF else weights
    return weights


def _k_not_transposed_error(case: dict, raised: Raised) -> bool:
    """``q @ k`` with k ``[..., T_k, d_k]`` fails with a shape error naming ``d_k`` and ``T_k``."""
    q, k = case["q"], case["k"]
    d_k, T_k = q.shape[-1], k.shape[-2]
    m = re.search(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", raised.message)
    if m:
        return int(m[2]) == d_k and int(m[3]) == T_k and int(m[4]) == d_k
    m = re.search(r"batch2 tensor to be: \[\d+, (\d+)\] but got: \[\d+, (\d+)\]", raised.message)
    return bool(m) and int(m[1]) == d_k and int(m[2]) == T_k


# name -> (knobs of wrong_weights, message, hint, error recogniser)
MISTAKES = {
    "no_scale": (
        dict(scale="1"),
        "Your scores are sqrt(d_k) times too large: you did not scale Q K^T by 1/sqrt(d_k).",
        "multiply the scores by 1 / math.sqrt(d_k) (d_k = q.shape[-1]) before the softmax.",
        None,
    ),
    "scaled_twice": (
        dict(scale="1/d_k"),
        "Your scores are sqrt(d_k) times too small: you divided by d_k (or applied 1/sqrt(d_k) twice).",
        "the scale is 1 / sqrt(d_k), applied once.",
        None,
    ),
    "softmax_wrong_axis": (
        dict(softmax_dim=-2),
        "Your weights' columns sum to 1 instead of their rows: the softmax ran over the queries (dim=-2).",
        "each query's weights over the keys must sum to 1: use softmax(scores, dim=-1).",
        None,
    ),
    "k_not_transposed": (
        dict(transpose_k=False),
        "You multiplied q @ k without transposing K: q [..., T_q, d_k] needs k^T [..., d_k, T_k].",
        "use q @ k.transpose(-2, -1) (it only ran by accident when T_k == d_k).",
        _k_not_transposed_error,
    ),
    "mask_after_softmax": (
        dict(mask_step="after softmax"),
        "Your masked rows no longer sum to 1: you applied the mask after the softmax.",
        "set blocked scores to -inf before the softmax (scores.masked_fill(~mask, float('-inf'))).",
        None,
    ),
    "mask_zero_fill": (
        dict(fill=0.0),
        "Blocked keys still get weight: you filled masked scores with 0, which exp() turns into weight 1.",
        "fill blocked scores with float('-inf') so that exp() gives them weight 0.",
        None,
    ),
    "mask_finite_fill": (
        dict(fill=-1e9),
        "Rows where every key is masked give an average of the values instead of zeros: with a finite fill "
        "(-1e9) the softmax of an all-masked row is uniform.",
        "use -inf for blocked scores and return zeros on rows with no allowed key (the course's convention).",
        None,
    ),
    "nan_on_fully_masked_rows": (
        dict(zero_dead_rows=False),
        "Your output is NaN on rows where every key is masked: softmax([-inf, ..., -inf]) = 0/0.",
        "find those rows (mask.any(dim=-1) is False) and put zeros there, e.g. with torch.where or masked_fill.",
        None,
    ),
    "mask_inverted": (
        dict(invert_mask=True),
        "Each query attends exactly to the keys it should not see: you inverted the mask.",
        "in the course (and PyTorch) a bool mask's True means 'may attend': block where ~mask.",
        None,
    ),
    "mask_ignored": (
        dict(mask_step="ignored"),
        "Your output equals unmasked attention: the mask was never applied.",
        "apply scores.masked_fill(~mask, float('-inf')) before the softmax.",
        None,
    ),
}


def _weights_fn(knobs: dict):
    def weights(q, k, mask=None):
        return wrong_weights(q, k, mask, **knobs)

    return weights


def _sdpa_fn(knobs: dict):
    def sdpa(q, k, v, mask=None):
        return wrong_weights(q, k, mask, **knobs) @ v  # (..., T_q, d_v)

    return sdpa


def sdpa_returns_weights(q, k, v, mask=None):
    """Forgot the last step: returned the weights, not ``weights @ v``."""
    return wrong_weights(q, k, mask)


def weights_mutants(names) -> tuple[Mutant, ...]:
    """Catalogue entries for ``attention_weights``-style checkers."""
    return tuple(Mutant(n, MISTAKES[n][1], MISTAKES[n][2], _weights_fn(MISTAKES[n][0]), MISTAKES[n][3]) for n in names)


def sdpa_mutants(names) -> tuple[Mutant, ...]:
    """Catalogue entries for checkers of ``fn(q, k, v, mask=None) -> out``."""
    out = tuple(Mutant(n, MISTAKES[n][1], MISTAKES[n][2], _sdpa_fn(MISTAKES[n][0]), MISTAKES[n][3]) for n in names)
    forgot_v = Mutant(
        "returned_weights",
        "You returned the attention weights [..., T_q, T_k], not the output [..., T_q, d_v].",
        "finish with weights @ v.",
        sdpa_returns_weights,
    )
    return out + (forgot_v,)
