"""Checks for projections and heads (chapter 2) and multi-head / grouped-query attention (chapter 5).

    "qkv_projections"(x [B, T, d_model], w_q, w_k, w_v) -> (q, k, v), each x @ w.T
    "split_heads"(x [B, T, d_model], n_heads)           -> [B, H, T, d_head]
    "merge_heads"(x [B, H, T, d_head])                  -> [B, T, d_model]
    "multi_head_attention"(cls)       cls(d_model, n_heads): q_proj, k_proj, v_proj, o_proj; forward(x, mask=None)
    "grouped_query_attention"(q [B, H, T, D], k [B, H_kv, T, D], v [B, H_kv, T, D]) -> [B, H, T, D]
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import attention
from ..masks import causal_mask
from ..mha import merge_heads, repeat_kv, split_heads
from .base import ReferenceCheck
from .cases import label, randn, random_mask
from .compare import plain
from .mutants import heads as wrong
from .protocol import register


@register
class QKVProjections(ReferenceCheck):
    name = "qkv_projections"
    expects = "fn(x [B, T, d_model], w_q, w_k, w_v) -> (q, k, v), each x @ w.T (w shaped like nn.Linear.weight)"
    args = ("x", "w_q", "w_k", "w_v")
    output_names = ("q", "k", "v")
    mutants = wrong.QKV_PROJECTIONS

    def build_cases(self, gen, hidden):
        rows = [(2, 5, 12, 12), (1, 7, 15, 5)] + ([(3, 1, 7, 7), (2, 13, 10, 2)] if hidden else [])
        return [
            dict(x=randn(gen, B, T, d), w_q=randn(gen, d, d), w_k=randn(gen, d_kv, d), w_v=randn(gen, d_kv, d),
                 label=label(B=B, T=T, d_model=d, d_kv=d_kv))
            for B, T, d, d_kv in rows
        ]  # fmt: skip

    def reference(self, case):
        x = case["x"]
        return tuple(x @ case[w].T for w in ("w_q", "w_k", "w_v"))  # each (B, T, d_out)


@register
class SplitHeads(ReferenceCheck):
    name = "split_heads"
    expects = "fn(x [B, T, d_model], n_heads) -> [B, n_heads, T, d_model // n_heads]"
    args = ("x", "n_heads")
    mutants = wrong.SPLIT_HEADS

    def build_cases(self, gen, hidden):
        rows = [(2, 5, 3, 4), (1, 7, 5, 3)] + ([(3, 1, 2, 4), (2, 13, 6, 1), (1, 6, 1, 5)] if hidden else [])
        return [dict(x=randn(gen, B, T, H * dh), n_heads=H, label=label(B=B, T=T, n_heads=H, d_head=dh))
                for B, T, H, dh in rows]  # fmt: skip

    def reference(self, case):
        return split_heads(case["x"], case["n_heads"])


@register
class MergeHeads(ReferenceCheck):
    name = "merge_heads"
    expects = "fn(x [B, H, T, d_head]) -> [B, T, H * d_head], the inverse of split_heads"
    args = ("x",)
    mutants = wrong.MERGE_HEADS

    def build_cases(self, gen, hidden):
        rows = [(2, 3, 5, 4), (1, 5, 7, 3)] + ([(3, 2, 1, 4), (2, 6, 13, 1)] if hidden else [])
        return [dict(x=randn(gen, B, H, T, dh), label=label(B=B, H=H, T=T, d_head=dh)) for B, H, T, dh in rows]

    def reference(self, case):
        return merge_heads(case["x"])


@register
class MultiHeadAttentionCheck(ReferenceCheck):
    """The learner passes a class; ``call`` builds it, copies in seeded weights and returns its output, so
    that judging is pure data. The reference is ``torch.nn.MultiheadAttention`` with the same weights."""

    name = "multi_head_attention"
    expects = (
        "cls(d_model, n_heads): an nn.Module with nn.Linear q_proj, k_proj, v_proj, o_proj (bias=False) and "
        "forward(x [B, T, d_model], mask=None) -> [B, T, d_model]"
    )
    args = ("x", "mask")
    mutants = wrong.MULTI_HEAD_ATTENTION

    def build_cases(self, gen, hidden):
        rows = [(2, 5, 12, 3, None), (1, 7, 15, 5, "causal"), (2, 6, 12, 4, "random")]
        rows += [(1, 13, 10, 2, "random"), (3, 1, 12, 6, None), (2, 9, 14, 7, "causal")] if hidden else []
        cases = []
        for B, T, d, H, kind in rows:
            mask = {None: None, "causal": causal_mask(T), "random": random_mask(gen, T, T)}[kind]
            w = {n: randn(gen, d, d, scale=d**-0.5) for n in ("w_q", "w_k", "w_v", "w_o")}
            lab = label(B=B, T=T, d_model=d, n_heads=H, mask=kind)
            cases.append(dict(x=randn(gen, B, T, d), d_model=d, n_heads=H, mask=mask, label=lab, **w))
        return cases

    def call(self, fn, case):
        if not isinstance(fn, type):
            raise TypeError(f"pass your class itself (e.g. MyMultiHeadAttention), not {type(fn).__name__}")
        module = fn(case["d_model"], case["n_heads"])
        with torch.no_grad():
            for proj, w in (("q_proj", "w_q"), ("k_proj", "w_k"), ("v_proj", "w_v"), ("o_proj", "w_o")):
                layer = getattr(module, proj, None)
                if not isinstance(layer, nn.Linear):
                    raise AttributeError(
                        f"your module needs an nn.Linear attribute {proj!r} (q_proj, k_proj, v_proj, o_proj), "
                        f"got {type(layer).__name__}"
                    )
                if layer.weight.shape != case[w].shape:
                    raise ValueError(f"{proj}.weight has shape {tuple(layer.weight.shape)}, "
                                     f"expected {tuple(case[w].shape)} (d_model x d_model)")  # fmt: skip
                if layer.bias is not None:
                    raise ValueError(f"{proj} has a bias: build it with nn.Linear(d_model, d_model, bias=False)")
                layer.weight.copy_(case[w])
            x = case["x"].clone()
            out = module(x) if case["mask"] is None else module(x, mask=case["mask"].clone())
        return plain(out)

    def reference(self, case):
        d, H = case["d_model"], case["n_heads"]
        ref = nn.MultiheadAttention(d, H, bias=False, batch_first=True)
        with torch.no_grad():
            ref.in_proj_weight.copy_(torch.cat([case["w_q"], case["w_k"], case["w_v"]]))  # (3d, d)
            ref.out_proj.weight.copy_(case["w_o"])
            x, mask = case["x"], case["mask"]
            # nn.MultiheadAttention's bool attn_mask means "blocked": the opposite of the course's
            return ref(x, x, x, attn_mask=None if mask is None else ~mask, need_weights=False)[0]


@register
class GroupedQueryAttention(ReferenceCheck):
    name = "grouped_query_attention"
    expects = "fn(q [B, H, T, D], k [B, H_kv, T, D], v [B, H_kv, T, D]) -> [B, H, T, D]; query head h uses kv head h // (H / H_kv)"  # noqa: E501
    args = ("q", "k", "v")
    mutants = wrong.GROUPED_QUERY_ATTENTION

    def build_cases(self, gen, hidden):
        rows = [(2, 6, 2, 7, 5), (1, 6, 3, 5, 11), (2, 4, 1, 5, 9)]
        rows += [(1, 8, 4, 13, 3), (2, 3, 3, 6, 7)] if hidden else []
        return [
            dict(q=randn(gen, B, H, T, D), k=randn(gen, B, Hkv, T, D), v=randn(gen, B, Hkv, T, D),
                 label=label(B=B, H=H, H_kv=Hkv, T=T, D=D))
            for B, H, Hkv, T, D in rows
        ]  # fmt: skip

    def reference(self, case):
        q, k, v = case["q"], case["k"], case["v"]
        n_rep = q.shape[1] // k.shape[1]
        return attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep))  # (B, H, T, D)
