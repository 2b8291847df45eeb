"""Attention dropout in the kernels (``dropout_p``), checked against attention with the same mask.

The kernels never store the dropout mask: they regenerate each score's keep-or-drop from a seed and the
score's counter (``kernels/flash_dropout.py``). ``dropout_mask`` writes out the mask a call used from the
seed it drew, the next draw of PyTorch's generator, which the tests predict by drawing it themselves in a
forked generator. With that mask the kernels' output and gradients are checked against PyTorch attention
with the same mask applied to its probabilities (the maths computed independently), by the tolerance
rule; the gradients also prove that the backward kernels regenerate the forward's mask. The mask itself
is checked for what dropout promises: a keep rate of ``1 - p``, fresh for every head, sequence and call,
the same again after ``torch.manual_seed``.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_kernels_autograd import assert_compiled_matches_eager, check_checkpointing, check_operators_with
from test_kernels_common import FLOOR, allowed_mask, assert_matches_by_rule, fa2_grads, make_qkv, max_err
from test_kernels_varlen import packed, per_sequence

from attn_course.attention import masked_softmax
from attn_course.kernels import (
    _variants,
    dropout_mask,
    flash_attention,
    flash_attention_varlen,
    flash_attn_func,
    flash_attn_qkvpacked_func,
    next_dropout_seed,
    swap_seq_and_heads,
)
from attn_course.kernels._runtime import kernel_module
from attn_course.mha import repeat_kv

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)


def next_seed(device) -> torch.Tensor:
    """The seed the next call with dropout will draw on ``device`` (the generator left where it was)."""
    return next_dropout_seed(device)


def mask_of(seed, B, H, R, C, p) -> torch.Tensor:
    return dropout_mask(seed, B, H, R, C, p)


def dropped_attention(q, k, v, keep, p, causal=False, window=NONE, dtype=torch.float32, bias=None):
    """Softmax attention computed in ``dtype``, its probabilities multiplied by ``keep / (1 - p)`` before
    ``@ v`` (``keep`` bool ``[B, H, T_q, T_k]``): dropout as PyTorch's ``F.dropout`` would apply it, with a
    given mask. float32 is the reference; the inputs' dtype gives the error budget. ``bias``: added to the
    scores first (ALiBi's)."""
    G = q.shape[1] // k.shape[1]
    q, k, v = q.to(dtype), repeat_kv(k.to(dtype), G), repeat_kv(v.to(dtype), G)
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T_q, T_k)
    if bias is not None:
        s = s + bias.to(dtype)
    s = s.masked_fill(~allowed_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    probs = masked_softmax(s) * keep.to(dtype) * (0.0 if p == 1 else 1 / (1 - p))
    return probs @ v


def leaf_grads(fn, inputs, dout):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dout.to(out.dtype))


