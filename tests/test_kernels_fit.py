"""A GPU with less shared memory than Hopper's: the launch takes the next tile that fits (``_fit``).

Hopper gives a program 227 KiB of shared memory; an A100 163 KiB, an A10, L4 or RTX 30 / 40 card 99 KiB. A tile
that needs more is refused as its compiled kernel loads (Triton's ``OutOfResources``, before it runs). Here a
stand-in kernel refuses tiles as such a GPU would, the same kernels run the rest in the interpreter, and the answer
is checked against the reference: the launch must try the default tile first, then the autotuner's list in order,
run the first that fits, and say clearly when none does. The tests at the end read the real tiles' needs, compiled
for sm_80 and sm_120 by benchmarks/kernel_shared_memory.py, check that each list has one that fits those GPUs, and
that an untuned launch there runs the tile that spills least on its target.
"""

from __future__ import annotations

import functools

import pytest
import torch
from test_kernels_common import assert_close_by_rule, benchmark_report, make_qkv, reference, torch_same_dtype
from test_kernels_dropout import check_dropout_case
from triton.runtime.errors import OutOfResources

from attn_course.kernels import _fit, _variants, flash_attention, flash_attention_kvcache
from attn_course.kernels._runtime import kernel_module
from attn_course.kernels._tiles import head_dim_tile

CPU = torch.device("cpu")
F32, F16 = torch.float32, torch.float16


def need(tile, D: int, itemsize: int) -> int:
    """A stand-in for a tile's shared memory: its query, key and value rows staged once per pipeline stage."""
    bm, bn, _, stages = tile
    return (bm + 2 * bn) * D * itemsize * stages


class SmallGPU:
    """Stands in for ``kernel`` on a GPU that refuses the tiles ``refuse(tile)`` says, for want of shared memory,
    before they run (as Triton's loader refuses them), and runs the others (in the interpreter). Records what it
    refused and what it ran."""

    def __init__(self, kernel, refuse):
        self.kernel, self.refuse = kernel, refuse
        self.refused, self.ran, self.flags = [], [], []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            tile = (kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs["num_stages"])
            if self.refuse(tile):
                self.refused.append(tile)
                raise OutOfResources(need(tile, kwargs["HEAD_DIM"], 2), 101_376, "shared memory")
            self.ran.append(tile)
            self.flags.append({name: value for name, value in kwargs.items() if isinstance(value, bool)})
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """Launches planned as on a GPU with autotuning off (the default tile, then the autotuner's list), run in the
    interpreter."""
    real = _variants.launch_plans
    monkeypatch.setattr(_variants, "launch_plans", lambda interpreted, **kw: real(False, **kw))
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "0")
    monkeypatch.setenv(_variants.KERNEL_ENV, "pointer")


def small_gpu_for(module, name: str, default, every: list, pruned: list, monkeypatch) -> tuple[SmallGPU, list, tuple]:
    """A :class:`SmallGPU` planted for ``module``'s kernel ``name`` that refuses the launch's ``default`` tile and
    every tile the autotuner would time (``pruned``, from its list ``every``) but the last, and nothing else; and
    what the launch should then refuse, in order, and run: that last tile, although the GPU would take a tile of
    ``every`` that comes before it (one the pruning skips, as it spills registers on Hopper)."""
    default, pruned = _variants.tile_of(default), [_variants.tile_of(c) for c in pruned]
    every = [_variants.tile_of(c) for c in every]
    refuse = {default, *pruned[:-1]}
    assert pruned[-1] not in refuse, "the stand-in should accept one of the autotuner's tiles"
    skipped = [t for t in every[:every.index(pruned[-1])] if t not in refuse]
    assert skipped, f"{name}: no skipped tile before the last of the autotuner's: this would not tell them apart"
    gpu = SmallGPU(getattr(module, name), lambda t: t in refuse)
    monkeypatch.setattr(module, name, gpu)
    return gpu, [default] + [t for t in pruned[:-1] if t != default], pruned[-1]


