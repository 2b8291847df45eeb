"""Generation with a key/value cache: ``flash_attention_kvcache`` and flash-attn's ``flash_attn_with_kvcache``.

Each sequence of the batch has filled its cache to its own length; the new tokens' keys and values are
written into the cache in place and the new queries attend, bottom-right aligned, to everything filled so
far. Checked against ``attn_course.attention`` on each sequence's filled cache alone, with the unfilled
tails of the caches full of NaN (which would poison the output if the kernel read a single one), and
against full causal attention over a whole generated sequence, one token at a time.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import (
    assert_close_by_rule,
    make_qkv,
    max_err,
    reference,
    torch_same_dtype,
)
from test_kernels_empty import expected

from attn_course.kernels import (
    _variants,
    flash_attention,
    flash_attention_kvcache,
    flash_attn_with_kvcache,
    swap_seq_and_heads,
)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)


def make_cache(B, H_kv, T_cache, D, lengths, dtype, device="cpu", seed=0):
    """Caches ``[B, H_kv, T_cache, D]`` holding random keys and values up to ``lengths[b]``, NaN after."""
    g = torch.Generator().manual_seed(seed)
    caches = [torch.randn(B, H_kv, T_cache, D, generator=g).to(device=device, dtype=dtype) for _ in range(2)]
    for cache in caches:
        for b, n in enumerate(lengths):
            cache[b, :, n:] = float("nan")  # never to be read
    return caches


def check_against_each_sequence(q, k_cache, v_cache, lengths, causal, window, out, lse, dtype, ref_of=None):
    """Sequence ``b``'s output and lse against attention on its filled cache ``[:lengths[b]]`` alone, with the
    score changes ``ref_of(b, n)`` for its ``n`` keys (``softcap=...``, ``bias=...``) if given."""
    for b, n in enumerate(lengths):
        qb, kb, vb = q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n]  # (1, H or H_kv, T, D)
        extra = ref_of(b, n) if ref_of is not None and min(n, qb.shape[2]) else {}
        want, want_lse = expected(qb, kb, vb, causal, window, **extra)
        budget = torch_same_dtype(qb, kb, vb, causal, window, **extra) if min(n, qb.shape[2]) else want
        assert_close_by_rule(f"out of sequence {b} (cache length {n})", out[b:b + 1], want, budget, dtype)
        assert torch.equal(torch.isneginf(lse[b]), torch.isneginf(want_lse[0].to(lse.device)))
        finite = torch.isfinite(want_lse[0])
        if finite.any():  # (an empty cache: every lse is -inf, checked above)
            assert max_err(lse[b][finite], want_lse[0][finite]) < 1e-2


def check_decoding_step_with(num_splits, device, variant, dtype, kernel_kwargs, ref_kwargs_of, q_scale=1.0,
                             T_cache=96):
    """One decoding step with GQA (a key/value head's 4 query heads are rows of one program), caches of three
    lengths (NaN past them), one new key each, ``num_splits`` slices of the keys combined, with the score
    changes ``kernel_kwargs``, forced to ``variant``: each sequence's output and lse against the reference
    given ``ref_kwargs_of(b, n)`` (the same changes, for sequence ``b`` and its ``n`` keys), by
    :func:`check_kvcache_case`."""
    case = (3, 8, 2, T_cache, 1, 1, [0, 41, T_cache - 1], True, NONE, 64, dtype)
    with _variants.settings(kernel=variant):
        check_kvcache_case(case, device, num_splits, scores=(kernel_kwargs, ref_kwargs_of), q_scale=q_scale)


CASES = [  # (B, H, H_kv, T_cache, T_q, T_new, lengths before appending, causal, window, D, dtype)
    (3, 4, 2, 64, 1, 1, [5, 0, 63], True, NONE, 32, F32),  # one decoding step; a cache that was empty
    (3, 4, 1, 64, 1, 0, [17, 1, 64], False, NONE, 64, BF16),  # no new keys: attend to the cache as it is
    (2, 4, 4, 80, 3, 3, [40, 0], True, (8, 0), 32, F16),  # three tokens at once (a prompt chunk), a window
    (2, 2, 1, 48, 4, 1, [30, 3], True, NONE, 16, F32),  # more queries than new keys (speculative decoding)
]


def case_id(c):
    B, H, H_kv, T_cache, T_q, T_new, lengths, causal, window, D, dtype = c
    return f"Tq{T_q}-new{T_new}-len{'_'.join(map(str, lengths))}{'-causal' if causal else ''}-D{D}-{str(dtype)[6:]}"


def favour_recent_keys(q, k_cache, k, recency: float):
    """Shift q and the keys along one direction ``u`` so that every query's scores climb by about
    ``recency`` from the cache's first row to its last, and the new keys score like the last row, as in
    real decoding where recent tokens matter more. Then the later key slices of a split hold the largest
    logsumexp, and the combine must rescale what it summed from the earlier ones (with plain random data
    the first slice, the fullest, nearly always holds the largest). Returns new tensors; NaN tails stay NaN."""
    D, T_cache = q.shape[-1], k_cache.shape[2]
    u = torch.ones(D, device=q.device) / D**0.5  # a unit vector
    lift = 4.0  # every query gets ~4 along u (its own random component is ~N(0, 1))
    climb = recency * D**0.5 / lift  # row j: + climb * j / (T_cache - 1) along u, scores + ~recency * j / (T_cache - 1)
    ramp = torch.linspace(0, climb, T_cache, device=q.device)[:, None] * u  # (T_cache, D)
    q = (q.float() + lift * u).to(q.dtype)
    k_cache = (k_cache.float() + ramp).to(k_cache.dtype)  # (B, H_kv, T_cache, D), broadcast over B, H_kv
    k = (k.float() + climb * u).to(k.dtype)
    return q, k_cache, k


def check_kvcache_case(case, device="cpu", num_splits=0, recency=0.0, scores=None, q_scale=1.0):
    """``case`` as in ``CASES``; ``num_splits`` is passed on; ``recency > 0`` applies
    :func:`favour_recent_keys` to the data. ``scores``: ``(kernel_kwargs, ref_of)``, score changes for the
    kernel (``softcap=...``, ``alibi_slopes=...``) and ``ref_of(b, n)``, the same for the reference on
    sequence ``b``'s ``n`` filled keys; ``q_scale`` multiplies the queries."""
    B, H, H_kv, T_cache, T_q, T_new, lengths, causal, window, D, dtype = case
    kernel_kwargs, ref_of = scores or ({}, None)
    k_cache, v_cache = make_cache(B, H_kv, T_cache, D, lengths, dtype, device)
    q, k, v = make_qkv(B, H, H_kv, T_q, T_new, D, dtype, device=device, seed=1)
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(dtype)
    if recency:
        q, k_cache, k = favour_recent_keys(q, k_cache, k, recency)
    new = dict(k=k, v=v) if T_new else {}
    before = k_cache.clone(), v_cache.clone()
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    with torch.no_grad():
        out, lse = flash_attention_kvcache(q, k_cache, v_cache, seqlens, **new, causal=causal, window=window,
                                           num_splits=num_splits, return_lse=True, **kernel_kwargs)
    assert out.shape == q.shape and out.dtype == dtype and lse.shape == (B, H, T_q)
    filled = [n + T_new for n in lengths]
    for cache, old, x in zip((k_cache, v_cache), before, (k, v), strict=True):  # appended in place, nothing else
        want = old.clone()
        for b, n in enumerate(lengths):
            want[b, :, n:n + T_new] = x[b]
        torch.testing.assert_close(cache, want, atol=0, rtol=0, equal_nan=True)
    check_against_each_sequence(q, k_cache, v_cache, filled, causal, window, out, lse, dtype, ref_of)
    assert seqlens.tolist() == lengths, "cache_seqlens is the caller's: it must not change"


@pytest.mark.parametrize("D", [16, 64])
def test_favouring_recent_keys_makes_the_scores_climb_as_asked(D):
    """The helper itself: over the cache's rows, the scores' gain (averaged over queries and heads) climbs with
    a slope of ``recency`` per cache length, give or take a quarter; the new keys gain about ``recency``; the
    NaN tails stay NaN."""
    B, H_kv, T_cache, recency = 2, 2, 64, 3.0
    k_cache, _ = make_cache(B, H_kv, T_cache, D, [T_cache, T_cache], F32)
    q, k, _ = make_qkv(B, H_kv, H_kv, 8, 3, D, F32, seed=1)
    nan_cache, _ = make_cache(B, H_kv, T_cache, D, [T_cache - 4, 10], F32)
    q2, k_cache2, k2 = favour_recent_keys(q, k_cache, k, recency)
    gain = ((q2 @ k_cache2.transpose(-2, -1) - q @ k_cache.transpose(-2, -1)) * D**-0.5).mean(dim=(0, 1, 2))  # (T,)
    x = torch.linspace(0, 1, T_cache)  # each row's place in the cache
    slope = ((x - x.mean()) * (gain - gain.mean())).sum() / ((x - x.mean()) ** 2).sum()  # least squares
    assert abs(slope.item() - recency) < recency / 4, f"scores climb by {slope.item():.2f}, asked for {recency}"
    new_gain = ((q2 @ k2.transpose(-2, -1) - q @ k.transpose(-2, -1)) * D**-0.5).mean()
    assert abs(new_gain.item() - recency) < recency / 3, f"the new keys gain {new_gain.item():.2f}"
    assert torch.equal(favour_recent_keys(q, nan_cache, k, recency)[1].isnan(), nan_cache.isnan())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kvcache_matches_attention_on_each_sequences_filled_cache(case):
    check_kvcache_case(case)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_tma_variant_reads_no_unfilled_row(case, monkeypatch):
    """Through tensor descriptors the copy engine zero-fills only past the cache *tensor's* end, not past a
    sequence's filled length: the tile that overhangs it must come through masked pointer loads
    (``_tiles.overhang``), or the NaN tails would reach the output."""
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    check_kvcache_case(case)
    D, dtype = case[-2], case[-1]
    assert _variants.used(("cpu", dtype, D, "forward")) == "tma"


def test_generation_one_token_at_a_time_matches_causal_attention_over_the_whole_sequence():
    """A prompt of 7 tokens, then 5 generated one by one, each step appending its key and value: every
    step's output is the row of full causal attention over the final 12-token sequence at that position
    (which is what bottom-right alignment guarantees: the newest query is the last position)."""
    B, H, H_kv, D, T = 2, 4, 2, 32, 12
    q, k, v = make_qkv(B, H, H_kv, T, T, D, F32, seed=3)
    full = reference(q, k, v, causal=True)  # (B, H, T, D)
    k_cache, v_cache = torch.zeros(B, H_kv, 16, D), torch.zeros(B, H_kv, 16, D)
    seqlens = torch.zeros(B, dtype=torch.int32)
    steps = [(0, 7)] + [(t, t + 1) for t in range(7, T)]
    for start, end in steps:
        out = flash_attention_kvcache(q[:, :, start:end], k_cache, v_cache, seqlens, k[:, :, start:end],
                                      v[:, :, start:end], causal=True)
        assert max_err(out, full[:, :, start:end]) < 2e-5, f"tokens {start}..{end - 1}"
        seqlens += end - start  # the caller advances its lengths (in place: a new version, checked again)


def test_cache_seqlens_as_an_int_or_none():
    """An int is every sequence's length; ``None`` is a full cache (nothing appended)."""
    q, k, v = make_qkv(2, 4, 2, 1, 30, 32, F32, seed=4)
    k_cache, v_cache = k.clone(), v.clone()
    with torch.no_grad():
        by_int = flash_attention_kvcache(q, k_cache, v_cache, 30)
        by_none = flash_attention_kvcache(q, k_cache, v_cache)
    want = flash_attention(q, k, v)
    assert torch.equal(by_int, want) and torch.equal(by_none, want)


def test_flash_attn_with_kvcache_in_flash_attns_layout():
    """``[B, T, H, D]`` tensors, the cache written in that layout, the same bits as the ``[B, H, T, D]`` call."""
    lengths = [9, 2]
    k_cache, v_cache = make_cache(2, 2, 24, 32, lengths, F16)  # (B, H_kv, T, D)
    q, k, v = make_qkv(2, 4, 2, 2, 2, 32, F16, seed=5)
    ours_k, ours_v = k_cache.clone(), v_cache.clone()
    want, want_lse = flash_attention_kvcache(q, ours_k, ours_v, torch.tensor(lengths), k, v, causal=True,
                                             scale=0.2, num_splits=4, return_lse=True)
    bthd = [swap_seq_and_heads(x).contiguous() for x in (q, k_cache, v_cache, k, v)]  # (B, T, H, D)
    out, lse = flash_attn_with_kvcache(*bthd[:3], *bthd[3:], cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                                       softmax_scale=0.2, causal=True, num_splits=4, return_softmax_lse=True)
    assert torch.equal(out, swap_seq_and_heads(want)) and torch.equal(lse, want_lse)
    for got, ours in ((bthd[1], ours_k), (bthd[2], ours_v)):
        torch.testing.assert_close(got, swap_seq_and_heads(ours), atol=0, rtol=0, equal_nan=True)


def _kv(**kw):
    q, k, v = make_qkv(2, 4, 2, 1, 1, 16, F32)
    cache = torch.zeros(2, 2, 8, 16)
    args = dict(q=q, k_cache=cache, v_cache=cache.clone(), k=k, v=v, cache_seqlens=torch.tensor([3, 7]))
    return {**args, **kw}


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(cache_seqlens=torch.tensor([3, 8])), ValueError, r"cache_seqlens must hold B = 2 lengths in \[0, 7\]"),
    (dict(cache_seqlens=-1), ValueError, r"lengths in \[0, 7\].*got \[-1, -1\]"),
    (dict(cache_seqlens=torch.tensor([3])), ValueError, "1-D integer tensor of B = 2 lengths"),
    (dict(cache_seqlens=torch.tensor([3.0, 1.0])), ValueError, "integer tensor"),
    (dict(cache_seqlens="3"), TypeError, "an int or a tensor"),
    (dict(cache_seqlens=None), ValueError, "appending k and v needs cache_seqlens"),
    (dict(v=None), ValueError, "give both k and v"),
    (dict(k=torch.zeros(2, 2, 1, 8), v=torch.zeros(2, 2, 1, 8)), ValueError, r"\[B, H_kv, T_new, D\]"),
    (dict(k_cache=torch.zeros(2, 3, 8, 16), v_cache=torch.zeros(2, 3, 8, 16)), ValueError, "multiple of"),
    (dict(cache_seqlens=torch.tensor([3, 7], device="meta")), ValueError, "cache_seqlens must be on the CPU or"),
    (dict(cache_seqlens=torch.tensor([3, 7]).to_sparse()), ValueError, "cache_seqlens must be a dense"),
])
def test_bad_cache_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match), torch.no_grad():
        flash_attention_kvcache(**_kv(**kwargs))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(cache_batch_idx=torch.tensor([0, 2])), ValueError, r"cache_batch_idx must hold rows of the cache, in "
                                                             r"\[0, 1\], got \[0, 2\]"),
    (dict(cache_batch_idx=torch.tensor([1, 1])), ValueError, "must not repeat a row when k and v are appended"),
    (dict(cache_batch_idx=torch.tensor([1])), ValueError, "cache_batch_idx must be a 1-D integer tensor of B = 2"),
    (dict(cache_batch_idx=[1, 0]), TypeError, "cache_batch_idx must be a tensor of B = 2 ints, got list"),
    (dict(cache_leftpad=torch.tensor([4, 0])), ValueError, r"cache_leftpad must not pass cache_seqlens .*got "
                                                          r"\[4, 0\] and \[3, 7\]"),
    (dict(cache_leftpad=torch.tensor([0, 9])), ValueError, r"cache_leftpad must hold first positions in \[0, 8\]"),
    (dict(k_cache=torch.zeros(3, 2, 8, 16), v_cache=torch.zeros(3, 2, 8, 16)), ValueError,
     "q has B = 2 sequences and the cache 3 rows: pass cache_batch_idx"),
])
def test_bad_cache_rows_and_starts_are_named(kwargs, error, match):
    with pytest.raises(error, match=match), torch.no_grad():
        flash_attention_kvcache(**_kv(**kwargs))


