"""Classic mistakes with projections and heads (chapters 2 and 5).

The most famous is the ``view`` bug: ``x.view(B, H, T, d_head)`` has the right shape but cuts the
``[T, d_model]`` block of each batch element into H pieces along *time*, mixing tokens and heads. The right
way splits the last dim first and then moves the head dim forward::

    x [B, T, d_model] --view--> [B, T, H, d_head] --transpose(1, 2)--> [B, H, T, d_head]
"""

from __future__ import annotations

import re

from torch import nn

from ..base import Mutant
from ..protocol import Raised
from .attention import wrong_weights

# --- qkv_projections(x [B, T, d_model], w_q, w_k, w_v) -> (q, k, v) ----------------------------------


def qkv_weight_not_transposed(x, w_q, w_k, w_v):
    return x @ w_q, x @ w_k, x @ w_v  # only runs when w is square


def qkv_same_weight(x, w_q, w_k, w_v):
    q = x @ w_q.T
    return q, q, q  # w_q used for all three


def _weight_not_transposed_error(case: dict, raised: Raised) -> bool:
    m = re.search(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", raised.message)
    shapes = {tuple(case[w].shape) for w in ("w_q", "w_k", "w_v")}
    return bool(m) and (int(m[3]), int(m[4])) in shapes and int(m[2]) == case["x"].shape[-1]


QKV_PROJECTIONS = (
    Mutant(
        "weight_not_transposed",
        "You computed x @ w: a weight shaped like nn.Linear.weight is [d_out, d_in], so the projection is x @ w.T.",
        "use x @ w.T (this is what nn.Linear does); x @ w only runs when w is square, and is wrong then too.",
        qkv_weight_not_transposed,
        _weight_not_transposed_error,
    ),
    Mutant(
        "same_weight_for_all",
        "Your q, k and v are identical: one weight was used for all three projections.",
        "q = x @ w_q.T, k = x @ w_k.T, v = x @ w_v.T.",
        qkv_same_weight,
    ),
)


# --- split_heads(x [B, T, d_model], n_heads) / merge_heads(x [B, H, T, d_head]) -----------------------


def split_view_bug(x, n_heads):
    B, T, d = x.shape
    return x.view(B, n_heads, T, d // n_heads)  # right shape, tokens and heads mixed


def split_no_transpose(x, n_heads):
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads)  # (B, T, H, d_head): the head dim is not moved forward


def split_head_dim_major(x, n_heads):
    B, T, d = x.shape
    return x.view(B, T, d // n_heads, n_heads).permute(0, 3, 1, 2)  # heads interleaved: dims h, h+H, ...


SPLIT_HEADS = (
    Mutant(
        "view_bug",
        "Right shape, wrong contents: x.view(B, H, T, d_head) cuts along time and mixes tokens and heads "
        "(the classic view bug).",
        "x.view(B, T, H, d_head).transpose(1, 2): split the last dim first, then move the head dim forward.",
        split_view_bug,
    ),
    Mutant(
        "missing_transpose",
        "Your output is [B, T, H, d_head]: the split is right but the head dim was not moved before time.",
        "finish with .transpose(1, 2) to get [B, H, T, d_head].",
        split_no_transpose,
    ),
    Mutant(
        "heads_interleaved",
        "Your heads are interleaved: head h got dims h, h+H, h+2H, ... instead of the contiguous block "
        "h*d_head .. (h+1)*d_head - 1.",
        "view the last dim as (H, d_head), in that order: x.view(B, T, H, d_head).",
        split_head_dim_major,
    ),
)


def merge_view_bug(x):
    B, H, T, d_head = x.shape
    return x.reshape(B, T, H * d_head)  # right shape, tokens and heads mixed


def merge_no_reshape(x):
    return x.transpose(1, 2)  # (B, T, H, d_head): still 4-D


def merge_head_dim_major(x):
    B, H, T, d_head = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, d_head * H)  # heads interleaved


MERGE_HEADS = (
    Mutant(
        "view_bug",
        "Right shape, wrong contents: reshaping [B, H, T, d_head] straight to [B, T, d_model] mixes tokens and "
        "heads (the classic view bug).",
        "x.transpose(1, 2).reshape(B, T, H * d_head): bring time next to batch first (reshape, since the "
        "transpose is not contiguous).",
        merge_view_bug,
    ),
    Mutant(
        "missing_reshape",
        "Your output is [B, T, H, d_head]: the heads were not concatenated into d_model.",
        "finish with .reshape(B, T, H * d_head).",
        merge_no_reshape,
    ),
    Mutant(
        "heads_interleaved",
        "Your heads are interleaved in d_model instead of concatenated one after another.",
        "transpose(1, 2) gives [B, T, H, d_head]; reshaping that concatenates the heads.",
        merge_head_dim_major,
    ),
)


# --- multi_head_attention(cls) ------------------------------------------------------------------------


def wrong_mha(*, split: str = "right", merge: str = "right", o_proj: bool = True, scale: str = "1/sqrt(d_k)",
              invert_mask: bool = False) -> type[nn.Module]:
    """A multi-head attention class with the given mistakes (right with the defaults)."""

    class MHA(nn.Module):
        def __init__(self, d_model: int, n_heads: int):
            super().__init__()
            self.n_heads = 1 if split == "one head" else n_heads
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
                nn.Linear(d_model, d_model, bias=False) for _ in range(4)
            )

        def forward(self, x, mask=None):
            B, T, d = x.shape
            H = self.n_heads

            def split_(t):  # (B, T, d) -> (B, H, T, d/H)
                return t.view(B, H, T, d // H) if split == "view bug" else t.view(B, T, H, d // H).transpose(1, 2)

            q, k, v = split_(self.q_proj(x)), split_(self.k_proj(x)), split_(self.v_proj(x))
            y = wrong_weights(q, k, mask, scale=scale, invert_mask=invert_mask) @ v  # (B, H, T, d/H)
            y = y.reshape(B, T, d) if merge == "view bug" else y.transpose(1, 2).reshape(B, T, d)  # (B, T, d)
            return self.o_proj(y) if o_proj else y

    return MHA


MULTI_HEAD_ATTENTION = (
    Mutant(
        "missing_w_o",
        "Your output equals the concatenated heads: the output projection W_O (o_proj) was never applied.",
        "return self.o_proj(merged_heads).",
        wrong_mha(o_proj=False),
    ),
    Mutant(
        "split_view_bug",
        "Your heads are split with x.view(B, H, T, d_head) (the view bug): tokens and heads get mixed.",
        "split with .view(B, T, H, d_head).transpose(1, 2).",
        wrong_mha(split="view bug"),
    ),
    Mutant(
        "merge_view_bug",
        "Your heads are merged with a reshape straight from [B, H, T, d_head] (the view bug): tokens and heads "
        "get mixed.",
        "merge with .transpose(1, 2).reshape(B, T, d_model).",
        wrong_mha(merge="view bug"),
    ),
    Mutant(
        "single_head",
        "Your output equals one big head over all of d_model: the projections were never split into heads.",
        "split q, k, v into [B, H, T, d_head] and attend per head, with scale 1/sqrt(d_head).",
        wrong_mha(split="one head"),
    ),
    Mutant(
        "no_scale",
        "Your scores are sqrt(d_head) times too large: you did not scale them by 1/sqrt(d_head).",
        "scale by 1/sqrt(d_head), the per-head dim, before the softmax.",
        wrong_mha(scale="1"),
    ),
    Mutant(
        "mask_inverted",
        "With a mask, each query attends exactly to the keys it should not see: the mask is inverted.",
        "a bool mask's True means 'may attend' (nn.MultiheadAttention's attn_mask uses the opposite).",
        wrong_mha(invert_mask=True),
    ),
)


# --- grouped_query_attention(q [B, H, T, D], k, v [B, H_kv, T, D]) ------------------------------------


def gqa_tiled(q, k, v):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat(1, n_rep, 1, 1), v.repeat(1, n_rep, 1, 1)  # (B, H, T, D): head h gets kv h % H_kv
    return wrong_weights(q, k) @ v


def gqa_no_scale(q, k, v):
    n_rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)  # (B, H, T, D)
    return wrong_weights(q, k, scale="1") @ v


GROUPED_QUERY_ATTENTION = (
    Mutant(
        "kv_heads_tiled",
        "Query head h used kv head h % H_kv: you tiled the kv heads (.repeat) instead of grouping them.",
        "consecutive query heads share a kv head (head h uses h // (H / H_kv)): k.repeat_interleave(n_rep, dim=1).",
        gqa_tiled,
    ),
    Mutant(
        "no_scale",
        "Your scores are sqrt(D) times too large: you did not scale by 1/sqrt(D).",
        "multiply the scores by 1 / sqrt(q.shape[-1]).",
        gqa_no_scale,
    ),
)
