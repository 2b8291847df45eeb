"""Hypothesis properties of the reference attention."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_course import attention, flash_attention_reference

dims = st.integers(min_value=1, max_value=9)


def tensors(seed, *shapes):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


@settings(max_examples=60, deadline=None)
@given(T_q=dims, T_k=dims, d=dims, seed=st.integers(0, 2**16), p=st.floats(0.0, 1.0))
def test_weight_rows_sum_to_one_or_zero(T_q, T_k, d, seed, p):
    q, k, v = tensors(seed, (T_q, d), (T_k, d), (T_k, d))
    mask = torch.rand(T_q, T_k, generator=torch.Generator().manual_seed(seed)) < p
    _, w = attention(q, k, v, mask, return_weights=True)
    sums = w.sum(-1)
    alive = mask.any(-1)
    torch.testing.assert_close(sums[alive], torch.ones(int(alive.sum()), dtype=sums.dtype))
    assert (sums[~alive] == 0).all() and (w >= 0).all()


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 12), d=dims, seed=st.integers(0, 2**16))
def test_permutation_equivariance(T, d, seed):
    x, wq, wk, wv = tensors(seed, (T, d), (d, d), (d, d), (d, d))
    perm = torch.randperm(T, generator=torch.Generator().manual_seed(seed))

    def self_attention(x):
        return attention(x @ wq, x @ wk, x @ wv)

    # Permuting the tokens permutes the outputs the same way: attention alone has no idea of order.
    torch.testing.assert_close(self_attention(x[perm]), self_attention(x)[perm])


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 12), d=dims, i=st.integers(0, 11), seed=st.integers(0, 2**16))
def test_causal_output_ignores_the_future(T, d, i, seed):
    i = i % (T - 1)
    q, k, v, noise = tensors(seed, (T, d), (T, d), (T, d), (3, T, d))
    out = attention(q, k, v, causal=True)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[i + 1 :] += noise[0, i + 1 :]
    k2[i + 1 :] += noise[1, i + 1 :]
    v2[i + 1 :] += noise[2, i + 1 :]
    out2 = attention(q2, k2, v2, causal=True)
    torch.testing.assert_close(out2[: i + 1], out[: i + 1])
    assert not torch.allclose(out2[i + 1 :], out[i + 1 :])


@settings(max_examples=30, deadline=None)
@given(T_q=st.integers(1, 70), T_k=st.integers(1, 70), d=st.sampled_from([16, 40, 64]),
       bq=st.integers(1, 33), bk=st.integers(1, 33), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_tiled_reference_equals_attention_for_any_tiling(T_q, T_k, d, bq, bk, causal, seed):
    q, k, v = (t.float() for t in tensors(seed, (2, T_q, d), (2, T_k, d), (2, T_k, d)))
    out, _ = flash_attention_reference(q, k, v, causal=causal, block_q=bq, block_k=bk)
    torch.testing.assert_close(out, attention(q, k, v, causal=causal), atol=1e-5, rtol=1e-5)