def test_each_kernel_runs_the_first_tile_of_its_list_that_fits(as_on_a_gpu, monkeypatch):
    """With dropout at D = 32 (whose pruning skips tiles in the middle of each list), the forward, dK/dV and dQ
    each refused all but the last of their tiles: each runs that one (not a skipped tile the GPU would take),
    and the results match attention with the same dropout mask."""
    fwd, bwd = kernel_module("flash_fwd", CPU), kernel_module("flash_bwd", CPU)
    case = (1, 2, 2, 40, 40, 32, True, (-1, -1), F16, 0.25)
    D = case[5]
    pointer = _variants.VARIANTS["pointer"]
    flags = dict(HEAD_DIM=D, D_REAL=D, IEEE=False, DROPOUT=True, IS_VARLEN=False)
    every = fwd.configs(pointer, D)
    gpus = {"forward": small_gpu_for(fwd, "_attn_fwd", fwd.default_config(pointer, D, 2, case[3], **flags), every,
                                     fwd.prune_for_lengths(every, {"TUNE_T_Q": 64}, **flags), monkeypatch)}
    q = torch.empty(1, dtype=F16)
    for name in ("dkdv", "dq"):
        every = bwd.configs(name, pointer, D)
        gpus[name] = small_gpu_for(bwd, f"_bwd_{name}", bwd.default_config(name, D, 2, **flags), every,
                                   bwd.prune(name, True, every, {"Q": q}, **flags), monkeypatch)
    check_dropout_case(case)
    for name, (gpu, refused, ran) in gpus.items():
        assert gpu.refused == refused and gpu.ran == [ran], (name, gpu.refused, gpu.ran)


def test_float32_falls_back_through_its_own_tiles(as_on_a_gpu, monkeypatch):
    """float32 has tile lists of its own: a GPU that takes only the smallest of them (by the stand-in's measure)
    runs that one, and the answer is right."""
    fwd = kernel_module("flash_fwd", CPU)
    D, T = 64, 40
    tiles = [_variants.tile_of(c) for c in fwd.configs(_variants.VARIANTS["pointer"], D, True)]
    smallest = min(need(t, D, 4) for t in tiles)
    gpu = SmallGPU(fwd._attn_fwd, lambda t: need(t, D, 4) > smallest)
    monkeypatch.setattr(fwd, "_attn_fwd", gpu)
    q, k, v = make_qkv(1, 2, 2, T, T, D, F32)
    out = flash_attention(q, k, v, causal=True)
    assert len(gpu.ran) == 1 and need(gpu.ran[0], D, 4) == smallest and gpu.refused
    assert set(gpu.refused) <= set(tiles)
    assert_close_by_rule("out", out, reference(q, k, v, causal=True), torch_same_dtype(q, k, v, causal=True), F32)


def test_a_decoding_step_whose_16_row_tiles_do_not_fit_runs_a_prefill_tile(as_on_a_gpu, monkeypatch):
    """A GPU that fits none of the 16-row decoding tiles (before WIDE_DECODE_TILES gained a 2-stage tile, a 99 KiB
    one at D = 256: 138 KiB and more on sm_80) runs a decoding step in one of the forward's prefill tiles, which its
    launch never otherwise gets, with the query heads of a GQA group packed into the rows and the keys split in 3
    slices; the answer must not change. (At D = 32, which the interpreter runs quicker: the same code paths.)"""
    fwd = kernel_module("flash_fwd", CPU)
    B, H, H_kv, T_q, T_k, D = 2, 4, 2, 1, 70, 32
    decoding = set(fwd.decode_tiles(D))
    gpu = SmallGPU(fwd._attn_fwd, lambda t: t in decoding)
    monkeypatch.setattr(fwd, "_attn_fwd", gpu)
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, F16)
    with torch.no_grad():
        out = flash_attention_kvcache(q, k, v, num_splits=3)
    assert gpu.refused and set(gpu.refused) <= decoding and len(gpu.ran) == 1
    assert gpu.ran[0] not in decoding and gpu.ran[0][0] > fwd.DECODE_ROWS, gpu.ran
    assert gpu.flags[0]["SPLIT_K"] and gpu.flags[0]["PACK_GQA"], gpu.flags
    assert_close_by_rule("out", out, reference(q, k, v), torch_same_dtype(q, k, v), F16)


