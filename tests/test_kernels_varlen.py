"""flash_attention_varlen: three packed sequences of different lengths, each checked against attention on
that sequence alone (so a token that leaked into a neighbour's attention would show up)."""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import (
    assert_matches_by_rule,
    fa2_grads,
    max_err,
    reference,
    reference_lse,
    torch_same_dtype,
)

from attn_course.kernels import _variants, flash_attention_varlen

LENS_Q = [17, 1, 113]
LENS_K = [40, 23, 113]  # T_q != T_k within a sequence: bottom-right alignment per sequence


def packed(lens, H, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lens), H, D, generator=g).to(dtype)  # (total_T, H, D)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return x, cu


def per_sequence(x, cu, b):
    """Sequence b of a packed [total_T, H, D] tensor as [1, H, T_b, D]."""
    return x[cu[b]:cu[b + 1]].transpose(0, 1).unsqueeze(0)  # (1, H, T_b, D)


def check_packed_with(device, variant, kernel_kwargs, ref_kwargs_of, q_scale=1.0, dtype=torch.float16):
    """Three packed sequences (one with no query: its keys must get no gradient), GQA, causal, with the score
    changes ``kernel_kwargs`` (``softcap=...``, ``alibi_slopes=...``), forced to ``variant``: each sequence
    against the reference given ``ref_kwargs_of(b, len_q, len_k)`` (the same changes, for sequence ``b``
    alone), by :func:`check_varlen_case`. ``q_scale`` multiplies the queries (scores large enough for a cap to
    bite)."""
    with _variants.settings(kernel=variant):
        check_varlen_case([5, 0, 33], [9, 23, 33], 4, 2, 32, True, (-1, -1), dtype, device,
                          scores=(kernel_kwargs, ref_kwargs_of), q_scale=q_scale)


def check_varlen_case(lens_q, lens_k, H, H_kv, D, causal, window, dtype, device="cpu", tails=(0, 0), scores=None,
                      q_scale=1.0):
    """Packed sequences of lengths ``lens_q`` / ``lens_k``: each sequence's out, lse and gradients against
    attention on that sequence alone, by the tolerance rule. A sequence with no query leaves its keys'
    gradients exactly zero; one with no key gives zeros, ``lse = -inf`` and a zero dq. ``tails``: NaN
    padding rows after the queries' and the keys' sequences, whose out, gradients (zeros) and lse (-inf)
    are checked too. ``scores``: ``(kernel_kwargs, ref_of)``, score changes for the kernel (``softcap=...``,
    ``alibi_slopes=...``) and ``ref_of(b, len_q, len_k)``, the same for the reference on sequence ``b``
    alone; ``q_scale`` multiplies the queries (scores large enough for a cap to bite)."""
    kernel_kwargs, ref_of = scores or ({}, lambda b, n_q, n_k: {})
    draws = ((lens_q, H, 0, tails[0]), (lens_k, H_kv, 1, tails[1]), (lens_k, H_kv, 2, tails[1]),
             (lens_q, H, 3, tails[0]))  # q, k, v, dout: (lengths, heads, seed, padding rows)
    (q, cu_q), (k, cu_k), (v, _), (dout, _) = (
        (with_tail(x, tail).to(device), cu.to(device))
        for (x, cu), tail in ((packed(lens, h, D, dtype, seed), tail) for lens, h, seed, tail in draws))
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(dtype)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = flash_attention_varlen(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, window=window,
                                      return_lse=True, **kernel_kwargs)
    assert out.shape == q.shape and lse.shape == (H, q.shape[0])
    dq, dk, dv = torch.autograd.grad(out, leaves, dout)
    for name, x, used in (("out", out, sum(lens_q)), ("dq", dq, sum(lens_q)), ("dk", dk, sum(lens_k)),
                          ("dv", dv, sum(lens_k))):
        assert (x[used:] == 0).all(), f"{name}'s padding tail is not zero"
    assert torch.isneginf(lse[:, sum(lens_q):]).all(), "lse's padding tail is not -inf"
    for b in range(len(lens_q)):
        qb, kb, vb, ob, gb = (per_sequence(x, c, b) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k), (out, cu_q),
                                                                   (dout, cu_q)))
        got = (per_sequence(dq, cu_q, b), per_sequence(dk, cu_k, b), per_sequence(dv, cu_k, b))
        got_lse = lse[:, cu_q[b]:cu_q[b + 1]]
        if not lens_q[b] or not lens_k[b]:  # nothing attends: no output, no gradient, lse -inf
            assert not ob.abs().sum() and torch.isneginf(got_lse).all(), f"sequence {b} with no query or key"
            assert not any(g.abs().sum() for g in got), f"sequence {b} with no query or key has a gradient"
            continue
        extra = ref_of(b, lens_q[b], lens_k[b])
        want_lse = reference_lse(qb, kb, causal, window, **extra)[0]  # (H, T_b)
        assert torch.equal(torch.isneginf(got_lse), torch.isneginf(want_lse))
        fin = torch.isfinite(want_lse)
        assert max_err(got_lse[fin], want_lse[fin]) < 1e-2
        # out and the gradients of sequence b alone, by autograd through the reference and the same-dtype budget,
        # or FlashAttention-2's own error where that is larger (its delta from the output rounded to 16 bits:
        # rows whose weight sits almost all on one key, as a large cap or ALiBi makes them)
        fa2 = None if dtype == torch.float32 else fa2_grads(qb, kb, vb, None, 0.0, causal, window, gb, **extra)
        assert_matches_by_rule(f"of sequence {b}", ob, got, (qb, kb, vb), gb,
                               lambda q, k, v, extra=extra: reference(q, k, v, causal, window, **extra),
                               lambda q, k, v, extra=extra: torch_same_dtype(q, k, v, causal, window, **extra), dtype,
                               fa2)


