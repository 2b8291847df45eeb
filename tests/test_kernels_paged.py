"""Paged key/value caches (``block_table``): each sequence's positions in pages of a shared pool, read by a
decoding step (``flash_attention_kvcache``) or by a packed batch of queries (``flash_attention_varlen``).

The pools here hand pages out in a shuffled order, leave spare pages and every position past a sequence's
length NaN (one NaN read would poison the output), and use page sizes smaller than, larger than and not
a multiple of the interpreter's 32-key tiles, so that tiles span pages. Every output and lse is checked
against ``attn_course.attention`` on each sequence's keys gathered from its pages by plain PyTorch, and
every append against the pages and rows worked out one position at a time.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_kernels_common import make_qkv, max_err, reference
from test_kernels_kvcache import NONE, check_against_each_sequence
from test_kernels_varlen import per_sequence

from attn_course.kernels import (
    _variants,
    flash_attention_kvcache,
    flash_attention_varlen,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    swap_seq_and_heads,
)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def make_paged_cache(B, H_kv, D, page_size, lengths, room, dtype, device="cpu", seed=0, spare=3):
    """Pools ``[num_pages, H_kv, page_size, D]`` and an int32 ``block_table [B, pages_per_seq]`` whose pages
    are handed out in a shuffled order, with room for ``room`` more positions in every sequence and
    ``spare`` pages nobody uses: random keys and values at each sequence's positions ``< lengths[b]``, NaN
    everywhere else."""
    g = torch.Generator().manual_seed(seed)
    per_seq = max(1, max(math.ceil((n + room) / page_size) for n in lengths))
    num_pages = B * per_seq + spare
    block_table = torch.randperm(num_pages, generator=g)[:B * per_seq].reshape(B, per_seq).to(torch.int32)
    pools = [torch.full((num_pages, H_kv, page_size, D), float("nan")) for _ in range(2)]
    for pool in pools:
        for b, n in enumerate(lengths):
            for j, page in enumerate(block_table[b].tolist()):
                filled = min(max(n - j * page_size, 0), page_size)  # this page's rows below the length
                pool[page, :, :filled] = torch.randn(H_kv, filled, D, generator=g)
    pools = [p.to(device=device, dtype=dtype) for p in pools]
    return (*pools, block_table.to(device))


def gathered(pool, block_table):
    """Each sequence's positions in order, ``[B, H_kv, pages_per_seq * page_size, D]``: the pool's pages picked by
    the table (plain PyTorch, the reference's view of a paged cache)."""
    B, per_seq = block_table.shape
    pages = pool[block_table.long()]  # (B, pages_per_seq, H_kv, page_size, D)
    return pages.transpose(1, 2).reshape(B, pool.shape[1], per_seq * pool.shape[2], pool.shape[3])


def with_appended(pool, block_table, lengths, new):
    """``pool`` with ``new [B, H_kv, T_new, D]`` written at positions ``lengths[b] ...`` of each sequence, one
    position at a time (its page from the table, its row within the page)."""
    want = pool.clone()
    P = pool.shape[2]
    for b, n in enumerate(lengths):
        for i in range(new.shape[2]):
            want[int(block_table[b, (n + i) // P]), :, (n + i) % P] = new[b, :, i]
    return want


def check_paged(page_size, T_q, T_new, *, lengths=(0, 37, 90), causal=True, window=NONE, num_splits=0, dtype=F32,
                H=8, H_kv=2, D=32, device="cpu", variant="auto", scores=None, q_scale=1.0, **kwargs):
    """One call on a paged cache: the new keys and values land in their pages and rows and nothing else
    changes; each sequence's output and lse are attention's on its gathered keys alone. ``scores``:
    ``(kernel_kwargs, ref_of)`` as ``check_kvcache_case`` takes it (``ref_of(b, n)``: the reference's score
    changes for sequence ``b``'s ``n`` keys); ``q_scale`` multiplies the queries. Returns out."""
    B, lengths = len(lengths), list(lengths)
    kernel_kwargs, ref_of = scores or ({}, None)
    k_pool, v_pool, block_table = make_paged_cache(B, H_kv, D, page_size, lengths, T_new, dtype, device)
    q, k, v = make_qkv(B, H, H_kv, T_q, T_new, D, dtype, device=device, seed=1)
    if q_scale != 1.0:
        q = (q.float() * q_scale).to(dtype)
    new = dict(k=k, v=v) if T_new else {}
    want_k, want_v = (with_appended(p, block_table, lengths, x) for p, x in ((k_pool, k), (v_pool, v)))
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    with torch.no_grad(), _variants.settings(kernel=variant):
        out, lse = flash_attention_kvcache(q, k_pool, v_pool, seqlens, **new, causal=causal, window=window,
                                           num_splits=num_splits, block_table=block_table, return_lse=True,
                                           **kernel_kwargs, **kwargs)
    torch.testing.assert_close(k_pool, want_k, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_pool, want_v, atol=0, rtol=0, equal_nan=True)
    assert seqlens.tolist() == lengths, "cache_seqlens is the caller's: it must not change"
    check_against_each_sequence(q, gathered(k_pool, block_table), gathered(v_pool, block_table),
                                [n + T_new for n in lengths], causal, window, out, lse, dtype, ref_of)
    return out


PAGED_CASES = [  # (page_size, T_q, T_new, num_splits, dtype): pages smaller than, across and a multiple of the tiles
    (16, 1, 1, 0, F32), (16, 1, 1, 3, BF16), (48, 1, 1, 2, F16), (64, 1, 1, 1, F32),
    (5, 3, 3, 0, F32), (48, 4, 0, 0, BF16), (128, 2, 2, 2, F16),
]


@pytest.mark.parametrize("page_size,T_q,T_new,num_splits,dtype", PAGED_CASES)
def test_a_paged_cache_matches_attention_on_each_sequences_gathered_keys(page_size, T_q, T_new, num_splits, dtype):
    check_paged(page_size, T_q, T_new, num_splits=num_splits, dtype=dtype)


@pytest.mark.parametrize("window,causal", [((20, 0), True), ((7, 3), False), (NONE, False)])
def test_a_paged_cache_with_windows_and_without_causality(window, causal):
    check_paged(16, 3, 1, window=window, causal=causal)


def test_a_paged_cache_with_a_softcap_and_alibi_equals_the_same_keys_in_one_cache_row():
    """The score changes do not care where the keys were read from: the same step on a contiguous cache
    holding each sequence's gathered keys gives the same output (whose own checks are in their files)."""
    B, H, H_kv, D, P, lengths = 3, 8, 2, 32, 16, [3, 40, 77]
    k_pool, v_pool, block_table = make_paged_cache(B, H_kv, D, P, lengths, 1, F32)
    q, k, v = make_qkv(B, H, H_kv, 1, 1, D, F32, seed=2)
    changes = dict(softcap=2.0, alibi_slopes=torch.linspace(0.05, 0.5, H), causal=True)
    k_rows, v_rows = gathered(k_pool, block_table), gathered(v_pool, block_table)  # (B, H_kv, T, D) copies
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    with torch.no_grad():
        paged = flash_attention_kvcache(q, k_pool, v_pool, seqlens, k, v, block_table=block_table, **changes)
        rows = flash_attention_kvcache(q, k_rows, v_rows, seqlens, k, v, **changes)
    assert max_err(paged, rows) < 1e-6


def test_the_pointer_variant_runs_a_paged_cache_even_when_tma_is_asked_for():
    """A copy engine's box is consecutive rows and a tile's rows may span pages: the paged launch reads through
    pointers whatever variant is asked for, and gives the right answer."""
    check_paged(16, 1, 1, variant="tma")
    assert _variants.used((str(torch.device("cpu")), F32, 32, "forward")) == "pointer"


def test_generation_with_pages_handed_out_as_sequences_grow():
    """A server's loop: two sequences share a free list of pages, each taking one when its last page is full;
    a prompt of 7 tokens, then 6 generated one at a time. Every step's output is the row of full causal
    attention over the final sequence at that position."""
    B, H, H_kv, D, T, P = 2, 4, 2, 32, 13, 4
    q, k, v = make_qkv(B, H, H_kv, T, T, D, F32, seed=3)
    full = reference(q, k, v, causal=True)  # (B, H, T, D)
    free = [9, 2, 7, 0, 5, 1, 8, 3]  # pages taken from the end
    k_pool, v_pool = torch.full((10, H_kv, P, D), float("nan")), torch.full((10, H_kv, P, D), float("nan"))
    block_table = torch.zeros(B, 4, dtype=torch.int32)  # (B, pages_per_seq): unused entries are never read
    owned = [0, 0]
    seqlens = torch.zeros(B, dtype=torch.int32)
    for start, end in [(0, 7)] + [(t, t + 1) for t in range(7, T)]:
        for b in range(B):
            while owned[b] * P < end:  # hand out pages until the new positions fit
                block_table[b, owned[b]] = free.pop()
                owned[b] += 1
        with torch.no_grad():
            out = flash_attention_kvcache(q[:, :, start:end], k_pool, v_pool, seqlens, k[:, :, start:end],
                                          v[:, :, start:end], causal=True, block_table=block_table)
        assert max_err(out, full[:, :, start:end]) < 2e-5, f"tokens {start}..{end - 1}"
        seqlens += end - start
    assert torch.equal(gathered(k_pool, block_table)[:, :, :T], k)


def test_sequences_may_share_a_prompts_full_pages_but_not_write_into_a_shared_one():
    """Prefix sharing: two sequences read the same first page (a shared prompt) and append into pages of
    their own; appending into a page that another sequence reads is refused and writes nothing."""
    H, H_kv, D, P = 4, 2, 16, 8
    g = torch.Generator().manual_seed(4)
    k_pool, v_pool = torch.randn(5, H_kv, P, D, generator=g), torch.randn(5, H_kv, P, D, generator=g)
    q, k, v = make_qkv(2, H, H_kv, 1, 1, D, F32, seed=5)
    shared = torch.tensor([[3, 0], [3, 4]], dtype=torch.int32)  # page 3: the prompt, 8 positions, read by both
    with torch.no_grad():
        out = flash_attention_kvcache(q, k_pool, v_pool, torch.tensor([10, 8]), k, v, causal=True,
                                      block_table=shared)
    for b, n in enumerate([11, 9]):
        keys, values = (gathered(p, shared)[b:b + 1, :, :n] for p in (k_pool, v_pool))
        assert max_err(out[b:b + 1], reference(q[b:b + 1], keys, values, True)) < 1e-5
    before = k_pool.clone()
    with pytest.raises(ValueError, match="page 3 gets sequence 1's new keys but is also used by another"), \
            torch.no_grad():
        flash_attention_kvcache(q, k_pool, v_pool, torch.tensor([10, 7]), k, v, block_table=shared)
    assert torch.equal(k_pool, before), "a refused call wrote into the cache"


def _paged(**kw):
    q, k, v = make_qkv(2, 4, 2, 1, 1, 16, F32)
    pool = torch.zeros(6, 2, 4, 16)  # (num_pages, H_kv, page_size, D)
    args = dict(q=q, k_cache=pool, v_cache=pool.clone(), k=k, v=v, cache_seqlens=torch.tensor([3, 7]),
                block_table=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32))
    return {**args, **kw}


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(block_table=torch.tensor([0, 1])), ValueError, r"block_table must be a 2-D integer tensor \[B, "
                                                        r"pages_per_seq\] with B = 2"),
    (dict(block_table=torch.zeros(2, 2)), ValueError, "2-D integer tensor.*got torch.float32"),
    (dict(block_table=torch.zeros(2, 0, dtype=torch.int32)), ValueError, "at least one"),
    (dict(block_table=[[0, 1], [2, 3]]), TypeError, "block_table must be a tensor"),
    (dict(block_table=torch.tensor([[0, 1], [2, 6]])), ValueError, r"pages of the pool, in \[0, 5\].*sequence 1's "
                                                                   r"page 1 is 6"),
    (dict(block_table=torch.tensor([[-1, 0], [2, 3]])), ValueError, "sequence 0's page 0 is -1"),
    (dict(cache_seqlens=torch.tensor([3, 8])), ValueError, r"cache_seqlens must hold B = 2 lengths in \[0, 7\] "
                                                          r"\(the cache holds 8 positions"),
    (dict(block_table=torch.tensor([[1, 0], [2, 1]])), ValueError, "page 1 gets sequence 0's new keys"),
    (dict(cache_batch_idx=torch.tensor([1, 0])), ValueError, "block_table with cache_batch_idx or cache_leftpad"),
    (dict(cache_leftpad=torch.tensor([1, 0])), ValueError, "block_table with cache_batch_idx or cache_leftpad"),
    (dict(v_cache=torch.zeros(6, 2, 5, 16)), ValueError, "k and v must have the same shape"),
])
def test_bad_paged_caches_are_named_and_nothing_is_written(kwargs, error, match):
    args = _paged(**kwargs)
    before = args["k_cache"].clone()
    with pytest.raises(error, match=match), torch.no_grad():
        flash_attention_kvcache(**args)
    assert torch.equal(args["k_cache"], before)


