"""Masks, checked element by element against their definitions written out with plain loops."""

import itertools

import pytest
import torch

from attn_course import attention, causal_mask, padding_mask, prefix_lm_mask, sliding_window_mask, varlen_mask


def by_loops(T_q, T_k, allowed):
    return torch.tensor([[allowed(i + T_k - T_q, j) for j in range(T_k)] for i in range(T_q)])


@pytest.mark.parametrize("T_q,T_k", [(1, 1), (5, 5), (2, 5), (5, 2), (1, 17), (13, 7)])
def test_causal_is_bottom_right(T_q, T_k):
    assert torch.equal(causal_mask(T_q, T_k), by_loops(T_q, T_k, lambda i, j: j <= i))
    assert causal_mask(T_q, T_k)[-1, -1]  # the last query always sees the last key


@pytest.mark.parametrize("T_q,T_k", [(6, 6), (3, 8), (8, 3)])
@pytest.mark.parametrize("left,right", [(-1, -1), (-1, 0), (2, 0), (0, 0), (1, 2), (0, -1), (3, -1)])
def test_sliding_window_has_flash_attn_meaning(T_q, T_k, left, right):
    def allowed(i, j):
        return (left < 0 or j >= i - left) and (right < 0 or j <= i + right)

    assert torch.equal(sliding_window_mask(T_q, T_k, window=(left, right)), by_loops(T_q, T_k, allowed))


def test_window_minus_one_zero_is_causal_and_minus_one_minus_one_is_full():
    assert torch.equal(sliding_window_mask(4, 9, window=(-1, 0)), causal_mask(4, 9))
    assert sliding_window_mask(4, 9, window=(-1, -1)).all()


def test_padding_mask_shape_and_values():
    m = padding_mask([3, 0, 5], 5)
    assert m.shape == (3, 1, 1, 5) and m.dtype == torch.bool
    assert m[:, 0, 0].int().tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_prefix_lm():
    T, p = 6, 2
    want = torch.tensor([[j < p or j <= i for j in range(T)] for i in range(T)])
    assert torch.equal(prefix_lm_mask(T, p), want)
    assert torch.equal(prefix_lm_mask(T, 0), causal_mask(T))
    assert prefix_lm_mask(T, T).all()


def test_varlen_is_block_diagonal_and_equals_separate_attention():
    cu = [0, 3, 3, 8, 10]  # lengths 3, 0, 5, 2: an empty sequence is allowed
    m = varlen_mask(cu)
    seg = [0, 0, 0, 2, 2, 2, 2, 2, 3, 3]
    assert torch.equal(m, torch.tensor([[a == b for b in seg] for a in seg]))
    # Packed attention with the mask equals attending within each sequence separately.
    q, k, v = torch.randn(10, 8), torch.randn(10, 8), torch.randn(10, 4)
    packed = attention(q, k, v, m & causal_mask(10))
    for s, e in itertools.pairwise(cu):
        if e > s:
            torch.testing.assert_close(packed[s:e], attention(q[s:e], k[s:e], v[s:e], causal=True))


def test_masks_compose_with_and():
    m = causal_mask(8) & sliding_window_mask(8, window=(2, -1))
    assert torch.equal(m, sliding_window_mask(8, window=(2, 0)))
    assert (padding_mask([5], 8) & causal_mask(8)).shape == (1, 1, 8, 8)
