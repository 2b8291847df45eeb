"""Checks for chapter 7: the online softmax, the tiled (FlashAttention-2) forward and the Triton kernel.

    "online_softmax"(x [..., n])                                 -> softmax(x, dim=-1), one streaming pass
    "tiled_forward"(q, k, v, causal, block_q, block_k)           -> (out [..., T_q, d_v], lse [..., T_q])
    "triton_forward"(q, k, v)                                    -> out, from the fill-in-the-blanks kernel

The references are computed the plain way (``torch.softmax``, :func:`attn_course.attention` and a
``logsumexp`` of the masked scores), independently of the tiled implementations being checked.
"""

from __future__ import annotations

import math

import torch

from .._data_stack import call_on_fresh_chunk
from ..attention import attention
from ..masks import causal_mask
from .base import ReferenceCheck
from .cases import label, randn
from .mutants import flash as wrong
from .protocol import register


@register
class OnlineSoftmax(ReferenceCheck):
    name = "online_softmax"
    expects = "fn(x [..., n]) -> softmax(x, dim=-1), computed with a running max and a rescaled running sum"
    args = ("x",)
    mutants = wrong.ONLINE_SOFTMAX

    def build_cases(self, gen, hidden):
        rows = [((13,), 3.0), ((3, 7), 3.0), ((2, 3, 5), 3.0), ((4, 13), 60.0)]
        cases = [dict(x=randn(gen, *shape, scale=s), label=label(shape=shape) + (", large inputs" if s > 10 else ""))
                 for shape, s in rows]  # fmt: skip
        x = randn(gen, 3, 11, scale=3.0)
        x[:, :4] = float("-inf")  # masked keys first: the running max starts at -inf
        cases.append(dict(x=x, label="shape=(3, 11), the first 4 entries of each row are -inf (masked)"))
        if hidden:
            cases += [dict(x=randn(gen, 2, 1), label=label(shape=(2, 1))),
                      dict(x=torch.sort(randn(gen, 5, 9, scale=5.0), dim=-1).values,
                           label=label(shape=(5, 9)) + ", increasing rows (the max grows at every step)")]  # fmt: skip
        return cases

    def reference(self, case):
        return torch.softmax(case["x"].double(), dim=-1).float()


def tiled_lse(q, k, causal: bool) -> torch.Tensor:
    """The natural-log logsumexp of the scaled (and causally masked) scores, ``[..., T_q]``."""
    s = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    return torch.logsumexp(s, dim=-1).float()  # -inf on rows with no allowed key


@register
class TiledForward(ReferenceCheck):
    name = "tiled_forward"
    expects = "fn(q, k, v, causal, block_q, block_k) -> (out [..., T_q, d_v], lse [..., T_q]); causal is bottom-right"
    args = ("q", "k", "v", "causal", "block_q", "block_k")
    output_names = ("out", "lse")
    mutants = wrong.TILED_FORWARD

    def build_cases(self, gen, hidden):
        rows = [(1, 2, 13, 13, 5, False, 4, 3), (2, 1, 5, 13, 7, True, 2, 4), (1, 2, 7, 5, 6, True, 3, 2),
                (1, 1, 11, 11, 8, True, 4, 4)]  # fmt: skip
        if hidden:
            rows += [(2, 2, 1, 17, 9, True, 1, 5), (1, 3, 17, 17, 3, False, 17, 16), (1, 1, 13, 7, 4, True, 5, 3)]
        return [
            dict(q=randn(gen, B, H, Tq, D), k=randn(gen, B, H, Tk, D), v=randn(gen, B, H, Tk, D), causal=c,
                 block_q=bq, block_k=bk, label=label(B=B, H=H, T_q=Tq, T_k=Tk, D=D, causal=c, block_q=bq, block_k=bk))
            for B, H, Tq, Tk, D, c, bq, bk in rows
        ]  # fmt: skip

    def arguments(self, case):
        # `causal` is a real argument even when False, so pass every argument (none of them is None)
        return tuple(case[a].clone() if isinstance(case[a], torch.Tensor) else case[a] for a in self.args)

    def reference(self, case):
        q, k, v, causal = case["q"], case["k"], case["v"], case["causal"]
        return attention(q, k, v, causal=causal), tiled_lse(q, k, causal)


@register
class TritonForward(ReferenceCheck):
    """Small float32 cases (the Triton interpreter is slow on a CPU); the tolerance allows TF32 matmuls
    when the kernel runs on a GPU."""

    name = "triton_forward"
    expects = "fn(q, k, v) -> out [B, H, T, D], attention without a mask, from your Triton kernel"
    args = ("q", "k", "v")
    mutants = wrong.TRITON_FORWARD
    atol, rtol = 2e-3, 2e-3

    def build_cases(self, gen, hidden):
        rows = [(1, 2, 13, 16), (2, 1, 40, 32), (1, 1, 64, 16)] + ([(1, 3, 33, 32), (2, 2, 7, 16)] if hidden else [])
        return [
            dict(q=randn(gen, B, H, T, D), k=randn(gen, B, H, T, D), v=randn(gen, B, H, T, D),
                 label=label(B=B, H=H, T=T, D=D))
            for B, H, T, D in rows
        ]  # fmt: skip

    def call(self, fn, case):
        # In the interpreter, where a launch sits on Python's data stack decides its speed: called from a window
        # of about 24 depths in every 135, this check of the same kernel ran 2.7x slower (_data_stack). So each
        # case calls the learner's function from a fresh data-stack chunk.
        return call_on_fresh_chunk(super().call, fn, case)

    def reference(self, case):
        return attention(case["q"], case["k"], case["v"])
