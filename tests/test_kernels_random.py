"""Seeded random cases for the three entry points (fixed length, packed, key/value cache), through both
variants the interpreter runs (pointers and tensor descriptors).

The other kernel tests pick their shapes by hand, one awkward feature at a time. These draw every feature
at once, from the values where tiles, masks and loops change behaviour: lengths just either side of a tile
edge, windows that are empty on one side or wider than the sequence, GQA groups of 1 to 4, sequences and
caches of length zero, a cache's keys split between programs (with scores that sometimes climb towards the
newest keys, so later slices outweigh earlier ones), every dtype; single calls on paged caches (pages of 1 to
64 positions); on top of the fixed-length, packed, cache and paged shapes, the scores changed by a softcap,
ALiBi slopes (per head or per sequence and head), or both; dropout at rates from 0.1 to 0.9; and fixed-length,
packed and cache shapes at the head dims the others leave out (odd, padded and 256; forced to ``tma`` where the
strides cannot take it, the kernel must refuse, naming the stride). Each case is drawn from its seed alone,
and its test id spells it out, so a failure can be rerun and read without the generator. They are checked
with the same helpers and tolerance rule as the hand-picked cases (dropout's gradients with
FlashAttention-2's own error as a second budget: test_kernels_dropout). ``make sweep``
(``ATTN_COURSE_SWEEP=n``) draws n times as many; ``SWEEP_FROM=m`` (``ATTN_COURSE_SWEEP_FROM``) starts past the
first m times as many, so a sweep can run seeds no earlier one ran.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import warnings

import pytest
import torch
from test_kernels import case_id
from test_kernels_alibi import alibi_bias, geometric_slopes
from test_kernels_common import (
    FLOOR,
    check_case,
    check_changed_scores,
    fa2_grads,
    grads,
    make_qkv,
    max_err,
    reference,
    reference_lse,
    torch_same_dtype,
)
from test_kernels_dropout import case_id as dropout_case_id
from test_kernels_dropout import check_dropout_case
from test_kernels_kvcache import check_kvcache_case
from test_kernels_paged import check_paged
from test_kernels_varlen import check_varlen_case, packed

from attn_course.kernels import _variants

DTYPES = (torch.float32, torch.float32, torch.float16, torch.bfloat16)  # float32 twice: the tightest check
LENGTHS = (1, 2, 15, 16, 17, 31, 33, 63, 64, 65, 97)  # either side of the 16/32/64-row tile edges
# test_kernels_gpu's draws: either side of the compiled kernels' 64- and 128-row tiles too, and longer
GPU_LENGTHS = (1, 2, 17, 63, 64, 65, 127, 128, 129, 255, 257, 1000)
WINDOWS = ((-1, -1), (-1, -1), (0, 0), (0, -1), (-1, 0), (3, -1), (-1, 2), (5, 7), (40, 0), (200, 200))
VARIANTS = ("pointer", "tma")
# cases drawn per kind (each run through both variants); ATTN_COURSE_SWEEP=n draws n times as many (make sweep),
# and ATTN_COURSE_SWEEP_FROM=m skips the first m times as many, so that a sweep can draw seeds no earlier one ran
PER_KIND = {"fixed": 8, "packed": 6, "cache": 8, "scored": 8, "dropout": 4, "paged": 4, "widths": 3,
            "packed_widths": 2, "cache_widths": 2, "packed_scored": 2, "cache_scored": 2, "paged_scored": 2}


def sweep_setting(name: str, default: int, least: int) -> int:
    """An integer from the environment, or a message naming the variable and what it takes."""
    text = os.environ.get(name, "").strip() or str(default)
    if not text.isdigit() or int(text) < least:
        raise pytest.UsageError(f"{name}={text!r}: expected a whole number >= {least} "
                                "(e.g. make sweep SWEEP=25 SWEEP_FROM=100)")
    return int(text)


SWEEP, SWEEP_FROM = sweep_setting("ATTN_COURSE_SWEEP", 1, 1), sweep_setting("ATTN_COURSE_SWEEP_FROM", 0, 0)
SEEDS = {kind: range(n * SWEEP_FROM, n * (SWEEP_FROM + SWEEP)) for kind, n in PER_KIND.items()}  # seeds in use
DEFAULT_SEEDS = {kind: range(n) for kind, n in PER_KIND.items()}  # what make test draws
GPU_SEEDS = {"fixed": range(100, 106), "packed": range(100, 104), "cache": range(100, 106),  # test_kernels_gpu's
             "widths": range(100, 104), "packed_scored": range(100, 102), "cache_scored": range(100, 102)}


def heads(rnd: random.Random) -> tuple[int, int]:
    """``(H, H_kv)``: MHA, GQA or MQA."""
    H_kv, group = rnd.choice((1, 2)), rnd.choice((1, 2, 3, 4))
    return H_kv * group, H_kv


def fixed_case(seed: int, lengths: tuple = LENGTHS) -> tuple:
    """``(B, H, H_kv, T_q, T_k, D, causal, window, dtype)`` as ``check_case`` takes it, T_q and T_k from
    ``lengths``."""
    rnd = random.Random(seed)
    H, H_kv = heads(rnd)
    return (rnd.choice((1, 2)), H, H_kv, rnd.choice(lengths), rnd.choice(lengths), rnd.choice((16, 32, 64)),
            rnd.random() < 0.5, rnd.choice(WINDOWS), rnd.choice(DTYPES))


def packed_case(seed: int, lengths: tuple = LENGTHS) -> tuple:
    """``(lens_q, lens_k, H, H_kv, D, causal, window, dtype)``: 1 to 4 sequences of ``lengths``, one of them
    sometimes empty on one side."""
    rnd = random.Random(1000 + seed)
    n = rnd.choice((1, 2, 3, 4))
    lens_q, lens_k = ([rnd.choice(lengths) for _ in range(n)] for _ in "qk")
    if n > 1 and rnd.random() < 0.5:  # one sequence with no query, or no key
        rnd.choice((lens_q, lens_k))[rnd.randrange(n)] = 0
    H, H_kv = heads(rnd)
    return (lens_q, lens_k, H, H_kv, rnd.choice((16, 32)), rnd.random() < 0.5, rnd.choice(WINDOWS),
            rnd.choice(DTYPES))


def cache_case(seed: int) -> tuple:
    """``(B, H, H_kv, T_cache, T_q, T_new, lengths, causal, window, D, dtype)`` as ``check_kvcache_case``
    takes it: one decoding step, a chunk, or more queries than new keys, into caches filled to random
    lengths (0 and full included)."""
    rnd = random.Random(2000 + seed)
    B = rnd.choice((1, 2, 3))
    H, H_kv = heads(rnd)
    T_cache, T_q = rnd.choice((16, 40, 130)), rnd.choice((1, 1, 2, 5))
    T_new = rnd.choice((0, 1, T_q))
    lengths = [rnd.choice((0, rnd.randint(0, T_cache - T_new), T_cache - T_new)) for _ in range(B)]
    return (B, H, H_kv, T_cache, T_q, T_new, lengths, rnd.random() < 0.5, rnd.choice(WINDOWS),
            rnd.choice((16, 32)), rnd.choice(DTYPES))


def cache_splits(seed: int) -> int:
    """The ``num_splits`` of cache case ``seed``: 0 (the kernel's choice: one slice in the interpreter) or
    2, 3 or 5 slices of each row's keys, combined afterwards (``flash_split``), some of them empty."""
    return random.Random(3000 + seed).choice((0, 2, 3, 5))


def cache_recency(seed: int) -> float:
    """How much the scores of cache case ``seed`` climb from the cache's oldest row to its newest (see
    ``favour_recent_keys``): 0 (plain random data, where the first key slice nearly always holds the largest
    logsumexp) or enough that later slices hold it and the combine must rescale the earlier ones."""
    return random.Random(4000 + seed).choice((0.0, 2.0, 4.0))


def packed_tails(seed: int) -> tuple[int, int]:
    """The padding rows after packed case ``seed``'s queries and keys (a static-shape buffer's tail; NaN,
    so a read of them shows): none, one row, or more than a tile."""
    rnd = random.Random(5000 + seed)
    return rnd.choice((0, 0, 1, 17)), rnd.choice((0, 0, 1, 70))


def packed_id(case) -> str:
    lens_q, lens_k, H, H_kv, D, causal, window, dtype = case
    return (f"q{'_'.join(map(str, lens_q))}-k{'_'.join(map(str, lens_k))}-H{H}kv{H_kv}-D{D}"
            f"{'-causal' if causal else ''}-win{window[0]},{window[1]}-{str(dtype)[6:]}")


def cache_id(case) -> str:
    B, H, H_kv, T_cache, T_q, T_new, lengths, causal, window, D, dtype = case
    return (f"B{B}H{H}kv{H_kv}-cache{T_cache}-len{'_'.join(map(str, lengths))}-Tq{T_q}new{T_new}-D{D}"
            f"{'-causal' if causal else ''}-win{window[0]},{window[1]}-{str(dtype)[6:]}")


def cache_draw_id(x) -> str:
    """A test id for one of ``(cache case, splits, recency)``."""
    return f"splits{x}" if isinstance(x, int) else f"recency{x:g}" if isinstance(x, float) else cache_id(x)


def cache_draws(seeds) -> list[tuple]:
    """``(case, splits, recency)`` for each seed."""
    return [(cache_case(s), cache_splits(s), cache_recency(s)) for s in seeds]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [fixed_case(s) for s in SEEDS["fixed"]], ids=case_id)