def check_cache_map(num_splits, device="cpu", variant="auto", dtype=F32, T_q=1, T_new=1):
    """Three sequences in a pool of five cache rows (``cache_batch_idx``), each row's keys starting at its own
    position (``cache_leftpad``, the positions before it NaN, as the unfilled tails): the new keys go into the
    sequences' rows only, and each sequence attends to keys ``leftpad ... length + T_new - 1`` of its row,
    positions counted from ``leftpad``, against attention on those keys alone."""
    B, H, H_kv, T_cache, D = 3, 4, 2, 100, 32
    rows, starts, lengths = [4, 0, 1], [3, 0, 10], [9, 0, 90]  # (the last: whole key tiles, through TMA too)
    row_lengths = [lengths[rows.index(r)] if r in rows else T_cache for r in range(5)]
    k_cache, v_cache = make_cache(5, H_kv, T_cache, D, row_lengths, dtype, device)
    for r, first in zip(rows, starts, strict=True):
        k_cache[r, :, :first] = v_cache[r, :, :first] = float("nan")  # (before its first key: never read)
    others = [r for r in range(5) if r not in rows]
    untouched = [k_cache[r].clone() for r in others]
    q, k, v = make_qkv(B, H, H_kv, T_q, T_new, D, dtype, device=device, seed=1)
    as_tensor = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    with torch.no_grad(), _variants.settings(kernel=variant):
        out, lse = flash_attention_kvcache(q, k_cache, v_cache, as_tensor(lengths), k, v, causal=True,
                                           num_splits=num_splits, cache_batch_idx=as_tensor(rows),
                                           cache_leftpad=as_tensor(starts), return_lse=True)
    for b, (r, n) in enumerate(zip(rows, lengths, strict=True)):
        assert torch.equal(k_cache[r, :, n:n + T_new], k[b]), f"sequence {b}'s new keys are not in cache row {r}"
    assert all(torch.equal(k_cache[r], was) for r, was in zip(others, untouched, strict=True)), "another row written"
    seen = torch.full((B, H_kv, T_cache, D), float("nan"), dtype=dtype, device=device)  # each sequence's keys ...
    seen_v = seen.clone()
    for b, (r, first) in enumerate(zip(rows, starts, strict=True)):  # ... moved to start at position 0
        seen[b, :, :T_cache - first], seen_v[b, :, :T_cache - first] = k_cache[r, :, first:], v_cache[r, :, first:]
    check_against_each_sequence(q, seen, seen_v, [n + T_new - f for n, f in zip(lengths, starts, strict=True)],
                                True, NONE, out, lse, dtype)


