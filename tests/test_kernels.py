"""The Triton kernels against attn_course.attention, forward and backward, on awkward shapes.

These run on the CPU through Triton's interpreter (the same kernels as on a GPU, executed as NumPy), so
shapes are small; tests/test_kernels_gpu.py runs the same cases compiled, plus long sequences.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import (
    check_case,
    grads,
    make_qkv,
    max_err,
    reference,
    reference_lse,
)

from attn_course import flash_attention_reference
from attn_course.kernels import flash_attention, flash_attn_func, swap_seq_and_heads
from attn_course.kernels._runtime import kernel_module

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)

# (B, H, H_kv, T_q, T_k, D, causal, window, dtype): a covering subset, not the full product. Every T in
# {1, 17, 113, 203}, every D in {16, 32, 64, 128, 256}, each dtype, GQA and MQA, T_q < T_k and T_q > T_k
# (rows with no key), windows on either side, with and without causal.
CASES = [
    (1, 2, 2, 1, 1, 16, False, NONE, F32),
    (2, 2, 2, 17, 17, 16, True, NONE, F32),
    (1, 4, 2, 113, 113, 32, True, NONE, F16),
    (1, 4, 1, 113, 203, 64, True, NONE, BF16),
    (1, 2, 2, 203, 113, 64, True, NONE, F32),
    (1, 2, 2, 203, 203, 128, False, NONE, F16),
    (1, 2, 1, 113, 113, 64, False, (20, 5), F32),
    (1, 2, 2, 113, 203, 32, True, (16, -1), BF16),
    (1, 2, 2, 17, 113, 128, False, (-1, 3), F32),
    (1, 3, 3, 1, 203, 64, True, NONE, F16),
    (1, 2, 2, 203, 203, 16, False, (0, 0), BF16),
    (1, 2, 1, 113, 203, 256, True, NONE, BF16),
    (1, 2, 2, 17, 17, 256, False, (5, 2), F32),
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, dtype = c
    w = "" if window == NONE else f"-win{window[0]},{window[1]}"
    return f"B{B}H{H}kv{H_kv}-T{T_q}x{T_k}-D{D}{'-causal' if causal else ''}{w}-{str(dtype)[6:]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_forward_and_backward_match_reference(case):
    check_case(case)


@pytest.mark.parametrize("causal,window", [(True, NONE), (False, (40, 10)), (True, (30, -1))])
@pytest.mark.parametrize("blocks", [(16, 16), (16, 64), (64, 16)], ids=lambda b: f"BM{b[0]}BN{b[1]}")
def test_tile_shapes_do_not_change_the_answer(blocks, causal, window):
    """Different tile shapes move the boundary between full and masked tiles; the result must not move."""
    q, k, v = make_qkv(1, 2, 1, 77, 150, 16, F32)
    dout = torch.randn(1, 2, 77, 16, generator=torch.Generator().manual_seed(2))
    from attn_course.kernels._checks import kernel_window

    fwd, bwd = kernel_module("flash_fwd", q.device), kernel_module("flash_bwd", q.device)
    tiles = {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
    win = kernel_window(window, causal)
    out, lse = fwd.attn_fwd_launch(q, k, v, scale=0.25, window=win, blocks=tiles)
    assert max_err(out, reference(q, k, v, causal, window)) < 2e-5
    dq, dk, dv = bwd.attn_bwd_launch(dout, q, k, v, out, lse, scale=0.25, window=win, blocks=tiles)
    want = grads(lambda q, k, v: reference(q, k, v, causal, window), q, k, v, dout)
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want, strict=True):
        assert max_err(g, w) < 2e-5, f"{name} with tiles {blocks}: error {max_err(g, w):.2e}"


def test_lse_matches_logsumexp_and_the_tiled_reference():
    q, k, v = make_qkv(1, 2, 2, 113, 60, 32, F32)  # T_q > T_k: the first 53 rows see no key when causal
    out, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    want = reference_lse(q, k, causal=True)
    assert lse.shape == (1, 2, 113) and lse.dtype == F32
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want)), "lse must be -inf exactly on rows with no key"
    assert torch.isneginf(lse[..., :53]).all()
    finite = torch.isfinite(want)
    assert max_err(lse[finite], want[finite]) < 1e-5, "lse must be the natural-log logsumexp of the scaled scores"
    _, tiled_lse = flash_attention_reference(q, k, v, causal=True)
    assert max_err(lse[finite], tiled_lse[finite]) < 1e-5


def test_rows_with_no_allowed_key_give_zeros_and_zero_gradients():
    q, k, v = make_qkv(1, 1, 1, 40, 9, 16, F32, requires_grad=True)
    out = flash_attention(q, k, v, causal=True)  # bottom-right: rows 0..30 have no key
    assert torch.equal(out[..., :31, :], torch.zeros_like(out[..., :31, :]))
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert torch.equal(q.grad[..., :31, :], torch.zeros_like(q.grad[..., :31, :]))


def test_backward_saves_only_inputs_out_and_lse():
    """FlashAttention's point: nothing of size T_q x T_k is kept for the backward pass."""
    q, k, v = make_qkv(1, 2, 1, 33, 47, 16, F32, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    shapes = sorted(tuple(t.shape) for t in saved)
    expected = sorted([tuple(q.shape), tuple(k.shape), tuple(v.shape), tuple(out.shape), tuple(lse.shape)])
    assert shapes == expected, (
        f"the backward pass should save exactly q, k, v, out and lse (shapes {expected}); it saved {shapes}. "
        f"A [T_q, T_k] tensor here would mean the probabilities are stored instead of recomputed."
    )
    ctx_saved = out.grad_fn.saved_tensors
    assert len(ctx_saved) == 5
    assert ctx_saved[0] is q or ctx_saved[0].data_ptr() == q.data_ptr(), "the first saved tensor should be q itself"
    assert torch.equal(ctx_saved[4], lse)
    assert lse.requires_grad, "lse is differentiable (its gradient rides on the saved tensors, nothing more)"


def test_strided_and_flash_layout_inputs():
    """Non-contiguous inputs are read through their strides, never copied into a wrong layout."""
    g = torch.Generator().manual_seed(3)
    q_bthd = torch.randn(2, 45, 4, 32, generator=g)  # flash-attn's (B, T, H, D)
    kv = torch.randn(2, 30, 2, 2, 64, generator=g)  # (B, T, H_kv, k|v, 2D): k, v interleaved
    k_bthd, v_bthd = kv[:, :, :, 0, ::2], kv[:, :, :, 1, 1::2]  # (B, T, H_kv, D) with a head-dim stride of 2
    out = flash_attn_func(q_bthd, k_bthd, v_bthd, causal=True)
    assert out.shape == q_bthd.shape
    q, k, v = (swap_seq_and_heads(x) for x in (q_bthd, k_bthd, v_bthd))  # (B, H, T, D)
    assert not k.is_contiguous() and k.stride(-1) == 2
    want = reference(q, k, v, causal=True)
    assert max_err(swap_seq_and_heads(out), want) < 2e-5
    assert torch.equal(swap_seq_and_heads(swap_seq_and_heads(q)), q), "the layout swap must be its own inverse"


@pytest.mark.parametrize("side", [2**30, 2**31 - 1, 2**40], ids=["2^30", "2^31-1", "2^40"])
def test_a_window_wider_than_any_sequence_is_unbounded(side):
    """A window side of any size reaches every key, like ``-1``. More queries than keys put the first
    queries' positions below zero, where ``position - left`` with a side near 2^31 once wrapped around in
    the kernels' 32-bit arithmetic and every key was dropped (an output error of ~1.5, no error raised)."""
    q, k, v = make_qkv(1, 2, 1, 40, 20, 16, torch.float32, requires_grad=True)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(1))
    for window, same in [((side, 0), (-1, 0)), ((3, side), (3, -1)), ((side, side), (-1, -1))]:
        out = flash_attention(q, k, v, window=window)
        want = reference(q, k, v, window=same)
        assert max_err(out, want) < 2e-5, f"window {window} is not {same}: max error {max_err(out, want):.2e}"
        got = grads(lambda q, k, v, w=window: flash_attention(q, k, v, window=w), q, k, v, dout)
        ref = grads(lambda q, k, v, w=same: reference(q, k, v, window=w), q, k, v, dout)
        for name, g, r in zip(("dq", "dk", "dv"), got, ref, strict=True):
            assert max_err(g, r) < 2e-5, f"{name} with window {window} differs from window {same}"


def test_scale_is_applied():
    q, k, v = make_qkv(1, 1, 1, 17, 17, 16, F32)
    out = flash_attention(q, k, v, scale=0.9)
    assert max_err(out, reference(q, k, v, scale=0.9)) < 2e-5
    assert max_err(out, reference(q, k, v)) > 1e-3, "the scale argument made no difference"