@pytest.mark.parametrize("causal,window,dtype,H_kv,D,variant", [
    (False, (-1, -1), torch.float32, 2, 32, "auto"),
    (True, (-1, -1), torch.float16, 1, 32, "auto"),
    (True, (8, -1), torch.bfloat16, 2, 32, "auto"),
    (True, (-1, -1), torch.bfloat16, 2, 256, "auto"),
    # through tensor descriptors (Hopper's TMA, emulated by the interpreter): one [1, H, total_T, D] view
    (False, (-1, -1), torch.float32, 2, 32, "tma"),
    (True, (8, -1), torch.float16, 1, 64, "tma"),
])
def test_varlen_matches_attention_per_sequence(causal, window, dtype, H_kv, D, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_varlen_case(LENS_Q, LENS_K, 4, H_kv, D, causal, window, dtype)
    expected = "pointer" if variant == "auto" else variant  # (auto on the CPU: the interpreter's pointers)
    assert {_variants.used(("cpu", dtype, D, part)) for part in ("forward", "backward")} == {expected}


@pytest.mark.parametrize("variant", ["pointer", "tma"])
@pytest.mark.parametrize("causal,window", [(False, (-1, -1)), (True, (-1, -1)), (True, (3, 0))],
                         ids=["full", "causal", "window3"])
def test_nan_in_one_sequence_reaches_no_other(causal, window, variant, monkeypatch):
    """Sequence 1 all NaN (queries, keys, values, output gradient): the other sequences' outputs and
    gradients must be bit-identical to a run without it. A tile that overhangs sequence 0's end holds
    sequence 1's rows when read through a descriptor (the copy engine zero-fills only past the tensor's
    end), and a masked score gives a zero probability but 0 * NaN is NaN; so the kernels read that tile
    through masked pointer loads. The window (3, 0) puts the overhanging key tile in the first masked
    loop rather than the last (see ``_tiles.overhang``)."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    q, k, v, cu_q, cu_k = small_packed()
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5))

    def run(poison: bool):
        tensors = [x.clone() for x in (q, k, v, dout)]
        if poison:
            for x, cu in zip(tensors, (cu_q, cu_k, cu_k, cu_q), strict=True):
                x[cu[1]:cu[2]] = float("nan")
        leaves = [x.requires_grad_(True) for x in tensors[:3]]
        out = flash_attention_varlen(*leaves, cu_q, cu_k, max(LENS_Q), max(LENS_K), causal=causal, window=window)
        return (out, *torch.autograd.grad(out, leaves, tensors[3]))

    clean, poisoned = run(False), run(True)
    for name, c, p, cu in zip(("out", "dq", "dk", "dv"), clean, poisoned, (cu_q, cu_q, cu_k, cu_k), strict=True):
        for b in (0, 2):
            got, want = p[cu[b]:cu[b + 1]], c[cu[b]:cu[b + 1]]
            assert torch.equal(got, want), (
                f"{name} of sequence {b} changed when sequence 1 became NaN ({variant}): "
                f"{int(torch.isnan(got).sum())} NaN, max change {max_err(got.nan_to_num(), want):.2e}")
        assert torch.isnan(p[cu[1]:cu[2]]).any(), f"{name}: sequence 1 was meant to be poisoned"
    assert _variants.used(("cpu", torch.float32, 16, "forward")) == variant


def test_sequences_do_not_see_each_other():
    """Changing one sequence's keys must leave every other sequence's output bit-identical."""
    q, cu_q = packed(LENS_Q, 2, 16, torch.float32, 0)
    k, cu_k = packed(LENS_K, 2, 16, torch.float32, 1)
    v, _ = packed(LENS_K, 2, 16, torch.float32, 2)
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, 113, 113)
    k2, v2 = k.clone(), v.clone()
    k2[cu_k[1]:cu_k[2]] += 5.0
    v2[cu_k[1]:cu_k[2]] -= 3.0
    out2 = flash_attention_varlen(q, k2, v2, cu_q, cu_k, 113, 113)
    assert torch.equal(out[:cu_q[1]], out2[:cu_q[1]]) and torch.equal(out[cu_q[2]:], out2[cu_q[2]:])
    assert not torch.equal(out[cu_q[1]:cu_q[2]], out2[cu_q[1]:cu_q[2]])


def small_packed():
    """q, k, v and their cu_seqlens for LENS_Q / LENS_K with 2 heads of 16, no grad."""
    (q, cu_q), (k, cu_k), (v, _) = (packed(lens, 2, 16, torch.float32, seed)
                                    for lens, seed in ((LENS_Q, 0), (LENS_K, 1), (LENS_K, 2)))
    return q, k, v, cu_q, cu_k


@pytest.fixture
def value_reads(monkeypatch):
    """The cu_seqlens whose values the checks read."""
    from attn_course.kernels import _checks

    reads, real = [], _checks.check_cu_seqlens
    monkeypatch.setattr(_checks, "check_cu_seqlens", lambda cu: reads.append(cu) or real(cu))
    return reads


@pytest.fixture
def read_like_a_gpu(monkeypatch):
    """CPU tensors treated as GPU ones, whose reads cost a synchronisation and are cached per version (so
    that the caching can be tested here)."""
    from attn_course.kernels import _checks

    monkeypatch.setattr(_checks, "SYNC_TO_READ", ("cuda", "cpu"))


def test_cpu_cu_seqlens_are_checked_at_every_call_even_behind_the_version_counter(value_reads):
    """Reading a CPU tensor costs no synchronisation: it is checked at every call. A write through a NumPy
    view leaves torch's version counter as it was; with the checks cached per version, the interpreter ran
    on the broken lengths and wrote out of bounds ("double free or corruption")."""
    q, k, v, cu_q, cu_k = small_packed()
    shared = cu_k.numpy()  # the same memory
    flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))
    flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))
    assert len(value_reads) == 4
    version = cu_k._version
    shared[1] = shared[2] + 1  # no longer sorted
    assert cu_k._version == version, "torch saw the write: this test no longer tests what it says"
    with pytest.raises(ValueError, match="cu_seqlens_k: cu_seqlens must be sorted"):
        flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))


def test_cu_seqlens_values_are_read_once_per_version(value_reads, read_like_a_gpu):
    """A model passes the same cu_seqlens to every layer: on a GPU their values are read and checked at the
    first call only, and again after an in-place write (which could have broken them)."""
    q, k, v, cu_q, cu_k = small_packed()

    def call():
        return flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K), causal=True)

    first = call()
    for _ in range(3):
        assert torch.equal(call(), first)
    assert len(value_reads) == 2, "each cu_seqlens is read once, however many layers use it"
    cu_k[1] = cu_k[2] + 1  # written in place: no longer sorted
    with pytest.raises(ValueError, match="cu_seqlens_k: cu_seqlens must be sorted"):
        call()
    cu_k[1] = LENS_K[0]  # repaired in place
    assert torch.equal(call(), first) and len(value_reads) == 4, "cu_k read twice more, cu_q never again"


def test_inference_mode_cu_seqlens_are_checked_at_every_call(value_reads, read_like_a_gpu):
    """A tensor made under ``torch.inference_mode`` has no version counter to tell a write: no caching."""
    q, k, v, _, _ = small_packed()
    with torch.inference_mode():
        cu_q, cu_k = (torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
                      for lens in (LENS_Q, LENS_K))
        for _ in range(2):
            flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))
    assert len(value_reads) == 4


def test_checked_cu_seqlens_are_forgotten_with_their_tensor(read_like_a_gpu):
    """The cache of checked values holds no reference to the tensors: nothing leaks, and an id reused by a
    later tensor cannot find an old tensor's values."""
    import gc

    from attn_course.kernels import _checks

    q, k, v, cu_q, cu_k = small_packed()
    flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K))
    keys = [(id(cu_q), "cu_seqlens"), (id(cu_k), "cu_seqlens")]
    assert all(key in _checks._host_copies for key in keys)
    del cu_q, cu_k
    gc.collect()
    assert not any(key in _checks._host_copies for key in keys)


