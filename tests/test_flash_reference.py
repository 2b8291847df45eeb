"""The tiled FlashAttention-2 reference against attn_course.attention and torch.logsumexp."""

import math

import pytest
import torch

from attn_course import attention, causal_mask, flash_attention_reference


def dense_lse(q, k, causal, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.double() @ k.double().transpose(-2, -1)) * scale
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[-2], k.shape[-2]), float("-inf"))
    return torch.logsumexp(s, dim=-1)


@pytest.mark.parametrize("T", [1, 17, 113, 203])
@pytest.mark.parametrize("d", [16, 40, 64, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_equals_attention_on_awkward_shapes(T, d, causal):
    g = torch.Generator().manual_seed(T * d)
    q, k, v = (torch.randn(2, 2, T, d, generator=g) for _ in range(3))
    out, lse = flash_attention_reference(q, k, v, causal=causal, block_q=32, block_k=16)
    torch.testing.assert_close(out, attention(q, k, v, causal=causal), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), dense_lse(q, k, causal), atol=1e-5, rtol=1e-5)
    assert lse.shape == (2, 2, T)


@pytest.mark.parametrize("T_q,T_k", [(5, 113), (113, 17), (64, 64), (1, 203)])
def test_rectangular_causal_and_scale(T_q, T_k):
    q, k, v = torch.randn(1, 3, T_q, 24), torch.randn(1, 3, T_k, 24), torch.randn(1, 3, T_k, 8)
    out, lse = flash_attention_reference(q, k, v, causal=True, scale=0.2, block_q=16, block_k=32)
    torch.testing.assert_close(out, attention(q, k, v, causal=True, scale=0.2), atol=1e-5, rtol=1e-5)
    want = dense_lse(q, k, True, 0.2)
    finite = torch.isfinite(want)
    torch.testing.assert_close(lse.double()[finite], want[finite], atol=1e-5, rtol=1e-5)
    # rows before every key (T_q > T_k): zeros and lse = -inf, never NaN
    assert torch.equal(torch.isneginf(lse), ~finite)
    assert (out[~finite] == 0).all() and not torch.isnan(out).any()


def test_never_materialises_a_score_matrix_bigger_than_a_tile():
    """Spy on matmul results: no intermediate may have more than block_q x block_k score entries."""
    q, k, v = torch.randn(1, 1, 200, 16), torch.randn(1, 1, 300, 16), torch.randn(1, 1, 300, 16)
    largest = 0
    original = torch.Tensor.__matmul__

    def spy(a, b):
        nonlocal largest
        r = original(a, b)
        largest = max(largest, r.shape[-2] * r.shape[-1])
        return r

    torch.Tensor.__matmul__ = spy
    try:
        flash_attention_reference(q, k, v, block_q=32, block_k=64)
    finally:
        torch.Tensor.__matmul__ = original
    assert largest == 32 * 64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_tolerance_rule(dtype):
    q, k, v = (torch.randn(2, 2, 77, 64) for _ in range(3))
    ref = attention(q, k, v, causal=True)
    out, lse = flash_attention_reference(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch_err = (attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True).float() - ref).abs().max()
    assert (out.float() - ref).abs().max() <= 2 * torch_err + 1e-3
