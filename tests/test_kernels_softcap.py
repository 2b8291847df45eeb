"""Logit soft-capping in the kernels (``softcap``), checked against ``attn_course.attention(softcap=...)``.

Each scaled score ``s`` becomes ``softcap * tanh(s / softcap)`` before the masks and the softmax, forward
and backward (``kernels/flash_softcap.py``). The inputs are scaled up so that scores reach well past the
cap: every case first checks that the cap changes the answer by far more than the tolerance, so a kernel
that ignored it would fail. Then the output, the logsumexp and the gradients against the float32
reference with the same cap, by the tolerance rule, on awkward shapes, for fixed-length and packed batches,
a decoding step with split keys and packed GQA heads, and with dropout; plus the cap's limits (a huge cap
changes nothing, a tiny one makes every allowed key equally likely) and bad values named.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_autograd import assert_compiled_matches_eager, check_operators_with
from test_kernels_common import (
    allowed_mask,
    assert_matches_by_rule,
    check_changed_scores,
    make_qkv,
    max_err,
    reference,
    reference_lse,
)
from test_kernels_dropout import dropped_attention
from test_kernels_kvcache import check_decoding_step_with, make_cache
from test_kernels_varlen import check_packed_with

from attn_course import attention
from attn_course.kernels import (
    dropout_mask,
    flash_attention,
    flash_attention_kvcache,
    flash_attention_varlen,
    flash_attn_func,
    flash_attn_with_kvcache,
    next_dropout_seed,
    swap_seq_and_heads,
)
from attn_course.mha import repeat_kv

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)
BOOST = 4.0  # q is multiplied by this: scores of std ~4, so a cap of 2 to 5 bites on most of them

# (B, H, H_kv, T_q, T_k, D, causal, window, softcap, dtype)
CASES = [
    (1, 2, 2, 17, 17, 16, True, NONE, 2.0, F32),
    (2, 4, 2, 29, 45, 64, False, NONE, 5.0, F16),
    (1, 4, 1, 45, 29, 64, True, NONE, 3.0, BF16),
    (1, 2, 2, 37, 37, 32, False, (9, 4), 2.5, F32),
    (1, 4, 2, 33, 33, 80, True, (-1, 5), 4.0, BF16),
    (1, 2, 1, 21, 40, 128, True, NONE, 30.0, F16),  # (Gemma 2's attention cap is 50: here most scores pass)
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, cap, dtype = c
    return (f"cap{cap:g}-D{D}-H{H}kv{H_kv}-Tq{T_q}-Tk{T_k}{'-causal' if causal else ''}"
            f"{'' if window == NONE else f'-w{window[0]}_{window[1]}'}-{str(dtype)[6:]}")


def boosted_qkv(B, H, H_kv, T_q, T_k, D, dtype, device="cpu", seed=0):
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, F32, seed=seed)
    return tuple(x.to(device=device, dtype=dtype) for x in (q * BOOST, k, v))


def assert_the_cap_matters(q, k, v, causal, window, cap):
    """The capped reference differs from the uncapped one by far more than any tolerance here."""
    change = max_err(reference(q, k, v, causal, window, softcap=cap), reference(q, k, v, causal, window))
    assert change > 0.05, f"a cap of {cap} changes the output by only {change:.2e}: the test would not see it ignored"


def check_softcap_case(case, device="cpu", variant="auto"):
    B, H, H_kv, T_q, T_k, D, causal, window, cap, dtype = case
    q, k, v = boosted_qkv(B, H, H_kv, T_q, T_k, D, dtype, device)
    if cap < 10:
        assert_the_cap_matters(q, k, v, causal, window, cap)
    check_changed_scores(q, k, v, causal, window, dtype, variant, softcap=cap)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_softcap_matches_attention_with_the_same_cap(case):
    check_softcap_case(case)


@pytest.mark.parametrize("variant", ["tma", "tma+ws"])
def test_softcap_through_tensor_descriptors(variant):
    check_softcap_case(CASES[1], variant=variant)


def test_the_gradient_through_lse_carries_the_caps_derivative():
    """A loss on lse alone: its gradient is the softmax times the cap's derivative ``1 - tanh^2``, which the
    backward kernels apply to ``dS`` whichever output the gradient came through."""
    q, k, v = boosted_qkv(1, 2, 1, 19, 23, 32, F32)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    _, lse = flash_attention(*leaves, causal=True, softcap=2.0, return_lse=True)
    got = torch.autograd.grad(lse.sum(), leaves[:2])
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k)]
    want = torch.autograd.grad(reference_lse(*ref_leaves, causal=True, softcap=2.0).sum(), ref_leaves)
    uncapped = torch.autograd.grad(reference_lse(*ref_leaves, causal=True).sum(), ref_leaves)
    for name, g, w, u in zip(("dq", "dk"), got, want, uncapped, strict=True):
        assert max_err(w, u) > 0.05, f"{name}: the cap should change lse's gradient"
        assert max_err(g, w) < 2e-5, f"{name} through lse: max error {max_err(g, w):.2e}"


def test_a_huge_cap_changes_nothing_and_a_tiny_one_makes_keys_equally_likely():
    """``c tanh(s / c) -> s`` as ``c`` grows, and ``-> 0`` for every score as ``c -> 0``: the output is then
    the plain mean of the allowed values, whatever the queries."""
    q, k, v = boosted_qkv(1, 2, 2, 23, 23, 64, F32)
    plain = flash_attention(q, k, v, causal=True)
    assert max_err(flash_attention(q, k, v, causal=True, softcap=1e5), plain) < 2e-5
    allowed = allowed_mask(23, 23, True, NONE).float()  # (T_q, T_k)
    mean = (allowed / allowed.sum(-1, keepdim=True)) @ v  # (B, H, T_q, D): each row's allowed values, averaged
    assert max_err(flash_attention(q, k, v, causal=True, softcap=1e-6), mean) < 2e-5  # (scores within +-1e-6)


def check_softcap_varlen(device="cpu", variant="auto"):
    """Packed sequences with a cap of 3 (see ``check_packed_with``)."""
    check_packed_with(device, variant, dict(softcap=3.0), lambda b, n_q, n_k: dict(softcap=3.0), q_scale=BOOST)


@pytest.mark.parametrize("variant", ["auto", "tma"])
def test_softcap_in_a_packed_batch(variant):
    check_softcap_varlen(variant=variant)


def check_softcap_cache(num_splits, device="cpu", variant="auto", dtype=BF16):
    """A decoding step with a cap of 2 (see ``check_decoding_step_with``)."""
    check_decoding_step_with(num_splits, device, variant, dtype, dict(softcap=2.0), lambda b, n: dict(softcap=2.0),
                             q_scale=BOOST)


@pytest.mark.parametrize("num_splits,variant", [(1, "auto"), (3, "auto"), (3, "tma")])
def test_softcap_in_a_decoding_step(num_splits, variant):
    check_softcap_cache(num_splits, variant=variant)


def check_softcap_with_dropout(device="cpu"):
    """Dropout on top of the cap: the kernels' output and gradients equal those of attention with capped scores
    and the call's own mask (``dropout_mask``, from the seed it drew)."""
    B, H, H_kv, T_q, T_k, D, p, cap = 1, 4, 2, 29, 37, 32, 0.2, 2.0
    q, k, v = boosted_qkv(B, H, H_kv, T_q, T_k, D, F32, device)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device)
    seed = next_dropout_seed(device)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = flash_attention(*leaves, causal=True, dropout_p=p, softcap=cap)
    got = torch.autograd.grad(out, leaves, dout)
    keep = dropout_mask(seed, B, H, T_q, T_k, p)  # (B, H, T_q, T_k)

    def capped_dropped(q, k, v):  # (the reference's scores, capped, then dropout_attention's mask and scale)
        G = H // H_kv
        s = attention(q, repeat_kv(k, G), repeat_kv(v, G), allowed_mask(T_q, T_k, True, NONE, q.device),
                      softcap=cap, return_weights=True)[1]  # (B, H, T_q, T_k) capped probabilities
        return (s * keep / (1 - p)) @ repeat_kv(v, G)

    assert max_err(capped_dropped(q, k, v), dropped_attention(q, k, v, keep, p, causal=True)) > 0.05
    assert_matches_by_rule("", out, got, (q, k, v), dout, capped_dropped, capped_dropped, F32)


