"""Correct implementations, written in several different ways, pass every checker (visible and hidden cases).

None of these call the checker's own reference: they are what different learners might write (einsum vs
matmul, loops vs vectorised, PyTorch's fused attention, numpy), so a checker that passes them all is not
merely checking that the learner copied one particular formulation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attn_course
from attn_course import check

# --- chapter 1 -------------------------------------------------------------------------------------------


def hard_lookup_argmax(query, keys, values):
    return values[torch.argmax(keys @ query)]


def hard_lookup_loop(query, keys, values):
    best = max(range(len(keys)), key=lambda i: float(torch.dot(keys[i], query)))
    return values[best]


def hard_lookup_one_hot(query, keys, values):
    return F.one_hot((keys @ query).argmax(), len(keys)).to(values.dtype) @ values


def soft_lookup_softmax(query, keys, values):
    return torch.softmax(keys @ query, dim=-1) @ values


def soft_lookup_einsum(query, keys, values):
    s = torch.einsum("nd,d->n", keys, query)
    w = torch.exp(s - s.max())
    return torch.einsum("n,nv->v", w / w.sum(), values)


def soft_lookup_loop(query, keys, values):
    scores = [math.exp(float(k @ query)) for k in keys]
    total = sum(scores)
    return sum((s / total) * v for s, v in zip(scores, values, strict=True))


def temperature_softmax(x, temperature):
    return torch.softmax(x / temperature, dim=-1)


def temperature_by_hand(x, temperature):
    z = x / temperature
    e = torch.exp(z - z.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def temperature_log_softmax(x, temperature):
    return F.log_softmax(x / temperature, dim=-1).exp()


# --- chapter 2 -------------------------------------------------------------------------------------------


def qkv_matmul(x, w_q, w_k, w_v):
    return x @ w_q.T, x @ w_k.T, x @ w_v.T


def qkv_linear(x, w_q, w_k, w_v):
    return tuple(F.linear(x, w) for w in (w_q, w_k, w_v))


def qkv_einsum(x, w_q, w_k, w_v):
    return [torch.einsum("btd,od->bto", x, w) for w in (w_q, w_k, w_v)]


def split_view_transpose(x, n_heads):
    B, T, d = x.shape
    return x.view(B, T, n_heads, d // n_heads).transpose(1, 2)


def split_chunks(x, n_heads):
    return torch.stack(x.chunk(n_heads, dim=-1), dim=1)


def split_permute(x, n_heads):
    B, T, d = x.shape
    return x.reshape(B, T, n_heads, -1).permute(0, 2, 1, 3).contiguous()


def merge_transpose(x):
    B, H, T, dh = x.shape
    return x.transpose(1, 2).reshape(B, T, H * dh)


def merge_cat(x):
    return torch.cat(x.unbind(dim=1), dim=-1)


def merge_permute_view(x):
    B, H, T, dh = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(B, T, -1)


# --- chapters 3 and 4 --------------------------------------------------------------------------------------


def sdpa_pytorch(q, k, v, mask=None):
    """PyTorch's fused attention, plus the course's convention for rows with no allowed key."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if mask is not None:
        alive = mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
        out = torch.where(alive, out, torch.zeros(()))
    return out


def weights_einsum(q, k, mask=None):
    s = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isinf(m), 0.0, m))
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(total == 0, 1.0, total)


def sdpa_einsum(q, k, v, mask=None):
    return torch.einsum("...qk,...kd->...qd", weights_einsum(q, k, mask), v)


def weights_loops(q, k, mask=None):
    """One query row at a time, the maths written out."""
    *lead, T_q, d = q.shape
    T_k = k.shape[-2]
    if mask is not None:
        mask = mask.expand(*lead, T_q, T_k)
    out = torch.zeros(*lead, T_q, T_k)
    for idx in np.ndindex(*lead):
        for i in range(T_q):
            scores = [float(q[idx][i] @ k[idx][j]) / math.sqrt(d) for j in range(T_k)]
            allowed = [True] * T_k if mask is None else mask[idx][i].tolist()
            if not any(allowed):
                continue
            top = max(s for s, a in zip(scores, allowed, strict=True) if a)
            e = [math.exp(s - top) if a else 0.0 for s, a in zip(scores, allowed, strict=True)]
            out[idx][i] = torch.tensor(e) / sum(e)
    return out


def sdpa_loops(q, k, v, mask=None):
    return weights_loops(q, k, mask) @ v


def sdpa_additive(q, k, v, mask=None):
    """An additive float mask built from the bool one, and the dead rows fixed after the softmax."""
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s + torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return w @ v