def test_a_page_past_a_sequences_keys_is_never_read_so_it_may_hold_anything():
    """Table entries past a sequence's last page (flash-attn leaves them to the caller) are not checked
    and not read."""
    args = _paged(block_table=torch.tensor([[0, 99], [2, 3]]), cache_seqlens=torch.tensor([2, 7]))
    with torch.no_grad():
        out = flash_attention_kvcache(**args, causal=True)
    assert torch.isfinite(out).all()


def test_rotary_embeddings_with_a_paged_cache_equal_them_with_one_cache_row():
    """The new keys are rotated to their positions, then written into their pages: the same as the rotated
    keys of a contiguous cache, and the same output."""
    B, H, H_kv, D, P, lengths = 2, 4, 2, 32, 8, [5, 19]
    k_pool, v_pool, block_table = make_paged_cache(B, H_kv, D, P, lengths, 2, F32)
    k_rows, v_rows = gathered(k_pool, block_table), gathered(v_pool, block_table)
    q, k, v = make_qkv(B, H, H_kv, 2, 2, D, F32, seed=6)
    angles = torch.arange(64)[:, None] * 0.3 ** torch.arange(8)[None, :]  # (seqlen_ro, rotary_dim / 2)
    rotary = dict(rotary_cos=angles.cos(), rotary_sin=angles.sin(), causal=True)
    seqlens = torch.tensor(lengths)
    with torch.no_grad():
        paged = flash_attention_kvcache(q, k_pool, v_pool, seqlens, k, v, block_table=block_table, **rotary)
        rows = flash_attention_kvcache(q, k_rows, v_rows, seqlens, k, v, **rotary)
    assert max_err(paged, rows) < 1e-6
    torch.testing.assert_close(gathered(k_pool, block_table), k_rows, atol=0, rtol=0, equal_nan=True)