def compiled_tile(c) -> tuple[int, int, int, int]:
    """The tile config ``c`` launches with, its stages as compiled (a paged launch's deepened ones)."""
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def test_a_paged_cache_runs_its_tiles_deeper_and_falls_back_through_them(as_on_a_gpu, monkeypatch):
    """On a paged cache every tile runs with ``flash_paged.deeper``'s stages (``2 S - 1`` for a tile listed with
    ``S``): the default, and, where the GPU refuses that, the first of the autotuner's pruned list (paged spill lists
    applied, by the listed tile), deepened too; the answer does not change."""
    from test_kernels_paged import check_paged

    fwd = kernel_module("flash_fwd", CPU)
    D, pointer = 32, _variants.VARIANTS["pointer"]
    flags = dict(HEAD_DIM=D, D_REAL=D, IEEE=False, PAGED=True)
    default = fwd.deeper(fwd.default_config(pointer, D, 2, 1, **flags))  # (a decoding step: T_q = 1)
    every = fwd.configs(pointer, D, paged=True)
    assert [c.num_stages for c in every] == [2 * _variants.tile_of(c)[3] - 1 for c in every]
    assert [_variants.tile_of(c) for c in every] == [_variants.tile_of(c) for c in fwd.configs(pointer, D)]
    pruned = fwd.prune_for_lengths(every, {"TUNE_T_Q": 1}, **flags)
    nxt = next(c for c in pruned if c.all_kwargs() != default.all_kwargs())
    gpu = SmallGPU(fwd._attn_fwd, lambda t: t == compiled_tile(default))
    monkeypatch.setattr(fwd, "_attn_fwd", gpu)
    check_paged(16, 1, 1, dtype=F16, D=D)
    assert gpu.refused == [compiled_tile(default)] and gpu.ran == [compiled_tile(nxt)], (gpu.refused, gpu.ran)
    assert all(flags["PAGED"] for flags in gpu.flags)


def test_an_autotuned_launch_that_is_refused_runs_a_tile_of_its_list(as_on_a_gpu, monkeypatch):
    """The autotuner skips a refused config while it times them, but not the one it keeps when its pruned list
    holds one, nor one when none fits: its refusal moves on to the list's tiles one by one."""
    fwd = kernel_module("flash_fwd", CPU)
    D, T = 64, 40
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")  # (the autotuner on, as it is by default)

    class RefusingTuner:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise OutOfResources(300_000, 232_448, "shared memory")
            return launch

    monkeypatch.setattr(_variants, "autotuned", lambda *a, **kw: RefusingTuner())
    every = fwd.configs(_variants.VARIANTS["pointer"], D)
    limit = min(need(t, D, 2) for t in map(_variants.tile_of, every))
    gpu = SmallGPU(fwd._attn_fwd, lambda t: need(t, D, 2) > limit)
    monkeypatch.setattr(fwd, "_attn_fwd", gpu)
    q, k, v = make_qkv(1, 2, 2, T, T, D, F16)
    out = flash_attention(q, k, v)
    assert len(gpu.ran) == 1 and need(gpu.ran[0], D, 2) <= limit
    assert all(need(t, D, 2) > limit for t in gpu.refused)
    assert_close_by_rule("out", out, reference(q, k, v), torch_same_dtype(q, k, v), F16)


def test_when_no_tile_fits_the_error_names_the_launch_and_the_limit(as_on_a_gpu, monkeypatch):
    fwd = kernel_module("flash_fwd", CPU)
    D = 128
    every = fwd.configs(_variants.VARIANTS["pointer"], D)
    smallest = min(need(t, D, 2) for t in map(_variants.tile_of, every))  # (as the stand-in reports each)
    monkeypatch.setattr(fwd, "_attn_fwd", SmallGPU(fwd._attn_fwd, lambda t: True))
    q, k, v = make_qkv(1, 1, 1, 20, 20, D, F16)
    with pytest.raises(_fit.TilesDoNotFit) as caught:
        flash_attention(q, k, v)
    message = str(caught.value)
    for part in ("forward kernel", "head dim 128", "float16", "allows 101376 of shared memory",
                 f"the smallest needs {smallest}", f"none of the {len(every)} tile shapes"):
        assert part in message, f"{part!r} not in: {message}"


def test_first_that_fits_reads_the_plans_only_as_far_as_it_needs():
    seen = []

    def plans():
        for i in range(5):
            seen.append(i)
            yield (i,)

    def launch(i):
        if i < 2:
            raise OutOfResources(100 + i, 99, "shared memory")
        return f"ran {i}"

    assert _fit.first_that_fits(plans(), launch, "a launch", CPU) == "ran 2"
    assert seen == [0, 1, 2]

    def unnamed():  # (the launches pass a function: a launch that fits formats no name)
        raise AssertionError("a launch that fits formatted its name")

    assert _fit.first_that_fits(plans(), launch, unnamed, CPU) == "ran 2"
    named = r"^the dq kernel \(pointer\) at head dim 80, bfloat16: none of the 2 "
    with pytest.raises(_fit.TilesDoNotFit, match=named):
        _fit.first_that_fits([(0,), (1,)], launch, lambda: _fit.launch_name("dq", "pointer", 80, torch.bfloat16), CPU)


def test_first_that_fits_lets_every_other_error_through():
    def launch():
        raise RuntimeError("a compile error")

    with pytest.raises(RuntimeError, match="a compile error"):
        _fit.first_that_fits([()], launch, "a launch", CPU)