def test_random_fixed_length_cases(case, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case(case)


# head dims the other draws leave out (they keep to 16, 32 and 64, where the interpreter is quickest): odd ones,
# ones padded to the next tile (40 -> 64, 72 -> 128, 200 -> 256) and the widest
WIDTHS = (1, 3, 8, 12, 24, 40, 48, 72, 80, 96, 100, 128, 160, 200, 256)


def at_other_width(case: tuple, d_index: int, seed: int) -> tuple:
    """``case`` with its head dim (at ``d_index``) replaced by one of :data:`WIDTHS`, drawn from ``seed``."""
    case = list(case)
    case[d_index] = random.Random(seed).choice(WIDTHS)
    return tuple(case)


def width_case(seed: int) -> tuple:
    """A :func:`fixed_case`-like shape at a head dim of :data:`WIDTHS`."""
    return at_other_width(fixed_case(9000 + seed), 5, 9500 + seed)


def packed_width_draws(seeds) -> list[tuple]:
    """``(case, tails)`` of :func:`packed_draws` at head dims of :data:`WIDTHS`."""
    return [(at_other_width(packed_case(10000 + s), 4, 10500 + s), packed_tails(10000 + s)) for s in seeds]


def cache_width_draws(seeds) -> list[tuple]:
    """``(case, splits, recency)`` of :func:`cache_draws` at head dims of :data:`WIDTHS`."""
    return [(at_other_width(cache_case(11000 + s), 9, 11500 + s), cache_splits(11000 + s), cache_recency(11000 + s))
            for s in seeds]


TMA_REFUSAL = "ATTN_COURSE_KERNEL=tma cannot run these tensors: stride"


def refused_or_run(check, refuse: bool, may_refuse: bool = False) -> None:
    """``check()`` must raise the forced-tma refusal naming a stride if ``refuse``; may if ``may_refuse``;
    otherwise it must run (any other error, or a refusal not allowed, is raised)."""
    if refuse:
        with pytest.raises(ValueError, match=TMA_REFUSAL):
            check()
        return
    try:
        check()
    except ValueError as error:
        if not may_refuse or TMA_REFUSAL not in str(error):
            raise


def run_or_refused(check, variant: str, D: int, dtype: torch.dtype, one_row: bool = False) -> None:
    """Run ``check``. Forced to ``tma``, the kernel must instead refuse, naming a stride, exactly where a row of
    ``D`` elements is not a multiple of 16 bytes: the stride from one head or one position to the next is then
    ``D`` elements (a head's are ``H x D``, a multiple of 16 bytes only if ``D``'s are not all that is off), and
    every stride of a contiguous tensor whose rows are 16-byte multiples, TMA takes. ``one_row``: every tensor
    has one head and one position (no stride is stepped along, so TMA may run it either way)."""
    off = variant == "tma" and D * dtype.itemsize % 16 != 0
    refused_or_run(check, refuse=off and not one_row, may_refuse=off and one_row)


def descriptor_ready(shape: tuple, dtype: torch.dtype) -> bool:
    """Whether a contiguous tensor of ``shape`` meets TMA's rule: every stride but the last, along a dim of
    size > 1, a multiple of 16 bytes (written out here, independently of ``_variants.tma_unready``)."""
    size = dtype.itemsize
    strides = [math.prod(shape[i + 1:]) for i in range(len(shape) - 1)]  # a contiguous tensor's, bar the last
    return all(n == 1 or stride * size % 16 == 0 for n, stride in zip(shape[:-1], strides, strict=True))


def tma_takes(case: tuple) -> bool:
    """Whether the contiguous q, k and v of fixed-length ``case`` meet :func:`descriptor_ready`."""
    B, H, H_kv, T_q, T_k, D, _, _, dtype = case
    return all(descriptor_ready(shape, dtype) for shape in ((B, H, T_q, D), (B, H_kv, T_k, D)))


def check_width_case(case: tuple, variant: str, device="cpu") -> None:
    """Forced to ``tma`` with tensors whose strides the copy engine cannot take (odd head dims, odd lengths),
    the kernel refuses, naming the stride; otherwise it matches the reference (``variant`` must be set)."""
    refused_or_run(lambda: check_case(case, device), refuse=variant == "tma" and not tma_takes(case))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [width_case(s) for s in SEEDS["widths"]], ids=case_id)
