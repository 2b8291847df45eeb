"""The kernels compile for Hopper (sm_90) and Ampere (sm_80), on a machine with no GPU at all.

Triton's compiler needs no GPU: given a target it lowers a kernel to PTX and assembles it with the
``ptxas`` its wheel ships. So the CPU suite can prove what the interpreter cannot: that every variant
(``pointer``, ``tma``, ``tma+ws``) of the forward and backward kernels compiles for sm_90, and that the
PTX uses what the variant is for: Hopper's tensor-core instructions (``wgmma``) for 16-bit inputs, the
bulk tensor copy engine (``cp.async.bulk.tensor``) for the TMA variants, and, for warp-specialised
configs, extra producer warps and register reallocation between warpgroups (``setmaxnreg``).

The launches are real (``attn_course.kernels._compile``): the package's own host wrapper runs with the
compiled-mode kernel swapped for a recorder, and the recorded arguments are bound and specialised by
Triton's own JIT binder, so what is compiled here is what a GPU launch compiles. Speed is not measured
here (that needs a GPU: ``make bench``); registers and spills are (``benchmarks/kernel_resources.py``).
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from test_kernels_common import benchmark_report

from attn_course.kernels import _variants
from attn_course.kernels._compile import (
    AMPERE,
    CUDA,
    HOPPER,
    HOPPER_SHARED_MEMORY,
    backward_launches,
    compile_launch,
    decoding_launches,
    forward_launches,
    resources,
)
from attn_course.kernels._runtime import kernel_module
from attn_course.kernels._tiles import head_dim_tile

SHARED_MEMORY = HOPPER_SHARED_MEMORY


def check_ptx(fn, kernel, *, tma: bool, tensor_cores: bool, must_fit: bool = True, narrow: bool = False):
    """``must_fit``: a default config must fit in shared memory; an autotuning candidate may not (the
    autotuner skips those). ``narrow``: tiles of fewer than 64 rows per product (the dK/dV kernel at
    D = 256), which Hopper's wgmma cannot take: they must still use tensor cores, through ``mma.sync``."""
    ptx = kernel.asm["ptx"]
    name = fn.__name__
    assert not must_fit or kernel.metadata.shared <= SHARED_MEMORY, (
        f"{name} needs {kernel.metadata.shared} bytes of shared memory, more than sm_90's {SHARED_MEMORY}: "
        f"its default tiles would fail to launch")
    if tensor_cores and narrow:
        assert "mma.sync" in ptx, f"{name}: no tensor-core instruction (mma.sync) in its PTX"
    elif tensor_cores:
        assert "wgmma.mma_async" in ptx, f"{name}: no Hopper tensor-core instruction (wgmma) in its PTX"
    copies = ptx.count("cp.async.bulk.tensor")
    if tma:
        assert copies > 0, f"{name}: the TMA variant issues no bulk tensor copy (cp.async.bulk.tensor)"
    else:
        assert copies == 0, f"{name}: the pointer variant should not use tensor descriptors"


def uses_mma_sync(part: str, D: int) -> bool:
    """Whether ``part``'s tiles at head dim ``D`` are too few rows for wgmma (the dK/dV kernel at D = 256,
    whose 32- and 16-key tiles run on mma.sync: kernels/flash_bwd.py's WIDE_DKDV_TILES; the forward's 16-row
    decoding tiles: kernels/flash_fwd.py's DECODE_TILES)."""
    return part.startswith("decode") or (part.partition(" ")[0] == "dkdv" and D > 128)


CASES = [(torch.float16, 64), (torch.bfloat16, 128), (torch.float32, 128), (torch.float16, 256)]
# (ptxas takes 25-30 s per variant on the backward's float32 IEEE products at D = 64 or 128; both were
# checked by hand to compile and fit; the suite compiles float32 at D = 16)
BACKWARD_CASES = CASES[:2] + [(torch.float32, 16), (torch.bfloat16, 256)]