def test_flash_attn_with_kvcache_takes_a_block_table_in_flash_attns_layout():
    """flash-attn's pools are ``[num_pages, page_size, H_kv, D]``: the same bits as ours, written in that
    layout."""
    lengths = [9, 30]
    k_pool, v_pool, block_table = make_paged_cache(2, 2, 32, 16, lengths, 2, F16)  # (pages, H_kv, P, D)
    q, k, v = make_qkv(2, 4, 2, 2, 2, 32, F16, seed=7)
    ours_k, ours_v = k_pool.clone(), v_pool.clone()
    want, want_lse = flash_attention_kvcache(q, ours_k, ours_v, torch.tensor(lengths), k, v, causal=True,
                                             block_table=block_table, return_lse=True)
    flash = [swap_seq_and_heads(x).contiguous() for x in (q, k_pool, v_pool, k, v)]  # (pages, P, H_kv, D) ...
    out, lse = flash_attn_with_kvcache(*flash[:3], *flash[3:], cache_seqlens=torch.tensor(lengths, dtype=torch.int32),
                                       block_table=block_table, causal=True, return_softmax_lse=True)
    assert torch.equal(out, swap_seq_and_heads(want)) and torch.equal(lse, want_lse)
    for got, ours in ((flash[1], ours_k), (flash[2], ours_v)):
        torch.testing.assert_close(got, swap_seq_and_heads(ours), atol=0, rtol=0, equal_nan=True)


