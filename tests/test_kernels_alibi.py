"""ALiBi position biases in the kernels (``alibi_slopes``), checked against attention with the bias as an
additive mask.

ALiBi (Press et al., used by BLOOM and MPT) adds ``-slope_h * |i + T_k - T_q - j|`` to the score of query
``i`` and key ``j`` in head ``h``: a penalty growing with distance, one slope per head (flash-attn's
``alibi_slopes``, ``[H]`` or ``[B, H]`` float32). The kernels compute it per score from the positions
(``kernels/flash_alibi.py``); the tests build it here independently, as a ``[B, H, T_q, T_k]`` tensor, and
hand it to ``attn_course.attention`` as an additive mask. Every case first checks that the bias changes the
answer by far more than the tolerance. Then output, lse and gradients by the tolerance rule, for
fixed-length and packed batches, a decoding step with split keys and packed GQA heads (each row of a
program a different head, so a different slope), with a softcap and with dropout; and bad slopes named.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_autograd import assert_compiled_matches_eager, check_operators_with
from test_kernels_common import (
    assert_matches_by_rule,
    check_changed_scores,
    make_qkv,
    max_err,
    reference,
)
from test_kernels_dropout import dropped_attention
from test_kernels_kvcache import check_decoding_step_with
from test_kernels_softcap import boosted_qkv
from test_kernels_varlen import check_packed_with, packed, per_sequence

from attn_course.kernels import (
    dropout_mask,
    flash_attention,
    flash_attention_varlen,
    flash_attn_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    next_dropout_seed,
    swap_seq_and_heads,
)
from attn_course.kernels._runtime import kernel_module

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)


def geometric_slopes(H: int, B: int | None = None, device="cpu") -> torch.Tensor:
    """ALiBi's slopes ``2^(-8 (h + 1) / H)``, ``[H]``, or ``[B, H]`` with each sequence's scaled differently
    (so that a kernel reading the wrong sequence's row is caught)."""
    slopes = 2.0 ** (-8.0 * torch.arange(1, H + 1) / H)  # (H,)
    if B is not None:
        slopes = slopes * torch.linspace(1.0, 3.0, B)[:, None]  # (B, H)
    return slopes.to(device=device, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, T_q: int, T_k: int) -> torch.Tensor:
    """``-slope * |i + T_k - T_q - j|`` as ``[B or 1, H, T_q, T_k]`` float32, from the definition."""
    i = torch.arange(T_q, device=slopes.device)[:, None]  # (T_q, 1)
    j = torch.arange(T_k, device=slopes.device)[None, :]  # (1, T_k)
    distance = (i + T_k - T_q - j).abs().float()  # (T_q, T_k)
    per_head = slopes if slopes.dim() == 2 else slopes[None]  # (B or 1, H)
    return -per_head[:, :, None, None] * distance  # (B or 1, H, T_q, T_k)


# (B, H, H_kv, T_q, T_k, D, causal, window, per-sequence slopes, dtype)
CASES = [
    (1, 2, 2, 17, 17, 16, True, NONE, False, F32),
    (2, 4, 2, 29, 45, 64, False, NONE, True, F16),
    (1, 4, 1, 45, 29, 64, True, NONE, False, BF16),
    (2, 2, 2, 37, 37, 32, False, (9, 4), True, F32),
    (1, 4, 2, 33, 33, 80, True, (-1, 5), False, BF16),
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, per_seq, dtype = c
    return (f"D{D}-B{B}H{H}kv{H_kv}-Tq{T_q}-Tk{T_k}{'-causal' if causal else ''}"
            f"{'' if window == NONE else f'-w{window[0]}_{window[1]}'}{'-BxH' if per_seq else ''}-{str(dtype)[6:]}")


def assert_the_bias_matters(q, k, v, causal, window, bias):
    change = max_err(reference(q, k, v, causal, window, bias=bias), reference(q, k, v, causal, window))
    assert change > 0.05, f"the bias changes the output by only {change:.2e}: the test would not see it ignored"


def check_alibi_case(case, device="cpu", variant="auto", softcap=0.0):
    B, H, H_kv, T_q, T_k, D, causal, window, per_seq, dtype = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device=device)
    slopes = geometric_slopes(H, B if per_seq else None, device)
    bias = alibi_bias(slopes, T_q, T_k)
    assert_the_bias_matters(q, k, v, causal, window, bias)
    check_changed_scores(q, k, v, causal, window, dtype, variant, softcap=softcap, alibi_slopes=slopes, bias=bias)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_alibi_matches_attention_with_the_bias_as_a_mask(case):
    check_alibi_case(case)


@pytest.mark.parametrize("variant", ["tma", "tma+ws"])
def test_alibi_through_tensor_descriptors(variant):
    check_alibi_case(CASES[1], variant=variant)


def test_alibi_after_a_softcap():
    """With both, the cap applies to the scaled scores and the bias is added after it (flash-attn's order)."""
    B, H, T = 1, 4, 33
    q = make_qkv(B, H, H, T, T, 32, F32)[0] * 4
    _, k, v = make_qkv(B, H, H, T, T, 32, F32)
    slopes = geometric_slopes(H)
    out = flash_attention(q, k, v, causal=True, alibi_slopes=slopes, softcap=2.0)
    want = reference(q, k, v, True, softcap=2.0, bias=alibi_bias(slopes, T, T))
    other_order = reference(q, k, v, True, bias=alibi_bias(slopes, T, T))  # (no cap at all, for scale)
    assert max_err(want, other_order) > 0.05 and max_err(out, want) < 2e-5
    check_alibi_case(CASES[2], softcap=3.0)


def test_a_steeper_slope_attends_more_locally():
    """The point of ALiBi: the larger a head's slope, the more of its weight stays near the diagonal. With
    keys and queries carrying no information (all equal), the weights are the bias's softmax alone."""
    T, H = 64, 4
    q = k = torch.ones(1, H, T, 16)
    v = torch.arange(T, dtype=torch.float32)[None, None, :, None].expand(1, H, T, 16)  # v_j = j
    slopes = torch.tensor([0.0, 0.1, 0.5, 2.0])
    out = flash_attention(q, k, v, causal=True, alibi_slopes=slopes)  # (1, H, T, 16): the mean position seen
    lag = (torch.arange(T, dtype=torch.float32) - out[0, :, :, 0])[:, -1]  # (H,) how far back the last query looks
    assert lag[0] == pytest.approx((T - 1) / 2, abs=1e-3)  # slope 0: uniform over the T keys
    assert lag[3] < lag[2] < lag[1] < lag[0] and lag[3] < 0.2
    weights = torch.softmax(-slopes[:, None] * torch.arange(T - 1, -1, -1.0), dim=-1)  # (H, T) by hand
    assert max_err(lag, (weights * torch.arange(T - 1, -1, -1.0)).sum(-1)) < 1e-4


def test_a_batch_launched_in_chunks_reads_each_sequences_own_slopes(monkeypatch):
    """A batch past the grid's limit runs in chunks (the limit lowered to 2 sequences per launch here): each
    launch gets its own sequences' rows of ``[B, H]`` slopes, fixed-length and packed."""
    import sys

    kernel_module("flash_fwd", torch.device("cpu"))  # the interpreted kernels' own copy of _tiles (see _runtime)
    monkeypatch.setattr(sys.modules["attn_course.kernels._interpreted._tiles"], "CUDA_MAX_GRID_YZ", 2)
    check_alibi_case((5, 2, 1, 19, 23, 16, True, NONE, True, F32))
    lens = [3, 7, 1, 5, 9]
    (q, cu), (k, _), (v, _) = (packed(lens, 2, 16, F32, seed) for seed in range(3))
    slopes = geometric_slopes(2, 5)
    out = flash_attention_varlen(q, k, v, cu, cu, 9, 9, causal=True, alibi_slopes=slopes)
    for b, n in enumerate(lens):
        want = reference(*(per_sequence(x, cu, b) for x in (q, k, v)), True, bias=alibi_bias(slopes[b], n, n))
        assert max_err(per_sequence(out, cu, b), want) < 2e-5, f"sequence {b}"


def check_alibi_varlen(device="cpu", variant="auto"):
    """Packed sequences with slopes per (sequence, head) (see ``check_packed_with``): each sequence against
    the reference with its own lengths' bias and its own row of slopes."""
    slopes = geometric_slopes(4, 3, device)
    check_packed_with(device, variant, dict(alibi_slopes=slopes),
                      lambda b, n_q, n_k: dict(bias=alibi_bias(slopes[b], n_q, n_k)))


@pytest.mark.parametrize("variant", ["auto", "tma"])
def test_alibi_in_a_packed_batch(variant):
    check_alibi_varlen(variant=variant)


def check_alibi_cache(num_splits, device="cpu", variant="auto", dtype=BF16, T_cache=96):
    """A decoding step with slopes per (sequence, head): each packed GQA row loads its own head's slope (see
    ``check_decoding_step_with``)."""
    slopes = geometric_slopes(8, 3, device)
    check_decoding_step_with(num_splits, device, variant, dtype, dict(alibi_slopes=slopes),
                             lambda b, n: dict(bias=alibi_bias(slopes[b], 1, n)), T_cache=T_cache)


@pytest.mark.parametrize("num_splits,variant", [(1, "auto"), (3, "auto"), (3, "tma")])
def test_alibi_in_a_decoding_step_with_packed_gqa_rows(num_splits, variant):
    check_alibi_cache(num_splits, variant=variant)


def check_alibi_with_dropout(device="cpu"):
    """Dropout on top of the bias: attention with the bias and the call's own mask."""
    B, H, H_kv, T_q, T_k, D, p = 1, 4, 2, 29, 37, 32, 0.2
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, F32, device=device)
    slopes = geometric_slopes(H, device=device)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device)
    seed = next_dropout_seed(device)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = flash_attention(*leaves, causal=True, dropout_p=p, alibi_slopes=slopes)
    got = torch.autograd.grad(out, leaves, dout)
    keep = dropout_mask(seed, B, H, T_q, T_k, p)  # (B, H, T_q, T_k)
    bias = alibi_bias(slopes, T_q, T_k)

    def biased_dropped(q, k, v):
        return dropped_attention(q, k, v, keep, p, causal=True, bias=bias)

    assert max_err(biased_dropped(q, k, v), dropped_attention(q, k, v, keep, p, causal=True)) > 0.05
    assert_matches_by_rule("", out, got, (q, k, v), dout, biased_dropped, biased_dropped, F32)