@pytest.mark.parametrize("dtype,D", CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("variant", list(_variants.VARIANTS))
def test_forward_compiles_for_hopper(variant, dtype, D):
    (fn, args, kwargs), = forward_launches(variant, dtype, D)
    kernel = compile_launch(fn, args, kwargs, HOPPER)
    check_ptx(fn, kernel, tma=_variants.VARIANTS[variant].tma, tensor_cores=dtype != torch.float32)


@pytest.mark.parametrize("dtype,D", BACKWARD_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_backward_compiles_for_hopper(variant, dtype, D):
    launches = backward_launches(variant, dtype, D)
    assert [fn.__name__ for fn, _, _ in launches] == ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"]
    for fn, args, kwargs in launches:
        kernel = compile_launch(fn, args, kwargs, HOPPER)
        if fn.__name__ != "_bwd_preprocess":  # a row-wise dot product: no matrix multiply, no tiles
            check_ptx(fn, kernel, tma=variant == "tma", tensor_cores=dtype != torch.float32,
                      narrow=uses_mma_sync(fn.__name__.removeprefix("_bwd_"), D))


@pytest.mark.parametrize("dtype,D", CASES[:2], ids=lambda x: str(x).replace("torch.", ""))
def test_packed_batches_compile_for_hopper_through_tma(dtype, D):
    """A packed (varlen) batch through tensor descriptors: one ``[1, H, total_T, D]`` view per tensor, and
    each kernel's extra loop for the tile that overhangs a sequence's end, read through pointers
    (``_tiles.overhang``): bulk tensor copies and plain loads in one kernel. The forward runs this way under
    ``auto``; the backward only when asked for (``flash_bwd.tma_pays``), and must compile too. (That the
    extra loop is there and right is tests/test_kernels_varlen.py's NaN test, in the interpreter.)"""
    launches = forward_launches("tma", dtype, D, varlen=True) + backward_launches("tma", dtype, D, varlen=True)
    assert [fn.__name__ for fn, _, _ in launches] == ["_attn_fwd", "_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"]
    for fn, args, kwargs in launches:
        if fn.__name__ == "_bwd_preprocess":
            continue
        assert kwargs["IS_VARLEN"] and kwargs["TMA"]
        kernel = compile_launch(fn, args, kwargs, HOPPER)
        check_ptx(fn, kernel, tma=True, tensor_cores=True)


WS_CASES = [(dtype, D, tile) for dtype, D in [(torch.float16, 64), (torch.bfloat16, 128), (torch.float16, 256)]
            for tile in kernel_module("flash_fwd", CUDA).candidate_tiles(D, True)]


@pytest.mark.parametrize("dtype,D,tile", WS_CASES, ids=str)
def test_every_warp_specialised_config_compiles_and_specialises(tile, dtype, D):
    """The autotuner would skip a config that fails to compile only for want of resources; any other
    compile error aborts the tuning, so every warp-specialised config offered must compile. Each must also
    really be specialised: more warps than asked for (the producer) and ``setmaxnreg``. (float32 compiles
    too but is not specialised, having no wgmma to overlap: ``auto`` never offers it ``tma+ws``.)"""
    fwd = kernel_module("flash_fwd", CUDA)
    (fn, args, kwargs), = forward_launches("tma+ws", dtype, D, config=_variants.config(*tile, WARP_SPEC=True))
    kernel = compile_launch(fn, args, dict(kwargs), HOPPER)
    check_ptx(fn, kernel, tma=True, tensor_cores=True, must_fit=tile == fwd.candidate_tiles(D, True)[0])
    assert kernel.metadata.num_warps > tile[2], f"{tile}: no producer warps were added (not specialised)"
    assert "setmaxnreg" in kernel.asm["ptx"], f"{tile}: no register reallocation between warpgroups"


AMPERE_SHARED_MEMORY = 163 * 1024  # what one program may use on an A100 (sm_80)


@pytest.mark.parametrize("D", [64, 256])
def test_pointer_kernels_compile_for_ampere(D):
    """Pre-Hopper GPUs run the pointer variant (``auto`` never picks TMA there): sm_80, mma.sync, and the
    default tiles (what runs with the autotuner off) fit an A100's shared memory even at D = 256."""
    launches = forward_launches("pointer", torch.bfloat16, D) + backward_launches("pointer", torch.bfloat16, D)
    for fn, args, kwargs in launches:
        kernel = compile_launch(fn, args, kwargs, AMPERE)
        assert kernel.metadata.shared <= AMPERE_SHARED_MEMORY, (
            f"{fn.__name__} at D = {D} needs {kernel.metadata.shared} bytes of shared memory, more than sm_80's "
            f"{AMPERE_SHARED_MEMORY}")
        ptx = kernel.asm["ptx"]
        if fn.__name__ != "_bwd_preprocess":
            assert "mma.sync" in ptx and "wgmma" not in ptx, f"{fn.__name__}: expected Ampere's mma.sync"


def test_every_gpu_launch_names_its_compile_options():
    """Every GPU launch (a prefill, a decoding step with its combine, the backward's three kernels, autotuned or not)
    names ``_variants.COMPILE_OPTIONS`` (fused multiply-adds on, what the surveys compiled) rather than leave them to
    the installed triton's defaults, which triton 3.10 changes; and the compiled kernel holds it."""
    launches = [*forward_launches("pointer", torch.float16, 64), *decoding_launches("pointer", torch.float16, 64),
                *backward_launches("pointer", torch.float16, 64)]
    assert {fn.__name__ for fn, _, _ in launches} == {"_attn_fwd", "_combine_splits", "_bwd_preprocess", "_bwd_dkdv",
                                                      "_bwd_dq"}
    for fn, _, kwargs in launches:
        assert {k: kwargs.get(k) for k in _variants.COMPILE_OPTIONS} == _variants.COMPILE_OPTIONS, fn.__name__
    fn, args, kwargs = launches[0]
    assert compile_launch(fn, args, dict(kwargs), AMPERE).metadata.enable_fp_fusion is True
    assert all(meta["enable_fp_fusion"] for _, meta, _ in _variants.launch_plans(
        False, interpreter_meta={}, default=_variants.config(64, 64, 4, 2), offered=lambda: []))


def check_float32_tile(launch, tile, what: str):
    """One float32 launch recorded with the autotuner off runs ``tile`` and spills no registers on sm_90."""
    fn, args, kwargs = launch
    assert (kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_warps"], kwargs["num_stages"]) == tile, what
    used = resources(compile_launch(fn, args, dict(kwargs), HOPPER))
    assert used["spill_stack_bytes"] == 0, f"{what} in float32 spills: {used}"


@pytest.mark.parametrize("D", [256, 128, 40, 32])
def test_float32_runs_its_own_first_tiles_through_pointers_and_they_do_not_spill_on_hopper(D):
    """float32, whose 16-bit tiles spill kilobytes: with the autotuner off a prefill, a decoding step and both
    backward kernels run the first of float32's own lists, through pointers as ``auto`` runs float32 on
    Hopper (``tma_pays``), and none spills registers on sm_90 (compiled here, by this machine's triton; the
    survey test below checks every listed tile under both tritons)."""
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    width = _variants.float32_width(head_dim_tile(D))
    assert not fwd.tma_pays(torch.float32) and fwd.tma_pays(torch.bfloat16)
    assert not bwd.tma_pays(head_dim_tile(D), False, torch.float32)
    (prefill,) = forward_launches("pointer", torch.float32, D)
    decode, _ = decoding_launches("pointer", torch.float32, D)
    check_float32_tile(prefill, fwd.FLOAT32_TILES[width][0], f"the prefill at D = {D}")
    check_float32_tile(decode, fwd.FLOAT32_DECODE_TILES[width][0], f"decoding at D = {D}")
    for launch in backward_launches("pointer", torch.float32, D)[1:]:  # (not the row-wise preprocess)
        part = launch[0].__name__.removeprefix("_bwd_")
        check_float32_tile(launch, bwd.FLOAT32_TILES[part, width][0], f"{part} at D = {D}")


REPORTS = {"3.9": "kernel_resources_sm90.json", "3.6": "kernel_resources_sm90_triton3.6.json"}


@functools.cache
def _survey(triton_version: str = "3.9"):
    """The survey tool and its committed report compiled by ``triton_version`` (this machine's 3.9; the GPU
    machines' 3.6, whose ptxas allocates registers differently): read once per test process (never modified)."""
    return benchmark_report("kernel_resources", REPORTS[triton_version], triton_version)


@functools.cache
def _report(triton_version: str = "3.9"):
    """:func:`_survey` with only the 16-bit rows (``float16``, standing for both 16-bit types: one tile list),
    which every test of the 16-bit tile lists reads; float32's rows, of lists of its own, are read apart."""
    tool, report = _survey(triton_version)
    return tool, dict(report, rows=[r for r in report["rows"] if r["dtype"] != "float32"])


def float32_rows(triton_version: str) -> list[dict]:
    """The survey's float32 rows (:func:`_survey`)."""
    return [r for r in _survey(triton_version)[1]["rows"] if r["dtype"] == "float32"]


@pytest.mark.parametrize("version", REPORTS)
def test_the_resource_report_covers_exactly_the_current_tile_lists(version):
    """The committed register/spill surveys must describe the configs the code offers today; change a tile
    list and this fails until ``make survey`` is rerun (it writes both)."""
    tool, report = _survey(version)
    want = {(part, variant, dtype, D, tuple(tile)) for part, variant, dtype, D, tile, _ in tool.jobs()}
    got = {(r["part"], r["variant"], r["dtype"], r["D"], tuple(r["tile"])) for r in report["rows"]}
    assert got == want, (f"benchmarks/results/{REPORTS[version]} is stale (missing {sorted(want - got)[:4]}, "
                         f"extra {sorted(got - want)[:4]}): run make survey (both tritons)")


def worst_spills(r) -> dict[tuple, int]:
    """Each tile of survey row ``r``'s part, variant and head dim, and its larger spill under the two tritons."""
    return worst_by_tile([p for version in REPORTS for p in _report(version)[1]["rows"]
                          if (p["part"], p["variant"], p["D"]) == (r["part"], r["variant"], r["D"])],
                         lambda p: tuple(p["tile"]))


def worst_by_tile(rows: list[dict], tile) -> dict[tuple, int]:
    """Each tile (``tile(row)``) of survey ``rows`` and its largest spill over them: over both surveys' rows,
    its larger spill under the two tritons."""
    worst = {}
    for r in rows:
        worst[tile(r)] = max(worst.get(tile(r), 0), r["spill_stack_bytes"])
    return worst


def config_of(r) -> tuple:
    """Survey row ``r``'s forward config as the forward's lists name one: ``(*tile, warp-specialised)``."""
    return *r["tile"], r["variant"] == "tma+ws"


def forward_kept(fwd, r) -> set[tuple]:
    """The forward's configs, ``(*tile, warp-specialised)``, that the autotuner keeps for the launch of survey
    row ``r``: its variant, its head dim's tile width (the lists are keyed by it) and real width, on a paged
    cache or not, a decoding step or a 4096-row prefill."""
    width, paged, variant = head_dim_tile(r["D"]), r["part"].endswith("paged"), _variants.VARIANTS[r["variant"]]
    kept = fwd.prune_for_lengths(fwd.configs(variant, width, paged=paged),
                                 {"TUNE_T_Q": 1 if r["part"].startswith("decode") else 4096}, HEAD_DIM=width,
                                 D_REAL=r["D"], PAGED=paged, TMA=variant.tma)
    return {(*_variants.tile_of(c), c.kwargs["WARP_SPEC"]) for c in kept}


@pytest.mark.parametrize("version", REPORTS)
def test_no_config_the_autotuner_tries_on_hopper_spills_registers(version):
    """On Hopper, under ``auto``, the autotuner tries the TMA variants' configs, and the pointer variant's
    where TMA does not pay (the backward at D = 256) or cannot run (a cache or tensors whose strides TMA
    refuses: the decoding tiles of both variants): none of those offered for 16-bit inputs may spill, fail
    to compile, overflow shared memory or, but for the tiles too narrow for it that use mma.sync instead
    (dK/dV at D = 256, decoding), miss wgmma, per the survey. Packed batches too: their forward through
    TMA, their backward through pointers (``flash_bwd.tma_pays``) and, at D = 128, pruned
    (``flash_bwd.prune_for_packing``). Under both compilers: the GPU machines run triton 3.6. (One
    exception, named in :data:`EVERY_TILE_SPILLS`: where every tile spills, the one that spills least.)"""
    _, report = _report(version)
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)

    def offered(r):  # (the kernels key their tile lists by the tiles' width: D = 40 runs D = 64's, 80 D = 128's)
        variant, D = _variants.VARIANTS[r["variant"]], head_dim_tile(r["D"])
        # paged: always pointers; decoding: both variants (a cache whose strides TMA refuses runs pointers)
        if r["part"].endswith(" paged") or r["part"].startswith("decode"):
            return (*r["tile"], False) in forward_kept(fwd, r)
        if r["part"].partition(" ")[2].upper() in FEATURE_PARTS:  # what such a launch's pruning keeps
            return feature_offered(r)
        part, varlen = r["part"].removesuffix(" varlen"), r["part"].endswith(" varlen")
        tma_pays = part == "forward" or bwd.tma_pays(D, varlen, torch.float16)
        if variant.tma != tma_pays or (varlen and variant.warp_specialize):
            return False  # auto would run the other variant here (a packed batch: never warp-specialised)
        if part == "forward":  # (what its pruning keeps: a padded head dim skips tiles of its own)
            return config_of(r) in forward_kept(fwd, r)
        space = bwd.configs(part, variant, D)
        if varlen:  # what Triton's autotuner keeps after the pruning step (its constexprs as keywords)
            space = bwd.prune_for_packing(part, space, {"Q": torch.empty(0, dtype=torch.float16)},
                                          HEAD_DIM=D, D_REAL=r["D"], IS_VARLEN=True)
        return any(list(_variants.tile_of(c)) == r["tile"] for c in space)

    def feature_offered(r):
        variant, (part, feature), tile = _variants.VARIANTS[r["variant"]], r["part"].split(" "), r["tile"]
        ws, width = r["variant"] == "tma+ws", head_dim_tile(r["D"])
        on = dict.fromkeys(feature.upper().split("+"), True) | dict(HEAD_DIM=width, D_REAL=r["D"])
        if part == "forward":
            space = [c for c in fwd.configs(variant, width) if c.kwargs["BLOCK_M"] != fwd.DECODE_ROWS]
            kept = fwd.prune_for_lengths(space, {"TUNE_T_Q": 4096}, **on)
            return any(list(_variants.tile_of(c)) == tile and c.kwargs["WARP_SPEC"] == ws for c in kept)
        space = bwd.configs(part, variant, width)
        kept = bwd.prune(part, False, space, {"Q": torch.empty(0, dtype=torch.float16)}, IS_VARLEN=False, **on)
        return any(list(_variants.tile_of(c)) == tile for c in kept)

    def tensor_cores(r):
        return r["HMMA"] > 0 if uses_mma_sync(r["part"], r["D"]) else r["HGMMA"] > 0

    def spills_least_of_all(r):  # where every tile spills (EVERY_TILE_SPILLS), the pruning keeps the least:
        peers = worst_spills(r)  # (by its larger spill under the two tritons)
        return (r["part"], r["D"], version) in EVERY_TILE_SPILLS and peers[tuple(r["tile"])] == min(peers.values())

    rows = [r for r in report["rows"] if offered(r)]
    assert len(rows) > 40 and {r["D"] for r in rows} == {16, 32, 40, 64, 80, 128, 160, 256}
    for D in (160, 256):  # (160: padded to 256-wide tiles, which run what D = 256 runs; features surveyed at 256)
        assert {(r["part"], r["variant"]) for r in rows if r["D"] == D
                and r["part"].partition(" ")[2].upper() not in FEATURE_PARTS} == {
            ("forward", "tma"), ("forward", "tma+ws"), ("decode", "pointer"), ("decode", "tma"),
            ("decode paged", "pointer"), ("dkdv", "pointer"), ("dq", "pointer"), ("forward varlen", "tma"),
            ("forward varlen paged", "pointer"), ("forward paged", "pointer")}, D
    assert {(r["part"].partition(" ")[0], r["variant"]) for r in rows if r["D"] == 256
            and r["part"].partition(" ")[2].upper() in FEATURE_PARTS} == {
        ("forward", "tma"), ("forward", "tma+ws"), ("dkdv", "pointer"), ("dq", "pointer")}
    for D in (40, 80, 128):  # (40, 80: padded head dims, through masked pointer loads where auto runs pointers)
        assert {(r["part"], r["variant"]) for r in rows if r["D"] == D} >= {
            ("forward varlen", "tma"), ("dkdv varlen", "pointer"), ("dq varlen", "pointer"),
            ("forward varlen paged", "pointer"), ("forward paged", "pointer"), ("decode paged", "pointer")}
    bad = [(r["part"], r["variant"], r["D"], r["tile"], r.get("error") or r["spill_stack_bytes"]) for r in rows
           if "error" in r or (r["spill_stack_bytes"] and not spills_least_of_all(r)) or not tensor_cores(r)
           or r["shared_bytes"] > SHARED_MEMORY]
    assert not bad, f"configs offered to the autotuner that spill / fail / lack tensor cores on sm_90 " \
                    f"(triton {version}): {bad}"


FLOAT32_PLAIN_PARTS = ("forward", "decode", "dkdv", "dq")  # (the survey's other float32 parts: each feature, pair and
# all three, packed batches, paged caches: test_float32_launches_keep_only_tiles_that_spill_...)


def float32_offered(r) -> bool:
    """Whether the autotuner tries float32 survey row ``r``'s tile on Hopper under ``auto``: through pointers
    (``tma_pays``), for its part (a decoding step or a 4096-row prefill; dK/dV or dQ), at its head dim."""
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    width, variant = head_dim_tile(r["D"]), _variants.VARIANTS[r["variant"]]
    if r["part"] in ("dkdv", "dq"):
        if variant.tma != bwd.tma_pays(width, False, torch.float32):
            return False
        space = bwd.prune(r["part"], not variant.tma, bwd.configs(r["part"], variant, width, True),
                          {"Q": torch.empty(0, dtype=torch.float32)}, HEAD_DIM=width, D_REAL=r["D"], IS_VARLEN=False,
                          IEEE=True)
    else:
        if variant.tma != fwd.tma_pays(torch.float32):
            return False
        space = fwd.prune_for_lengths(fwd.configs(variant, width, True),
                                      {"TUNE_T_Q": 1 if r["part"] == "decode" else 4096}, HEAD_DIM=width,
                                      D_REAL=r["D"], IEEE=True)
    return r["tile"] in [list(_variants.tile_of(c)) for c in space]


@pytest.mark.parametrize("version", REPORTS)
def test_no_float32_config_the_autotuner_tries_on_hopper_spills_registers(version):
    """float32 has tile lists of its own (``flash_fwd.FLOAT32_TILES``, ``FLOAT32_DECODE_TILES``,
    ``flash_bwd.FLOAT32_TILES``), which ``auto`` runs through pointers: each tile the autotuner may try,
    at every surveyed head dim (the padded ones too), compiles, spills nothing and fits Hopper's shared
    memory, per the survey under both compilers. (No tensor cores: float32's products are IEEE FMAs.)"""
    rows = [r for r in float32_rows(version) if r["part"] in FLOAT32_PLAIN_PARTS]
    offered = [r for r in rows if float32_offered(r)]
    assert {(r["part"], r["D"]) for r in offered} == {(part, D) for part in ("forward", "decode", "dkdv", "dq")
                                                      for D in (16, 32, 40, 64, 80, 128, 160, 256)}
    assert {r["variant"] for r in offered} == {"pointer"}
    bad = [(r["part"], r["D"], r["tile"], r.get("error") or r["spill_stack_bytes"]) for r in offered
           if "error" in r or r["spill_stack_bytes"] or r["shared_bytes"] > SHARED_MEMORY]
    assert not bad, f"float32 configs offered to the autotuner that spill / fail / overflow on sm_90 " \
                    f"(triton {version}): {bad}"
    assert not [r for r in offered if r["HGMMA"] or r["HMMA"]], "float32 ran on tensor cores: TF32, not IEEE?"


def float32_launch(r) -> dict:
    """The constexprs of the launch float32 survey row ``r`` compiles (``forward dropout+alibi`` at D = 80: dropout and
    ALiBi on, head dim 80 in 128-wide tiles; ``forward varlen paged``: packed, on a paged cache), as a pruning step
    and ``default_config`` get them."""
    suffix = r["part"].partition(" ")[2]
    return dict(HEAD_DIM=head_dim_tile(r["D"]), D_REAL=r["D"], IEEE=True, IS_VARLEN=suffix.startswith("varlen"),
                PAGED=suffix.endswith("paged"), **{flag: flag.lower() in suffix.split("+")
                                                   for flag in _variants.FEATURE_FLAGS})


def float32_spills_entry(r) -> tuple[str, tuple[str, int, bool]]:
    """Where ``FLOAT32_SPILLS`` (flash_fwd's or flash_bwd's, by the kernel) lists the tiles that spill in float32
    survey row ``r``'s part: the name (``DROPOUT+ALIBI``; no feature ``PLAIN``; a packed batch ``IS_VARLEN``; a paged
    cache, packed queries or a decoding step, ``PAGED``) and the key ``(kernel, width, padded)``."""
    kernel, _, suffix = r["part"].partition(" ")
    name = "PAGED" if suffix.endswith("paged") else "IS_VARLEN" if suffix == "varlen" else suffix.upper() or "PLAIN"
    return name, _variants.float32_spills_key(kernel, head_dim_tile(r["D"]), {"D_REAL": r["D"]})


def float32_pointer_rows() -> list[dict]:
    """float32's pointer rows (what ``auto`` runs for float32) of both surveys."""
    return [r for version in REPORTS for r in float32_rows(version) if r["variant"] == "pointer"]


def test_float32_spill_lists_name_exactly_the_tiles_that_spill_in_their_surveyed_part():
    """``FLOAT32_SPILLS`` of flash_fwd (prefill and decoding tiles) and flash_bwd (dK/dV, dQ) list, for each float32
    part surveyed (plain, where only padded head dims spill; each feature alone, each pair and all three; a packed
    batch; a paged cache) at each head dim (the padded ones apart), exactly the tiles of float32's lists that spill
    there, or fail to compile, under triton 3.9 or 3.6, but where every tile spills there the least spilling, which
    the list leaves out so that the pruning keeps it; and nothing else."""
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    parts = {}
    for r in float32_pointer_rows():
        parts.setdefault((r["part"], r["D"]), []).append(r)
    assert {part.partition(" ")[2] for part, _ in parts} == {*_survey("3.9")[0].FEATURES, "varlen", "varlen paged",
                                                             "paged", ""}
    spilling = {}
    for group in parts.values():
        worst = worst_by_tile(group, lambda r: tuple(r["tile"]))
        for r in group:
            left_out = all(worst.values()) and worst[tuple(r["tile"])] == min(worst.values())
            if ("error" in r or r["spill_stack_bytes"]) and not left_out:
                spilling.setdefault(float32_spills_entry(r), set()).add(tuple(r["tile"]))
    listed = {}
    for module in (fwd, bwd):
        for name, by_key in module.FLOAT32_SPILLS.items():
            for key, tiles in by_key.items():
                assert len(set(tiles)) == len(tiles), f"{module.__name__}.FLOAT32_SPILLS[{name!r}][{key}] repeats"
                assert key[0] in (("dkdv", "dq") if module is bwd else ("forward", "decode")), key
                listed[name, key] = set(tiles)
    listed = {k: v for k, v in listed.items() if v}
    clean = sorted((k, v - spilling.get(k, set())) for k, v in listed.items() if v - spilling.get(k, set()))
    missing = sorted((k, v - listed.get(k, set())) for k, v in spilling.items() if v - listed.get(k, set()))
    assert listed == spilling, f"listed but clean (or least where all spill): {clean}; spilling, not listed: {missing}"


# float32 parts where every tile of the list spills under triton 3.9 or 3.6: (part, head dim) -> the tiles the
# pruning keeps there (those named by the fewest of the launch's lists), each with its larger spill in bytes
FLOAT32_EVERY_TILE_SPILLS = {
    ("forward paged", 160): {(16, 16, 8, 2): 8},
    ("dkdv dropout+alibi", 80): {(16, 16, 8, 2): 8}, ("dkdv dropout+alibi", 128): {(16, 16, 8, 2): 8},
    ("dq softcap", 64): {(32, 64, 8, 2): 16}, ("dq dropout+alibi", 64): {(16, 64, 4, 2): 8, (32, 64, 8, 2): 8},
    ("dq dropout+alibi", 160): {(16, 16, 8, 2): 8}, ("dq dropout+softcap+alibi", 40): {(16, 64, 4, 2): 24},
}


def test_float32_launches_keep_only_tiles_that_spill_in_their_part_under_neither_triton():
    """For every float32 part surveyed (plain; each feature, pair and all three; packed; paged) at every head dim,
    the launch's pruning step keeps a non-empty set of float32's tiles that spill there under neither triton, and
    the autotuner-off default is one of them; where every tile spills (only where :data:`FLOAT32_EVERY_TILE_SPILLS`
    says), the tiles kept are the ones it names, which spill least. A plain launch keeps the whole list (at a padded
    head dim, all but its PLAIN list)."""
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    pointer = _variants.VARIANTS["pointer"]
    groups = {}
    for r in float32_pointer_rows():
        groups.setdefault((r["part"], r["D"]), []).append(r)
    every = {}
    for (part, D), group in sorted(groups.items()):
        kernel, flags, width = part.split(" ")[0], float32_launch(group[0]), head_dim_tile(D)
        worst = worst_by_tile(group, lambda r: tuple(r["tile"]))
        if kernel in ("dkdv", "dq"):
            space = bwd.prune(kernel, True, bwd.configs(kernel, pointer, width, True),
                              {"Q": torch.empty(0, dtype=torch.float32)}, **flags)
            default = bwd.default_config(kernel, width, 4, flags["IS_VARLEN"], **flags)
        else:
            T_q = 1 if kernel == "decode" else 4096
            space = fwd.prune_for_lengths(fwd.configs(pointer, width, True), {"TUNE_T_Q": T_q}, **flags)
            default = fwd.default_config(pointer, width, 4, T_q, **flags)
        kept = {_variants.tile_of(c) for c in space}
        assert kept <= set(worst), (part, D, kept - set(worst))
        assert _variants.tile_of(default) in kept, f"{part} at D = {D}: the default {default} is not kept"
        if part == kernel and not _variants.padded(width, flags):  # (PLAIN lists: padded head dims only)
            assert kept == set(worst), f"a plain float32 {part} at D = {D} skips tiles: {set(worst) - kept}"
        if all(worst.values()):
            every[part, D] = {tile: worst[tile] for tile in kept}
        else:
            assert kept and all(worst[t] == 0 for t in kept), \
                f"float32 {part} at D = {D} keeps tiles that spill there: {[(t, worst[t]) for t in kept if worst[t]]}"
    assert every == FLOAT32_EVERY_TILE_SPILLS
    for (part, D), kept in every.items():  # (what is kept spills least there)
        assert max(kept.values()) == min(worst_by_tile(groups[part, D], lambda r: tuple(r["tile"])).values()), \
            (part, D, kept)


@pytest.mark.parametrize("version", REPORTS)
def test_float32_runs_pointers_because_every_tma_tile_spills(version):
    """``tma_pays`` is false for float32 (forward and backward): through TMA every float32 prefill, dK/dV and dQ
    tile surveyed spills registers on sm_90 at D = 64 and 128 (decoding tiles some, up to 240 bytes), while
    the same tiles through pointers do not."""
    rows = float32_rows(version)
    tma = [r for r in rows if r["variant"] == "tma"]
    assert {(r["part"], r["D"]) for r in tma} == {(part, D) for part in ("forward", "decode", "dkdv", "dq")
                                                  for D in (64, 128)}
    prefill = [r for r in tma if r["part"] != "decode"]
    assert all(r["spill_stack_bytes"] > 0 for r in prefill), [r["tile"] for r in prefill if not r["spill_stack_bytes"]]
    pointer = {(r["part"], r["D"], tuple(r["tile"])): r["spill_stack_bytes"] for r in rows if r["variant"] == "pointer"}
    assert all(pointer[r["part"], r["D"], tuple(r["tile"])] == 0 for r in tma)


@pytest.mark.parametrize("version", REPORTS)
def test_a_packed_batch_s_backward_runs_pointers_because_tma_spills_more(version):
    """``flash_bwd.tma_pays``: through TMA a packed batch's dK/dV kernel also reads, through pointers, the
    query tile that overhangs each sequence, and spills registers on sm_90 in every tile at D = 128 but one
    (16 x 64 on 8 warps, added to the candidates for dropout) and in two at D = 64, where the pointer kernel
    has tiles that do not; so ``auto`` runs pointers there (untimed: the one TMA tile may yet pay on a GPU)."""
    _, report = _report(version)
    bwd = kernel_module("flash_bwd", CUDA)
    rows = [r for r in report["rows"] if r["part"] == "dkdv varlen" and "error" not in r]

    def spilling(variant, D):
        mine = [r for r in rows if r["variant"] == variant and r["D"] == D]
        assert mine, f"no {variant} rows at D = {D} in the survey"
        return sum(r["spill_stack_bytes"] > 0 for r in mine), len(mine)

    assert spilling("tma", 128) == (len(bwd.candidate_tiles("dkdv", 128)) - 1, len(bwd.candidate_tiles("dkdv", 128)))
    assert not [r for r in rows if r["variant"] == "tma" and r["D"] == 128 and not r["spill_stack_bytes"]
                and tuple(r["tile"]) != bwd.DKDV_TILES[-1]]
    assert spilling("tma", 64)[0] >= 2
    assert spilling("pointer", 128)[0] < spilling("pointer", 128)[1]
    assert spilling("pointer", 64)[0] < spilling("tma", 64)[0] or spilling("pointer", 64)[0] == 0
    assert not bwd.tma_pays(128, True, torch.float16) and not bwd.tma_pays(64, True, torch.float16)
    assert bwd.tma_pays(64, False, torch.float16)


def test_a_packed_batch_s_pointer_backward_skips_exactly_the_tiles_that_spill(monkeypatch):
    """``flash_bwd.PACKED_POINTER_SPILLS`` lists, per the two surveys, exactly the candidate tiles that spill
    for a packed batch through pointers under triton 3.9 or 3.6 (none needlessly dropped), and with
    ``PADDED_PACKED_POINTER_SPILLS`` beside it, exactly those that spill at a head dim padded to the tiles'
    width (D = 40 in 64-wide tiles, 80 in 128-wide ones; the padded list names only tiles that spill there and
    not unpadded). Wired into Triton's own autotuner (``prune_configs``, before any timing), a packed 16-bit
    launch skips them and other launches keep the whole space; with the autotuner off, the packed default is
    a tile that does not spill."""
    reports = [_report(version)[1] for version in REPORTS]
    bwd = kernel_module("flash_bwd", CUDA)
    pointer = _variants.VARIANTS["pointer"]
    monkeypatch.setattr(_variants, "_autotuned", {})

    for kernel in ("dkdv", "dq"):
        for D in (16, 32, 40, 64, 80, 128):
            width = head_dim_tile(D)
            rows = [r for report in reports for r in report["rows"] if r["part"] == f"{kernel} varlen"
                    and r["variant"] == "pointer" and r["D"] == D]
            assert len(rows) == 2 * len(bwd.candidate_tiles(kernel, width)) and not any("error" in r for r in rows)
            spilling = {tuple(r["tile"]) for r in rows if r["spill_stack_bytes"]}
            assert set(bwd.packed_pointer_spills(kernel, width, D < width)) == spilling, (kernel, D)
            assert not set(bwd.PADDED_PACKED_POINTER_SPILLS.get((kernel, width), [])) & \
                set(bwd.PACKED_POINTER_SPILLS.get((kernel, width), [])), (kernel, width)
            space = bwd.configs(kernel, pointer, width)
            tuner = _variants.autotuned(getattr(bwd, f"_bwd_{kernel}"), pointer, lambda space=space: space, tag=D,
                                        prune=functools.partial(bwd.prune_for_packing, kernel))
            for dtype, varlen in ((torch.bfloat16, True), (torch.bfloat16, False), (torch.float32, True)):
                tuner.nargs = {"Q": torch.empty(0, dtype=dtype)}
                key = {"HEAD_DIM": width, "D_REAL": D, "IS_VARLEN": varlen}
                kept = {_variants.tile_of(c) for c in tuner.prune_configs(key)}
                skip = spilling if varlen and dtype != torch.float32 else set()
                assert kept and kept == {_variants.tile_of(c) for c in space} - skip, (kernel, D, dtype, varlen)
            default = bwd.default_config(kernel, width, 2, packed=True, HEAD_DIM=width, D_REAL=D)
            assert _variants.tile_of(default) not in spilling, (kernel, D)


PAGED_PARTS = ("decode paged", "forward paged", "forward varlen paged")  # (the survey's, 16-bit and float32)


@pytest.mark.parametrize("D", [16, 32, 64, 128, 256])
def test_a_paged_cache_skips_exactly_the_tiles_that_spill_there(D):
    """``flash_fwd.FEATURE_SPILLS["PAGED"]`` (what a launch on a paged cache, ``PAGED``, skips: a page lookup per
    key costs registers) names, at each unpadded head dim, exactly the tiles that spill in the surveys' paged
    parts ("decode paged"; "forward paged", a prompt's chunk, and "forward varlen paged", a packed batch of them)
    under triton 3.9 or 3.6: none needlessly dropped, and every one that spills skipped, but the decoding tiles that
    no launch at that head dim is offered (``DECODE_SPILLS``). A paged launch's pruning then keeps tiles, and
    without ``PAGED`` the list is not used."""
    fwd = kernel_module("flash_fwd", CUDA)
    rows = [r for version in REPORTS for r in _report(version)[1]["rows"]
            if r["D"] == D and r["part"] in PAGED_PARTS]
    assert {r["part"] for r in rows} == set(PAGED_PARTS), f"no paged rows at D = {D}"
    assert not [r for r in rows if "error" in r]
    spilling = {config_of(r) for r in rows if r["spill_stack_bytes"]}
    listed = set(fwd.FEATURE_SPILLS["PAGED"].get(D, []))
    never_offered = {(*t, False) for t in fwd.decode_spills(_variants.VARIANTS["pointer"], D)}
    assert listed <= spilling, f"PAGED[{D}] names tiles that spill on no paged cache: {sorted(listed - spilling)}"
    assert spilling - never_offered <= listed, f"PAGED[{D}] misses tiles that spill paged: " \
                                               f"{sorted(spilling - never_offered - listed)}"
    for part in PAGED_PARTS:  # (a decoding step, a prompt's chunk, a packed batch)
        paged = forward_kept(fwd, {"part": part, "D": D, "variant": "pointer"})
        plain = forward_kept(fwd, {"part": part.split(" ")[0], "D": D, "variant": "pointer"})
        assert paged and not paged & spilling and paged == plain - listed, (D, part)
        c = fwd.default_config(_variants.VARIANTS["pointer"], D, 2, T_q=1 if part.startswith("decode") else 4096,
                               HEAD_DIM=D, D_REAL=D, PAGED=True)  # (the autotuner off)
        assert (*_variants.tile_of(c), False) in paged, f"{part} at D = {D}: the untuned default {c} spills paged"


def shared_rings(kernel) -> list[str]:
    """The rings of 16-bit shared-memory buffers a compiled kernel allocates (its TTGIR's ``local_alloc``s of no
    initial value), each ``depth x rows x cols``: a pipelined load's ring has one buffer per iteration in flight."""
    return sorted(re.findall(r"local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+x\d+x\d+)xf16", kernel.asm["ttgir"]))


def ring_depths(kernel) -> list[int]:
    """How deep each of :func:`shared_rings` is."""
    return [int(ring.split("x")[0]) for ring in shared_rings(kernel)]


@pytest.mark.parametrize("target", [AMPERE, HOPPER], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("part, tile", [("forward", (64, 64, 4, 3)), ("decode", (16, 64, 4, 3))])
def test_a_paged_cache_buffers_its_keys_and_values_as_deep_as_a_plain_one(target, part, tile):
    """A tile on a paged cache gets the same rings of key and value buffers as on a plain one, as deep (the
    launch compiles it deeper: ``flash_paged.deeper``); compiled with its listed stages as it is, the page-number
    load ahead of the rows' would leave them one buffer fewer (Triton's pipeliner shares the stages out along a
    chain of loads), so a mistake either way (no deepening, or a pipeliner that no longer needs it) fails here."""
    launch_of = _survey("3.9")[0].launch_of  # (as the survey records a part's launch)

    def compiled(paged: bool, tile):
        fn, args, kwargs = launch_of(f"{part} paged" if paged else part, "pointer", torch.float16, 64, tile, False)
        config = _variants.config(*tile, WARP_SPEC=False)
        deeper = kernel_module("flash_fwd", CUDA).deeper
        want = 2 * tile[3] - 1 if paged else tile[3]
        assert kwargs["num_stages"] == (deeper(config) if paged else config).num_stages == want, kwargs
        return compile_launch(fn, args, dict(kwargs), target)

    plain, paged = compiled(False, tile), compiled(True, tile)
    assert min(ring_depths(plain)) >= 2, f"the plain {part} is not double-buffered: {shared_rings(plain)}"
    assert shared_rings(paged) == shared_rings(plain), (f"{part} {tile} on a paged cache: {shared_rings(paged)}, "
                                                        f"on a plain one: {shared_rings(plain)}")
    # (listed with 2 stages, a paged tile compiles with 3: what the listed 3-stage tile would be without deepening)
    undeepened = compiled(True, (*tile[:3], tile[3] - 1))
    assert undeepened.metadata.num_stages == tile[3]
    assert max(ring_depths(undeepened)) < min(ring_depths(plain)), shared_rings(undeepened)


@pytest.mark.parametrize("D", [40, 80, 160])
def test_a_padded_head_dim_skips_exactly_the_tiles_that_spill_there(D):
    """The kernels key their tile lists by the tiles' width, so D = 40 is offered D = 64's configs, D = 80
    D = 128's and D = 160 D = 256's; their masked columns cost registers of their own, and the survey compiles
    the forward's configs at all three. For every launch ``auto`` runs on Hopper (prefill through TMA, decoding
    through either variant, paged caches through pointers), the forward's pruning must keep, of the tiles it
    would otherwise try there, exactly those that spill under neither triton 3.9 nor 3.6, or where every one of
    them spills (:data:`EVERY_TILE_SPILLS`, which names no part where some tile is clean), those whose larger
    spill is smallest. And the ``PADDED``, ``PADDED+PAGED`` and ``PADDED+POINTER`` lists that do it name only tiles
    that spill at D in a launch they apply to (any, paged, through pointers): none needlessly dropped but where a
    list is shared by launches whose spills differ. With the autotuner off, each launch's default tile is one of
    those it keeps."""
    fwd = kernel_module("flash_fwd", CUDA)
    width = head_dim_tile(D)
    lists = {name: {tuple(t) for t in fwd.FEATURE_SPILLS.get(name, {}).get(width, [])}
             for name in ("PADDED", "PADDED+PAGED", "PADDED+POINTER")}
    unpadded = {k: v for k, v in fwd.FEATURE_SPILLS.items() if not k.startswith("PADDED")}
    runs = {"forward": ("tma", "tma+ws"), "forward varlen": ("tma",), "decode": ("pointer", "tma"),
            "decode paged": ("pointer",), "forward varlen paged": ("pointer",), "forward paged": ("pointer",)}
    rows = [r for version in REPORTS for r in _report(version)[1]["rows"]
            if r["D"] == D and r["variant"] in runs.get(r["part"], ())]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    # (part, variant) -> {(*tile, warp-specialised): its larger spill under the two tritons}
    groups = {g: worst_by_tile([r for r in rows if (r["part"], r["variant"]) == g], config_of)
              for g in {(r["part"], r["variant"]) for r in rows}}
    assert {part for part, _ in groups} == set(runs), f"the surveys lack D = {D} rows of some parts: run make survey"
    spilling = {"PADDED": set(), "PADDED+PAGED": set(), "PADDED+POINTER": set()}
    every_tile_spills = set()
    for (part, variant), worst in groups.items():
        r = {"part": part, "variant": variant, "D": D}
        kept = forward_kept(fwd, r)
        with pytest.MonkeyPatch.context() as m:  # what the pruning would keep without the padded lists
            m.setattr(fwd, "FEATURE_SPILLS", unpadded)
            would = forward_kept(fwd, r)
        tried = {t: bytes_ for t, bytes_ in worst.items() if t in would}
        clean = {t for t, bytes_ in tried.items() if not bytes_}
        assert kept, (part, variant)
        if clean:
            assert kept & set(tried) <= clean, f"D = {D}, {part} ({variant}) keeps tiles that spill: " \
                                               f"{sorted((t, tried[t]) for t in kept & set(tried) - clean)}"
        else:
            assert (part, D) in EVERY_TILE_SPILLS_PARTS, \
                f"every tile spills at D = {D} in {part} ({variant}): {tried}; not in EVERY_TILE_SPILLS"
            assert {tried[t] for t in kept & set(tried)} == {min(tried.values())}, (part, variant, tried)
            every_tile_spills.add((part, D))
        spilling["PADDED+PAGED" if part.endswith("paged") else "PADDED"] |= set(tried) - clean
        if variant == "pointer":
            spilling["PADDED+POINTER"] |= set(tried) - clean
        c = fwd.default_config(_variants.VARIANTS[variant], width, 2, T_q=1 if part.startswith("decode") else 4096,
                               HEAD_DIM=width, D_REAL=D, PAGED=part.endswith("paged"))  # (the autotuner off)
        default = (*_variants.tile_of(c), c.kwargs["WARP_SPEC"])
        assert tried.get(default) == (0 if clean else min(tried.values())), \
            f"D = {D}, {part} ({variant}): the untuned default {default} spills {tried.get(default)} bytes"
    assert lists["PADDED"] <= spilling["PADDED"], \
        f"flash_fwd.FEATURE_SPILLS['PADDED'][{width}] names tiles that do not spill at D = {D}: " \
        f"{sorted(lists['PADDED'] - spilling['PADDED'])}"
    assert lists["PADDED+POINTER"] <= spilling["PADDED+POINTER"] - lists["PADDED"], \
        f"flash_fwd.FEATURE_SPILLS['PADDED+POINTER'][{width}] names tiles that do not spill through pointers at " \
        f"D = {D}, or that PADDED already names"
    stale = {(part, dim) for part, dim in EVERY_TILE_SPILLS_PARTS if dim == D and part in runs} - every_tile_spills
    assert not stale, f"EVERY_TILE_SPILLS names parts at D = {D} where some tile no longer spills: {sorted(stale)}"
    assert lists["PADDED+PAGED"] <= spilling["PADDED+PAGED"] - lists["PADDED"], \
        f"flash_fwd.FEATURE_SPILLS['PADDED+PAGED'][{width}] names tiles that do not spill paged at D = {D}, or " \
        f"that PADDED already names: {sorted(lists['PADDED+PAGED'] - (spilling['PADDED+PAGED'] - lists['PADDED']))}"


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_a_padded_head_dim_compiles_for_hopper(variant):
    """D = 80: tiles 128 columns wide whose last 48 are masked (``_tiles.head_dim_tile``), or, through
    TMA, descriptors whose tiles are wider than the tensor. The prefill forward, a decoding step (keys split
    in slices, GQA heads packed into rows, a cache) with its combine, and the three backward kernels all
    compile for sm_90 with tensor-core products (wgmma, or mma.sync for the 16-row decoding tiles)."""
    used = torch.tensor([100, 200], dtype=torch.int32)
    launches = (forward_launches(variant, torch.bfloat16, 80) + backward_launches(variant, torch.bfloat16, 80)
                + forward_launches(variant, torch.bfloat16, 80, T_q=1, num_splits=3, seqused_k=used))
    assert [fn.__name__ for fn, _, _ in launches] == [
        "_attn_fwd", "_bwd_preprocess", "_bwd_dkdv", "_bwd_dq", "_attn_fwd", "_combine_splits"]
    decoding = launches[-2][2]
    assert decoding["PACK_GQA"] and decoding["SPLIT_K"] and decoding["BLOCK_M"] == 16
    for fn, args, kwargs in launches:
        assert (kwargs["HEAD_DIM"], kwargs["D_REAL"]) == (128, 80), fn.__name__
        kernel = compile_launch(fn, args, dict(kwargs), HOPPER)
        if fn.__name__ in ("_attn_fwd", "_bwd_dkdv", "_bwd_dq"):
            check_ptx(fn, kernel, tma=variant == "tma", tensor_cores=True,
                      narrow=kwargs["BLOCK_M"] == 16 and fn.__name__ == "_attn_fwd")


FEATURES = {"DROPOUT": dict(dropout_p=0.1), "SOFTCAP": dict(softcap=30.0),  # (the kernels' constexpr -> the
            "ALIBI": dict(alibi=True)}  # arguments of _compile's launches)
FEATURE_PARTS = [*FEATURES, "DROPOUT+SOFTCAP", "DROPOUT+ALIBI", "SOFTCAP+ALIBI",  # (surveyed alone, in pairs and
                 "DROPOUT+SOFTCAP+ALIBI"]  # all three at once)
# Where every candidate tile spills with a combination of features in one of the surveys (survey part, head
# dim, triton): the pruning then keeps the tile that spills least (_variants.fewest_spills).
# (D = 80 with all three features spills as D = 128 does, 32 bytes at 16 x 64 on 8 warps. At D = 256 and 160, the
# backward's wide lists end in a tile that does not spill with any of them: flash_bwd's WIDE_*_TILES. Decoding at
# D = 40 through pointers, where every tile spilled under triton 3.9, plain or paged, has 16 x 64 on 8 warps since.)
EVERY_TILE_SPILLS = {("dkdv dropout+softcap+alibi", 128, "3.6"), ("dkdv dropout+softcap+alibi", 80, "3.6")}
EVERY_TILE_SPILLS_PARTS = {(part, dim) for part, dim, _ in EVERY_TILE_SPILLS}  # (under either triton)


@pytest.mark.parametrize("feature", FEATURE_PARTS)
def test_dropout_softcap_and_alibi_at_a_padded_head_dim_keep_only_tiles_that_do_not_spill_there(feature):
    """Dropout, a softcap and ALiBi, alone, in pairs and all three, at D = 40, 80 and 160 (heads padded to 64,
    128 and 256, whose masked columns cost registers of their own; the backward at 160 through pointers, as
    ``auto`` runs it there): the surveys compile each feature's parts there too,
    and the lists of the tiles' width (with the ``PADDED`` ones) must leave each kernel's autotuner only tiles
    that spill under neither triton there, and its untuned default one of them (or, where every tile spills,
    per :data:`EVERY_TILE_SPILLS`, those whose larger spill is smallest)."""
    reports = [_report(version)[1] for version in REPORTS]
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    half, on = {"Q": torch.empty(0, dtype=torch.float16)}, dict.fromkeys(feature.split("+"), True)
    for D in (40, 80, 160):
        width = head_dim_tile(D)
        padded = dict(HEAD_DIM=width, D_REAL=D, **on)  # (a launch's constexprs)
        backward = hopper_backward(width)
        for kernel in ("forward", "dkdv", "dq"):
            part = f"{kernel} {feature.lower()}"
            rows = [r for report in reports for r in report["rows"] if r["part"] == part and r["D"] == D]
            assert rows and not any("error" in r for r in rows), f"no clean {part} rows at D = {D}: run make survey"
            worst, least = worst_by_tile(rows, config_of), least_spilling(rows, config_of)
            assert (min(worst[t] for t in least) > 0) == ((part, D) in EVERY_TILE_SPILLS_PARTS), (part, D)
            if kernel == "forward":
                space = [c for c in fwd.configs(_variants.VARIANTS["tma+ws"], width)
                         if c.kwargs["BLOCK_M"] != fwd.DECODE_ROWS]
                kept = {(*_variants.tile_of(c), c.kwargs["WARP_SPEC"])
                        for c in fwd.prune_for_lengths(space, {"TUNE_T_Q": 4096}, **padded)}
                defaults = {v: fwd.default_config(_variants.VARIANTS[v], width, 2, T_q=4096, **padded)
                            for v in ("tma", "tma+ws")}
            else:
                assert {r["variant"] for r in rows} == {backward}, (part, D)
                space = bwd.configs(kernel, _variants.VARIANTS[backward], width)
                kept = {(*_variants.tile_of(c), False) for c in bwd.prune(kernel, backward == "pointer", space, half,
                                                                          IS_VARLEN=False, **padded)}
                defaults = {backward: bwd.default_config(kernel, width, 2, **padded)}
            assert kept and kept <= least, f"{part} at D = {D} keeps tiles that spill: " \
                                           f"{sorted((t, worst[t]) for t in kept - least)}"
            for variant, c in defaults.items():  # (untuned, WS on stays warp-specialised: its own least, as unpadded)
                alike = least_spilling([r for r in rows if r["variant"] == variant], config_of)
                assert (*_variants.tile_of(c), c.kwargs.get("WARP_SPEC", False)) in alike, (part, D, variant)


@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_a_decoding_step_in_mapped_cache_rows_compiles_for_hopper(variant):
    """A cache indexed by ``cache_batch_idx`` and ``cache_leftpad`` (``CACHE_MAP``: two loads, another row and
    first key): the decoding forward, split and with packed GQA rows, compiles for sm_90, mma.sync as usual."""
    used = torch.tensor([100, 200], dtype=torch.int32)
    cache_map = (torch.tensor([1, 0], dtype=torch.int32), torch.tensor([7, 0], dtype=torch.int32))
    (fn, args, kwargs), _ = forward_launches(variant, torch.bfloat16, 128, T_q=1, num_splits=3, seqused_k=used,
                                             cache_map=cache_map)
    assert kwargs["CACHE_MAP"] and kwargs["PACK_GQA"] and kwargs["SPLIT_K"]
    check_ptx(fn, compile_launch(fn, args, dict(kwargs), HOPPER), tma=variant == "tma", tensor_cores=True,
              narrow=True)


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("variant", list(_variants.VARIANTS))
def test_dropout_softcap_and_alibi_compile_for_hopper(variant, feature):
    """With dropout (``flash_dropout``: Philox numbers per score, regenerated in the backward), logit
    soft-capping (``flash_softcap``: a tanh per score, and its derivative in the backward) or ALiBi
    (``flash_alibi``: a bias per score from its positions) every kernel compiles for sm_90 and keeps its
    tensor-core products; the warp-specialised forward stays specialised."""
    launches = forward_launches(variant, torch.bfloat16, 128, **FEATURES[feature])
    if variant != "tma+ws":
        launches += backward_launches(variant, torch.bfloat16, 128, **FEATURES[feature])
    for fn, args, kwargs in launches:
        if fn.__name__ == "_bwd_preprocess":  # (delta = rowsum(dO * O) needs neither: O is already dropped)
            continue
        assert kwargs[feature] and sum(kwargs[f] for f in FEATURES) == 1, fn.__name__
        kernel = compile_launch(fn, args, dict(kwargs), HOPPER)
        check_ptx(fn, kernel, tma=_variants.VARIANTS[variant].tma, tensor_cores=True)
        if variant == "tma+ws":
            assert "setmaxnreg" in kernel.asm["ptx"], f"the {feature.lower()} forward is no longer warp-specialised"


def least_spilling(rows: list[dict], tile) -> set:
    """The tiles (``tile(row)``) whose largest spill over the surveys' ``rows`` is smallest: those that spill
    under neither triton, where there are any."""
    worst = worst_by_tile(rows, tile)
    return {t for t, bytes_ in worst.items() if bytes_ == min(worst.values())}


def hopper_backward(width: int) -> str:
    """The backward variant ``auto`` runs on Hopper for an unpacked batch at tile width ``width`` (pointers at
    256: ``flash_bwd.tma_pays``), which the surveys compile the features' backward parts through."""
    return "tma" if kernel_module("flash_bwd", CUDA).tma_pays(width, False, torch.float16) else "pointer"


def assert_lists_the_spilling(listed, spilling: set, least: set, where) -> None:
    """A feature's list names exactly the tiles that spill with it, but that where every tile spills it may
    leave out the least spilling, so that the pruning keeps them (:func:`_variants.fewest_spills` counts lists)."""
    listed = set(listed)
    assert listed <= spilling, f"{where}: listed but spills under neither triton: {sorted(listed - spilling)}"
    missing = spilling - listed
    assert not missing or (least <= spilling and missing <= least), f"{where}: spills but not listed: {sorted(missing)}"


@pytest.mark.parametrize("feature", FEATURE_PARTS)
def test_dropout_softcap_and_alibi_skip_exactly_the_tiles_that_spill_with_them(feature):
    """``FEATURE_SPILLS[feature]`` of ``flash_fwd`` and ``flash_bwd`` list, per the two surveys' parts for the
    feature or combination of features ("forward dropout", "dq softcap+alibi", "dkdv dropout+softcap+alibi",
    ...), at D = 16, 32, 64, 128 and 256 (the backward at 256 through pointers, as auto runs it), exactly the candidate
    tiles that spill with it under triton 3.9 or 3.6 (where every tile spills, less perhaps the least spilling:
    :func:`assert_lists_the_spilling`). Such a launch's pruning
    step keeps something, and only tiles that spill with it under neither triton (it also drops each part's
    own lists), or, where every tile spills (only where :data:`EVERY_TILE_SPILLS` says), only the tiles whose
    larger spill is smallest; a launch without the features keeps every tile; with the autotuner off, its
    default tile is one of those kept tiles' kind."""
    reports = [_report(version)[1] for version in REPORTS]
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    half = {"Q": torch.empty(0, dtype=torch.float16)}
    names = feature.split("+")
    suffix, on, off = feature.lower(), dict.fromkeys(names, True), dict.fromkeys(names, False)
    for D in (16, 32, 64, 128, 256):
        rows = [r for report in reports for r in report["rows"] if r["part"] == f"forward {suffix}" and r["D"] == D]
        assert len(rows) == 2 * (len(fwd.candidate_tiles(D, False)) + len(fwd.candidate_tiles(D, True)))
        assert not any("error" in r for r in rows)
        spilling = {config_of(r) for r in rows if r["spill_stack_bytes"]}
        least = least_spilling(rows, config_of)
        assert_lists_the_spilling(fwd.FEATURE_SPILLS.get(feature, {}).get(D, []), spilling, least, ("forward", D))
        assert (least <= spilling) == ((f"forward {suffix}", D) in EVERY_TILE_SPILLS_PARTS), D
        space = [c for c in fwd.configs(_variants.VARIANTS["tma+ws"], D) if c.kwargs["BLOCK_M"] != fwd.DECODE_ROWS]
        kept = fwd.prune_for_lengths(space, {"TUNE_T_Q": 4096}, HEAD_DIM=D, **on)
        assert kept and {(*_variants.tile_of(c), c.kwargs["WARP_SPEC"]) for c in kept} <= least
        assert fwd.prune_for_lengths(space, {"TUNE_T_Q": 4096}, HEAD_DIM=D, **off) == space
        for variant in ("tma", "tma+ws"):
            c = fwd.default_config(_variants.VARIANTS[variant], D, 2, T_q=4096, **on)
            alike = least_spilling([r for r in rows if r["variant"] == variant], lambda r: tuple(r["tile"]))
            assert _variants.tile_of(c) in alike and c.kwargs["WARP_SPEC"] == (variant == "tma+ws"), (variant, D)
        variant = hopper_backward(D)
        for kernel in ("dkdv", "dq"):
            rows = [r for report in reports for r in report["rows"] if r["part"] == f"{kernel} {suffix}"
                    and r["D"] == D]
            assert len(rows) == 2 * len(bwd.candidate_tiles(kernel, D)) and not any("error" in r for r in rows)
            assert {r["variant"] for r in rows} == {variant}, (kernel, D)
            spilling = {tuple(r["tile"]) for r in rows if r["spill_stack_bytes"]}
            least = least_spilling(rows, lambda r: tuple(r["tile"]))
            assert_lists_the_spilling(bwd.FEATURE_SPILLS.get(feature, {}).get((kernel, D), []), spilling, least,
                                      (kernel, D))
            assert (least <= spilling) == ((f"{kernel} {suffix}", D) in EVERY_TILE_SPILLS_PARTS), (kernel, D)
            space = bwd.configs(kernel, _variants.VARIANTS[variant], D)
            pointer = variant == "pointer"
            kept = bwd.prune(kernel, pointer, space, half, HEAD_DIM=D, IS_VARLEN=False, **on)
            assert kept and {_variants.tile_of(c) for c in kept} <= least, (kernel, D)
            assert bwd.prune(kernel, pointer, space, half, HEAD_DIM=D, IS_VARLEN=False, **off) == space
            assert _variants.tile_of(bwd.default_config(kernel, D, 2, **on)) in least