def test_the_forward_operator_with_a_block_table_passes_opcheck():
    k_pool, v_pool, block_table = make_paged_cache(2, 2, 16, 8, [20, 6], 0, F16)
    q = torch.randn(2, 4, 1, 16, dtype=F16)
    used = torch.tensor([20, 6], dtype=torch.int32)
    torch.library.opcheck(torch.ops.attn_course.flash_forward.default,
                          (q, k_pool.nan_to_num(), v_pool.nan_to_num(), 0.25, 1 << 30, 0, None, None, 0, 0, used),
                          dict(block_table=block_table))


def test_a_compiled_decoding_step_on_a_paged_cache_matches_eager():
    lengths = [5, 11]

    def step(q, k_pool, v_pool, seqlens, k, v, block_table):
        return flash_attention_kvcache(torch.tanh(q), k_pool, v_pool, seqlens, k, v, causal=True,
                                       block_table=block_table)

    q, k, v = make_qkv(2, 4, 2, 1, 1, 32, F32, seed=8)
    results = []
    for fn in (step, torch.compile(step, backend="aot_eager")):
        k_pool, v_pool, block_table = make_paged_cache(2, 2, 32, 4, lengths, 1, F32)
        with torch.no_grad():
            out = fn(q, k_pool, v_pool, torch.tensor(lengths, dtype=torch.int32), k, v, block_table)
        results.append((out, k_pool, v_pool))
    torch._dynamo.reset()
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0, equal_nan=True)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("packed", [False, True], ids=["decoding", "packed"])
def test_the_paged_kernel_compiles_for_hopper(D, packed):
    """The forward kernel on a paged cache as a GPU runs it, a decoding step (the keys split in slices) or a
    packed batch (a page lookup per key either way), compiled for sm_90 on this CPU: tensor-core products,
    no copy-engine loads, no register spill."""
    from attn_course.kernels._compile import HOPPER, compile_launch, forward_launches, resources

    if packed:
        (fn, args, kwargs), = forward_launches("pointer", BF16, D, varlen=True, page_size=16)
        assert kwargs["IS_VARLEN"]
    else:
        used = torch.tensor([100, 4000], dtype=torch.int32)
        (fn, args, kwargs), _ = forward_launches("pointer", BF16, D, T=4096, T_q=1, num_splits=4, seqused_k=used,
                                                 page_size=16)
        assert kwargs["SPLIT_K"]
    assert kwargs["PAGED"] and not kwargs["TMA"]
    kernel = compile_launch(fn, args, dict(kwargs), HOPPER)
    ptx = kernel.asm["ptx"]
    assert "mma.sync" in ptx or "wgmma" in ptx, "no tensor-core products in the paged kernel"
    assert "cp.async.bulk.tensor" not in ptx
    assert resources(kernel)["spill_stack_bytes"] == 0