def test_alibi_with_dropout():
    check_alibi_with_dropout()


def check_dropout_softcap_and_alibi(device="cpu", D=32, dtype=F32):
    """All three at once, as one call of flash-attn's may ask: each scaled score capped, then the bias added,
    the causal mask, the softmax, then the call's own dropout mask; out and gradients against that, built
    here from the definitions, by the tolerance rule. Each of the three first shown to matter."""
    B, H, H_kv, T_q, T_k, p, cap = 1, 4, 2, 29, 37, 0.2, 2.0
    q, k, v = boosted_qkv(B, H, H_kv, T_q, T_k, D, dtype, device)
    slopes = geometric_slopes(H, device=device)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    seed = next_dropout_seed(device)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = flash_attention(*leaves, causal=True, dropout_p=p, softcap=cap, alibi_slopes=slopes)
    got = torch.autograd.grad(out, leaves, dout)
    keep = dropout_mask(seed, B, H, T_q, T_k, p)  # (B, H, T_q, T_k)
    allowed = torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)  # bottom-right causal
    bias = alibi_bias(slopes, T_q, T_k)  # (1, H, T_q, T_k)

    def defined(q, k, v, cap=cap, bias=bias, keep=keep):
        G = H // H_kv
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)  # (B, H, T_k, D)
        s = (q @ k.transpose(-2, -1)) * D**-0.5  # (B, H, T_q, T_k)
        s = (cap * torch.tanh(s / cap) if cap else s) + bias.to(s.dtype)
        probs = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)  # (every row has a key)
        return (probs * keep / (1 - p)) @ v

    ref = defined(*(x.float() for x in (q, k, v)))
    for without in (dict(cap=0.0), dict(bias=torch.zeros(1)), dict(keep=torch.ones_like(keep))):
        assert max_err(defined(*(x.float() for x in (q, k, v)), **without), ref) > 0.05, without
    assert_matches_by_rule("", out, got, (q, k, v), dout, defined, defined, dtype)