def variance_torch(d_k, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(n_samples, d_k, generator=g), torch.randn(n_samples, d_k, generator=g)
    return (q * k).sum(-1).var().item()


def variance_numpy(d_k, n_samples, seed):
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((n_samples, d_k)), rng.standard_normal((n_samples, d_k))
    return float(np.einsum("nd,nd->n", q, k).var())


def variance_mean_square(d_k, n_samples, seed):
    g = torch.Generator().manual_seed(seed + 1)
    q, k = torch.randn(n_samples, 1, d_k, generator=g), torch.randn(n_samples, d_k, 1, generator=g)
    dots = torch.bmm(q, k).flatten()  # (n_samples,) one dot product per batched 1x1 matmul
    return float((dots**2).mean())  # E[q.k] = 0, so Var = E[(q.k)^2]


def causal_tril(T_q, T_k):
    return torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=T_k - T_q)


def causal_arange(T_q, T_k):
    return torch.arange(T_k)[None, :] <= torch.arange(T_q)[:, None] + (T_k - T_q)


def causal_loops(T_q, T_k):
    return torch.tensor([[j <= i + T_k - T_q for j in range(T_k)] for i in range(T_q)], dtype=torch.bool)


def window_arange(T_q, T_k, window):
    left, right = window
    i = torch.arange(T_q)[:, None] + T_k - T_q
    j = torch.arange(T_k)[None, :]
    ok = torch.ones(T_q, T_k, dtype=torch.bool)
    if left >= 0:
        ok = ok & (j >= i - left)
    if right >= 0:
        ok = ok & (j <= i + right)
    return ok


def window_loops(T_q, T_k, window):
    left, right = window
    lo = (lambda i, j: True) if left < 0 else (lambda i, j: j >= i - left)
    hi = (lambda i, j: True) if right < 0 else (lambda i, j: j <= i + right)
    rows = [[lo(i + T_k - T_q, j) and hi(i + T_k - T_q, j) for j in range(T_k)] for i in range(T_q)]
    return torch.tensor(rows, dtype=torch.bool).reshape(T_q, T_k)


def padding_arange(lengths, T):
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).view(len(lengths), 1, 1, T)


def padding_loops(lengths, T):
    m = torch.zeros(len(lengths), 1, 1, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        m[b, ..., :n] = True
    return m


def prefix_tril(T, prefix_len):
    m = torch.tril(torch.ones(T, T)).bool()
    m[:, :prefix_len] = True
    return m


def prefix_loops(T, prefix_len):
    return torch.tensor([[j <= i or j < prefix_len for j in range(T)] for i in range(T)], dtype=torch.bool).view(T, T)


def varlen_block_diag(cu_seqlens):
    blocks = [torch.ones(b - a, b - a) for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)]
    return torch.block_diag(*blocks).bool()


def varlen_loops(cu_seqlens):
    seq = []
    for s, (a, b) in enumerate(zip(cu_seqlens[:-1], cu_seqlens[1:], strict=True)):
        seq += [s] * (b - a)
    return torch.tensor([[x == y for y in seq] for x in seq], dtype=torch.bool).view(len(seq), len(seq))


# --- chapter 5 -------------------------------------------------------------------------------------------


class MHAFromPackage(attn_course.MultiHeadAttention):
    def forward(self, x, mask=None):
        return super().forward(x, mask=mask)


