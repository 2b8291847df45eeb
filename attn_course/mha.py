"""Multi-head attention from four ``nn.Linear`` layers and the reference :func:`attention`.

    split:   [B, T, d_model] --q_proj--> [B, T, H, d_head] --transpose--> [B, H, T, d_head]
    attend:  attention per head, in parallel
    merge:   [B, H, T, d_head] --transpose--> [B, T, H, d_head] --reshape--> [B, T, d_model] --o_proj-->

Grouped-query attention (GQA) gives the keys and values fewer heads, ``n_kv_heads``, each shared by
``n_heads / n_kv_heads`` query heads; ``n_kv_heads=1`` is multi-query attention (MQA). The KV cache
shrinks by the same factor.
"""

from __future__ import annotations

import torch
from torch import nn

from ._validate import check_positive_int, require_float
from .attention import attention


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[B, T, n_heads * d_head] -> [B, n_heads, T, d_head]``.

    The transpose matters: ``x.view(B, n_heads, T, d_head)`` has the right shape but mixes tokens and
    heads together (the classic ``view`` bug).
    """
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads).transpose(1, 2)  # (B, H, T, d_head)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, d_head] -> [B, T, H * d_head]``, the inverse of :func:`split_heads`."""
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)  # (B, T, d_model)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[B, H_kv, T, d] -> [B, H_kv * n_rep, T, d]``: query head ``h`` uses kv head ``h // n_rep``
    (the grouping of ``F.scaled_dot_product_attention(..., enable_gqa=True)``)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with optional grouped-query (GQA) or multi-query (MQA) keys and values.

    Args:
        d_model: model width; must be divisible by ``n_heads``.
        n_heads: number of query heads ``H``; each has ``d_head = d_model // n_heads`` dims.
        n_kv_heads: number of key/value heads (default ``n_heads``: plain MHA); must divide ``n_heads``.
        bias: give the four projections a bias.

    With ``n_kv_heads=None`` and ``bias=False`` it has exactly ``4 * d_model**2`` parameters.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False):
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(n_heads, "n_heads")
        n_kv_heads = n_heads if n_kv_heads is None else check_positive_int(n_kv_heads, "n_kv_heads")
        if d_model % n_heads:
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}: each head needs "
                f"d_model / n_heads dims (try n_heads in {_divisors(d_model)})"
            )
        if n_heads % n_kv_heads:
            raise ValueError(
                f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}: in GQA every kv head is "
                f"shared by the same number of query heads"
            )
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.d_head = d_model // n_heads
        d_kv = n_kv_heads * self.d_head
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_kv, bias=bias)
        self.v_proj = nn.Linear(d_model, d_kv, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Map ``x [B, T, d_model]`` to ``[B, T, d_model]``.

        ``context [B, S, d_model]`` (cross-attention) supplies the keys and values; by default they come
        from ``x`` (self-attention). ``mask`` broadcasts to ``[B, H, T, S]`` (True = may attend).
        """
        context = x if context is None else context
        for t, name in ((x, "x"), (context, "context")):
            require_float(t, name)
            if t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must be [B, T, d_model={self.d_model}], got shape {tuple(t.shape)}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"x {tuple(x.shape)} and context {tuple(context.shape)} have different batch sizes")

        q = split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, d_head)
        k = split_heads(self.k_proj(context), self.n_kv_heads)  # (B, H_kv, S, d_head)
        v = split_heads(self.v_proj(context), self.n_kv_heads)  # (B, H_kv, S, d_head)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, d_head)
        y = attention(q, k, v, mask=mask, causal=causal)  # (B, H, T, d_head)
        return self.o_proj(merge_heads(y))  # (B, T, d_model)

    @torch.no_grad()
    def load_from_torch(self, ref: nn.MultiheadAttention) -> MultiHeadAttention:
        """Copy the weights of a ``torch.nn.MultiheadAttention`` (same ``d_model`` and heads, MHA only)."""
        if self.n_kv_heads != self.n_heads:
            raise ValueError("nn.MultiheadAttention has no GQA: only an MHA module can load its weights")
        if ref.embed_dim != self.d_model or ref.num_heads != self.n_heads:
            raise ValueError(
                f"shape mismatch: this module has d_model={self.d_model}, n_heads={self.n_heads}; "
                f"the torch module has embed_dim={ref.embed_dim}, num_heads={ref.num_heads}"
            )
        wq, wk, wv = ref.in_proj_weight.chunk(3, dim=0)  # each (d_model, d_model)
        for lin, w in ((self.q_proj, wq), (self.k_proj, wk), (self.v_proj, wv), (self.o_proj, ref.out_proj.weight)):
            lin.weight.copy_(w)
        if self.q_proj.bias is not None and ref.in_proj_bias is not None:
            bq, bk, bv = ref.in_proj_bias.chunk(3)
            for lin, b in ((self.q_proj, bq), (self.k_proj, bk), (self.v_proj, bv), (self.o_proj, ref.out_proj.bias)):
                lin.bias.copy_(b)
        return self


def _divisors(n: int) -> list[int]:
    return [h for h in range(1, min(n, 64) + 1) if n % h == 0]