# (B, H, H_kv, T_q, T_k, D, causal, window, dtype, p): GQA and MQA, causal, windows, T_q != T_k, a padded
# head dim, a decoding-sized T_q (GQA heads packed into rows), each dtype, rates from 0.1 to 0.9
CASES = [
    (2, 2, 2, 17, 17, 16, False, NONE, F32, 0.1),
    (1, 4, 2, 37, 29, 32, True, NONE, F16, 0.5),
    (1, 4, 1, 29, 45, 64, True, (9, -1), BF16, 0.3),
    (1, 2, 2, 33, 33, 80, False, (5, 7), F32, 0.9),
    (2, 8, 2, 3, 50, 32, True, NONE, F16, 0.2),
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, p = c
    return (f"p{p}-H{H}kv{H_kv}-Tq{T_q}-Tk{T_k}-D{D}{'-causal' if causal else ''}"
            f"{'' if window == NONE else f'-w{window[0]}_{window[1]}'}-{str(dtype)[6:]}")


def check_dropout_case(case, device="cpu", variant="auto", fa2_budget=False):
    """Out and ``(dq, dk, dv)`` with dropout against :func:`dropped_attention` with the call's own mask,
    the kernels' ``variant`` forced (``auto``: whatever the device runs). ``fa2_budget``: a gradient may also
    be as far from the reference as FlashAttention-2's own (:func:`fa2_grads`): rows whose attention falls on
    one key carry its rounding of the stored output (the random draws, whose shapes include such rows)."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, p = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device=device)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    keep = mask_of(next_seed(device), B, H, T_q, T_k, p)
    assert keep.shape == (B, H, T_q, T_k)
    with _variants.settings(kernel=variant):
        out, got = leaf_grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, window=window, dropout_p=p),
                              (q, k, v), dout)
    assert out.shape == q.shape and out.dtype == dtype
    assert_matches_by_rule("", out, got, (q, k, v), dout,
                           lambda q, k, v: dropped_attention(q, k, v, keep, p, causal, window),
                           lambda q, k, v: dropped_attention(q, k, v, keep, p, causal, window, dtype), dtype,
                           fa2_grads(q, k, v, keep, p, causal, window, dout) if fa2_budget else None)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dropout_matches_attention_with_the_same_mask(case):
    check_dropout_case(case)


# rows whose attention falls on one key: a window of 0 around the diagonal, or the causal corner of (0, -1)
ONE_KEY_CASES = [(2, 4, 2, 65, 63, 32, True, (0, 0), F16, 0.9), (2, 3, 1, 17, 97, 32, False, (0, 0), BF16, 0.1),
                 (1, 8, 2, 15, 65, 64, True, (0, -1), F16, 0.1)]


@pytest.mark.parametrize("case", ONE_KEY_CASES, ids=case_id)
def test_rows_with_one_key_carry_flash_attention_2_s_rounding_of_the_output(case):
    """A row whose attention falls on one key has dS = 0 exactly (its softmax is flat in its one score), and
    PyTorch's half-precision gradient gets that. FlashAttention-2's backward (ours, and flash-attn's) takes
    it as ``P (dP - delta)`` with ``delta`` from the output rounded to the inputs' dtype, and dropout's
    ``1 / (1 - p)`` makes the output inexact, so dq carries that rounding: more than twice PyTorch's error,
    which the tolerance rule cannot allow. The kernels' dq is FlashAttention-2's: as far from the reference
    as the emulation above, element by element within a tenth of that distance."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, p = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    keep = mask_of(next_seed("cpu"), B, H, T_q, T_k, p)
    _, (dq, _, _) = leaf_grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, window=window, dropout_p=p),
                               (q, k, v), dout)
    _, (want, _, _) = leaf_grads(lambda q, k, v: dropped_attention(q, k, v, keep, p, causal, window),
                                 [x.float() for x in (q, k, v)], dout.float())
    _, (same, _, _) = leaf_grads(lambda q, k, v: dropped_attention(q, k, v, keep, p, causal, window, dtype),
                                 (q, k, v), dout)
    fa2 = fa2_grads(q, k, v, keep, p, causal, window, dout)[0]
    rounding = max_err(fa2, want)
    assert rounding > 2 * max_err(same, want) + FLOOR[dtype], \
        "the case no longer shows FlashAttention-2's rounding beyond the tolerance rule: it tests nothing new"
    assert max_err(dq, fa2) <= 0.1 * rounding, f"dq is {max_err(dq, fa2):.2e} from FlashAttention-2's ({rounding:.2e})"


@pytest.mark.parametrize("variant", ["tma", "tma+ws"])
def test_dropout_through_tensor_descriptors(variant):
    """The TMA variants (the interpreter emulates the descriptors; ``tma+ws`` runs its single key loop)
    draw the same mask from the same counters."""
    check_dropout_case(CASES[1], variant=variant)