class MHAWithSDPA(nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.h = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, mask=None):
        B, T, d = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        q, k, v = (p(x).view(B, T, self.h, d // self.h).transpose(1, 2) for p in projections)  # (B, H, T, d_head)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))


class MHAHeadLoop(MHAWithSDPA):
    """Each head on its own, with slices of the projections, then concatenated."""

    def forward(self, x, mask=None):
        d = x.shape[-1]
        dh = d // self.h
        heads = []
        for h in range(self.h):
            sl = slice(h * dh, (h + 1) * dh)
            q, k, v = self.q_proj(x)[..., sl], self.k_proj(x)[..., sl], self.v_proj(x)[..., sl]
            heads.append(sdpa_einsum(q, k, v, mask))
        return self.o_proj(torch.cat(heads, dim=-1))


def gqa_pytorch(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def gqa_repeat_interleave(q, k, v):
    n_rep = q.shape[1] // k.shape[1]
    return sdpa_einsum(q, k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1))


def gqa_grouped_view(q, k, v):
    B, H, T, D = q.shape
    H_kv = k.shape[1]
    qg = q.view(B, H_kv, H // H_kv, T, D)  # (B, H_kv, n_rep, T, D): consecutive query heads share a kv head
    s = qg @ k.unsqueeze(2).transpose(-2, -1) / math.sqrt(D)  # (B, H_kv, n_rep, T, T)
    return (torch.softmax(s, dim=-1) @ v.unsqueeze(2)).view(B, H, T, D)


# --- chapters 5 and 6: counting -----------------------------------------------------------------------------


def kv_formula(batch, seq_len, n_layers, n_kv_heads, d_head, bytes_per_element):
    return 2 * batch * seq_len * n_layers * n_kv_heads * d_head * bytes_per_element


def kv_prod(*args):
    return math.prod(args) * 2


def kv_per_token(batch, seq_len, n_layers, n_kv_heads, d_head, bytes_per_element):
    per_token = n_layers * 2 * n_kv_heads * d_head * bytes_per_element
    return per_token * seq_len * batch


def flops_formula(T, d_model):
    return 2 * (4 * T * d_model**2 + 2 * T**2 * d_model)


def flops_package(T, d_model):
    return attn_course.cost.layer_flops(T, d_model)


def scores_formula(B, H, T, bytes_per_element):
    return B * H * T * T * bytes_per_element


def scores_package(B, H, T, bytes_per_element):
    dtype = {1: torch.float8_e4m3fn, 2: torch.bfloat16, 4: torch.float32}[bytes_per_element]
    return attn_course.cost.scores_bytes(B, H, T, dtype)


# --- chapter 7 -------------------------------------------------------------------------------------------


def online_elementwise(x):
    m = torch.full(x.shape[:-1], float("-inf"))
    l = torch.zeros(x.shape[:-1])
    for j in range(x.shape[-1]):
        m_new = torch.maximum(m, x[..., j])
        safe = torch.where(torch.isinf(m_new), 0.0, m_new)
        l = l * torch.exp(m - safe) + torch.exp(x[..., j] - safe)
        m = m_new
    return torch.exp(x - m.unsqueeze(-1)) / l.unsqueeze(-1)


def online_blocks_of_4(x):
    return attn_course.online_softmax(x, block=4)


def tiled_package(q, k, v, causal, block_q, block_k):
    return attn_course.flash_attention_reference(q, k, v, causal=causal, block_q=block_q, block_k=block_k)


def tiled_by_rows(q, k, v, causal, block_q, block_k):
    """Not tiled at all: the full scores and torch.logsumexp (the checker cannot tell, and need not)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(~causal_arange(q.shape[-2], k.shape[-2]), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
    return p @ v, lse


CORRECT = {
    "hard_lookup": [hard_lookup_argmax, hard_lookup_loop, hard_lookup_one_hot],
    "soft_lookup": [soft_lookup_softmax, soft_lookup_einsum, soft_lookup_loop],
    "softmax_temperature": [temperature_softmax, temperature_by_hand, temperature_log_softmax],
    "qkv_projections": [qkv_matmul, qkv_linear, qkv_einsum],
    "split_heads": [split_view_transpose, split_chunks, split_permute],
    "merge_heads": [merge_transpose, merge_cat, merge_permute_view],
    "scaled_dot_product_attention": [sdpa_pytorch, sdpa_einsum, sdpa_loops, sdpa_additive, attn_course.attention],
    "attention_weights": [weights_einsum, weights_loops],
    "dot_product_variance": [variance_torch, variance_numpy, variance_mean_square],
    "causal_mask": [causal_tril, causal_arange, causal_loops],
    "padding_mask": [padding_arange, padding_loops],
    "prefix_lm_mask": [prefix_tril, prefix_loops],
    "varlen_mask": [varlen_block_diag, varlen_loops],
    "sliding_window_mask": [window_arange, window_loops],
    "masked_attention": [sdpa_pytorch, sdpa_einsum, sdpa_additive],
    "multi_head_attention": [MHAFromPackage, MHAWithSDPA, MHAHeadLoop],
    "grouped_query_attention": [gqa_pytorch, gqa_repeat_interleave, gqa_grouped_view],
    "kv_cache_bytes": [kv_formula, kv_prod, kv_per_token],
    "layer_flops": [flops_formula, flops_package],
    "scores_bytes": [scores_formula, scores_package],
    "online_softmax": [online_elementwise, online_blocks_of_4],
    "tiled_forward": [tiled_package, tiled_by_rows],
}


@pytest.mark.parametrize(
    "name, fn", [(name, fn) for name, fns in CORRECT.items() for fn in fns], ids=lambda x: getattr(x, "__name__", x)
)
def test_correct_implementations_pass(name, fn):
    for hidden in (False, True):
        report = check.CHECKS[name](fn, hidden=hidden, seed=3)
        assert report.name == name and report.n_cases >= 2
        assert "passed" in str(report) and "passed" in report._repr_html_()


def test_every_checker_but_the_kernel_has_correct_implementations():
    assert set(CORRECT) == set(check.CHECKS) - {"triton_forward"}


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_correct_implementation_passes_for_any_seed(seed):
    check.scaled_dot_product_attention(sdpa_einsum, seed=seed)
    check.tiled_forward(tiled_by_rows, seed=seed, hidden=True)