def test_dropout_softcap_and_alibi_at_once():
    check_dropout_softcap_and_alibi()


def test_flash_attn_functions_take_alibi_slopes():
    """flash-attn's layouts and keyword: fixed-length, packed and the cache."""
    B, H, H_kv, T, D = 2, 4, 2, 19, 32
    q, k, v = make_qkv(B, H, H_kv, T, T, D, F32)
    slopes = geometric_slopes(H, B)
    want = reference(q, k, v, True, bias=alibi_bias(slopes, T, T))  # (B, H, T, D)
    out = flash_attn_func(*(swap_seq_and_heads(x) for x in (q, k, v)), causal=True, alibi_slopes=slopes)
    assert max_err(swap_seq_and_heads(out), want) < 2e-5
    packed_qkv = [swap_seq_and_heads(x).reshape(B * T, -1, D) for x in (q, k, v)]  # (B T, heads, D)
    cu = torch.tensor([0, T, 2 * T], dtype=torch.int32)
    out = flash_attn_varlen_func(*packed_qkv, cu, cu, T, T, causal=True, alibi_slopes=slopes)
    assert max_err(out.reshape(B, T, H, D), swap_seq_and_heads(want)) < 2e-5
    with torch.no_grad():
        out = flash_attn_with_kvcache(swap_seq_and_heads(q[:, :, -1:]), *(swap_seq_and_heads(x) for x in (k, v)),
                                      causal=True, alibi_slopes=slopes)
    assert max_err(out, swap_seq_and_heads(want[:, :, -1:])) < 2e-5