def test_launch_plans_on_a_gpu_try_the_default_then_the_list_without_repeats(monkeypatch):
    cfg = _variants.config
    default, others = cfg(128, 64, 4, 3), [cfg(128, 64, 4, 3), cfg(64, 64, 4, 3), cfg(64, 32, 4, 4)]
    calls = []

    def offered():
        calls.append(1)
        return others

    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "0")
    plans = _variants.launch_plans(False, interpreter_meta={}, default=lambda: default, offered=offered)
    first = next(plans)
    assert first == ({"BLOCK_M": 128, "BLOCK_N": 64}, {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4,
                                                       "num_stages": 3, **_variants.COMPILE_OPTIONS}, False)
    assert calls == [], "the list is built only when the default is refused"
    assert [(m["BLOCK_M"], m["BLOCK_N"], m["num_stages"]) for _, m, _ in plans] == [(64, 64, 3), (64, 32, 4)]
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")

    def unwanted():  # (the default is chosen only with autotuning off: it asks the GPU's capability)
        raise AssertionError("the untuned default was built for an autotuned or interpreted launch")

    tuned = list(_variants.launch_plans(False, interpreter_meta={}, default=unwanted, offered=offered))
    assert tuned[0][2] is True and [t for _, _, t in tuned[1:]] == [False] * 3
    assert list(_variants.launch_plans(True, interpreter_meta={"BLOCK_M": 16}, default=unwanted,
                                       offered=offered)) == [({"BLOCK_M": 16}, {"BLOCK_M": 16}, False)]


# The real tiles on real GPUs: benchmarks/kernel_shared_memory.py compiles every tile of every pointer list for
# sm_80 and sm_120 (under both tritons: make survey) and records the shared memory, registers and spill of each.
SHARED_REPORTS = {"3.9": "kernel_shared_memory.json", "3.6": "kernel_shared_memory_triton3.6.json"}
MMA_SYNC_TARGETS = (80, 120)


@functools.cache
def _shared(version: str):
    """The shared-memory tool and its committed report compiled by triton ``version`` (read once, never modified)."""
    return benchmark_report("kernel_shared_memory", SHARED_REPORTS[version], version)


@pytest.mark.parametrize("version", SHARED_REPORTS)
def test_the_shared_memory_report_covers_exactly_the_current_tile_lists(version):
    """Change a tile list and this fails until ``make survey`` is rerun; every tile compiled for both targets, and
    the sm_120 comparison of the variants covers its lists too."""
    tool, report = _shared(version)
    assert tuple(tool.TARGETS) == MMA_SYNC_TARGETS and report["targets"] == [f"sm_{cc}" for cc in MMA_SYNC_TARGETS]
    want = set(tool.jobs())
    got = {(r["part"], r["dtype"], r["D"], tuple(r["tile"])) for r in report["rows"]}
    assert got == want, (f"benchmarks/results/{SHARED_REPORTS[version]} is stale (missing {sorted(want - got)[:4]}, "
                         f"extra {sorted(got - want)[:4]}): run make survey")
    failed = [r for r in report["rows"] if not all(isinstance(r[f"{t}{field}"], int) for t in report["targets"]
                                                   for field in ("", "_registers", "_spill_bytes"))]
    assert not failed, f"tiles that do not compile for these targets: {failed[:4]}"
    probed = {(r["variant"], r["part"], r["D"], tuple(r["tile"]), r["warp_specialized"]) for r in report["tma_rows"]}
    assert probed == set(tool.tma_jobs()), "the sm_120 comparison of the variants is stale: run make survey"
    assert all(isinstance(r["sm_120_spill_bytes"], int) for r in report["tma_rows"])


@pytest.mark.parametrize("version", SHARED_REPORTS)
def test_the_shared_memory_report_s_spill_summaries_are_current(version):
    """The report's lists, per target, of tiles that spill, of Hopper's untuned defaults that do there and of the
    target's own untuned defaults that still do are what its rows and the current defaults give (a default
    changed without rerunning make survey fails here). The first two are not empty on either target: the lists are
    pruned by Hopper's spills, and mma.sync products hold their operands in registers differently."""
    tool, report = _shared(version)
    for cc in MMA_SYNC_TARGETS:
        target = f"sm_{cc}"
        assert report["spilling"][target] == tool.spilling(report["rows"], cc)
        assert report["hopper_defaults_that_spill"][target] == \
            tool.untuned_defaults_that_spill(report["rows"], cc, hopper=True)
        assert report["untuned_defaults_that_spill"][target] == tool.untuned_defaults_that_spill(report["rows"], cc)
        assert len(report["spilling"][target]) > 50 and len(report["hopper_defaults_that_spill"][target]) > 10
    assert report["tma_summary"] == tool.tma_summary(report["tma_rows"])