def test_random_cases_at_other_head_dims(case, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_width_case(case, variant)


def packed_draws(seeds, lengths: tuple = LENGTHS) -> list[tuple]:
    """``(case, tails)`` for each seed."""
    return [(packed_case(s, lengths), packed_tails(s)) for s in seeds]


def packed_draw_id(x) -> str:
    """A test id for one of ``(packed case, tails)``."""
    return f"tail{x[0]},{x[1]}" if isinstance(x[0], int) else packed_id(x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,tails", packed_draws(SEEDS["packed"]), ids=packed_draw_id)
def test_random_packed_cases(case, tails, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_varlen_case(*case, tails=tails)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,splits,recency", cache_draws(SEEDS["cache"]), ids=cache_draw_id)
def test_random_cache_cases(case, splits, recency, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_kvcache_case(case, num_splits=splits, recency=recency)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,tails", packed_width_draws(SEEDS["packed_widths"]), ids=packed_draw_id)
def test_random_packed_cases_at_other_head_dims(case, tails, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    lens_q, lens_k, H, H_kv = case[:4]
    one_row = H == H_kv == 1 and sum(lens_q) + tails[0] <= 1 and sum(lens_k) + tails[1] <= 1
    run_or_refused(lambda: check_varlen_case(*case, tails=tails), variant, case[4], case[-1], one_row)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,splits,recency", cache_width_draws(SEEDS["cache_widths"]), ids=cache_draw_id)
def test_random_cache_cases_at_other_head_dims(case, splits, recency, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    run_or_refused(lambda: check_kvcache_case(case, num_splits=splits, recency=recency), variant, case[9], case[-1])


SOFTCAPS = (0.0, 1.5, 5.0, 30.0)
ALIBI = (None, "H", "BH")  # no slopes, one per head, one per (sequence, head)


def score_changes(rnd: random.Random) -> tuple[float, str | None]:
    """``(softcap, alibi)``: scores capped, biased by ALiBi, or both (never neither)."""
    softcap, alibi = rnd.choice(SOFTCAPS), rnd.choice(ALIBI)
    if not softcap and alibi is None:
        alibi = rnd.choice(ALIBI[1:])
    return softcap, alibi


def scored_case(seed: int) -> tuple:
    """``(fixed-length case, softcap, alibi)``: a :func:`fixed_case`-like shape with :func:`score_changes`."""
    return fixed_case(6000 + seed), *score_changes(random.Random(6000 + seed))


def scored_id(x) -> str:
    return x if isinstance(x, str) or x is None else f"cap{x:g}" if isinstance(x, float) else case_id(x)


def check_scored_case(case, softcap, alibi, device="cpu"):
    """The kernel's out, gradients and lse with the softcap and slopes against the float32 reference with the
    same cap and the bias as an additive mask (queries scaled by 3, so that scores reach past small caps)."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, torch.float32, device=device)
    q, k, v = (x.to(dtype) for x in (q * 3, k, v))
    slopes = None if alibi is None else geometric_slopes(H, B if alibi == "BH" else None, device)
    bias = None if slopes is None else alibi_bias(slopes, T_q, T_k)
    check_changed_scores(q, k, v, causal, window, dtype, softcap=softcap, alibi_slopes=slopes, bias=bias)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,softcap,alibi", [scored_case(s) for s in SEEDS["scored"]], ids=scored_id)
def test_random_cases_with_a_softcap_and_alibi(case, softcap, alibi, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_scored_case(case, softcap, alibi)


def per_sequence_changes(softcap: float, alibi: str | None, B: int, H: int, q_rows=None, device="cpu") -> tuple:
    """``(kernel_kwargs, ref_of)`` for ``check_varlen_case`` and ``check_kvcache_case``: the cap, and ALiBi's
    slopes (one per head, or one per sequence and head) for the kernel; for the reference on sequence ``b``
    alone, ``ref_of(b, n_q, n_k)`` (packed) or ``ref_of(b, n_k)`` with ``q_rows`` queries (a cache) gives the
    cap and that sequence's bias from ALiBi's definition, bottom-right aligned."""
    slopes = None if alibi is None else geometric_slopes(H, B if alibi == "BH" else None, device)  # (H,) or (B, H)

    def ref_of(b, n_q, n_k=None):
        n_q, n_k = (q_rows, n_q) if n_k is None else (n_q, n_k)
        rows = None if slopes is None else slopes[b] if slopes.dim() == 2 else slopes  # (H,)
        return dict(softcap=softcap, bias=None if rows is None else alibi_bias(rows, n_q, n_k))

    return dict(softcap=softcap, alibi_slopes=slopes), ref_of


def packed_scored_draws(seeds, lengths: tuple = LENGTHS) -> list[tuple]:
    """``(case, tails, softcap, alibi)``: a packed draw with :func:`score_changes`."""
    return [(packed_case(12000 + s, lengths), packed_tails(12000 + s), *score_changes(random.Random(12500 + s)))
            for s in seeds]


def cache_scored_draws(seeds) -> list[tuple]:
    """``(case, splits, softcap, alibi)``: a cache draw with :func:`score_changes`."""
    return [(cache_case(13000 + s), cache_splits(13000 + s), *score_changes(random.Random(13500 + s)))
            for s in seeds]


def scored_draw_id(draw: tuple) -> str:
    """A test id for one of :func:`packed_scored_draws` or :func:`cache_scored_draws`."""
    case, extra, softcap, alibi = draw
    shape = (packed_id(case) + f"-tail{extra[0]},{extra[1]}") if len(case) == 8 else cache_id(case) + f"-splits{extra}"
    return f"{shape}-cap{softcap:g}-{alibi or 'noalibi'}"


def check_packed_scored(case, tails, softcap, alibi, device="cpu") -> None:
    """Each sequence of the batch against the reference with its own bias (its own row of slopes)."""
    changes = per_sequence_changes(softcap, alibi, len(case[0]), case[2], device=device)
    check_varlen_case(*case, device=device, tails=tails, scores=changes, q_scale=3.0)


def check_cache_scored(case, splits, softcap, alibi, device="cpu") -> None:
    """Each sequence's new queries against the reference on its filled cache with its own bias."""
    changes = per_sequence_changes(softcap, alibi, case[0], case[1], q_rows=case[4], device=device)
    check_kvcache_case(case, device, num_splits=splits, scores=changes, q_scale=3.0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,tails,softcap,alibi", [pytest.param(*d, id=scored_draw_id(d))
                                                       for d in packed_scored_draws(SEEDS["packed_scored"])])
def test_random_packed_cases_with_a_softcap_and_alibi(case, tails, softcap, alibi, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_packed_scored(case, tails, softcap, alibi)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case,splits,softcap,alibi", [pytest.param(*d, id=scored_draw_id(d))
                                                        for d in cache_scored_draws(SEEDS["cache_scored"])])
def test_random_cache_cases_with_a_softcap_and_alibi(case, splits, softcap, alibi, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_cache_scored(case, splits, softcap, alibi)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_row_almost_all_on_one_key_carries_flash_attention_2_s_rounding_of_the_output(variant, monkeypatch):
    """A draw a sweep found: two queries on two keys, float16, a cap of 30 and ALiBi, queries scaled by 3, so a
    row's weight sits almost all on one key. FlashAttention-2 takes dS = P (dP - delta) with delta from the
    output rounded to float16, and there that rounding puts dq 1.4 float16 steps off at an element of size
    0.07, where PyTorch's own float16 gradient happens to be 10x closer: the checks allow FlashAttention-2's
    own error (``fa2_grads``) as a second budget, as for dropout."""
    lens, H, H_kv, D, window = [2], 4, 1, 32, (200, 200)
    changes = per_sequence_changes(30.0, "BH", 1, H)
    (q, _), (k, _), (v, _), (dout, _) = (packed(lens, h, D, torch.float16, seed)
                                         for h, seed in ((H, 0), (H_kv, 1), (H_kv, 2), (H, 3)))
    q, k, v, dout = (x.transpose(0, 1)[None] for x in ((q.float() * 3).half(), k, v, dout))  # (1, H, T, D)
    extra = changes[1](0, 2, 2)
    want = grads(lambda *x: reference(*x, True, window, **extra), q, k, v, dout)[0]
    same = grads(lambda *x: torch_same_dtype(*x, True, window, **extra), q, k, v, dout)[0]
    fa2 = fa2_grads(q, k, v, None, 0.0, True, window, dout, **extra)[0]
    assert max_err(fa2, want) > 2 * max_err(same, want) + FLOOR[torch.float16]  # (PyTorch's budget alone: short)
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_varlen_case(lens, lens, H, H_kv, D, True, window, torch.float16, tails=(17, 0), scores=changes, q_scale=3.0)


def test_a_blocks_rows_past_its_sequence_get_no_probability_in_the_dq_pass(monkeypatch):
    """Through tensor descriptors, a block's rows past its sequence's end hold the next sequence's queries. The
    dQ pass must give them zero probabilities (their logsumexp loads as +inf), not ``exp2(score - 0)``: with
    a cap of 30 and queries scaled by 3 that reached 2^43, and its float16 cast overflowed (harmless, the rows
    are never stored, but the interpreter warned). A draw a sweep found, with that warning as an error."""
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    lens_q, lens_k = [65, 63, 15, 33], [64, 2, 63, 33]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="overflow encountered in cast", category=RuntimeWarning)
        check_varlen_case(lens_q, lens_k, 1, 1, 32, False, (40, 0), torch.float16, tails=(1, 0), q_scale=3.0,
                          scores=per_sequence_changes(30.0, "H", len(lens_q), 1))


DROPOUT_RATES = (0.1, 0.3, 0.5, 0.9)


def dropout_case(seed: int) -> tuple:
    """A :func:`fixed_case`-like shape and a dropout rate: ``check_dropout_case``'s tuple (checked with
    FlashAttention-2's own error as a second budget for the gradients: ``fa2_grads``)."""
    return (*fixed_case(7000 + seed), random.Random(7000 + seed).choice(DROPOUT_RATES))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [dropout_case(s) for s in SEEDS["dropout"]], ids=dropout_case_id)
def test_random_cases_with_dropout(case, variant):
    check_dropout_case(case, variant=variant, fa2_budget=True)


def paged_draw(seed: int) -> dict:
    """``check_paged``'s arguments for one call on a paged cache: pages of 1 to 64 positions, 1 to 3 sequences
    of ragged lengths (0 and page edges included), a decoding step or a chunk with or without new keys, split
    or not, GQA, a window, every dtype."""
    rnd = random.Random(8000 + seed)
    B = rnd.choice((1, 2, 3))
    H, H_kv = heads(rnd)
    T_q = rnd.choice((1, 1, 2, 5))
    return dict(page_size=rnd.choice((1, 3, 16, 64)), T_q=T_q, T_new=rnd.choice((0, 1, T_q)),
                lengths=tuple(rnd.choice((0, 1, 15, 16, 17, 63, 100)) for _ in range(B)), causal=rnd.random() < 0.5,
                window=rnd.choice(WINDOWS), num_splits=rnd.choice((0, 2, 3)), dtype=rnd.choice(DTYPES), H=H,
                H_kv=H_kv, D=rnd.choice((16, 32)))


def paged_draw_id(draw: dict) -> str:
    return (f"page{draw['page_size']}-len{'_'.join(map(str, draw['lengths']))}-Tq{draw['T_q']}new{draw['T_new']}"
            f"-H{draw['H']}kv{draw['H_kv']}-D{draw['D']}{'-causal' if draw['causal'] else ''}"
            f"-win{draw['window'][0]},{draw['window'][1]}-splits{draw['num_splits']}-{str(draw['dtype'])[6:]}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("draw", [paged_draw(s) for s in SEEDS["paged"]], ids=paged_draw_id)
def test_random_paged_cache_steps(draw, variant):
    draw = dict(draw)
    check_paged(draw.pop("page_size"), draw.pop("T_q"), draw.pop("T_new"), variant=variant, **draw)


def paged_scored_draws(seeds) -> list[tuple]:
    """``(draw, softcap, alibi)``: a :func:`paged_draw` with :func:`score_changes`."""
    return [(paged_draw(14000 + s), *score_changes(random.Random(14500 + s))) for s in seeds]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("draw,softcap,alibi", [
    pytest.param(d, c, a, id=f"{paged_draw_id(d)}-cap{c:g}-{a or 'noalibi'}")
    for d, c, a in paged_scored_draws(SEEDS["paged_scored"])])
def test_random_paged_cache_steps_with_a_softcap_and_alibi(draw, softcap, alibi, variant):
    draw = dict(draw)
    changes = per_sequence_changes(softcap, alibi, len(draw["lengths"]), draw["H"], q_rows=draw["T_q"])
    check_paged(draw.pop("page_size"), draw.pop("T_q"), draw.pop("T_new"), variant=variant, scores=changes,
                q_scale=3.0, **draw)


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_rows_far_below_zero_are_held_to_pytorchs_own_float32_error(variant, monkeypatch):
    """A draw a sweep found (scored seed 1711): ALiBi with 97 queries on 17 keys puts row logsumexps near -117,
    where every float32 probability loses about eps x 117 of itself, in the reference as in the kernel (which
    also rounds its saved logsumexp), so two correct float32 gradients differ by more than 2.6e-6 x |element|.
    The kernel must stay within twice PyTorch's own float32 error, measured against float64."""
    case, softcap, alibi = scored_case(1711)
    assert case_id(case) == "B2H8kv2-T97x17-D32-win200,200-float32" and (softcap, alibi) == (5.0, "BH")
    B, H, H_kv, T_q, T_k, D, causal, window, _ = case
    q, k, _ = make_qkv(B, H, H_kv, T_q, T_k, D, torch.float32)
    bias = alibi_bias(geometric_slopes(H, B), T_q, T_k)
    assert reference_lse(q * 3, k, causal, window, softcap, bias).min() < -115  # the rows the rule is for
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_scored_case(case, softcap, alibi)


@pytest.mark.parametrize("case,softcap,alibi", [
    ((1, 2, 1, 29, 29, 256, True, (-1, -1), torch.bfloat16), 5.0, "BH"),  # the widest head dim: other tiles
    ((2, 4, 2, 23, 31, 80, False, (7, 3), torch.float16), 2.0, "H"),  # a padded head dim (tiles of 128)
], ids=scored_id)
def test_a_softcap_and_alibi_at_the_widest_and_a_padded_head_dim(case, softcap, alibi):
    check_scored_case(case, softcap, alibi)


def test_the_draws_cover_what_they_promise():
    """The seeds ``make test`` draws do reach the edges named above (a generator change that lost them fails here;
    a sweep draws many times as many, and with ``ATTN_COURSE_SWEEP_FROM`` seeds no earlier sweep ran)."""
    fixed = [fixed_case(s) for s in DEFAULT_SEEDS["fixed"]]
    packed = [packed_case(s) for s in DEFAULT_SEEDS["packed"]]
    caches = [cache_case(s) for s in DEFAULT_SEEDS["cache"]]
    assert {c[-1] for c in fixed} == set(DTYPES)
    assert any(c[1] != c[2] for c in fixed) and any(c[6] for c in fixed) and any(not c[6] for c in fixed)
    assert any(c[7] != (-1, -1) for c in fixed) and any(c[3] != c[4] for c in fixed)
    assert any(0 in c[0] or 0 in c[1] for c in packed) and any(len(c[0]) > 1 for c in packed)
    assert any(c[5] for c in packed) and any(not c[5] for c in packed)
    tails = [packed_tails(s) for s in DEFAULT_SEEDS["packed"]]
    assert (0, 0) in tails and any(t[0] for t in tails) and any(t[1] for t in tails)
    assert any(0 in c[6] for c in caches) and any(c[5] == 0 for c in caches) and any(c[4] > 1 for c in caches)
    splits = [cache_splits(s) for s in DEFAULT_SEEDS["cache"]]
    assert 0 in splits and len(set(splits)) > 2
    recency = [cache_recency(s) for s in DEFAULT_SEEDS["cache"]]
    split_recency = {r > 0 for n, r in zip(splits, recency, strict=True) if n > 1}
    assert split_recency == {True, False}  # split cases with and without climbing scores
    scored = [scored_case(s) for s in DEFAULT_SEEDS["scored"]]
    caps, slopes = {c for _, c, _ in scored}, {a for _, _, a in scored}
    assert slopes == set(ALIBI) and 0.0 in caps and len(caps) >= 3 and any(c and a for _, c, a in scored)
    assert {c[-1] for c, _, _ in scored} == {torch.float32, torch.float16, torch.bfloat16}
    dropout = [dropout_case(s) for s in DEFAULT_SEEDS["dropout"]]
    assert len({c[-1] for c in dropout}) > 1 and any(c[-2] != torch.float32 for c in dropout)
    widths = [width_case(s) for s in DEFAULT_SEEDS["widths"]]
    assert {c[5] for c in widths}.isdisjoint({16, 32, 64})
    assert {tma_takes(c) for c in widths} == {True, False}  # tma runs some, and refuses others
    changed = [d[-2:] for d in packed_scored_draws(DEFAULT_SEEDS["packed_scored"])
               + cache_scored_draws(DEFAULT_SEEDS["cache_scored"]) + paged_scored_draws(DEFAULT_SEEDS["paged_scored"])]
    assert any(a == "BH" for _, a in changed) and any(c for c, _ in changed)  # per-sequence slopes; a cap
    paged = [paged_draw(s) for s in DEFAULT_SEEDS["paged"]]
    assert len({d["page_size"] for d in paged}) > 1 and any(d["T_new"] for d in paged)


def collected(tmp_path, **env) -> tuple[int, str]:
    """``(exit status, output)`` of collecting this file's tests with the sweep settings in ``env``."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                          "-p", "no:xdist", __file__], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, **env}, timeout=120)
    return run.returncode, run.stdout + run.stderr


def test_a_sweep_from_an_offset_draws_the_seeds_after_it_and_bad_settings_are_named(tmp_path, monkeypatch):
    """``make sweep SWEEP_FROM=m`` runs seeds no smaller sweep ran: with SWEEP=1 and SWEEP_FROM=1, exactly the
    fixed-length cases of seeds 8 to 15; a setting that is not a whole number stops collection, naming it."""
    status, out = collected(tmp_path, ATTN_COURSE_SWEEP="1", ATTN_COURSE_SWEEP_FROM="1")
    assert status == 0, out
    ran = {line.split("[", 1)[1].rsplit("-", 1)[0] for line in out.splitlines()
           if "test_random_fixed_length_cases[" in line}
    assert ran == {case_id(fixed_case(s)) for s in range(8, 16)}
    assert ran.isdisjoint({case_id(fixed_case(s)) for s in DEFAULT_SEEDS["fixed"]})
    status, out = collected(tmp_path, ATTN_COURSE_SWEEP="ten")
    assert status != 0 and "ATTN_COURSE_SWEEP='ten': expected a whole number >= 1" in out, out
    for name, value, least in (("ATTN_COURSE_SWEEP_FROM", "-1", 0), ("ATTN_COURSE_SWEEP", "0", 1)):
        monkeypatch.setenv(name, value)
        with pytest.raises(pytest.UsageError, match=f"{name}='{value}': expected a whole number >= {least}"):
            sweep_setting(name, 1, least)
