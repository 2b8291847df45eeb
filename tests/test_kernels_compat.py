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
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
    swap_seq_and_heads,
)

# flash-attn 2.6+'s parameter lists (flash_attn/flash_attn_interface.py), written out by hand
FLASH_ATTN_FUNC = ["q", "k", "v", "dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
                   "deterministic", "return_attn_probs"]
FLASH_ATTN_VARLEN_FUNC = ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "dropout_p",
                          "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
                          "return_attn_probs", "block_table"]

_OPTIONS = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes", "deterministic",
            "return_attn_probs"]
FLASH_ATTN_QKVPACKED_FUNC = ["qkv", *_OPTIONS]
FLASH_ATTN_KVPACKED_FUNC = ["q", "kv", *_OPTIONS]
FLASH_ATTN_VARLEN_QKVPACKED_FUNC = ["qkv", "cu_seqlens", "max_seqlen", *_OPTIONS]
FLASH_ATTN_VARLEN_KVPACKED_FUNC = ["q", "kv", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k",
                                   *_OPTIONS]
FLASH_ATTN_WITH_KVCACHE = ["q", "k_cache", "v_cache", "k", "v", "rotary_cos", "rotary_sin", "cache_seqlens",
                           "cache_batch_idx", "cache_leftpad", "block_table", "softmax_scale", "causal", "window_size",
                           "softcap", "rotary_interleaved", "alibi_slopes", "num_splits", "return_softmax_lse"]
SIGNATURES = {
    flash_attn_func: FLASH_ATTN_FUNC,
    flash_attn_varlen_func: FLASH_ATTN_VARLEN_FUNC,
    flash_attn_qkvpacked_func: FLASH_ATTN_QKVPACKED_FUNC,
    flash_attn_kvpacked_func: FLASH_ATTN_KVPACKED_FUNC,
    flash_attn_varlen_qkvpacked_func: FLASH_ATTN_VARLEN_QKVPACKED_FUNC,
    flash_attn_varlen_kvpacked_func: FLASH_ATTN_VARLEN_KVPACKED_FUNC,
    flash_attn_with_kvcache: FLASH_ATTN_WITH_KVCACHE,
}


@pytest.mark.parametrize("fn,names", SIGNATURES.items(), ids=[fn.__name__ for fn in SIGNATURES])
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
    (dict(dropout_p=1.5), "dropout_p must be a probability"),
    (dict(softcap=-30.0), "softcap must be a finite number >= 0"),
    (dict(alibi_slopes=torch.ones(3)), r"alibi_slopes must be \[H\] or \[B, H\] = \[2\] or \[1, 2\]"),
])
def test_what_the_kernels_lack_is_refused_by_name(kwargs, match):
    q, k, v = bthd(1, 2, 2, 5, 5, 16)
    with pytest.raises(ValueError, match=match):
        flash_attn_func(q, k, v, **kwargs)


def test_a_block_table_with_packed_keys_is_named():
    """flash_attn_varlen_func takes a block_table (tests/test_kernels_paged.py); with packed [total_k, H_kv, D]
    keys instead of a pool of pages it says what it wants."""
    q, cu_q = packed(LENS_Q, 2, 16, torch.float32, 0)
    k, cu_k = packed(LENS_K, 2, 16, torch.float32, 1)
    with pytest.raises(ValueError, match=r"k must be a 4-D tensor \[B, T, H, D\]"), torch.no_grad():
        flash_attn_varlen_func(q, k, k, cu_q, cu_k, max(LENS_Q), max(LENS_K), block_table=torch.zeros(3, 1))