# ---- a packed batch of queries against paged keys (flash_attention_varlen, flash_attn_varlen_func) ----------

def cumulative(lengths, device="cpu"):
    """``cu_seqlens`` of ``lengths``: ``[0, l1, l1 + l2, ...]``, int32."""
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def check_paged_varlen(page_size, lens_q, lens_k, *, causal=True, window=NONE, dtype=F32, device="cpu", H=8,
                       H_kv=2, D=32, tail_q=0, **kwargs):
    """Packed queries (``tail_q`` padding rows after them) against each sequence's ``lens_k[b]`` keys in
    pages: each sequence's output and lse against attention on its gathered keys alone; the pools are only
    read; the padding rows are zeros, their lse ``-inf``."""
    B = len(lens_q)
    k_pool, v_pool, block_table = make_paged_cache(B, H_kv, D, page_size, lens_k, 0, dtype, device)
    q = torch.randn(sum(lens_q) + tail_q, H, D, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    cu_q, cu_k = cumulative(lens_q, device), cumulative(lens_k, device)
    before = k_pool.clone(), v_pool.clone()
    with torch.no_grad():
        out, lse = flash_attention_varlen(q, k_pool, v_pool, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                          window=window, block_table=block_table, return_lse=True, **kwargs)
    for pool, was in zip((k_pool, v_pool), before, strict=True):
        torch.testing.assert_close(pool, was, atol=0, rtol=0, equal_nan=True)
    keys, values = gathered(k_pool, block_table), gathered(v_pool, block_table)  # (B, H_kv, T, D)
    for b, n in enumerate(lens_k):  # (sequence b's rows as a batch of one; one with no query has none)
        if lens_q[b]:
            check_against_each_sequence(per_sequence(q, cu_q, b), keys[b:b + 1], values[b:b + 1], [n], causal, window,
                                        per_sequence(out, cu_q, b), lse[None, :, cu_q[b]:cu_q[b + 1]], dtype)
    if tail_q:
        assert not out[-tail_q:].any() and torch.isneginf(lse[:, -tail_q:]).all()


PAGED_VARLEN_CASES = [  # (page_size, lens_q, lens_k, causal, window, dtype)
    (16, [3, 17, 1], [40, 17, 90], True, NONE, F32),
    (5, [7, 0, 30], [7, 11, 30], True, NONE, BF16),  # (a sequence with no query; tiles across 5-row pages)
    (48, [20, 4], [3, 100], False, (9, 4), F16),  # (more queries than keys: rows with no allowed key)
    (16, [33, 1, 2], [0, 64, 2], True, (20, 0), F32),  # (a sequence with no key at all)
]


@pytest.mark.parametrize("page_size,lens_q,lens_k,causal,window,dtype", PAGED_VARLEN_CASES)
def test_a_packed_batch_attends_to_paged_keys_as_to_each_sequences_gathered_keys(page_size, lens_q, lens_k, causal,
                                                                                  window, dtype):
    check_paged_varlen(page_size, lens_q, lens_k, causal=causal, window=window, dtype=dtype)


def test_a_packed_batch_with_a_padding_tail_against_paged_keys():
    check_paged_varlen(16, [5, 9], [30, 9], tail_q=4)


def test_dropout_softcap_and_alibi_on_paged_keys_equal_them_on_the_same_keys_packed():
    """Where the keys are read from changes nothing else: the same seed, cap and slopes give the same output
    on paged keys as on the same keys packed end to end (whose own checks are in their files)."""
    lens_q, lens_k, H, H_kv, D = [6, 2, 11], [30, 2, 47], 4, 2, 32
    k_pool, v_pool, block_table = make_paged_cache(3, H_kv, D, 16, lens_k, 0, F32)
    keys, values = gathered(k_pool, block_table), gathered(v_pool, block_table)
    k, v = (torch.cat([x[b, :, :n].transpose(0, 1) for b, n in enumerate(lens_k)]) for x in (keys, values))
    q = torch.randn(sum(lens_q), H, D, generator=torch.Generator().manual_seed(2))
    cu_q, cu_k = cumulative(lens_q), cumulative(lens_k)
    changes = dict(causal=True, dropout_p=0.2, softcap=3.0, alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625]))
    outs = []
    for kk, vv, pages in ((k_pool, v_pool, block_table), (k, v, None)):
        torch.manual_seed(7)
        with torch.no_grad():
            outs.append(flash_attention_varlen(q, kk, vv, cu_q, cu_k, 11, 47, block_table=pages, **changes))
    with torch.no_grad():
        kept_all = flash_attention_varlen(q, k, v, cu_q, cu_k, 11, 47, **{**changes, "dropout_p": 0.0})
    assert max_err(outs[1], kept_all) > 0.05, "the dropout should change the output"
    assert max_err(*outs) < 1e-6