@pytest.mark.parametrize("bad,error,match", [
    (torch.ones(3), ValueError, r"alibi_slopes must be \[H\] or \[B, H\] = \[4\] or \[2, 4\], got shape \(3,\)"),
    (torch.ones(3, 4), ValueError, r"alibi_slopes must be \[H\] or \[B, H\].*got shape \(3, 4\)"),
    (torch.ones(4, dtype=torch.float16), ValueError, r"alibi_slopes must be float32.*got torch\.float16"),
    (torch.ones(4, dtype=torch.int64), ValueError, r"alibi_slopes must be float32"),
    ([0.5] * 4, TypeError, r"alibi_slopes must be a torch\.Tensor.*got list"),
    (torch.ones(4, device="meta"), ValueError, r"alibi_slopes must be on q's device \(cpu\), got meta"),
])
def test_bad_alibi_slopes_are_named(bad, error, match):
    q, k, v = make_qkv(2, 4, 2, 5, 5, 16, F32)
    with pytest.raises(error, match=match):
        flash_attention(q, k, v, alibi_slopes=bad)


def test_slopes_that_require_grad_are_refused_rather_than_left_untrained():
    q, k, v = make_qkv(1, 4, 2, 5, 5, 16, F32)
    slopes = geometric_slopes(4).requires_grad_(True)
    with pytest.raises(ValueError, match="alibi_slopes requires grad, but the kernels give it no gradient"):
        flash_attention(q, k, v, alibi_slopes=slopes)
    with torch.no_grad():
        flash_attention(q, k, v, alibi_slopes=slopes)  # (no gradient asked for: fine)
    flash_attention(q, k, v, alibi_slopes=slopes.detach())


def test_the_operators_with_alibi_pass_opcheck():
    check_operators_with(*make_qkv(2, 2, 1, 17, 23, 16, F16), alibi_slopes=geometric_slopes(2, 2))


def test_alibi_under_torch_compile_matches_eager():
    slopes = geometric_slopes(4)

    def model(q, k, v):
        return flash_attention(q, k, v, causal=True, alibi_slopes=slopes).square().sum()

    assert_compiled_matches_eager(model, *make_qkv(1, 4, 2, 21, 27, 32, F32, seed=2))


def test_the_bias_is_computed_not_stored():
    """The backward saves the slopes (``B * H`` floats), never a ``[T_q, T_k]`` bias."""
    q, k, v = make_qkv(1, 2, 2, 40, 40, 16, F32, requires_grad=True)
    out = flash_attention(q, k, v, causal=True, alibi_slopes=geometric_slopes(2))
    shapes = [tuple(t.shape) for t in out.grad_fn.saved_tensors]
    assert (2,) in shapes and all(s[-2:] != (40, 40) for s in shapes), shapes