def with_tail(x, tail, fill=float("nan")):
    """``x [total_T, ...]`` followed by ``tail`` rows of ``fill``: a static-shape buffer's padding."""
    return torch.cat([x, x.new_full((tail, *x.shape[1:]), fill)])  # (total_T + tail, ...)


PADDING_TAILS = [(5, 0, True), (0, 7, False), (3, 9, True), (33, 1, False)]  # (tail_q, tail_k, causal)


@pytest.mark.parametrize("variant", ["pointer", "tma"])
@pytest.mark.parametrize("tail_q,tail_k,causal", PADDING_TAILS)
def test_a_padding_tail_is_never_read_and_gets_zeros(tail_q, tail_k, causal, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_padding_tail(tail_q, tail_k, causal, "cpu")


@pytest.mark.parametrize("tail_q,tail_k,causal", PADDING_TAILS[2:])
def test_a_padding_tail_as_recorded_in_a_cuda_graph(tail_q, tail_k, causal, monkeypatch):
    """During CUDA graph capture the rows used are not known (a replay may bring other cu_seqlens): the
    kernels get the whole tensors and write into buffers filled with zeros and -inf first. Capture is
    pretended here (the GPU test records and replays a graph), and the whole tensors are seen to arrive."""
    from attn_course.kernels import _checks, _ops

    rows, real = [], _ops.forward
    monkeypatch.setattr(_checks, "capturing", lambda x: True)
    monkeypatch.setattr(_ops, "forward", lambda q, *args, **kw: rows.append(q.shape[0]) or real(q, *args, **kw))
    check_padding_tail(tail_q, tail_k, causal, "cpu")
    assert rows == [sum(LENS_Q), sum(LENS_Q) + tail_q], "the kernels did not get the whole tensors"


def check_padding_tail(tail_q, tail_k, causal, device):
    """Sequences that stop short of the tensors' end (static-shape buffers, flash-attn issue #1228): the
    sequences' out, lse and gradients are bit-identical to the same call without the tail, whose rows are
    all NaN here (so any read of them would show); the tail's out is zeros, its lse -inf and its gradients
    zeros, where flash-attn leaves uninitialised memory."""
    q, k, v, cu_q, cu_k = (x.to(device) for x in small_packed())
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to(device)

    def run(q, k, v, dout):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        out, lse = flash_attention_varlen(*leaves, cu_q, cu_k, max(LENS_Q), max(LENS_K), causal=causal,
                                          return_lse=True)
        return (out, lse, *torch.autograd.grad(out, leaves, dout))

    plain = run(q, k, v, dout)
    padded = run(with_tail(q, tail_q), with_tail(k, tail_k), with_tail(v, tail_k), with_tail(dout, tail_q))
    used = (q.shape[0], q.shape[0], q.shape[0], k.shape[0], k.shape[0])  # out, lse (rows on dim 1), dq, dk, dv
    for name, p, c, n in zip(("out", "lse", "dq", "dk", "dv"), padded, plain, used, strict=True):
        rows = (lambda x: x.T) if name == "lse" else (lambda x: x)  # noqa: E731 (lse is [H, total_q])
        got = rows(p)
        assert got.shape[0] == n + (tail_k if name in ("dk", "dv") else tail_q), f"{name} has shape {p.shape}"
        assert torch.equal(got[:n], rows(c)), f"{name} of the sequences changed with a padding tail"
        want_tail = float("-inf") if name == "lse" else 0.0
        assert (got[n:] == want_tail).all(), f"{name}'s padding tail holds {got[n:].unique().tolist()}"


def test_sequences_that_use_no_row_of_a_padded_buffer():
    """Every row padding (cu_seqlens all zero): zeros, lse -inf and zero gradients throughout."""
    q, k, v = (torch.randn(6, 2, 16, requires_grad=True) for _ in range(3))
    cu = torch.zeros(3, dtype=torch.int32)
    out, lse = flash_attention_varlen(q, k, v, cu, cu, 0, 0, return_lse=True)
    assert out.shape == q.shape and not out.abs().sum() and torch.isneginf(lse).all() and lse.shape == (2, 6)
    assert not any(g.abs().sum() for g in torch.autograd.grad(out.sum() + lse.clamp(min=0).sum(), (q, k, v)))
