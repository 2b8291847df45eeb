"""flash-attn's signatures: code written for flash-attn runs unchanged, and gets the same answers as our own
functions (checked against the reference elsewhere); what the kernels lack is refused, never ignored."""

from __future__ import annotations

import inspect

import pytest
import torch
from test_kernels_common import make_qkv, max_err, reference
from test_kernels_varlen import LENS_K, LENS_Q, packed

from attn_course.kernels import (
    flash_attention,
    flash_attention_varlen,
    flash_attn_func,
    flash_attn_varlen_func,
    swap_seq_and_heads,
)

# flash-attn 2.6+'s parameter lists (flash_attn/flash_attn_interface.py), written out by hand
FLASH_ATTN_FUNC = ["q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
                   "deterministic", "return_attn_probs"]
FLASH_ATTN_VARLEN_FUNC = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
                          "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
                          "return_attn_probs", "block_table"]


@pytest.mark.parametrize("fn,names", [(flash_attn_func, FLASH_ATTN_FUNC),
                                      (flash_attn_varlen_func, FLASH_ATTN_VARLEN_FUNC)],
                         ids=["flash_attn_func", "flash_attn_varlen_func"])
def test_parameters_in_flash_attns_order(fn, names):
    """Positional calls depend on the order: a missing dropout_p would make a 0.0 the softmax scale."""
    params = inspect.signature(fn).parameters
    assert list(params) == names
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params.values())


def bthd(B, H, H_kv, T_q, T_k, D, seed=0):
    """q, k, v in flash-attn's layout [B, T, H, D]."""
    return tuple(swap_seq_and_heads(x).contiguous() for x in make_qkv(B, H, H_kv, T_q, T_k, D, torch.float32,
                                                                       seed=seed))


def test_a_models_positional_eval_call_runs_with_the_default_scale():
    """``flash_attn_func(q, k, v, 0.0, None, True)``: dropout 0 at evaluation, default scale, causal."""
    q, k, v = bthd(2, 4, 2, 33, 33, 32)
    out = flash_attn_func(q, k, v, 0.0, None, True)  # (B, T, H, D)
    want = reference(*(swap_seq_and_heads(x) for x in (q, k, v)), causal=True)  # (B, H, T, D)
    assert out.shape == q.shape
    assert max_err(swap_seq_and_heads(out), want) < 2e-5
    torch.testing.assert_close(flash_attn_func(q, k, v, 0.0, causal=True, deterministic=True), out, atol=0, rtol=0)


def test_return_attn_probs_gives_out_lse_and_none_like_flash_attn_without_dropout():
    q, k, v = bthd(1, 2, 1, 17, 23, 16)
    out, lse, probs = flash_attn_func(q, k, v, softmax_scale=0.3, window_size=(5, 2), return_attn_probs=True)
    ours, our_lse = flash_attention(*(swap_seq_and_heads(x) for x in (q, k, v)), scale=0.3, window=(5, 2),
                                    return_lse=True)
    assert probs is None
    assert lse.shape == (1, 2, 17)  # softmax_lse (B, H, T_q), as flash-attn returns it
    assert torch.equal(out, swap_seq_and_heads(ours)) and torch.equal(lse, our_lse)


def test_varlen_func_matches_flash_attention_varlen():
    q, cu_q = packed(LENS_Q, 4, 32, torch.float32, 0)
    k, cu_k = packed(LENS_K, 2, 32, torch.float32, 1)
    v, _ = packed(LENS_K, 2, 32, torch.float32, 2)
    args = (q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))
    out, lse, probs = flash_attn_varlen_func(*args, 0.0, 0.2, True, (9, -1), return_attn_probs=True)
    want, want_lse = flash_attention_varlen(*args, causal=True, scale=0.2, window=(9, -1), return_lse=True)
    assert probs is None and lse.shape == (4, q.shape[0])
    assert torch.equal(out, want) and torch.equal(lse, want_lse)


def test_gradients_flow_through_the_flash_attn_layout():
    q, k, v = (x.requires_grad_(True) for x in bthd(1, 2, 2, 17, 17, 16))
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    got = torch.autograd.grad(out.square().sum() + lse.sum(), (q, k, v))
    leaves = [swap_seq_and_heads(x.detach()).requires_grad_(True) for x in (q, k, v)]  # (B, H, T, D)
    ours, our_lse = flash_attention(*leaves, causal=True, return_lse=True)
    want = torch.autograd.grad(ours.square().sum() + our_lse.sum(), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, swap_seq_and_heads(w), atol=0, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dropout_p=0.1), "dropout_p=0.1: attention dropout is not implemented"),
    (dict(dropout_p=1.5), "dropout_p must be a probability"),
    (dict(dropout_p=True), "dropout_p must be a probability"),
    (dict(softcap=30.0), "softcap=30.0: logit soft-capping is not implemented"),
    (dict(alibi_slopes=torch.ones(2)), "alibi_slopes: ALiBi position biases are not implemented"),
])
def test_what_the_kernels_lack_is_refused_by_name(kwargs, match):
    q, k, v = bthd(1, 2, 2, 5, 5, 16)
    with pytest.raises(ValueError, match=match):
        flash_attn_func(q, k, v, **kwargs)


def test_a_paged_kv_cache_is_refused_by_name():
    q, cu_q = packed(LENS_Q, 2, 16, torch.float32, 0)
    k, cu_k = packed(LENS_K, 2, 16, torch.float32, 1)
    with pytest.raises(ValueError, match="block_table: paged key/value caches are not implemented"):
        flash_attn_varlen_func(q, k, k, cu_q, cu_k, max(LENS_Q), max(LENS_K), block_table=torch.zeros(3, 1))