def test_softcap_with_dropout():
    check_softcap_with_dropout()


def test_flash_attn_func_takes_softcap_by_name_and_none_means_off():
    """flash-attn's layout and keyword; ``softcap=None`` is no cap, as ``0.0``."""
    q, k, v = (swap_seq_and_heads(x) for x in boosted_qkv(2, 4, 2, 19, 19, 64, F32))  # (B, T, H, D)
    out = flash_attn_func(q, k, v, causal=True, softcap=3.0)
    want = swap_seq_and_heads(reference(*(swap_seq_and_heads(x) for x in (q, k, v)), True, softcap=3.0))
    assert out.shape == q.shape and max_err(out, want) < 2e-5
    assert torch.equal(flash_attn_func(q, k, v, causal=True, softcap=None), flash_attn_func(q, k, v, causal=True))


def test_flash_attn_with_kvcache_takes_softcap():
    B, H, H_kv, T_cache, D = 2, 4, 2, 40, 32
    k_cache, v_cache = (swap_seq_and_heads(x).contiguous() for x in make_cache(B, H_kv, T_cache, D, [T_cache] * 2,
                                                                               F32))  # (B, T_cache, H_kv, D)
    q = swap_seq_and_heads(boosted_qkv(B, H, H_kv, 1, 1, D, F32, seed=3)[0])  # (B, 1, H, D)
    out = flash_attn_with_kvcache(q, k_cache, v_cache, causal=True, softcap=2.0)
    want = reference(*(swap_seq_and_heads(x) for x in (q, k_cache, v_cache)), True, softcap=2.0)
    assert max_err(out, swap_seq_and_heads(want)) < 2e-5


@pytest.mark.parametrize("bad,error,match", [
    (-1.0, ValueError, r"softcap must be a finite number >= 0 .*got -1\.0"),
    (float("nan"), ValueError, r"softcap must be a finite number >= 0"),
    (float("inf"), ValueError, r"softcap must be a finite number >= 0"),
    ("50", TypeError, r"softcap must be a number \(0\.0 for no cap\), got str '50'"),
    (True, TypeError, r"softcap must be a number"),
])
def test_a_bad_softcap_is_named(bad, error, match):
    q, k, v = make_qkv(1, 2, 2, 5, 5, 16, F32)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    calls = [lambda: flash_attention(q, k, v, softcap=bad), lambda: attention(q, k, v, softcap=bad),
             lambda: flash_attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), cu, cu,
                                            5, 5, softcap=bad),
             lambda: flash_attention_kvcache(q, k, v, softcap=bad)]
    for call in calls:
        with torch.no_grad(), pytest.raises(error, match=match):
            call()


def test_the_operators_with_softcap_pass_opcheck():
    check_operators_with(*make_qkv(1, 2, 1, 17, 23, 16, F16), softcap=2.0)


def test_softcap_under_torch_compile_matches_eager():
    def model(q, k, v):
        return flash_attention(q, k, v, causal=True, softcap=2.0).square().sum()

    assert_compiled_matches_eager(model, *boosted_qkv(1, 4, 2, 21, 27, 32, F32, seed=2))