def both_reports(cc: int, field: str) -> dict:
    """``{(dtype, part, D): {tile: value}}``: each tile's ``sm_<cc><field>`` in the reports (``""``: the shared
    bytes it needs, ``"_spill_bytes"``: what it spills), the larger of the two tritons'."""
    found = {}
    for version in SHARED_REPORTS:
        for r in _shared(version)[1]["rows"]:
            tiles = found.setdefault((r["dtype"], r["part"], r["D"]), {})
            tiles[tuple(r["tile"])] = max(tiles.get(tuple(r["tile"]), 0), r[f"sm_{cc}{field}"])
    return found


def target_spills(cc: int) -> dict:
    """``{(dtype, part, D): {tile: bytes}}``: what each tile of the reports spills compiled for ``sm_<cc>``, the
    more of the two tritons' (0 where neither spills)."""
    return both_reports(cc, "_spill_bytes")


@pytest.mark.parametrize("cc", MMA_SYNC_TARGETS)
def test_the_mma_sync_spill_tables_are_exactly_what_spills_in_the_reports(cc):
    """``_mma_sync.SPILLS[cc]`` names every tile that spills compiled for ``sm_<cc>`` under either triton, with the
    larger spill, and nothing else (a tile list or a survey changed without it fails here)."""
    from attn_course.kernels import _mma_sync

    want = {}
    for (dtype, part, D), tiles in target_spills(cc).items():
        if spilled := {t: b for t, b in tiles.items() if b}:
            want.setdefault(dtype, {})[part, D] = spilled
    assert _mma_sync.SPILLS[cc] == want
    assert set(_mma_sync.SURVEYED.values()) == set(MMA_SYNC_TARGETS)


def default_options(part: str, dtype: str, D: int) -> list[tuple]:
    """The tiles an untuned pointer launch of ``part`` chooses its default among (what the autotuner is offered of
    the kernel's prefill or decoding tiles, warp specialisation aside)."""
    fwd, bwd = kernel_module("flash_fwd", CPU), kernel_module("flash_bwd", CPU)
    kernel, width, float32 = part.split(" ")[0], head_dim_tile(D), dtype == "float32"
    if kernel == "forward":
        return fwd.offered_tiles(width, False, float32)
    return fwd.decode_tiles(width, float32) if kernel == "decode" else bwd.candidate_tiles(kernel, width, float32)


@pytest.mark.parametrize("cc", MMA_SYNC_TARGETS)
def test_untuned_defaults_on_an_mma_sync_gpu_are_the_tiles_that_spill_least_there(cc):
    """With autotuning off on a GPU whose code is ``sm_<cc>``'s, each (dtype, part, head dim) of the survey runs a
    tile that spills nothing there under either triton where one exists, else the one that spills least: the
    16-bit prefill's usual tile if it is clean, else the first of its list that spills least (Hopper's lists for
    padded head dims and paged caches, which the survey replaces, play no part). Hopper's own defaults are
    unchanged, and some of them spill on the target (what this is for)."""
    tool, _ = _shared("3.9")
    fwd = kernel_module("flash_fwd", CPU)
    wrong, changed = [], 0
    for (dtype, part, D), spilled in sorted(target_spills(cc).items()):
        options = default_options(part, dtype, D)
        want = min(options, key=spilled.__getitem__)  # (the first of the least)
        usual = fwd.usual_tile(head_dim_tile(D), False)
        if part.startswith("forward") and dtype == "float16" and spilled[usual] == 0:
            want = usual
        chosen = tool.untuned_default(part, dtype, D, cc)
        if chosen != want:
            wrong.append(f"{dtype} {part} at D = {D}: {chosen} (spills {spilled.get(chosen)} B), not {want} "
                         f"({spilled[want]} B)")
        changed += chosen != tool.untuned_default(part, dtype, D, None)
    assert not wrong, wrong
    assert changed >= 20


