"""Decoding: each row's keys split between programs and combined afterwards (flash-decoding,
kernels/flash_split.py), and the 16-row query tiles a step with ``T_q <= 16`` runs (kernels/flash_fwd.py).

The split must change nothing but the rounding: out and lse against ``attn_course.attention`` by the
tolerance rule, with slices that walk no key at all (more slices than tiles, a window that misses most
slices) and rows that see no key anywhere (zeros, ``lse = -inf``); the backward pass after a split forward;
the cache path with NaN-filled unfilled tails; the rule that decides how many slices; and the kernels
compiled for sm_90. The interpreter's tiles are 32 keys, so a 203-key row has 7 tiles to deal out.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import assert_close_by_rule, check_case, make_qkv, max_err, torch_same_dtype
from test_kernels_empty import expected
from test_kernels_kvcache import CASES as KVCACHE_CASES
from test_kernels_kvcache import case_id as kvcache_case_id
from test_kernels_kvcache import check_kvcache_case

from attn_course.kernels import _variants, flash_attention_kvcache, flash_attn_with_kvcache, swap_seq_and_heads
from attn_course.kernels._runtime import kernel_module

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
NONE = (-1, -1)
CPU = torch.device("cpu")

CASES = [  # (B, H, H_kv, T_q, T_k, D, causal, window, dtype, num_splits)
    (2, 4, 2, 1, 203, 32, False, NONE, F32, 3),  # one decoding step: 7 key tiles dealt 3, 3, 1
    (1, 4, 1, 1, 113, 64, True, NONE, BF16, 8),  # more slices than tiles (4): slices 4 ... 7 walk nothing
    (2, 2, 2, 17, 203, 16, True, NONE, F16, 4),  # a chunk of 17 queries, causal, bottom-right
    (1, 4, 2, 5, 203, 32, True, (40, 0), F32, 3),  # a window: each row's keys lie in one or two slices
    (1, 2, 1, 5, 2, 16, True, NONE, F32, 3),  # T_q > T_k, causal: the first three rows see no key at all
    (1, 2, 2, 3, 70, 128, False, NONE, F16, 2),
    (1, 8, 1, 3, 150, 32, True, (20, 0), F16, 2),  # MQA, 3 tokens: 24 packed rows, a position across 2 blocks
    (2, 6, 2, 7, 90, 16, True, NONE, BF16, 3),  # groups of 3 heads, 7 tokens: 21 rows of mixed positions
]


def case_id(c):
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, splits = c
    return (f"B{B}-H{H}x{H_kv}-Tq{T_q}-Tk{T_k}-D{D}{'-causal' if causal else ''}"
            f"{'-win' if window != NONE else ''}-{str(dtype)[6:]}-S{splits}")


@pytest.fixture
def combines(monkeypatch):
    """The number of slices of each combine launched, on every device (the split really happened)."""
    log = []
    devices = [CPU] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        split = kernel_module("flash_fwd", device).flash_split
        original = split.combine_splits

        def spy(part, *args, original=original):
            log.append(part.shape[1])
            return original(part, *args)
        monkeypatch.setattr(split, "combine_splits", spy)
    return log


def force_splits(monkeypatch, n: int, device=CPU) -> None:
    """Make the kernel's own choice (``num_splits=0``, what ``flash_attention`` always asks for) ``n``."""
    split = kernel_module("flash_fwd", device).flash_split
    monkeypatch.setattr(split, "num_splits", lambda requested, **shape: requested or n)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_split_forward_matches_attention(case, combines):
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, splits = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype)
    with torch.no_grad():
        out, lse = flash_attention_kvcache(q, k, v, causal=causal, window=window, num_splits=splits,
                                           return_lse=True)
        whole = flash_attention_kvcache(q, k, v, causal=causal, window=window, num_splits=1)
    assert combines == [splits], f"expected one combine of {splits} slices, saw {combines}"
    want, want_lse = expected(q, k, v, causal, window)
    assert_close_by_rule("out", out, want, torch_same_dtype(q, k, v, causal, window), dtype)
    dead = torch.isneginf(want_lse)
    assert torch.equal(torch.isneginf(lse), dead), "a row is -inf in lse iff it sees no key"
    assert not out[dead].any(), "a row that sees no key must be zeros, however its keys were split"
    assert max_err(lse[~dead], want_lse[~dead]) < 1e-4
    assert max_err(out, whole) < (1e-6 if dtype == F32 else 1e-2), "splitting changed more than the rounding"


