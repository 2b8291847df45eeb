"""Checks for scaled dot-product attention (chapter 3) and masked attention (chapter 4).

    "scaled_dot_product_attention"(q, k, v, mask=None) -> out [..., T_q, d_v]
    "attention_weights"(q, k, mask=None)              -> weights [..., T_q, T_k]
    "masked_attention"(q, k, v, mask)                 -> out, zeros on rows with no allowed key
    "dot_product_variance"(d_k, n_samples, seed)      -> float, the empirical Var(q . k) (about d_k)
"""

from __future__ import annotations

import math

import torch

from ..attention import attention
from ..masks import causal_mask, padding_mask
from ..worked_example import worked_example
from .base import Mutant, ReferenceCheck
from .cases import label, randn, random_mask
from .compare import number_difference
from .mutants.attention import sdpa_mutants, weights_mutants
from .protocol import register

ATTENTION_MISTAKES = (
    "k_not_transposed", "no_scale", "scaled_twice", "softmax_wrong_axis", "mask_ignored", "mask_inverted",
    "mask_after_softmax", "mask_zero_fill", "nan_on_fully_masked_rows", "mask_finite_fill",
)  # fmt: skip


def qkv_case(gen, B, H, T_q, T_k, d_k, d_v, mask=None, what="") -> dict:
    """One case: q ``[B, H, T_q, d_k]``, k ``[B, H, T_k, d_k]``, v ``[B, H, T_k, d_v]`` and a mask."""
    return dict(
        q=randn(gen, B, H, T_q, d_k),
        k=randn(gen, B, H, T_k, d_k),
        v=randn(gen, B, H, T_k, d_v),
        mask=mask,
        label=label(B=B, H=H, T_q=T_q, T_k=T_k, d_k=d_k, d_v=d_v) + (f", {what}" if what else ""),
    )


def attention_cases(gen, hidden: bool, always_masked: bool = False) -> list[dict]:
    """Awkward shapes: T_q != T_k, d_k = 13; one square case (T = d_k = 7) on which ``q @ k`` runs;
    masks with a row that allows no key."""
    cases = []
    if not always_masked:
        cases += [qkv_case(gen, 2, 3, 5, 7, 13, 6, what="no mask"), qkv_case(gen, 1, 2, 7, 7, 7, 5, what="no mask")]
    cases += [
        qkv_case(gen, 2, 3, 5, 7, 13, 6, random_mask(gen, 5, 7), "random bool mask [T_q, T_k]"),
        qkv_case(gen, 1, 2, 5, 7, 13, 6, random_mask(gen, 5, 7, dead_rows=(2,)), "mask with a fully masked row"),
        qkv_case(gen, 2, 1, 7, 5, 6, 3, causal_mask(7, 5), "causal (bottom-right): the first 2 rows see nothing"),
    ]
    if always_masked:
        cases += [qkv_case(gen, 3, 2, 5, 7, 13, 6, padding_mask([7, 3, 0], 7), "padding mask, lengths [7, 3, 0]")]
    if hidden:
        cases += [
            qkv_case(gen, 2, 2, 1, 13, 11, 4, random_mask(gen, 1, 13), "one query (decoding) with a mask"),
            qkv_case(gen, 2, 3, 13, 5, 7, 9, padding_mask([5, 2], 5), "padding mask [B, 1, 1, T_k]"),
            qkv_case(gen, 1, 3, 11, 11, 11, 11, random_mask(gen, 11, 11, dead_rows=(0, 10)), "square, dead rows"),
        ]
    return cases


@register
class ScaledDotProductAttention(ReferenceCheck):
    name = "scaled_dot_product_attention"
    expects = "fn(q, k, v, mask=None) -> out [..., T_q, d_v]; fully masked rows -> zeros"
    args = ("q", "k", "v", "mask")
    mutants = sdpa_mutants(ATTENTION_MISTAKES)

    def build_cases(self, gen, hidden):
        q, k, v = (t[None, None] for t in worked_example())  # (1, 1, 3, 4), (1, 1, 3, 4), (1, 1, 3, 2)
        documents = dict(q=q, k=k, v=v, mask=causal_mask(3),
                         label="the documents' worked example (T=3, d_k=4, causal: rows [10, 20], [22.44, 32.44], ...)")
        cases = attention_cases(gen, hidden)
        return cases[:2] + [documents] + cases[2:]  # after the unmasked cases, so single mistakes show first

    def reference(self, case):
        return attention(case["q"], case["k"], case["v"], case["mask"])


