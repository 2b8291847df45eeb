"""Checks for the masks of chapter 4 (all bool, True = may attend; causal ones aligned bottom-right).

    "causal_mask"(T_q, T_k)                    -> bool [T_q, T_k]
    "padding_mask"(lengths, T)                 -> bool [B, 1, 1, T]
    "prefix_lm_mask"(T, prefix_len)            -> bool [T, T]
    "varlen_mask"(cu_seqlens)                  -> bool [N, N]
    "sliding_window_mask"(T_q, T_k, window)    -> bool [T_q, T_k]

The cases need no randomness: they are chosen so that every catalogued mistake shows (``T_q != T_k`` in
both directions, a one-query decoding step, an empty sequence, windows with an unbounded side).
"""

from __future__ import annotations

from .. import masks as ref
from .base import ReferenceCheck
from .cases import label
from .mutants import masks as wrong
from .protocol import register


class MaskCheck(ReferenceCheck):
    """Masks are compared exactly; a right pattern in the wrong dtype gets its own message."""

    def cases_from(self, rows: list[tuple]) -> list[dict]:
        return [dict(zip(self.args, row, strict=True), label=label(**dict(zip(self.args, row, strict=True))))
                for row in rows]  # fmt: skip


@register
class CausalMask(MaskCheck):
    name = "causal_mask"
    expects = "fn(T_q, T_k) -> bool [T_q, T_k], bottom-right aligned: query i sees key j iff j <= i + T_k - T_q"
    args = ("T_q", "T_k")
    mutants = wrong.CAUSAL

    def build_cases(self, gen, hidden):
        rows = [(5, 7), (7, 5), (1, 13), (6, 6)] + ([(13, 4), (2, 11), (1, 1)] if hidden else [])
        return self.cases_from(rows)

    def reference(self, case):
        return ref.causal_mask(case["T_q"], case["T_k"])


@register
class SlidingWindowMask(MaskCheck):
    name = "sliding_window_mask"
    expects = "fn(T_q, T_k, window=(left, right)) -> bool [T_q, T_k]; i - left <= j <= i + right, -1 = unbounded"
    args = ("T_q", "T_k", "window")
    mutants = wrong.SLIDING_WINDOW

    def build_cases(self, gen, hidden):
        rows = [(7, 7, (2, 0)), (5, 7, (2, 1)), (7, 13, (-1, 0)), (7, 5, (1, -1))]
        rows += [(13, 13, (3, 3)), (1, 13, (4, 0)), (6, 11, (0, 2)), (5, 5, (-1, -1))] if hidden else []
        return self.cases_from(rows)

    def reference(self, case):
        return ref.sliding_window_mask(case["T_q"], case["T_k"], window=tuple(case["window"]))


@register
class PaddingMask(MaskCheck):
    name = "padding_mask"
    expects = "fn(lengths, T) -> bool [B, 1, 1, T]: the first lengths[b] keys of batch element b are real"
    args = ("lengths", "T")
    mutants = wrong.PADDING

    def build_cases(self, gen, hidden):
        rows = [([5, 3, 7], 7), ([1, 13, 0, 6], 13)] + ([([2, 2], 5), ([0], 3), ([11], 11)] if hidden else [])
        return self.cases_from(rows)

    def reference(self, case):
        return ref.padding_mask(case["lengths"], case["T"])


@register
class PrefixLMMask(MaskCheck):
    name = "prefix_lm_mask"
    expects = "fn(T, prefix_len) -> bool [T, T]: causal, plus every query sees the first prefix_len keys"
    args = ("T", "prefix_len")
    mutants = wrong.PREFIX_LM

    def build_cases(self, gen, hidden):
        rows = [(7, 3), (13, 5), (5, 0)] + ([(6, 1), (11, 11), (9, 4)] if hidden else [])
        return self.cases_from(rows)

    def reference(self, case):
        return ref.prefix_lm_mask(case["T"], case["prefix_len"])


@register
class VarlenMask(MaskCheck):
    name = "varlen_mask"
    expects = "fn(cu_seqlens) -> bool [N, N], block-diagonal: tokens see only their own packed sequence"
    args = ("cu_seqlens",)
    mutants = wrong.VARLEN

    def build_cases(self, gen, hidden):
        rows = [([0, 2, 5],), ([0, 5, 7, 13],)] + ([([0, 1, 4, 4, 9],), ([0, 13],), ([0, 3, 6, 7],)] if hidden else [])
        return self.cases_from(rows)

    def reference(self, case):
        return ref.varlen_mask(case["cu_seqlens"])