def test_flash_attn_varlen_func_takes_a_block_table_in_flash_attns_layout():
    lens_q, lens_k = [4, 9], [21, 9]
    k_pool, v_pool, block_table = make_paged_cache(2, 2, 32, 8, lens_k, 0, F16)  # (pages, H_kv, P, D)
    q = torch.randn(13, 4, 32, generator=torch.Generator().manual_seed(3)).to(F16)
    cu_q, cu_k = cumulative(lens_q), cumulative(lens_k)
    want = flash_attention_varlen(q, k_pool, v_pool, cu_q, cu_k, 9, 21, causal=True, block_table=block_table)
    flash = [swap_seq_and_heads(x).contiguous() for x in (k_pool, v_pool)]  # (pages, P, H_kv, D)
    got = flash_attn_varlen_func(q, *flash, cu_q, cu_k, 9, 21, causal=True, block_table=block_table)
    assert torch.equal(got, want)


def test_bad_paged_packed_calls_are_named():
    k_pool, v_pool, block_table = make_paged_cache(2, 2, 16, 4, [5, 8], 0, F32)  # 2 pages of 4 per sequence
    q = torch.randn(6, 4, 16)
    cu_q = cumulative([3, 3])
    call = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cumulative([5, 8]), max_seqlen_q=3, max_seqlen_k=8,
                block_table=block_table)
    with pytest.raises(ValueError, match="is for inference and has no gradient"):
        flash_attention_varlen(q.requires_grad_(True), k_pool, v_pool, **call)
    q = q.detach()
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"k must be 4-D \[num_pages, H_kv, page_size, D\] with a block_table"):
            flash_attention_varlen(q, k_pool[0], v_pool[0], **call)
        with pytest.raises(ValueError, match=r"block_table holds 2 pages of 4 positions per sequence, 8 in all, but "
                                             r"the sequences need \[5, 9\]"):
            flash_attention_varlen(q, k_pool, v_pool, **{**call, "cu_seqlens_k": cumulative([5, 9]), "max_seqlen_k": 9})
        with pytest.raises(ValueError, match=r"block_table must be a 2-D integer tensor \[B, pages_per_seq\] with "
                                             r"B = 2"):
            flash_attention_varlen(q, k_pool, v_pool, **{**call, "block_table": block_table[:1]})