@pytest.mark.parametrize("feature", ["DROPOUT", "SOFTCAP", "ALIBI"])
def test_untuned_defaults_on_sm_80_with_a_feature_avoid_both_lists(feature):
    """A feature's launch on sm_80 skips the tiles that spill with that feature on Hopper (the only survey of it)
    and those that spill plainly on sm_80, where some tile is in neither: the 16-bit forward at D = 80 and 128
    (where Hopper's own default, 128 x 64 on 8 warps, spills on sm_80) and dQ at D = 64."""
    from attn_course.kernels import _mma_sync

    fwd, bwd = kernel_module("flash_fwd", CPU), kernel_module("flash_bwd", CPU)
    pointer, on = _variants.VARIANTS["pointer"], {feature: True}
    for kernel, D, width in [("forward", 80, 128), ("forward", 128, 128), ("dq", 64, 64)]:
        flags = dict(on, HEAD_DIM=width, D_REAL=D)
        if kernel == "forward":
            hopper = _variants.feature_spills(fwd.FEATURE_SPILLS, width, **flags, PADDED=D < width)
            hopper = [t[:4] for t in hopper if not t[4]]
            c = fwd.default_config(pointer, width, 2, 4096, sm=80, **flags)
            options = fwd.offered_tiles(width, False)
        else:
            hopper = _variants.feature_spills(bwd.FEATURE_SPILLS, (kernel, width), **flags)
            c = bwd.default_config(kernel, width, 2, sm=80, **flags)
            options = bwd.candidate_tiles(kernel, width)
        older = _mma_sync.spills(80, kernel, False, width, flags)
        assert older, f"{kernel} at D = {D}: no sm_80 spills to avoid"
        clean = [t for t in options if t not in older and t not in hopper]
        assert clean, f"{kernel} at D = {D} with {feature}: every tile is in a list"
        assert _variants.tile_of(c) in clean, f"{kernel} at D = {D} with {feature}: {c} is in a list; {clean} are not"


def test_the_mma_sync_target_follows_the_gpu_s_compute_capability(monkeypatch):
    """An A100 (8.0) or an RTX 40 card (8.9) runs sm_80's code, an RTX 50 (12.0) or a DGX Spark (12.1) sm_120's; an
    H100 (9.0) or a B200 (10.0) is not an mma.sync GPU, and a CPU is not a GPU at all (nothing is asked)."""
    from attn_course.kernels import _mma_sync

    asked = []
    for capability, sm in [((8, 0), 80), ((8, 9), 80), ((9, 0), None), ((10, 0), None), ((12, 0), 120),
                           ((12, 1), 120)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device, c=capability: asked.append(c) or c)
        assert _mma_sync.target(torch.device("cuda", 0)) == sm, capability
    assert _mma_sync.target(CPU) is None and len(asked) == 6


@pytest.mark.parametrize("cc", MMA_SYNC_TARGETS)
def test_an_untuned_launch_on_an_mma_sync_gpu_runs_its_target_s_default(monkeypatch, cc):
    """The launches themselves (recorded, with autotuning off) take the target's default on an mma.sync GPU and
    Hopper's otherwise: the 16-bit forward at D = 128 (Hopper's 128 x 64 on 8 warps spills on both) and dQ at
    D = 64, with a paged cache's default compiled deeper as ever."""
    from attn_course.kernels import _mma_sync
    from attn_course.kernels._compile import backward_launches, forward_launches

    def tiles(launches):
        return {fn.__name__: (kw["BLOCK_M"], kw["BLOCK_N"], kw["num_warps"], kw["num_stages"])
                for fn, _, kw in launches if "BLOCK_N" in kw}  # (not the backward's preprocess)

    def recorded():
        return {**tiles(forward_launches("pointer", F16, 128)), **tiles(backward_launches("pointer", F16, 64)),
                "paged": tiles(forward_launches("pointer", F16, 128, page_size=16))["_attn_fwd"]}

    fwd, bwd = kernel_module("flash_fwd", CPU), kernel_module("flash_bwd", CPU)
    pointer = _variants.VARIANTS["pointer"]
    hopper = recorded()
    monkeypatch.setattr(_mma_sync, "target", lambda device: cc)
    theirs = recorded()
    for name, want in [("_attn_fwd", fwd.default_config(pointer, 128, 2, 256, sm=cc)),
                       ("_bwd_dq", bwd.default_config("dq", 64, 2, sm=cc)),
                       ("paged", fwd.deeper(fwd.default_config(pointer, 128, 2, 256, sm=cc, PAGED=True)))]:
        assert theirs[name] == (*_variants.tile_of(want)[:2], want.num_warps, want.num_stages), name
        assert theirs[name] != hopper[name], f"{name}: the same tile on sm_{cc} as on Hopper"