@register
class AttentionWeights(ReferenceCheck):
    name = "attention_weights"
    expects = "fn(q, k, mask=None) -> weights [..., T_q, T_k], rows sum to 1 (0 where fully masked)"
    args = ("q", "k", "mask")
    mutants = weights_mutants(ATTENTION_MISTAKES)

    def build_cases(self, gen, hidden):
        cases = attention_cases(gen, hidden)
        for c in cases:
            del c["v"]
        return cases

    def reference(self, case):
        q, k = case["q"], case["k"]
        v = torch.zeros(*k.shape[:-1], 1)  # (..., T_k, 1): only the weights are wanted
        return attention(q, k, v, case["mask"], return_weights=True)[1]


@register
class MaskedAttention(ReferenceCheck):
    name = "masked_attention"
    expects = "fn(q, k, v, mask) -> out [..., T_q, d_v], zeros (never NaN) on rows with no allowed key"
    args = ("q", "k", "v", "mask")
    mutants = sdpa_mutants(ATTENTION_MISTAKES)

    def build_cases(self, gen, hidden):
        return attention_cases(gen, hidden, always_masked=True)

    def reference(self, case):
        return attention(case["q"], case["k"], case["v"], case["mask"])


# --- the variance of a dot product -------------------------------------------------------------------


def _sample(d_k: int, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, d_k, generator=g), torch.randn(n_samples, d_k, generator=g)  # (n, d_k) each


def variance_std_instead(d_k, n_samples, seed):
    q, k = _sample(d_k, n_samples, seed)
    return (q * k).sum(-1).std().item()


def variance_after_scaling(d_k, n_samples, seed):
    q, k = _sample(d_k, n_samples, seed)
    return ((q * k).sum(-1) / math.sqrt(d_k)).var().item()


def variance_mean_instead(d_k, n_samples, seed):
    q, k = _sample(d_k, n_samples, seed)
    return (q * k).sum(-1).mean().item()


@register
class DotProductVariance(ReferenceCheck):
    """The answer is random, so it is judged against the sampling spread rather than a fixed number:
    for unit-normal ``q, k`` in ``d_k`` dims, ``S = q . k`` has ``Var S = d_k`` and ``Var S^2 = 2 d_k^2 +
    6 d_k``, so the sample variance of ``n`` dot products has standard error ``sqrt((2 d_k^2 + 6 d_k) / n)``."""

    name = "dot_product_variance"
    expects = "fn(d_k, n_samples, seed) -> float, the sample variance of q . k for unit-normal q, k (about d_k)"
    args = ("d_k", "n_samples", "seed")
    mutants = (
        Mutant(
            "std_instead_of_variance",
            "Your answer is about sqrt(d_k): you returned the standard deviation.",
            "use .var() (or the mean of the squares), not .std().",
            variance_std_instead,
        ),
        Mutant(
            "variance_after_scaling",
            "Your answer is about 1, not about d_k: you measured the variance after dividing by sqrt(d_k), or "
            "the variance of one product q_i * k_i rather than of the whole sum q . k.",
            "take the dot product over all d_k dims, (q * k).sum(-1), and do not scale it.",
            variance_after_scaling,
        ),
        Mutant(
            "mean_instead_of_variance",
            "Your answer is about 0: that is the mean of q . k, not its variance.",
            "the variance is the mean of (x - mean)^2; torch's .var() computes it.",
            variance_mean_instead,
        ),
    )

    def build_cases(self, gen, hidden):
        dims = (13, 64, 7) + ((5, 111) if hidden else ())
        seeds = torch.randint(0, 2**31 - 1, (len(dims),), generator=gen).tolist()
        n = 20000
        pairs = zip(dims, seeds, strict=True)
        return [dict(d_k=d, n_samples=n, seed=s, label=label(d_k=d, n_samples=n)) for d, s in pairs]

    def reference(self, case):
        return float(case["d_k"])

    def spread(self, case, value: float) -> float:
        """Six standard errors of a sample estimate around ``value``: a right answer misses by more about
        once in 10^9 runs."""
        d, n = case["d_k"], case["n_samples"]
        return 6 * math.sqrt((2 * d * d + 6 * d) / n) * max(value, 1.0) / d + 1e-9

    def difference(self, case, expected, got):
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        problem = number_difference(expected, got, "your variance", rtol=0.0)
        if problem is None or "should be" in problem:
            return problem
        if abs(got - expected) <= self.spread(case, expected):
            return None
        return problem + f" (a right answer is within ±{self.spread(case, expected):.2g} of d_k={case['d_k']})"

    def recognise(self, case, output, expected):
        got = output.item() if isinstance(output, torch.Tensor) and output.numel() == 1 else output
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            return []
        floor = 6 * math.sqrt(case["d_k"] / case["n_samples"])  # six standard errors of a mean near 0
        return [m for m in self.mutants
                if abs(got - (wrong := self.mutant_output(m, case))) <= max(self.spread(case, abs(wrong)), floor)]