@pytest.mark.parametrize("num_splits,variant,T_q,T_new", [(1, "auto", 1, 1), (3, "auto", 1, 1), (3, "tma", 1, 1),
                                                          (0, "auto", 2, 0), (0, "tma", 3, 3)])
def test_sequences_in_their_own_cache_rows_from_their_own_first_key(num_splits, variant, T_q, T_new):
    check_cache_map(num_splits, variant=variant, T_q=T_q, T_new=T_new)


def test_flash_attn_with_kvcache_takes_cache_rows_and_starts():
    """flash-attn's layout: the same as attending to each sequence's keys, gathered by hand; a row read by two
    sequences (no new keys) is fine."""
    B, H, H_kv, T_cache, D = 2, 4, 2, 24, 16
    k_cache, v_cache = (torch.randn(3, T_cache, H_kv, D, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    q = torch.randn(B, 1, H, D, generator=torch.Generator().manual_seed(3))  # (B, T_q, H, D)
    rows, starts, lengths = torch.tensor([2, 2], dtype=torch.int32), torch.tensor([5, 0], dtype=torch.int32), [20, 7]
    with torch.no_grad():
        out = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                                      cache_batch_idx=rows, cache_leftpad=starts, causal=True)
    for b in range(B):
        keys, values = (swap_seq_and_heads(c[2:3, starts[b]:lengths[b]]) for c in (k_cache, v_cache))
        want = reference(swap_seq_and_heads(q[b:b + 1]), keys, values, True)
        assert max_err(swap_seq_and_heads(out[b:b + 1]), want) < 2e-5, f"sequence {b}"


@pytest.mark.parametrize("shared", ["expanded k_cache", "expanded v_cache", "one tensor for both"])
def test_appending_into_a_cache_whose_positions_share_memory_is_refused_untouched(shared):
    """An ``expand()``ed cache (one prompt's keys shared by a batch) or one tensor passed as both caches
    can be read, but appending in place would write rows over each other: refused, before anything is
    written (the caller's cache is as it was)."""
    base = torch.randn(1, 2, 8, 16)
    a = _kv()
    if shared == "one tensor for both":
        caches = dict(k_cache=a["k_cache"], v_cache=a["k_cache"])
        match = "k_cache and v_cache are the same memory"
    else:
        name = shared.split()[1]
        caches = {name: base.expand(2, 2, 8, 16)}
        match = rf"{name} has positions that share memory \(shape \(2, 2, 8, 16\), strides \(0, 128, 16, 1\)"
    before = {n: c.clone() for n, c in caches.items()}
    with pytest.raises(ValueError, match=match), torch.no_grad():
        flash_attention_kvcache(**_kv(**caches))
    assert all(torch.equal(caches[n], before[n]) for n in caches)


def test_an_expanded_cache_is_read_as_it_is_and_interleaved_caches_take_appends():
    """Reading never writes: a cache ``expand()``ed over the batch is attended to like its copies. Caches
    that interleave in one buffer (keys and values side by side, ``[B, H_kv, T, 2, D]``) share no position
    and take the new keys and values."""
    q, _, _ = make_qkv(3, 4, 2, 2, 1, 16, F32)
    prompt = torch.randn(1, 2, 10, 16)
    with torch.no_grad():
        shared = flash_attention_kvcache(q, prompt.expand(3, -1, -1, -1), prompt.expand(3, -1, -1, -1) * 2, 10)
        copies = flash_attention_kvcache(q, prompt.repeat(3, 1, 1, 1), prompt.repeat(3, 1, 1, 1) * 2, 10)
    assert torch.equal(shared, copies)
    kv = torch.full((3, 2, 12, 2, 16), float("nan"))  # (B, H_kv, T_cache, k or v, D)
    kv[:, :, :10] = torch.randn(3, 2, 10, 2, 16)
    plain = [kv[:, :, :, i].clone() for i in range(2)]
    _, k, v = make_qkv(3, 4, 2, 1, 2, 16, F32, seed=5)
    with torch.no_grad():
        interleaved = flash_attention_kvcache(q, kv[:, :, :, 0], kv[:, :, :, 1], 10, k, v)
        separate = flash_attention_kvcache(q, *plain, 10, k, v)
    assert torch.equal(interleaved, separate)
    torch.testing.assert_close(kv[:, :, 10:], torch.stack((k, v), dim=3), atol=0, rtol=0)


def test_cpu_cache_seqlens_written_behind_the_version_counter_are_still_checked():
    """A CPU ``cache_seqlens`` is checked at every call (see ``_checks.host_checked``), so lengths broken
    through a NumPy view, which torch's version counter does not see, are refused, not trusted."""
    args = _kv()
    lengths = args["cache_seqlens"]
    with torch.no_grad():
        flash_attention_kvcache(**args)  # (checked: fine)
        lengths.numpy()[1] = 8  # one new key appended after 8 cached ones: past the cache's 8 positions
        with pytest.raises(ValueError, match=r"lengths in \[0, 7\].*got \[3, 8\]"):
            flash_attention_kvcache(**args)


def test_a_cache_call_that_would_need_a_gradient_is_refused():
    args = _kv(q=_kv()["q"].requires_grad_(True))
    with pytest.raises(ValueError, match="inference and has no gradient.*torch.no_grad"):
        flash_attention_kvcache(**args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(softcap=-5.0), "softcap must be a finite number >= 0"),
    (dict(num_splits=-1), "num_splits must be an int >= 0"),
])
def test_flash_attn_with_kvcache_refuses_what_it_lacks_by_name(kwargs, match):
    a = _kv()
    bthd = [swap_seq_and_heads(a[n]) for n in ("q", "k_cache", "v_cache", "k", "v")]
    with pytest.raises(ValueError, match=match), torch.no_grad():
        flash_attn_with_kvcache(*bthd, cache_seqlens=a["cache_seqlens"], **kwargs)