def test_qkvpacked_forms_match_the_separate_inputs_gradients_included():
    """A fused projection's ``qkv [B, T, 3, H, D]``: same output as q, k, v given apart (which are views of
    it, read through their strides), and ``dqkv`` is dq, dk, dv stacked in the packed layout."""
    qkv = torch.randn(2, 33, 3, 4, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out, lse, _ = flash_attn_qkvpacked_func(qkv, 0.0, None, True, (8, -1), return_attn_probs=True)
    q, k, v = (qkv.detach()[:, :, i].clone().requires_grad_(True) for i in range(3))  # (B, T, H, D) each
    want, want_lse, _ = flash_attn_func(q, k, v, causal=True, window_size=(8, -1), return_attn_probs=True)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    assert torch.equal(dqkv, torch.stack(torch.autograd.grad(want, (q, k, v), dout), dim=2))


def test_kvpacked_forms_with_grouped_heads_match_the_separate_inputs():
    q, k, v = bthd(2, 4, 2, 17, 29, 32)  # (B, T, H, D); 2 key/value heads for 4 query heads
    kv = torch.stack((k, v), dim=2).requires_grad_(True)  # (B, T_k, 2, H_kv, D)
    out = flash_attn_kvpacked_func(q, kv, softmax_scale=0.2, causal=True)
    leaves = [k.clone().requires_grad_(True), v.clone().requires_grad_(True)]
    want = flash_attn_func(q, *leaves, softmax_scale=0.2, causal=True)
    assert torch.equal(out, want)
    (dkv,) = torch.autograd.grad(out.square().sum(), kv)
    assert torch.equal(dkv, torch.stack(torch.autograd.grad(want.square().sum(), leaves), dim=2))


def test_varlen_packed_forms_match_flash_attention_varlen():
    qkv, cu = packed(LENS_Q, 12, 32, torch.float32, 0)  # (total, 3 * 4, D) viewed as (total, 3, 4, D)
    qkv = qkv.view(-1, 3, 4, 32)
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, max(LENS_Q), causal=True)
    want = flash_attention_varlen(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu, cu, max(LENS_Q), max(LENS_Q), causal=True)
    assert torch.equal(out, want)
    q, cu_q = packed(LENS_Q, 4, 32, torch.float32, 1)
    kv, cu_k = packed(LENS_K, 4, 32, torch.float32, 2)  # (total_k, 2 * 2, D) viewed as (total_k, 2, 2, D)
    kv = kv.view(-1, 2, 2, 32)
    out, lse, _ = flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, max(LENS_Q), max(LENS_K), 0.0, 0.3,
                                                  return_attn_probs=True)
    want, want_lse = flash_attention_varlen(q, kv[:, 0], kv[:, 1], cu_q, cu_k, max(LENS_Q), max(LENS_K), scale=0.3,
                                            return_lse=True)
    assert torch.equal(out, want) and torch.equal(lse, want_lse)


def test_a_static_shape_qkv_buffer_with_a_padding_tail():
    """flash-attn issue #1228's use: one packed qkv buffer of fixed size, the sequences filling only its
    start. The rows used get what they get without the tail, bit for bit; the tail's output and gradient are
    zeros (NaN in the tail, so a read of it would show)."""
    qkv, cu = packed(LENS_Q, 12, 16, torch.float32, 3)
    qkv = qkv.view(-1, 3, 4, 16)  # (total, 3, H, D)
    padded = torch.cat([qkv, torch.full((6, 3, 4, 16), float("nan"))])  # (total + 6, 3, H, D)
    dout = torch.randn(padded.shape[0], 4, 16, generator=torch.Generator().manual_seed(4))  # (total + 6, H, D)

    def run(x):
        x = x.clone().requires_grad_(True)
        out = flash_attn_varlen_qkvpacked_func(x, cu, max(LENS_Q), causal=True)
        return out, *torch.autograd.grad(out, x, dout[:x.shape[0]])

    (out, dqkv), (want, want_dqkv), n = run(padded), run(qkv), qkv.shape[0]
    assert torch.equal(out[:n], want) and torch.equal(dqkv[:n], want_dqkv)
    assert not out[n:].abs().sum() and not dqkv[n:].abs().sum(), "the padding tail is not zero"


@pytest.mark.parametrize("call,match", [
    (lambda: flash_attn_qkvpacked_func(torch.randn(1, 5, 2, 4, 16)),
     r"qkv must be \[B, T, 3, H, D\].*\(1, 5, 2, 4, 16\)"),
    (lambda: flash_attn_kvpacked_func(torch.randn(1, 5, 4, 16), torch.randn(1, 5, 4, 16)),
     r"kv must be \[B, T_k, 2, H_kv, D\]"),
    (lambda: flash_attn_varlen_qkvpacked_func(torch.randn(5, 3, 4, 16, 1), [0, 5], 5),
     r"qkv must be \[total, 3, H, D\]"),
    (lambda: flash_attn_qkvpacked_func(torch.randn(1, 5, 3, 4, 16), dropout_p=-0.5),
     r"dropout_p must be a probability in \[0, 1\], got -0.5"),
])
def test_a_badly_packed_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call,match", [
    (lambda: flash_attn_varlen_kvpacked_func(torch.randn(5, 4, 16), "kv", [0, 5], [0, 5], 5, 5),
     r"kv must be a torch.Tensor \[total_k, 2, H_kv, D\], got str"),
    (lambda: flash_attn_func(torch.randn(1, 5, 4, 16), [[1.0]], torch.randn(1, 5, 4, 16)),
     r"k must be a 4-D torch.Tensor \[B, T, H, D\], got list"),
    (lambda: flash_attn_with_kvcache(torch.randn(1, 1, 4, 16), torch.randn(1, 8, 4, 16), None),
     r"v_cache must be a 4-D torch.Tensor \[B, T, H, D\], got NoneType"),
])
def test_a_non_tensor_is_a_type_error_that_names_it(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_a_tensor_of_the_wrong_rank_is_named():
    with pytest.raises(ValueError, match=r"v must be a 4-D tensor \[B, T, H, D\].*got shape \(5, 4, 16\)"):
        flash_attn_func(torch.randn(1, 5, 4, 16), torch.randn(1, 5, 4, 16), torch.randn(5, 4, 16))
