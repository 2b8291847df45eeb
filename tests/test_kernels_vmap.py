"""``torch.func`` over the kernels (``kernels/_vmap.py``): ``vmap`` must be the same as a loop of calls,
per-sample gradients (``vmap(grad)``) and Jacobians (``jacrev``) the same as the reference's, and what
cannot be vmapped (packed batches, caches, dropout) or differentiated twice is refused by name."""

from __future__ import annotations

import pytest
import torch
from test_kernels_alibi import alibi_bias, geometric_slopes
from test_kernels_common import make_qkv, max_err, reference
from test_kernels_varlen import packed

from attn_course.kernels import flash_attention, flash_attention_kvcache, flash_attention_varlen

F32 = torch.float32
vmap, grad = torch.func.vmap, torch.func.grad


def samples(N, B, H, H_kv, T_q, T_k, D, seed=0, device="cpu"):
    """``N`` samples of q ``[B, H, T_q, D]``, k and v ``[B, H_kv, T_k, D]``, stacked on dim 0."""
    qs, ks, vs = zip(*(make_qkv(B, H, H_kv, T_q, T_k, D, F32, seed=seed + n, device=device) for n in range(N)),
                     strict=True)
    return torch.stack(qs), torch.stack(ks), torch.stack(vs)  # (N, B, H, T_q, D), (N, B, H_kv, T_k, D) x 2


@pytest.mark.parametrize("kwargs", [dict(causal=True), dict(window=(4, 2), scale=0.3), dict(softcap=1.5)],
                         ids=["causal", "window", "softcap"])
def test_vmap_is_a_loop_of_calls(kwargs):
    """Out and lse of every sample, against the same call made once per sample (a merged batch launches
    once; nothing may leak between samples)."""
    q, k, v = samples(3, 2, 4, 2, 13, 21, 16)
    out, lse = vmap(lambda a, b, c: flash_attention(a, b, c, return_lse=True, **kwargs))(q, k, v)
    assert out.shape == (3, 2, 4, 13, 16) and lse.shape == (3, 2, 4, 13)
    for n in range(3):
        want, want_lse = flash_attention(q[n], k[n], v[n], return_lse=True, **kwargs)
        assert torch.equal(out[n], want) and torch.equal(lse[n], want_lse), f"sample {n}"


def test_nested_vmap_and_vmap_under_torch_compile():
    """``vmap(vmap(f))`` merges twice (the inner rule's launch is itself batched by the outer), and
    ``torch.compile(vmap(f), fullgraph=True)`` traces the rule into one graph: both equal plain loops."""
    q, k = torch.randn(2, 3, 1, 2, 5, 16), torch.randn(2, 3, 1, 2, 7, 16)  # (N1, N2, B, H, T, D)
    out = vmap(vmap(lambda a, b: flash_attention(a, b, b, causal=True)))(q, k)
    for i in range(2):
        for j in range(3):
            assert torch.equal(out[i, j], flash_attention(q[i, j], k[i, j], k[i, j], causal=True)), (i, j)
    batched = vmap(lambda a: flash_attention(a, a, a, window=(2, 2)))
    torch._dynamo.reset()
    compiled = torch.compile(batched, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(q[0]), batched(q[0]))


def test_vmap_over_another_dim_with_shared_keys_and_values():
    """``in_dims=(2, None, None)``: the queries vmapped along their heads' dim... of a stack, the keys and
    values shared by every sample (broadcast before the merge), the output on dim 1."""
    q = torch.randn(1, 4, 5, 9, 16)  # (B, H, N, T, D): sample n is q[:, :, n]
    _, k, v = make_qkv(1, 4, 2, 9, 11, 16, F32, seed=2)
    out = vmap(lambda a: flash_attention(a, k, v, causal=True), in_dims=2, out_dims=1)(q)  # (B, N, H, T, D)
    for n in range(5):
        assert max_err(out[:, n], reference(q[:, :, n], k, v, causal=True)) < 2e-5, f"sample {n}"


@pytest.mark.parametrize("slopes_of", ["shared [H]", "shared [B, H]", "per sample [H]", "per sample [B, H]"])
def test_vmap_with_alibi_slopes_shared_or_per_sample(slopes_of):
    N, B, H = 3, 2, 4
    q, k, v = samples(N, B, H, H, 10, 10, 16, seed=5)
    per_sample = slopes_of.startswith("per sample")
    shape = [B] if slopes_of.endswith("[B, H]") else []
    slopes = torch.stack([geometric_slopes(H, *shape) * (n + 1) for n in range(N)]) if per_sample else \
        geometric_slopes(H, *shape)  # (N, [B,] H) or ([B,] H)
    call = (lambda a, b, c, s: flash_attention(a, b, c, causal=True, alibi_slopes=s))
    out = vmap(call, in_dims=(0, 0, 0, 0 if per_sample else None))(q, k, v, slopes)
    for n in range(N):
        s = slopes[n] if per_sample else slopes
        want = reference(q[n], k[n], v[n], causal=True, bias=alibi_bias(s, 10, 10))
        assert max_err(out[n], want) < 2e-5, f"sample {n}"


