"""Head dims that are not a power of two (80, 96, 40, ...: many real models' ``d_model / H``).

The kernels tile the head dim as a power of two, ``HEAD_DIM`` (``_tiles.head_dim_tile``), and treat the
columns past the real one, ``D_REAL``, as zeros: masked on every load, dropped on every store. Three
kinds of check:

* the answer, forward and backward, against ``attn_course.attention`` by the tolerance rule, on awkward
  shapes (GQA, causal, windows, ``T_q != T_k``), in every dtype;
* the padding is never *read*: q, k, v and the output's gradient are views into rows that carry NaN
  columns past ``D``, which would poison the result if a load reached them (through pointers and through
  tensor descriptors, which the interpreter emulates, for fixed-length and packed batches, caches, split
  keys and packed GQA decoding);
* the padding is exactly zeros: the kernel at ``D`` gives bit for bit what it gives on the inputs padded
  by hand with zero columns to ``HEAD_DIM`` (scale ``1/sqrt(D)``), sliced back, gradients included.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import assert_matches_by_rule, make_qkv, reference, torch_same_dtype
from test_kernels_kvcache import check_against_each_sequence, make_cache
from test_kernels_varlen import packed, per_sequence

from attn_course.kernels import (
    _variants,
    flash_attention,
    flash_attention_kvcache,
    flash_attention_varlen,
    flash_attn_func,
    swap_seq_and_heads,
)
from attn_course.kernels._tiles import head_dim_tile

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)

# (B, H, H_kv, T_q, T_k, D, causal, window, dtype): head dims from 1 to 200, none a power of two but 8
# (under the 16 a tile product needs), in each dtype, with GQA, MQA, T_q != T_k and windows
CASES = [
    (1, 2, 2, 17, 17, 1, True, NONE, F32),
    (2, 2, 1, 17, 29, 8, False, NONE, F16),
    (1, 4, 2, 29, 17, 24, True, NONE, BF16),
    (1, 2, 2, 37, 37, 40, False, (9, 4), F32),
    (1, 4, 1, 33, 45, 80, True, NONE, F16),
    (1, 2, 2, 45, 33, 96, True, (-1, 5), BF16),
    (1, 2, 1, 17, 40, 72, False, NONE, F32),
    (1, 2, 2, 21, 21, 200, True, NONE, F16),
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, dtype = c
    return (f"D{D}-H{H}kv{H_kv}-Tq{T_q}-Tk{T_k}{'-causal' if causal else ''}"
            f"{'' if window == NONE else f'-w{window[0]}_{window[1]}'}-{str(dtype)[6:]}")


def nan_columns(x: torch.Tensor, extra: int = 8) -> torch.Tensor:
    """``x`` as a view into rows ``extra`` columns wider, the extra columns NaN: any read past the head dim
    shows up in the result. (With ``extra = 8`` the rows stay 16-byte aligned for the dtypes here whenever
    ``D`` is a multiple of 4 or 8, so tensor descriptors still take them.)"""
    wide = torch.full((*x.shape[:-1], x.shape[-1] + extra), float("nan"), dtype=x.dtype, device=x.device)
    wide[..., :x.shape[-1]] = x
    return wide[..., :x.shape[-1]]  # a leaf view: rows of D real columns, extra NaN ones between them


def check_padded_case(case, device="cpu", variant="auto"):
    """The kernel on ``case`` (see ``CASES``), with every input and the output's gradient in
    :func:`nan_columns` views, against the float32 reference by the tolerance rule."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype = case
    q, k, v = (nan_columns(x).requires_grad_(True) for x in make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device=device))
    dout = nan_columns(torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device, dtype))
    with _variants.settings(kernel=variant):
        out = flash_attention(q, k, v, causal=causal, window=window)
        got = torch.autograd.grad(out, (q, k, v), dout)
    assert out.shape == q.shape and out.dtype == dtype
    assert all(g.shape == x.shape and g.dtype == dtype for g, x in zip(got, (q, k, v), strict=True))
    dense = [x.detach().contiguous() for x in (q, k, v)]  # (no NaN anywhere)
    assert_matches_by_rule("", out, got, dense, dout.contiguous(), lambda q, k, v: reference(q, k, v, causal, window),
                           lambda q, k, v: torch_same_dtype(q, k, v, causal, window), dtype)


def test_the_tile_is_the_next_power_of_two_of_at_least_16():
    assert [head_dim_tile(D) for D in (1, 8, 16, 17, 24, 40, 64, 72, 80, 96, 128, 129, 200, 256)] == \
        [16, 16, 16, 32, 32, 64, 64, 128, 128, 128, 128, 256, 256, 256]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padded_head_dims_match_attention_and_never_read_the_padding(case):
    check_padded_case(case)


@pytest.mark.parametrize("case", [CASES[3], CASES[4]], ids=case_id)
def test_padded_head_dims_through_tensor_descriptors(case):
    """Through TMA the copy engine, not a mask, keeps the padding out: the descriptor covers ``D`` columns
    and its tiles ``HEAD_DIM``, so the columns past ``D`` arrive as zeros and are clipped on the way out."""
    check_padded_case(case, variant="tma")