def test_the_forward_operator_with_cache_lengths_passes_opcheck():
    q, k, v = make_qkv(2, 4, 2, 3, 20, 16, F16)
    used = torch.tensor([20, 6], dtype=torch.int32)
    torch.library.opcheck(torch.ops.attn_course.flash_forward.default,
                          (q, k, v, 0.25, 1 << 30, 0, None, None, 0, 0, used))


def test_a_compiled_decoding_step_matches_eager_and_writes_the_cache():
    """A model's decoding step under ``torch.compile``: the same output, and the cache written in place."""
    lengths = [5, 11]

    def step(q, k_cache, v_cache, seqlens, k, v):
        return flash_attention_kvcache(torch.tanh(q), k_cache, v_cache, seqlens, k, v, causal=True)

    q, k, v = make_qkv(2, 4, 2, 1, 1, 32, F32, seed=6)
    results = []
    for fn in (step, torch.compile(step, backend="aot_eager")):
        k_cache, v_cache = make_cache(2, 2, 16, 32, lengths, F32)
        with torch.no_grad():
            out = fn(q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32), k, v)
        results.append((out, k_cache, v_cache))
    torch._dynamo.reset()
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_the_cache_kernel_compiles_for_hopper(variant):
    """The decoding kernel as a GPU runs it, per-sequence cache lengths and keys split in slices (constexpr
    branches: no cost to the other launches), compiled for sm_90 on this CPU: tensor cores for 16-bit
    inputs, the cache through masked pointer loads or (``tma``, what ``auto`` runs on Hopper) through
    tensor descriptors but for the tile that overhangs each sequence's filled length; then the kernel that
    combines the slices."""
    from attn_course.kernels._compile import HOPPER, compile_launch, forward_launches

    used = torch.tensor([100, 4000], dtype=torch.int32)
    launches = forward_launches(variant, BF16, 128, T=4096, T_q=1, num_splits=4, seqused_k=used)
    assert [fn.__name__ for fn, _, _ in launches] == ["_attn_fwd", "_combine_splits"]
    (fn, args, kwargs), combine = launches
    assert kwargs["HAS_SEQUSED_K"] and kwargs["SPLIT_K"] and kwargs["TMA"] == (variant == "tma")
    ptx = compile_launch(fn, args, dict(kwargs), HOPPER).asm["ptx"]
    assert "wgmma" in ptx or "mma.sync" in ptx, "no tensor-core products in the cache kernel"
    assert ("cp.async.bulk.tensor" in ptx) == (variant == "tma")
    compile_launch(*combine, HOPPER)