@pytest.mark.parametrize("version", SHARED_REPORTS)
def test_consumer_blackwell_runs_pointers_because_tma_tiles_spill_there(version):
    """Why ``auto`` runs pointers on sm_120 (``_variants.TMA_AUTO_MAJORS``): compiled for it, no warp-specialised
    forward tile is clean (spills nothing, fits 99 KiB) at D = 64 or 128, and at D = 128 no TMA forward or dK/dV
    tile is, where the pointer lists keep clean tiles for every kernel at both head dims."""
    _, report = _shared(version)
    clean = {name: int(count.split(" of ")[0]) for name, count in report["tma_summary"].items()}
    for D in (64, 128):
        assert clean[f"tma+ws forward at D = {D}"] == 0
        assert all(clean[f"pointer {kernel} at D = {D}"] > 0 for kernel in ("forward", "dkdv", "dq"))
    assert clean["tma forward at D = 128"] == 0 and clean["tma dkdv at D = 128"] == 0
    assert 12 not in _variants.TMA_AUTO_MAJORS and 9 in _variants.TMA_AUTO_MAJORS


def offered_tiles(part: str, dtype: str, D: int) -> list[tuple]:
    """The tiles a pointer launch of ``part`` may run, default and fallbacks alike: its kernel's autotuning list."""
    fwd, bwd = kernel_module("flash_fwd", CPU), kernel_module("flash_bwd", CPU)
    pointer, float32 = _variants.VARIANTS["pointer"], dtype == "float32"
    kernel, _, paged = part.partition(" ")  # (a paged cache: the forward's list, compiled deeper; tiles as listed)
    configs = fwd.configs(pointer, D, float32, paged=bool(paged)) if kernel in ("forward", "decode") else \
        bwd.configs(part, pointer, D, float32)
    return [_variants.tile_of(c) for c in configs]


@pytest.mark.parametrize("version", SHARED_REPORTS)
@pytest.mark.parametrize("gpu", ["A100 (sm_80)", "A10, L4, RTX 30 / 40 (sm_86, sm_89)", "RTX 50 (sm_120)"])
def test_every_kernel_has_a_tile_that_fits_each_mma_sync_gpu(gpu, version):
    """For each kernel, dtype and head dim, some tile the launch may run fits the GPU's shared memory per program
    (so a launch there falls back to it rather than failing); and the report's own summary agrees."""
    tool, report = _shared(version)
    cc, limit = tool.GPUS[gpu]
    need = {(r["part"], r["dtype"], r["D"], tuple(r["tile"])): r[f"sm_{cc}"] for r in report["rows"]}
    missing = []
    for part, dtype, D in sorted({key[:3] for key in need}):
        # (the forward's list holds its prefill and its decoding tiles, and a launch of either may fall back to
        # any: a tile of the other kind is read as measured in a launch of its own kind)
        other = {"forward": "decode", "decode": "forward", "forward paged": "decode paged",
                 "decode paged": "forward paged"}.get(part, part)
        needs = [need.get((part, dtype, D, t), need.get((other, dtype, D, t)))
                 for t in offered_tiles(part, dtype, D)]
        assert None not in needs, f"{dtype} {part} at D = {D}: a tile offered is not in the report"
        if min(needs) > limit:
            missing.append(f"{dtype} {part} at D = {D} (least {min(needs)} B)")
    assert not missing, f"{gpu}, {limit} B per program: no tile fits for {missing}"
    assert not [g for g in report["gaps"] if g.startswith(gpu)], report["gaps"]


def test_the_shared_memory_report_matches_this_triton_and_sm_86_compiles_as_sm_80():
    """A row recompiled here (a forward tile at D = 256, for sm_80 and for sm_86) agrees with the report of this
    machine's triton: the report is what this code compiles to, and the later pre-Hopper GPUs need what sm_80
    does."""
    import triton
    from triton.backends.compiler import GPUTarget

    from attn_course.kernels._compile import compile_launch, forward_launches, resources

    version = next(v for v in SHARED_REPORTS if triton.__version__.startswith(v))
    _, report = _shared(version)
    row = next(r for r in report["rows"] if (r["part"], r["dtype"], r["D"]) == ("forward", "float16", 256))
    (fn, args, kwargs), = forward_launches("pointer", F16, 256, config=_variants.config(*row["tile"], WARP_SPEC=False))
    for cc in (80, 86):
        used = resources(compile_launch(fn, args, dict(kwargs), GPUTarget("cuda", cc, 32)))
        got = used["shared_bytes"], used["registers"], used["spill_stack_bytes"]
        want = row["sm_80"], row["sm_80_registers"], row["sm_80_spill_bytes"]
        assert got == want, f"sm_{cc}: (shared, registers, spill) {got}, the report's sm_80 says {want}"


MMA_SYNC_GPUS = ["A100 (sm_80)", "A10, L4, RTX 30 / 40 (sm_86, sm_89)", "RTX 50 (sm_120)"]