def test_a_wrong_mask_fails_the_check():
    """The check has teeth: the same call compared against another seed's mask is far off."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, p = CASES[0]
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype)
    wrong = mask_of(next_seed("cpu") + 1, B, H, T_q, T_k, p)
    out = flash_attention(q, k, v, dropout_p=p)
    assert (out - dropped_attention(q, k, v, wrong, p)).abs().max() > 0.1


def test_the_softmax_is_taken_before_dropout_so_lse_is_unchanged():
    """lse is the logsumexp over every allowed key, dropped or not: bit for bit the lse without dropout (and
    its gradient flows as without dropout)."""
    q, k, v = make_qkv(1, 4, 2, 29, 41, 32, F32)
    _, lse = flash_attention(q, k, v, causal=True, dropout_p=0.4, return_lse=True)
    _, plain = flash_attention(q, k, v, causal=True, return_lse=True)
    assert torch.equal(lse, plain)


def test_each_call_draws_a_fresh_mask_and_manual_seed_repeats_it():
    q, k, v = make_qkv(1, 2, 2, 33, 33, 16, F32)
    torch.manual_seed(123)
    first, second = (flash_attention(q, k, v, dropout_p=0.5) for _ in range(2))
    torch.manual_seed(123)
    again = flash_attention(q, k, v, dropout_p=0.5)
    assert not torch.equal(first, second) and torch.equal(first, again)


def test_no_dropout_draws_nothing_and_changes_nothing():
    """``dropout_p=0`` is the kernels without dropout (bit for bit) and leaves the generator untouched."""
    q, k, v = make_qkv(1, 2, 1, 17, 23, 16, F16)
    state = torch.random.get_rng_state()
    assert torch.equal(flash_attention(q, k, v, causal=True, dropout_p=0.0), flash_attention(q, k, v, causal=True))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_dropping_everything_gives_zeros_and_zero_gradients():
    """``p = 1`` keeps nothing: zeros as ``F.dropout(p=1)`` gives, not ``0 * inf = NaN``."""
    q, k, v = (x.requires_grad_(True) for x in make_qkv(1, 2, 2, 9, 9, 16, F32))
    out = flash_attention(q, k, v, dropout_p=1.0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert not out.any() and all(not g.any() for g in grads)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_mask_keeps_one_minus_p_of_the_scores(p):
    """Over 2^21 scores the keep rate is within 5 standard deviations of ``1 - p``; so it is in each head
    (2^17 each), and heads and sequences do not share a pattern (they agree as often as chance says)."""
    keep = mask_of(next_seed("cpu"), 2, 8, 256, 512, p).float()
    n = keep.numel()
    assert abs(keep.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    per_head = keep.mean(dim=(2, 3))  # (B, H)
    assert (per_head - (1 - p)).abs().max() < 5 * math.sqrt(p * (1 - p) / keep[0, 0].numel())
    chance = p * p + (1 - p) * (1 - p)  # two independent masks agree this often
    for a, b in ((keep[0, 0], keep[0, 1]), (keep[0, 0], keep[1, 0])):
        agree = (a == b).float().mean().item()
        assert abs(agree - chance) < 5 * math.sqrt(chance * (1 - chance) / a.numel())


def test_the_mask_is_a_function_of_the_seed():
    seed = next_seed("cpu")
    assert torch.equal(mask_of(seed, 1, 2, 40, 50, 0.3), mask_of(seed.clone(), 1, 2, 40, 50, 0.3))
    assert not torch.equal(mask_of(seed, 1, 2, 40, 50, 0.3), mask_of(seed + 1, 1, 2, 40, 50, 0.3))


def check_dropout_varlen(device="cpu"):
    """Three packed sequences with dropout: sequence ``b`` against attention on it alone with the mask's
    ``[b, :, :len_q, :len_k]`` corner (its own positions, counted from 0)."""
    lens_q, lens_k, H, H_kv, D, dtype, p = [17, 1, 40], [23, 9, 40], 4, 2, 32, F16, 0.3
    (q, cu_q), (k, cu_k), (v, _), (dout, _) = (packed(lens, h, D, dtype, seed) for lens, h, seed in (
        (lens_q, H, 0), (lens_k, H_kv, 1), (lens_k, H_kv, 2), (lens_q, H, 3)))
    q, k, v, dout, cu_q, cu_k = (x.to(device) for x in (q, k, v, dout, cu_q, cu_k))
    keep = mask_of(next_seed(device), 3, H, max(lens_q), max(lens_k), p)
    out, got = leaf_grads(lambda q, k, v: flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                                                 causal=True, dropout_p=p), (q, k, v), dout)
    for b in range(3):
        qb, kb, vb, gb = (per_sequence(x, c, b) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k), (dout, cu_q)))
        kept = keep[b:b + 1, :, :lens_q[b], :lens_k[b]]
        assert_matches_by_rule(f"of sequence {b}", per_sequence(out, cu_q, b),
                               [per_sequence(g, cu, b) for g, cu in zip(got, (cu_q, cu_k, cu_k), strict=True)],
                               (qb, kb, vb), gb, lambda q, k, v, kept=kept: dropped_attention(q, k, v, kept, p, True),
                               lambda q, k, v, kept=kept: dropped_attention(q, k, v, kept, p, True, NONE, dtype), dtype)


def test_dropout_in_a_packed_batch():
    check_dropout_varlen()


def test_flash_attn_func_takes_dropout_p_in_fourth_place():
    """flash-attn's training call, ``flash_attn_func(q, k, v, self.dropout if self.training else 0.0,
    causal=True)``, in its layout, and the packed form, run dropout with the same mask as ours."""
    q, k, v = (swap_seq_and_heads(x) for x in make_qkv(2, 4, 2, 19, 19, 32, F32))  # (B, T, H, D)
    keep = mask_of(next_seed("cpu"), 2, 4, 19, 19, 0.25)
    want = swap_seq_and_heads(dropped_attention(*(swap_seq_and_heads(x) for x in (q, k, v)), keep, 0.25, True))
    assert (flash_attn_func(q, k, v, 0.25, causal=True) - want).abs().max() < 2e-5
    qkv = torch.stack([q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)], dim=2)  # (B, T, 3, H, D)
    keep = mask_of(next_seed("cpu"), 2, 4, 19, 19, 0.25)
    want = swap_seq_and_heads(dropped_attention(*(swap_seq_and_heads(x) for x in qkv.unbind(2)), keep, 0.25, True))
    assert (flash_attn_qkvpacked_func(qkv, 0.25, causal=True) - want).abs().max() < 2e-5


@pytest.mark.parametrize("bad,error,match", [
    (-0.1, ValueError, r"dropout_p must be a probability in \[0, 1\], got -0.1"),
    (1.5, ValueError, "dropout_p must be a probability"),
    (float("nan"), ValueError, "dropout_p must be a probability"),
    (True, TypeError, "dropout_p must be a number"),
    ("0.1", TypeError, "dropout_p must be a number"),
])
def test_a_bad_dropout_p_is_named(bad, error, match):
    q, k, v = make_qkv(1, 2, 2, 5, 5, 16, F32)
    with pytest.raises(error, match=match):
        flash_attention(q, k, v, dropout_p=bad)


def test_dropout_under_torch_compile_matches_eager():
    """Compiled whole (``fullgraph``), the seed is drawn inside the graph at each call: the same seed as eager
    after the same ``torch.manual_seed``, so the same output and gradients."""
    q, k, v = make_qkv(1, 4, 2, 21, 27, 32, F32, seed=2)

    def model(q, k, v):
        return flash_attention(q, k, v, causal=True, dropout_p=0.3).square().sum()

    assert_compiled_matches_eager(model, q, k, v, seed=5)


def test_the_operators_with_dropout_pass_opcheck():
    check_operators_with(*make_qkv(1, 2, 1, 17, 23, 16, F16), dropout_p=0.2, seed=next_seed("cpu"))


def test_a_batch_launched_in_chunks_keeps_one_mask(monkeypatch):
    """A batch past the grid's limit runs in chunks (the limit lowered to 2 sequences per launch here):
    each chunk starts its counters at its first sequence's, so the mask is the one mask of the whole batch,
    not the first chunk's repeated."""
    import sys

    kernel_module("flash_fwd", torch.device("cpu"))  # the interpreted kernels' own copy of _tiles (see _runtime)
    monkeypatch.setattr(sys.modules["attn_course.kernels._interpreted._tiles"], "CUDA_MAX_GRID_YZ", 2)
    check_dropout_case((5, 2, 1, 19, 23, 16, True, NONE, F32, 0.3))