@pytest.mark.parametrize("case", [CASES[0], CASES[3], (2, 4, 2, 17, 113, 32, True, NONE, BF16, 3)], ids=case_id)
def test_backward_after_a_split_forward(case, combines, monkeypatch):
    """``flash_attention`` splits when the rule says so (on a GPU, a short batch with long rows); its
    backward reads only out and lse, which the combine must have made right: the gradients by the rule."""
    force_splits(monkeypatch, case[-1])
    check_case(case[:-1])
    assert combines and set(combines) == {case[-1]}


@pytest.mark.parametrize("case", KVCACHE_CASES, ids=kvcache_case_id)
def test_split_cache_reads_only_the_filled_part(case, combines, monkeypatch):
    """The cache tests again, every row split in 3: a slice past a sequence's filled length walks nothing
    (the unfilled tails are NaN), and a sequence with an empty cache and nothing appended sees no key."""
    force_splits(monkeypatch, 3)
    check_kvcache_case(case)
    assert combines == [3]


def test_flash_attn_with_kvcache_passes_num_splits_on(combines):
    q, k, v = make_qkv(2, 4, 2, 1, 150, 32, F16)
    bthd = [swap_seq_and_heads(x) for x in (q, k, v)]  # (B, T, H, D) views
    out = flash_attn_with_kvcache(*bthd, num_splits=5)
    assert combines == [5]
    with torch.no_grad():
        assert torch.equal(swap_seq_and_heads(out), flash_attention_kvcache(q, k, v, num_splits=5))


@pytest.mark.parametrize("bad", [-1, True, 2.0, "4"])
def test_bad_num_splits_is_named(bad):
    q, k, v = make_qkv(1, 2, 1, 1, 20, 16, F32)
    with pytest.raises(ValueError, match=r"num_splits must be an int >= 0 .*got"), torch.no_grad():
        flash_attention_kvcache(q, k, v, num_splits=bad)


def test_the_forward_operator_with_splits_passes_opcheck():
    q, k, v = make_qkv(2, 4, 2, 1, 90, 16, F16)
    used = torch.tensor([90, 41], dtype=torch.int32)
    torch.library.opcheck(torch.ops.attn_course.flash_forward.default,
                          (q, k, v, 0.25, 1 << 30, 0, None, None, 0, 0, used, 3))


# ---- how many slices ------------------------------------------------------------------------------------

def rule():
    return kernel_module("flash_fwd", CPU).flash_split


@pytest.mark.parametrize("shape,sms,want", [
    (dict(B=1, H=32, T_q=1, T_k=32768), 132, 8),  # 32 programs, 264 slots: 8 slices of 4096 keys
    (dict(B=1, H=8, T_q=1, T_k=1000), 132, 3),  # 33 would fit; no slice under 256 keys
    (dict(B=1, H=8, T_q=1, T_k=300), 132, 1),  # too short to split at all
    (dict(B=4, H=16, T_q=4096, T_k=4096), 132, 1),  # prefill: 4096 programs already
    (dict(B=2, H=64, T_q=1, T_k=65536), 132, 2),  # 128 programs: two slices fill 264 slots
    (dict(B=1, H=32, T_q=1, T_k=32768), None, 1),  # the interpreter: programs run one after another
])
def test_the_rule_fills_the_gpu_and_no_more(shape, sms, want):
    assert rule().num_splits(0, **shape, sms=sms) == want


