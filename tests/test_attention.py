"""attn_course.attention against PyTorch's own scaled_dot_product_attention (math backend)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attn_course import attention, causal_mask, padding_mask
from attn_course.worked_example import PRINTED_OUTPUT, PRINTED_WEIGHTS, worked_example


def sdpa(q, k, v, **kw):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, **kw)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("T_q,T_k,d_k,d_v", [(1, 1, 16, 16), (17, 17, 40, 24), (5, 113, 64, 32), (113, 37, 8, 8)])
def test_matches_sdpa_without_mask(T_q, T_k, d_k, d_v):
    q, k, v = rand(2, 3, T_q, d_k, seed=1), rand(2, 3, T_k, d_k, seed=2), rand(2, 3, T_k, d_v, seed=3)
    torch.testing.assert_close(attention(q, k, v), sdpa(q, k, v), atol=1e-5, rtol=1e-5)


def test_custom_scale_matches_sdpa():
    q, k, v = rand(1, 2, 9, 12, seed=1), rand(1, 2, 11, 12, seed=2), rand(1, 2, 11, 5, seed=3)
    torch.testing.assert_close(attention(q, k, v, scale=0.3), sdpa(q, k, v, scale=0.3), atol=1e-5, rtol=1e-5)


def test_bool_and_additive_masks_match_sdpa():
    q, k, v = rand(2, 4, 7, 16, seed=1), rand(2, 4, 13, 16, seed=2), rand(2, 4, 13, 16, seed=3)
    mask = padding_mask([13, 6], 13)  # (2, 1, 1, 13): no row fully masked
    torch.testing.assert_close(attention(q, k, v, mask), sdpa(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(attention(q, k, v, additive), sdpa(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5)
    bias = rand(1, 4, 7, 13, seed=9)  # a general additive bias (e.g. ALiBi-like)
    torch.testing.assert_close(attention(q, k, v, bias), sdpa(q, k, v, attn_mask=bias), atol=1e-5, rtol=1e-5)


def test_causal_square_equals_sdpa_is_causal():
    q, k, v = rand(1, 2, 17, 16, seed=1), rand(1, 2, 17, 16, seed=2), rand(1, 2, 17, 16, seed=3)
    torch.testing.assert_close(attention(q, k, v, causal=True), sdpa(q, k, v, is_causal=True), atol=1e-5, rtol=1e-5)


def test_causal_rectangular_is_bottom_right_not_pytorch_top_left():
    q, k, v = rand(1, 1, 3, 8, seed=1), rand(1, 1, 7, 8, seed=2), rand(1, 1, 7, 8, seed=3)
    i = torch.arange(3).unsqueeze(1)
    j = torch.arange(7).unsqueeze(0)
    bottom_right = j <= i + (7 - 3)  # written out independently of causal_mask
    ours = attention(q, k, v, causal=True)
    torch.testing.assert_close(ours, sdpa(q, k, v, attn_mask=bottom_right), atol=1e-5, rtol=1e-5)
    # PyTorch's is_causal aligns top-left: query 0 sees key 0 only. Ours must differ from it.
    assert not torch.allclose(ours, sdpa(q, k, v, is_causal=True), atol=1e-3)
    # The last query sees every key (one-token decoding against a KV cache).
    torch.testing.assert_close(ours[..., -1, :], attention(q[..., -1:, :], k, v)[..., 0, :])


def test_causal_combines_with_mask():
    q, k, v = rand(2, 1, 9, 8, seed=1), rand(2, 1, 9, 8, seed=2), rand(2, 1, 9, 8, seed=3)
    pad = padding_mask([9, 5], 9)
    want = sdpa(q, k, v, attn_mask=pad & causal_mask(9))
    torch.testing.assert_close(attention(q, k, v, pad, causal=True), want, atol=1e-5, rtol=1e-5)


def test_fully_masked_rows_are_zero_not_nan_in_output_weights_and_grads():
    q, k, v = (rand(1, 1, T, 8, seed=s).requires_grad_() for T, s in ((4, 1), (6, 2), (6, 3)))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False  # query 2 may attend to nothing
    out, w = attention(q, k, v, mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[..., 2, :] == 0).all() and (w[..., 2, :] == 0).all()
    torch.testing.assert_close(w.sum(-1)[..., [0, 1, 3]], torch.ones(1, 1, 3))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[..., 2, :] == 0).all()
    # T_q > T_k with causal: the first T_q - T_k queries are before every key.
    out = attention(rand(6, 4, seed=4), rand(2, 4, seed=5), rand(2, 4, seed=6), causal=True)
    assert (out[:4] == 0).all() and torch.isfinite(out).all()


def test_additive_mask_all_minus_inf_row_gives_zeros():
    q, k, v = rand(3, 4, seed=1), rand(5, 4, seed=2), rand(5, 2, seed=3)
    m = torch.zeros(3, 5)
    m[1] = float("-inf")
    out = attention(q, k, v, m)
    assert (out[1] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_softmax_in_float32_returned_in_own_dtype(dtype):
    q, k, v = rand(2, 2, 33, 64, dtype=dtype, seed=1), rand(2, 2, 47, 64, dtype=dtype, seed=2), rand(
        2, 2, 47, 64, dtype=dtype, seed=3)
    out, w = attention(q, k, v, return_weights=True)
    assert out.dtype == dtype and w.dtype == dtype
    ref = attention(q.float(), k.float(), v.float())
    # The DESIGN.md rule: at most twice PyTorch's own same-dtype error, plus a small floor.
    torch_err = (sdpa(q, k, v).float() - ref).abs().max()
    our_err = (out.float() - ref).abs().max()
    assert our_err <= 2 * torch_err + 1e-3


@pytest.mark.parametrize("dtype, second, scale", [(torch.float16, 0.25, 1.0), (torch.bfloat16, 4.0, 0.25)])
def test_half_precision_scores_are_formed_and_softmaxed_in_float32(dtype, second, scale):
    """Inputs exactly representable in the half type whose two scores, 2000 and 2000 + ``second``, differ
    by less than the half type's spacing at 2000 (1 for float16, 8 for bfloat16): in half precision both
    round to 2000 and the weights are [0.5, 0.5]; in float32 they stay apart."""
    q = torch.tensor([[64.0, 1.0]], dtype=dtype)  # (T_q=1, d=2)
    k = torch.tensor([[31.25, 0.0], [31.25, second]], dtype=dtype)  # scores 2000 and 2000 + second
    v = torch.tensor([[0.0], [1.0]], dtype=dtype)
    assert (q.float() @ k.float().T).tolist() == [[2000.0, 2000.0 + second]]
    assert (q @ k.T).float().tolist() == [[2000.0, 2000.0]]  # what a half-precision matmul would see
    out, w = attention(q, k, v, scale=scale, return_weights=True)
    want = torch.softmax(torch.tensor([0.0, second * scale]), -1)  # float32: [0.438, 0.562] or [0.269, 0.731]
    torch.testing.assert_close(w.float(), want[None], atol=4e-3, rtol=0)
    torch.testing.assert_close(out.float(), want[1:][None], atol=4e-3, rtol=0)


def test_leading_dims_broadcast():
    q = rand(2, 4, 5, 8, seed=1)  # (B, H, T_q, d)
    k, v = rand(1, 4, 6, 8, seed=2), rand(6, 3, seed=3)  # k broadcasts over B, v over B and H
    out = attention(q, k, v)
    assert out.shape == (2, 4, 5, 3)
    want = attention(q, k.expand(2, 4, 6, 8), v.expand(2, 4, 6, 3))
    torch.testing.assert_close(out, want)


def test_return_weights_are_softmax_of_scaled_scores():
    q, k, v = rand(5, 16, seed=1), rand(7, 16, seed=2), rand(7, 3, seed=3)
    out, w = attention(q, k, v, return_weights=True)
    torch.testing.assert_close(w, torch.softmax(q @ k.T / math.sqrt(16), -1))
    torch.testing.assert_close(out, w @ v)


def test_worked_example_matches_the_documents_printed_numbers():
    q, k, v = worked_example()
    out, w = attention(q, k, v, causal=True, return_weights=True)
    # weights: to the three printed decimals
    assert torch.equal(torch.round(w * 1000) / 1000, torch.tensor(PRINTED_WEIGHTS))
    # outputs: the documents multiplied the *rounded* weights by V, so the printed outputs are exactly
    # rounded-weights @ V, and the live output agrees with them to within one unit of the last printed digit.
    torch.testing.assert_close(torch.tensor(PRINTED_WEIGHTS) @ v, torch.tensor(PRINTED_OUTPUT))
    assert (out - torch.tensor(PRINTED_OUTPUT)).abs().max() < 0.01


def test_softcap_caps_each_scaled_score_before_the_softmax():
    """Worked by hand: one query, keys giving scaled scores 10, 1 and 0; a cap of 5 turns them into
    5 tanh(2) = 4.82, 5 tanh(0.2) = 0.987 and 0 before the softmax (and before the mask, which blocks the
    third key here)."""
    q = torch.tensor([[[1.0, 0.0]]])  # (1, T_q=1, 2)
    k = torch.tensor([[[20.0, 0.0], [2.0, 0.0], [0.0, 3.0]]])  # (1, 3, 2): q . k = 20, 2, 0
    v = torch.eye(3)[None, :, :2]  # (1, 3, 2)
    capped = [5 * math.tanh(10 / 5), 5 * math.tanh(1 / 5)]  # scale 0.5: scores 10, 1
    e = [math.exp(s) for s in capped]
    mask = torch.tensor([True, True, False])
    out, weights = attention(q, k, v, mask, scale=0.5, softcap=5.0, return_weights=True)
    torch.testing.assert_close(weights[0, 0], torch.tensor([e[0] / sum(e), e[1] / sum(e), 0.0]))
    torch.testing.assert_close(out[0, 0], torch.tensor([e[0] / sum(e), e[1] / sum(e)]))
    assert torch.equal(attention(q, k, v, mask, scale=0.5, softcap=0.0), attention(q, k, v, mask, scale=0.5))


@pytest.mark.parametrize("bad,error", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("5", TypeError), (None, TypeError)])
def test_a_bad_softcap_is_named(bad, error):
    q = rand(1, 2, 3, 4)
    with pytest.raises(error, match="softcap must be"):
        attention(q, q, q, softcap=bad)