@pytest.mark.parametrize("args,error,match", [
    ((torch.tensor([1.0]), 1, 1, 4, 4, 0.1), TypeError, "seed must be a one-element int64 tensor"),
    ((torch.tensor([1, 2]), 1, 1, 4, 4, 0.1), TypeError, "seed must be a one-element int64 tensor"),
    ((torch.tensor([1]), -1, 1, 4, 4, 0.1), ValueError, "B must be >= 0, got -1"),
    ((torch.tensor([1]), 1, 1, 4.0, 4, 0.1), TypeError, "R must be an int, got float 4.0"),
    ((torch.tensor([1]), 1, 1, 4, 4, 2.0), ValueError, "dropout_p must be a probability"),
])
def test_dropout_mask_names_a_bad_argument(args, error, match):
    with pytest.raises(error, match=match):
        dropout_mask(*args)


def test_next_dropout_seed_leaves_the_generator_alone():
    state = torch.random.get_rng_state()
    seed = next_dropout_seed("cpu")
    assert torch.equal(torch.random.get_rng_state(), state) and seed.dtype == torch.int64 and seed.shape == (1,)


def test_the_backward_keeps_a_seed_not_a_mask():
    """With dropout the backward pass saves what it saves without (q, k, v, out, lse) and the seed: eight
    bytes, where a stored mask would be ``B * H * T_q * T_k``."""
    q, k, v = make_qkv(1, 2, 1, 33, 47, 16, F32, requires_grad=True)
    out = flash_attention(q, k, v, causal=True, dropout_p=0.2)
    saved = out.grad_fn.saved_tensors
    assert [tuple(t.shape) for t in saved] == [(1, 2, 33, 16), (1, 1, 47, 16), (1, 1, 47, 16), (1, 2, 33, 16),
                                               (1, 2, 33), (1,)]
    assert saved[-1].dtype == torch.int64


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_recomputes_the_same_mask(reentrant):
    """``torch.utils.checkpoint`` reruns the forward in the backward pass, restoring PyTorch's generator
    first (``preserve_rng_state``): the rerun draws the same seed, so the same mask, and the gradients are
    those of the run without checkpointing, bit for bit."""
    def block(q, k, v):
        return flash_attention(q, k, v, causal=True, dropout_p=0.3)

    check_checkpointing(block, reentrant, rng_seed=11)