def test_the_rule_over_a_grid_of_shapes():
    """Properties, for every shape of a grid: 1 <= S <= MAX_SPLITS; no split once the programs fill
    the slots; a split never takes the programs past the slots, nor a slice under MIN_KEYS_PER_SPLIT."""
    split = rule()
    for sms in (8, 108, 132):
        slots = split.PROGRAMS_PER_SM * sms
        for B in (1, 3, 16):
            for H in (1, 8, 40):
                for T_q in (1, 4, 65, 1000):
                    for T_k in (1, 255, 256, 1000, 4096, 100_000):
                        n = split.num_splits(0, B=B, H=H, T_q=T_q, T_k=T_k, sms=sms)
                        programs = -(-T_q // split.ROWS_PER_PROGRAM) * H * B
                        assert 1 <= n <= split.MAX_SPLITS
                        if programs >= slots:
                            assert n == 1, (B, H, T_q, T_k, sms, n)
                        if n > 1:
                            assert n * programs <= slots and T_k // n >= split.MIN_KEYS_PER_SPLIT


def test_a_requested_count_is_kept_up_to_the_cap():
    split = rule()
    shape = dict(B=64, H=64, T_q=4096, T_k=100, sms=132)
    assert split.num_splits(5, **shape) == 5 and split.num_splits(1, **shape) == 1
    assert split.num_splits(10_000, **shape) == split.MAX_SPLITS


def test_packed_batches_never_split(combines, monkeypatch):
    """flash-attn splits only fixed-length and cache calls; varlen keeps one program per row block."""
    from attn_course.kernels import flash_attention_varlen

    force_splits(monkeypatch, 4)
    q, k, v = (torch.randn(40, 2, 16) for _ in range(3))
    cu = torch.tensor([0, 15, 40], dtype=torch.int32)
    flash_attention_varlen(q, k, v, cu, cu, 25, 25)
    assert combines == []


# ---- compiled for Hopper --------------------------------------------------------------------------------

@pytest.mark.parametrize("T_q", [1, 100])
@pytest.mark.parametrize("variant", list(_variants.VARIANTS))
def test_split_kernels_compile_for_hopper(variant, T_q):
    """Every variant can split (TMA loads keys from any row; the partials are stored through pointers,
    since the output descriptor describes out itself): the forward with SPLIT_K and the combine, for sm_90,
    with a decoding step's 16-row tiles (mma.sync: wgmma needs 64 rows) and with the usual ones (wgmma)."""
    from attn_course.kernels._compile import HOPPER, compile_launch, forward_launches

    launches = forward_launches(variant, F16, 128, T=4096, T_q=T_q, num_splits=6)
    assert [fn.__name__ for fn, _, _ in launches] == ["_attn_fwd", "_combine_splits"]
    (fn, args, kwargs), combine = launches
    assert kwargs["SPLIT_K"] and kwargs["TMA"] == _variants.VARIANTS[variant].tma
    assert (kwargs["BLOCK_M"] == 16) == (T_q == 1) and kwargs["PACK_GQA"] == (T_q == 1)  # (4 heads on 2)
    ptx = compile_launch(fn, args, dict(kwargs), HOPPER).asm["ptx"]
    products = "mma.sync" if T_q == 1 else "wgmma"
    assert products in ptx, f"the split forward lost its tensor-core products ({products})"
    assert ("cp.async.bulk.tensor" in ptx) == _variants.VARIANTS[variant].tma
    compile_launch(*combine, HOPPER)


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_a_packed_batch_s_decoding_kernel_compiles_for_hopper(variant):
    """A packed batch of one-token sequences with GQA, as the GPU compiles it: the group's heads packed into
    16-row tiles (mma.sync), unsplit; through TMA the keys and values, but for each sequence's overhanging
    tile, come through the descriptors."""
    from attn_course.kernels._compile import HOPPER, compile_launch, forward_launches

    (fn, args, kwargs), = forward_launches(variant, BF16, 128, T=4096, T_q=1, varlen=True)
    assert kwargs["IS_VARLEN"] and kwargs["PACK_GQA"] and not kwargs["SPLIT_K"] and kwargs["BLOCK_M"] == 16
    ptx = compile_launch(fn, args, dict(kwargs), HOPPER).asm["ptx"]
    assert "mma.sync" in ptx and ("cp.async.bulk.tensor" in ptx) == (variant == "tma")


# ---- 16-row tiles for decoding ----------------------------------------------------------------------------

def test_the_autotuner_times_decoding_tiles_only_for_decoding_steps():
    """For every variant and head dim the search space holds both kinds of tile, and the pruning step
    leaves only the 16-row ones for ``T_q <= 16`` (rounded: the tuning key's length) and only the others
    above; the pruned sets are never empty (Triton refuses an empty one)."""
    from attn_course.kernels._compile import CUDA

    fwd = kernel_module("flash_fwd", CUDA)
    for variant in _variants.VARIANTS.values():
        for D in (16, 64, 128, 256):
            space = fwd.configs(variant, D)
            for T_q, decoding in ((1, True), (16, True), (32, False), (4096, False)):
                kept = fwd.prune_for_lengths(space, {"TUNE_T_Q": T_q}, HEAD_DIM=D)
                rows = {c.kwargs["BLOCK_M"] for c in kept}
                assert kept and (rows == {fwd.DECODE_ROWS}) == decoding, (variant.name, D, T_q, rows)
                assert not (decoding and any(c.kwargs["WARP_SPEC"] for c in kept)), "WS needs 64-row tiles"


def test_tritons_autotuner_runs_the_pruning_step(monkeypatch):
    """Wired into Triton's own autotuner (its ``prune_configs``, the step before timing, as in triton 3.6
    and 3.9): a decoding launch's arguments leave the 16-row tiles, a prefill's the others."""
    from attn_course.kernels._compile import CUDA

    monkeypatch.setattr(_variants, "_autotuned", {})
    fwd = kernel_module("flash_fwd", CUDA)
    variant = _variants.VARIANTS["tma"]
    tuner = _variants.autotuned(fwd._attn_fwd, variant, lambda: fwd.configs(variant, 128), tag=128,
                                extra_key=["SPLIT_K"], prune=fwd.prune_for_lengths)
    for T_q, decoding in ((1, True), (512, False)):
        tuner.nargs = {"TUNE_T_Q": T_q}
        rows = {c.kwargs["BLOCK_M"] for c in tuner.prune_configs({"HEAD_DIM": 128})}
        assert (rows == {fwd.DECODE_ROWS}) == decoding, (T_q, rows)


@pytest.mark.parametrize("itemsize,D,want", [(2, 128, (16, 64, 4, 3)), (2, 256, (16, 64, 4, 3)),
                                             (4, 64, (16, 64, 8, 2)), (4, 128, (16, 64, 8, 2)),
                                             (4, 256, (16, 32, 8, 2))])
def test_a_decoding_step_defaults_to_16_rows(itemsize, D, want):
    """With the autotuner off, ``T_q <= 16`` runs a 16-row tile in every variant (not warp-specialised:
    that needs 64 rows per consumer warpgroup; float32 the first of flash_fwd.FLOAT32_DECODE_TILES, on 8
    warps: at D = 64 the 4-warp tiles spill on a paged cache at D = 40); longer queries keep their usual tiles
    (32 rows or more, but float32's 16 x 16 in 256-wide tiles: flash_fwd.FLOAT32_TILES)."""
    fwd = kernel_module("flash_fwd", CPU)
    for variant in _variants.VARIANTS.values():
        c = fwd.default_config(variant, D, itemsize, T_q=3)
        assert _variants.tile_of(c) == want
        assert not c.kwargs["WARP_SPEC"]
        longer = fwd.default_config(variant, D, itemsize, T_q=17)
        assert _variants.tile_of(longer) == _variants.tile_of(fwd.default_config(variant, D, itemsize))
        assert longer.kwargs["BLOCK_M"] >= 32 or (itemsize, D) == (4, 256)


@pytest.mark.parametrize("T_q,rows", [(1, 16), (16, 16), (17, 32)])
def test_the_interpreter_runs_decoding_steps_with_16_rows(T_q, rows):
    """So the CPU tests exercise the tile shape a GPU decodes with (and pad 16 rows, not 32)."""
    from attn_course.kernels._compile import recorded_launches

    fwd = kernel_module("flash_fwd", CPU)
    q, k, v = make_qkv(1, 2, 1, T_q, 40, 16, F32)
    (_, _, kwargs), = recorded_launches(fwd, ["_attn_fwd"], lambda: fwd.attn_fwd_launch(
        q, k, v, scale=0.25, window=(1 << 30, 1 << 30), num_splits=1))
    assert kwargs["BLOCK_M"] == rows


# ---- a group's query heads packed into one tile (PACK_GQA) ------------------------------------------------

@pytest.mark.parametrize("H,H_kv,T_q,varlen,packed", [
    (8, 2, 1, False, True),  # decoding, GQA: the 4 heads of a group are rows of one program
    (8, 1, 5, False, True),  # MQA, 5 tokens: 40 rows per key/value head
    (8, 8, 1, False, False),  # MHA: nothing to share
    (8, 2, 17, False, False),  # past decoding: a tile of one head's queries already fills its rows
    (8, 2, 1, True, True),  # a packed (varlen) batch of one token per sequence packs alike
    (8, 8, 1, True, False),
])
def test_decoding_with_gqa_packs_a_groups_heads_into_one_program(H, H_kv, T_q, varlen, packed):
    """The grid then has one program per key/value head (its keys and values read once, not once per
    query head) and ``ceil(T_q * group / 16)`` row blocks."""
    from attn_course.kernels._compile import recorded_launches

    fwd = kernel_module("flash_fwd", CPU)
    B, T_k, D = 2, 40, 16
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, F32)
    kw = {}
    if varlen:
        q, k, v = (x.transpose(1, 2).reshape(-1, x.shape[1], D) for x in (q, k, v))  # (B * T, H, D)
        cu_q = torch.tensor([0, T_q, 2 * T_q], dtype=torch.int32)
        kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=torch.tensor([0, T_k, 2 * T_k], dtype=torch.int32),
                  max_seqlen_q=T_q)
    grids = []
    (_, _, kwargs), = recorded_launches(fwd, ["_attn_fwd"], lambda: fwd.attn_fwd_launch(
        q, k, v, scale=0.25, window=(1 << 30, 0), num_splits=1, **kw), grids)
    assert kwargs["PACK_GQA"] == packed
    rows = kwargs["BLOCK_M"]
    want = (-(-T_q * H // H_kv // rows), H_kv, B) if packed else (-(-T_q // rows), H, B)
    assert grids == [want]


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_a_packed_batch_of_decoding_steps_packs_gqa_and_is_right(variant, monkeypatch):
    """``flash_attention_varlen`` with every sequence at most 16 queries long (a decoding step of several
    sequences, one of them empty) and 6 query heads on 2 key/value heads: the group's heads share a
    program's rows, each sequence's rows stop at its own length, and every sequence matches attention
    on it alone, forward and backward (the backward does not pack); the same answer as with packing off."""
    from test_kernels_common import grads, reference
    from test_kernels_varlen import packed, per_sequence

    from attn_course.kernels import flash_attention_varlen
    from attn_course.kernels._compile import recorded_launches

    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    lens_q, lens_k = [1, 6, 0, 2], [40, 9, 5, 100]  # (6 tokens of 3 heads: 18 rows, past one 16-row block)
    (q, cu_q), (k, cu_k), (v, _), (dout, _) = (packed(lens, h, 16, F32, seed) for lens, h, seed in (
        (lens_q, 6, 0), (lens_k, 2, 1), (lens_k, 2, 2), (lens_q, 6, 3)))
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    fwd = kernel_module("flash_fwd", CPU)
    (_, _, kwargs), = recorded_launches(fwd, ["_attn_fwd"], lambda: fwd.attn_fwd_launch(
        q, k, v, scale=0.25, window=(1 << 30, 0), cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=6))
    assert kwargs["PACK_GQA"] and kwargs["IS_VARLEN"]
    out = flash_attention_varlen(*leaves, cu_q, cu_k, max(lens_q), max(lens_k), causal=True, window=(30, 0))
    dq, dk, dv = torch.autograd.grad(out, leaves, dout)

    def ref(q_, k_, v_):  # (k and v of 2 heads: the reference repeats them for the 6 query heads)
        return reference(q_, k_, v_, True, (30, 0))

    for b in range(len(lens_q)):
        if not lens_q[b]:  # no queries: its keys and values get no gradient
            assert not per_sequence(dk, cu_k, b).any() and not per_sequence(dv, cu_k, b).any()
            continue
        qb, kb, vb, gb = (per_sequence(x, c, b) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k), (dout, cu_q)))
        assert max_err(per_sequence(out, cu_q, b), ref(qb, kb, vb)) < 2e-5, f"out of sequence {b}"
        want = grads(ref, qb, kb, vb, gb)  # (dk, dv summed over each group of 3 by autograd)
        for name, got, w, cu in zip(("dq", "dk", "dv"), (dq, dk, dv), want, (cu_q, cu_k, cu_k), strict=True):
            assert max_err(per_sequence(got, cu, b), w) < 2e-5, f"{name} of sequence {b}"
    monkeypatch.setattr(fwd, "DECODE_ROWS", 0)  # packing off: one head per program, usual tiles
    with torch.no_grad():
        plain = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True, window=(30, 0))
    assert max_err(plain, out) < 1e-6