@pytest.mark.parametrize("D,dtype", [(48, F32), (80, BF16), (24, F16)])
def test_the_padding_is_exactly_zero_columns(D, dtype):
    """At a head dim ``D`` the kernel computes what it computes at ``head_dim_tile(D)`` on the inputs padded
    with zero columns (scale ``1/sqrt(D)``, not of the padded width), bit for bit: same tiles, same
    products, so the padding is zeros and nothing else. Output, lse and gradients."""
    tile = head_dim_tile(D)
    q, k, v = make_qkv(1, 4, 2, 29, 37, D, dtype)
    dout = torch.randn(1, 4, 29, D, generator=torch.Generator().manual_seed(1)).to(dtype)

    def run(q, k, v, dout):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out, lse = flash_attention(*leaves, causal=True, scale=D ** -0.5, return_lse=True)
        return (out, lse, *torch.autograd.grad(out, leaves, dout))

    mine = run(q, k, v, dout)
    by_hand = run(*(torch.nn.functional.pad(x, (0, tile - D)) for x in (q, k, v, dout)))
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), mine, by_hand, strict=True):
        b = b if name == "lse" else b[..., :D]
        assert torch.equal(a, b), f"{name} at D = {D} differs from the hand-padded run at D = {tile}"
    assert all(not g[..., D:].any() for g in by_hand[3:]), "gradients of zero columns must be zero"


def check_padded_varlen(device="cpu", variant="auto"):
    """Three packed sequences at D = 40, GQA, causal, inputs in :func:`nan_columns` views: each sequence's
    output and gradients against attention on it alone."""
    lens_q, lens_k, H, H_kv, D, dtype = [5, 1, 33], [9, 23, 33], 4, 2, 40, F16
    (q, cu_q), (k, cu_k), (v, _), (dout, _) = (packed(lens, h, D, dtype, seed) for lens, h, seed in (
        (lens_q, H, 0), (lens_k, H_kv, 1), (lens_k, H_kv, 2), (lens_q, H, 3)))
    q, k, v, dout = (nan_columns(x.to(device)) for x in (q, k, v, dout))
    cu_q, cu_k = cu_q.to(device), cu_k.to(device)
    leaves = [x.requires_grad_(True) for x in (q, k, v)]
    with _variants.settings(kernel=variant):
        out = flash_attention_varlen(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
        got = torch.autograd.grad(out, leaves, dout)
    for b in range(3):
        qb, kb, vb, gb = (per_sequence(x.detach().contiguous(), c, b) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k),
                                                                                    (dout, cu_q)))
        assert_matches_by_rule(f"of sequence {b}", per_sequence(out, cu_q, b),
                               [per_sequence(g, cu, b) for g, cu in zip(got, (cu_q, cu_k, cu_k), strict=True)],
                               (qb, kb, vb), gb, lambda q, k, v: reference(q, k, v, True),
                               lambda q, k, v: torch_same_dtype(q, k, v, True), dtype)


@pytest.mark.parametrize("variant", ["auto", "tma"])
def test_a_packed_batch_at_a_padded_head_dim(variant):
    check_padded_varlen(variant=variant)


def check_padded_cache(num_splits, device="cpu", variant="auto", D=80, dtype=F32, T_cache=200):
    """One decoding step with GQA (query heads packed into one program's rows) against caches of three
    lengths at a padded head dim, the caches' unfilled rows *and* their padding columns NaN, one new key
    appended; ``num_splits`` slices of the keys, combined."""
    B, H, H_kv, lengths = 3, 8, 2, [0, 77, T_cache - 1]
    k_cache, v_cache = (nan_columns(x) for x in make_cache(B, H_kv, T_cache, D, lengths, dtype, device))
    q, k, v = (nan_columns(x) for x in make_qkv(B, H, H_kv, 1, 1, D, dtype, device=device, seed=1))
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    with torch.no_grad(), _variants.settings(kernel=variant):
        out, lse = flash_attention_kvcache(q, k_cache, v_cache, seqlens, k, v, causal=True, num_splits=num_splits,
                                           return_lse=True)
    assert torch.equal(k_cache[torch.arange(B), :, seqlens], k[:, :, 0])  # (B, H_kv, D): appended in place
    check_against_each_sequence(q.contiguous(), k_cache.contiguous(), v_cache.contiguous(),
                                [n + 1 for n in lengths], True, NONE, out, lse, dtype)


@pytest.mark.parametrize("num_splits,variant", [(1, "auto"), (3, "auto"), (3, "tma")])
def test_a_decoding_step_at_a_padded_head_dim(num_splits, variant):
    check_padded_cache(num_splits, variant=variant)


def test_flash_attn_func_at_head_dim_96():
    """flash-attn's layout ``[B, T, H, D]`` at D = 96 (GPT-NeoX-20B's): the transposed views and the padded
    tile together, forward and backward."""
    q, k, v = (swap_seq_and_heads(x).requires_grad_(True) for x in make_qkv(2, 4, 2, 19, 19, 96, F32))
    out = flash_attn_func(q, k, v, causal=True)  # (B, T, H, D)
    want = swap_seq_and_heads(reference(*(swap_seq_and_heads(x) for x in (q, k, v)), True))
    assert out.shape == q.shape and (out - want).abs().max() < 2e-5
    got = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.autograd.grad(want.sum(), (q, k, v))
    assert all((g - r).abs().max() < 2e-5 for g, r in zip(got, ref, strict=True))