def test_per_sample_gradients_match_the_reference():
    check_per_sample_gradients()


def check_per_sample_gradients(device="cpu"):
    """``vmap(grad(loss))``: each sample's gradients of a loss through out and lse, against autograd through
    the reference attention for that sample alone."""
    q, k, v = samples(4, 1, 4, 2, 11, 17, 16, seed=7, device=device)

    def loss(a, b, c, attend):
        out, lse = attend(a, b, c)
        return out.square().sum() + lse.sum()

    def ours(a, b, c):
        return flash_attention(a, b, c, causal=True, window=(6, -1), return_lse=True)

    def theirs(a, b, c):  # the reference, with its lse from the definition
        G = a.shape[1] // b.shape[1]
        s = a @ b.repeat_interleave(G, dim=1).transpose(-2, -1) * a.shape[-1] ** -0.5
        ones = torch.ones(11, 17, dtype=torch.bool, device=a.device)
        allowed = ones.tril(17 - 11) & ~ones.tril(17 - 11 - 7)  # (T_q, T_k): causal, at most 6 keys back
        lse = s.masked_fill(~allowed, float("-inf")).logsumexp(-1)
        return reference(a, b, c, causal=True, window=(6, -1)), lse

    got = vmap(grad(lambda a, b, c: loss(a, b, c, ours), argnums=(0, 1, 2)))(q, k, v)
    for n in range(4):
        leaves = [x[n].clone().requires_grad_(True) for x in (q, k, v)]
        want = torch.autograd.grad(loss(*leaves, theirs), leaves)
        for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
            assert max_err(g[n], w) < 1e-4, f"sample {n}: {name} off by {max_err(g[n], w):.2e}"


def test_per_sample_gradient_of_the_queries_alone():
    """``argnums=0``: the keys and values are frozen, their kernel skipped (their gradient never formed)."""
    q, k, v = samples(3, 1, 2, 2, 9, 9, 16, seed=9)
    got = vmap(grad(lambda a, b, c: flash_attention(a, b, c, causal=True).square().sum()))(q, k, v)
    for n in range(3):
        leaf = q[n].clone().requires_grad_(True)
        (want,) = torch.autograd.grad(reference(leaf, k[n], v[n], causal=True).square().sum(), leaf)
        assert max_err(got[n], want) < 1e-4, f"sample {n}"


def test_jacrev_matches_the_references_jacobian():
    q, k, v = make_qkv(1, 2, 1, 3, 5, 8, F32, seed=11)
    got = torch.func.jacrev(lambda a: flash_attention(a, k, v, causal=True))(q)  # (1, 2, 3, 8, 1, 2, 3, 8)
    want = torch.autograd.functional.jacobian(lambda a: reference(a, k, v, causal=True), q)
    assert got.shape == want.shape and max_err(got, want) < 1e-5


def test_second_derivatives_are_refused_by_name():
    """``grad(grad(...))`` would miss attention's second-order terms: it raises, naming the way out; forward
    mode (``jvp``, ``hessian``) is refused by PyTorch, since the kernels have no forward-mode derivative."""
    q, k, v = make_qkv(1, 2, 2, 7, 7, 8, F32, seed=12)

    def loss(a):
        return flash_attention(a, k, v).square().sum()

    with pytest.raises(RuntimeError, match="no second derivative.*attn_course.attention"):
        grad(lambda a: grad(loss)(a).square().sum())(q)
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(loss, (q,), (torch.ones_like(q),))


def test_what_cannot_be_vmapped_is_named():
    q, k, v = samples(2, 1, 2, 2, 6, 6, 16)
    with pytest.raises(ValueError, match="dropout .*cannot be vmapped"):
        vmap(lambda a, b, c: flash_attention(a, b, c, dropout_p=0.1), randomness="same")(q, k, v)
    with pytest.raises(RuntimeError, match="randomness"):  # (PyTorch's own rule, before ours)
        vmap(lambda a, b, c: flash_attention(a, b, c, dropout_p=0.1))(q, k, v)
    (pq, cu), (pk, _) = packed([3, 4], 2, 16, F32, 0), packed([3, 4], 2, 16, F32, 1)
    with pytest.raises(ValueError, match="a packed batch .*cannot be vmapped"):
        vmap(lambda a: flash_attention_varlen(a, pk, pk, cu, cu, 4, 4), in_dims=0)(torch.stack([pq, pq]))
    with pytest.raises(ValueError, match="key/value cache .*cannot be vmapped"), torch.no_grad():
        vmap(lambda a: flash_attention_kvcache(a, k[0], v[0], 6))(q)