def test_packed_rows_match_one_head_at_a_time(monkeypatch):
    """The same decoding step with the packing turned off (a group of one head per program) gives the
    same answer to rounding: each row is its own (position, head) whichever way the rows are laid out."""
    q, k, v = make_qkv(2, 12, 3, 2, 77, 32, F32)
    with torch.no_grad():
        packed = flash_attention_kvcache(q, k, v, causal=True, window=(30, 0), num_splits=2, return_lse=True)
        fwd = kernel_module("flash_fwd", CPU)
        monkeypatch.setattr(fwd, "DECODE_ROWS", 0)  # (T_q <= 0 never holds: no packing, usual tiles)
        plain = flash_attention_kvcache(q, k, v, causal=True, window=(30, 0), num_splits=2, return_lse=True)
    assert max_err(packed[0], plain[0]) < 1e-6 and max_err(packed[1], plain[1]) < 1e-5


def test_the_split_rule_sees_the_packed_grid(monkeypatch):
    """With the group's heads packed, a decoding step of 32 query heads on 8 key/value heads runs 8
    programs, not 32: on a 132-SM GPU the rule gives it 33 slices where MHA's 32 programs get 8."""
    from attn_course.kernels._compile import CUDA

    fwd = kernel_module("flash_fwd", CUDA)
    monkeypatch.setattr(fwd.flash_split, "multiprocessors", lambda device: 132)
    assert fwd.planned_splits(0, 1, 32, 8, 1, 32768, CUDA) == 33
    assert fwd.planned_splits(0, 1, 32, 32, 1, 32768, CUDA) == 8
    assert fwd.planned_splits(0, 1, 32, 8, 1, 32768, CUDA, varlen=True) == 1
    assert fwd.planned_splits(5, 1, 32, 8, 1, 32768, CUDA) == 5
