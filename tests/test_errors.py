"""Bad input raises ValueError / TypeError whose message names the shapes or dtypes at fault."""

import pytest
import torch

from attn_course import (
    MultiHeadAttention,
    attention,
    causal_mask,
    flash_attention_reference,
    online_softmax,
    padding_mask,
    prefix_lm_mask,
    sliding_window_mask,
    varlen_mask,
)


def test_head_dims_differ():
    with pytest.raises(ValueError, match=r"q \(2, 5, 8\) has d_k=8, k \(2, 6, 7\) has d_k=7"):
        attention(torch.randn(2, 5, 8), torch.randn(2, 6, 7), torch.randn(2, 6, 7))


def test_k_and_v_lengths_differ():
    with pytest.raises(ValueError, match=r"k \(6, 8\) has T_k=6, v \(5, 8\) has T_k=5"):
        attention(torch.randn(4, 8), torch.randn(6, 8), torch.randn(5, 8))


def test_mask_does_not_broadcast():
    with pytest.raises(ValueError, match=r"mask of shape \(4, 5\) does not broadcast .*\(2, 4, 6\)"):
        attention(torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.ones(4, 5, dtype=bool))


def test_integer_tensors():
    with pytest.raises(TypeError, match=r"q has dtype torch.int64"):
        attention(torch.ones(3, 4, dtype=torch.long), torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(TypeError, match=r"mask has dtype torch.int32"):
        attention(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), torch.ones(3, 3, dtype=torch.int32))


def test_mixed_dtypes_and_batch_mismatch():
    with pytest.raises(TypeError, match=r"q torch.float32, k torch.float16"):
        attention(torch.randn(3, 4), torch.randn(3, 4).half(), torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"do not broadcast"):
        attention(torch.randn(2, 3, 4), torch.randn(3, 3, 4), torch.randn(3, 3, 4))
    with pytest.raises(ValueError, match=r"at least 2 dims"):
        attention(torch.randn(4), torch.randn(3, 4), torch.randn(3, 4))


def test_mha_divisibility():
    with pytest.raises(ValueError, match=r"d_model=100 is not divisible by n_heads=8"):
        MultiHeadAttention(100, 8)
    with pytest.raises(ValueError, match=r"n_heads=8 is not divisible by n_kv_heads=3"):
        MultiHeadAttention(64, 8, n_kv_heads=3)
    mha = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match=r"x must be \[B, T, d_model=16\], got shape \(2, 5, 12\)"):
        mha(torch.randn(2, 5, 12))


@pytest.mark.parametrize("window,exc,msg", [
    ((-2, 0), ValueError, r"left must be >= 0, or -1"),
    ((0,), ValueError, r"pair"),
    ((1.5, 0), TypeError, r"left must be an int"),
    ((0, -3), ValueError, r"right must be >= 0, or -1"),
])
def test_bad_windows(window, exc, msg):
    with pytest.raises(exc, match=msg):
        sliding_window_mask(5, window=window)


@pytest.mark.parametrize("cu,msg", [
    ([0, 5, 3, 8], r"sorted"),
    ([1, 3, 5], r"start at 0"),
    ([0], r"at least 2 entries"),
    ([[0, 1], [1, 2]], r"1-D"),
])
def test_bad_cu_seqlens(cu, msg):
    with pytest.raises(ValueError, match=msg):
        varlen_mask(torch.tensor(cu))


def test_bad_mask_arguments():
    with pytest.raises(ValueError, match=r"every length must be in \[0, T=4\]"):
        padding_mask([5, 2], 4)
    with pytest.raises(ValueError, match=r"prefix_len must be <= T"):
        prefix_lm_mask(4, 6)
    with pytest.raises(ValueError, match=r"T_q must be >= 1"):
        causal_mask(0)
    with pytest.raises(ValueError, match=r"block_q must be >= 1"):
        flash_attention_reference(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4), block_q=0)


def test_online_softmax_names_itself_and_the_dtype():
    with pytest.raises(TypeError, match=r"x has dtype torch.int64, but online_softmax needs a floating-point"):
        online_softmax(torch.arange(6).reshape(2, 3))