def launched_untuned(part: str, dtype: str, D: int, fits) -> tuple[int, int, int, int]:
    """The tile (as listed) that an untuned pointer launch of ``part`` runs through the real host wrapper, on a GPU
    that refuses each tile (as listed) for which ``fits(tile)`` is false, as Triton's loader would before it runs,
    and takes the first that fits; nothing runs (``_compile``'s recorded launches)."""
    from attn_course.kernels import _compile, flash_paged
    from attn_course.kernels._compile import backward_launches, decoding_launches, forward_launches

    kernel, _, paged = part.partition(" ")
    name = {"dkdv": "_bwd_dkdv", "dq": "_bwd_dq"}.get(kernel, "_attn_fwd")

    def listed_tile(kwargs) -> tuple[int, int, int, int]:
        stages = kwargs["num_stages"]
        listed = (stages + 1) // 2 if paged else stages  # (a paged tile runs deeper: flash_paged)
        assert not paged or flash_paged.stages(listed) == stages
        return kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], listed

    class Refusing(_compile._Recorder):
        def __getitem__(self, grid):
            record = super().__getitem__(grid)

            def launch(*args, **kwargs):
                if self.fn.__name__ == name and not fits(listed_tile(kwargs)):
                    raise OutOfResources(1 << 20, 1, "shared memory")
                record(*args, **kwargs)
            return launch

    dt, page = F32 if dtype == "float32" else F16, dict(page_size=16) if paged else {}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(_compile, "_Recorder", Refusing)
        if kernel == "decode":
            calls = decoding_launches("pointer", dt, D, **page)
        elif kernel == "forward":
            calls = forward_launches("pointer", dt, D, **page)
        else:
            calls = backward_launches("pointer", dt, D)
    (kw,) = [kw for fn, _, kw in calls if fn.__name__ == name]
    return listed_tile(kw)


@pytest.mark.parametrize("gpu", MMA_SYNC_GPUS)
def test_an_untuned_launch_on_each_mma_sync_gpu_runs_the_lightest_tile_of_its_kind_that_fits(gpu, monkeypatch):
    """Through the real launch path (host wrapper, autotuning off, ``_fit.first_that_fits``) on a GPU that refuses
    what the reports say exceeds its shared memory per program, each (dtype, part, head dim) of the survey runs a
    tile that fits and spills (the more of the two tritons) no more, compiled for its target, than any other tile
    of its kind (prefill or decoding) that fits (where a decoding step fits none of its 16-row tiles, any tile
    counts). An A100 runs every default; a 99 KiB card falls back for some (16-bit tiles at D = 160 and 256,
    float32 dQ at 80 and 128 on an RTX 50), and there, today, one tile of the kind fits or all that fit are clean,
    so the order it falls back in (Hopper's pruned list) cannot choose worse: a list change that breaks that fails
    here."""
    from attn_course.kernels import _mma_sync

    tool, _ = _shared("3.9")
    cc, limit = tool.GPUS[gpu]
    monkeypatch.setattr(_mma_sync, "target", lambda device: cc)
    spilled = target_spills(cc)
    shared = {}  # (a kernel's list holds its prefill and decoding tiles: either part's need, the larger)
    for (dtype, part, D), tiles in both_reports(cc, "").items():
        for tile, need_ in tiles.items():
            key = (dtype, tool.kernel_of(part), D, tile)
            shared[key] = max(shared.get(key, 0), need_)
    wrong, fell_back = [], 0
    for dtype, part, D in sorted(spilled):
        bytes_of = dict(spilled[dtype, part, D])
        other = {"forward": "decode", "decode": "forward"}.get(part.split(" ")[0])
        if other:  # (a decoding step may fall back to a prefill tile, and the reverse: as measured in their part)
            for t, b in spilled[dtype, part.replace(part.split(" ")[0], other), D].items():
                bytes_of.setdefault(t, b)

        def fits(tile, dtype=dtype, part=part, D=D):
            return shared[dtype, tool.kernel_of(part), D, tile] <= limit

        ran = launched_untuned(part, dtype, D, fits)
        kind = [t for t in spilled[dtype, part, D] if fits(t)] or [t for t in bytes_of if fits(t)]
        lightest = min(bytes_of[t] for t in kind)
        if bytes_of[ran] != lightest:
            wrong.append(f"{dtype} {part} at D = {D}: ran {ran} ({bytes_of[ran]} B), lightest that fits {lightest} B")
        fell_back += ran != tool.untuned_default(part, dtype, D, cc)
    assert not wrong, f"{gpu}: {wrong}"
    assert fell_back > 0 if limit < 150_000 else fell_back == 0, fell_back
