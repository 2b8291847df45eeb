"""How much shared memory each tile shape needs on GPUs other than Hopper, measured without a GPU.

The tile lists are chosen on Hopper, where one program may use 227 KiB of shared memory and the products are
``wgmma``'s. GPUs older than Hopper, and consumer Blackwell (sm_120: RTX 50 series), run the ``pointer`` variant
(``auto`` picks TMA only on compute capability 9.x and 10.x), multiply with ``mma.sync``, which holds its operands
in registers differently, and give a program less shared memory: an A100 (sm_80) 163 KiB; an A10, A40, RTX 30
series (sm_86), L4, L40 or RTX 40 series (sm_89) 99 KiB; an RTX 50 (sm_120) 99 KiB. A tile that needs more is
refused as it loads, and the launch takes the next of its list (``attn_course.kernels._fit``), so each list must
hold one that fits.

This compiles every tile of the pointer forward, decoding step, dK/dV and dQ lists (16-bit and float32, at the
survey's eight head dims), and of the forward and decoding step on a paged cache (``forward paged``, ``decode
paged``: compiled deeper, ``flash_paged.deeper``, with a ring of page numbers beside the rows') for sm_80, whose
code the later pre-Hopper GPUs share (cp.async pipelining from 8.0; ``tests/test_kernels_fit.py`` checks an sm_86
compile against it), and for sm_120, and records the shared memory each needs, and its registers and spill there.
No speed is measured. The lists are pruned by the sm_90 survey's spills (``kernel_resources.py``); compiled for
these targets other tiles spill (``spilling``), among them the tile Hopper runs with autotuning off for some
launches (``hopper_defaults_that_spill``). A launch with autotuning off on such a GPU skips the tiles that spill
on its target (``attn_course.kernels._mma_sync``, whose tables ``tests/test_kernels_fit.py`` checks against these
reports); what it then runs and still spills, where every tile would, is ``untuned_defaults_that_spill``. (The
autotuner times a spilling tile with the rest: nothing prunes by these spills.)

Why ``auto`` runs pointers on sm_120, though it has the bulk tensor copy engine: ``tma_rows`` compiles the 16-bit
forward (plain and warp-specialised), dK/dV and dQ lists at D = 64 and 128 through TMA for sm_120 too, and
``tma_summary`` counts, per variant, kernel and head dim, the tiles that neither spill nor overflow 99 KiB (the
pointer rows' counts beside them): warp-specialised tiles all spill, 1.5 KB and more, and at D = 128 every TMA
forward and dK/dV tile spills, where pointers keep tiles that do not (``tests/test_kernels_fit.py``).

Not compiled here: dropout, softcap and ALiBi (alone, in pairs, all three) and packed batches, whose tiles stage
what the plain ones do. Probed once (triton 3.9, sm_80, every tile of the forward, dK/dV and dQ lists at D = 128
and 256, 16-bit and float32): each needed the bytes of the plain part's same tile, or (float32's 16 x 128 at
D = 128 with dropout) 128 fewer; and a packed batch on a paged cache those of the paged forward's (three tiles
probed, at D = 64, 128 and 256).

Not surveyed: sm_75 (T4, RTX 20 series: 64 KiB), which Triton does not support (its README asks for compute
capability 8.0; there ``tl.dot`` runs on the CUDA cores). Probed once (triton 3.9, 16-bit inputs, D up to 80):
every list has a tile that fits up to D = 64, but at D = 80 no dK/dV or dQ tile does (72 and 80 KiB at least), so
there the backward stops with ``_fit.TilesDoNotFit``; compiling for sm_75 also takes several times as long.

    python benchmarks/kernel_shared_memory.py                       # writes results/kernel_shared_memory.json
    python benchmarks/kernel_shared_memory.py --out /tmp/shared.json --workers 2

``make survey`` runs it under this machine's triton and under triton 3.6, as on the GPU machines
(``kernel_shared_memory_triton3.6.json``): shared memory is the compiler's choice, and may differ between them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import torch
import triton

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = (80, 120)  # compute capabilities compiled for (sm_86 and sm_89 compile as sm_80 does)
PARTS = ("forward", "decode", "dkdv", "dq", "forward paged", "decode paged")
# each GPU class: the capability its code is compiled as, and the shared memory one program may use (bytes:
# cudaDevAttrMaxSharedMemoryPerBlockOptin, the figure Triton compares a kernel's need against)
GPUS = {
    "A100 (sm_80)": (80, 166_912),
    "A10, L4, RTX 30 / 40 (sm_86, sm_89)": (80, 101_376),
    "RTX 50 (sm_120)": (120, 101_376),
}
TMA_TARGET, TMA_HEAD_DIMS, TMA_VARIANTS = 120, (64, 128), ("pointer", "tma", "tma+ws")  # (tma_rows)


CACHE_NOTE = ("this run's wall time with Triton's on-disk cache as this machine had it: tiles compiled by an earlier "
              "run load from the cache instead; from a cold cache, about 30 minutes per triton on 2 cores")


sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_resources  # noqa: E402  (the sm_90 survey: its head dims, and how it records a part's launch)


def jobs() -> list[tuple]:
    """(part, dtype, D, tile) for every tile of every list: float16 stands for both 16-bit types."""
    return [(part, dtype, D, t) for dtype in ("float16", "float32") for D in kernel_resources.HEAD_DIMS
            for part in PARTS for t in map(tuple, kernel_resources.tile_list(part, D, dtype == "float32"))]


def tma_jobs() -> list[tuple]:
    """(variant, part, D, tile, warp-specialised) for :data:`TMA_TARGET`'s comparison of the variants (16-bit)."""
    from attn_course.kernels._compile import CUDA
    from attn_course.kernels._runtime import kernel_module

    fwd = kernel_module("flash_fwd", CUDA)
    found = []
    for D in TMA_HEAD_DIMS:
        for variant in TMA_VARIANTS:
            if variant == "tma+ws":
                found += [(variant, "forward", D, tuple(t), True) for t in fwd.candidate_tiles(D, True)]
                continue
            found += [(variant, part, D, tuple(t), False) for part in ("forward", "dkdv", "dq")
                      for t in kernel_resources.tile_list(part, D)]
    return found


def compiled(fn, args, kwargs, cc: int) -> dict:
    """``{"sm_<cc>": shared bytes, "sm_<cc>_registers": ..., "sm_<cc>_spill_bytes": ...}`` of one launch compiled
    for ``sm_<cc>``; a launch that does not compile is a finding (its error, in ``sm_<cc>``), not a crash."""
    from triton.backends.compiler import GPUTarget

    from attn_course.kernels._compile import compile_launch, resources

    try:
        used = resources(compile_launch(fn, args, dict(kwargs), GPUTarget("cuda", cc, 32)))
    except Exception as e:
        return {f"sm_{cc}": kernel_resources.error_text(e)}
    # (its shared bytes are the metadata's: the field the tests and gaps read)
    return {f"sm_{cc}": used["shared_bytes"], f"sm_{cc}_registers": used["registers"],
            f"sm_{cc}_spill_bytes": used["spill_stack_bytes"]}


def measure(job) -> dict:
    part, dtype_name, D, tile = job
    row = {"part": part, "dtype": dtype_name, "D": D, "tile": list(tile)}
    launch = kernel_resources.launch_of(part, "pointer", getattr(torch, dtype_name), D, tile, False)
    for cc in TARGETS:
        row.update(compiled(*launch, cc))
    return row


def measure_tma(job) -> dict:
    variant, part, D, tile, ws = job
    launch = kernel_resources.launch_of(part, variant, torch.float16, D, tile, ws)
    return {"variant": variant, "part": part, "D": D, "tile": list(tile), "warp_specialized": ws,
            **compiled(*launch, TMA_TARGET)}


def clean_tiles(rows: list[dict], cc: int, limit: int) -> int:
    """How many of ``rows`` compiled for ``sm_<cc>`` spill nothing and fit ``limit`` bytes of shared memory."""
    return sum(1 for r in rows if isinstance(r[f"sm_{cc}"], int) and r[f"sm_{cc}"] <= limit
               and not r[f"sm_{cc}_spill_bytes"])


def tma_summary(tma_rows: list[dict]) -> dict:
    """``{"<variant> <kernel> at D = <D>": "<clean> of <tiles>"}``: per variant, kernel and head dim of the
    comparison, the tiles that spill nothing on :data:`TMA_TARGET` and fit its 99 KiB."""
    limit = next(limit for cc, limit in GPUS.values() if cc == TMA_TARGET)
    groups = {}
    for r in tma_rows:
        groups.setdefault(f"{r['variant']} {r['part']} at D = {r['D']}", []).append(r)
    return {name: f"{clean_tiles(rows, TMA_TARGET, limit)} of {len(rows)}" for name, rows in groups.items()}


def untuned_default(part: str, dtype: str, D: int, sm: int | None = TARGETS[0]) -> tuple:
    """The tile a launch of ``part`` at head dim ``D`` runs with autotuning off on a GPU whose code is ``sm_<sm>``'s
    (``attn_course.kernels._mma_sync``), or with ``sm=None`` on Hopper (its list's names: a paged launch's deepened
    stages read back as listed)."""
    from attn_course.kernels import _variants
    from attn_course.kernels._compile import CUDA
    from attn_course.kernels._runtime import kernel_module
    from attn_course.kernels._tiles import head_dim_tile

    kernel, width, itemsize = part.split(" ")[0], head_dim_tile(D), 4 if dtype == "float32" else 2
    flags = dict(HEAD_DIM=width, D_REAL=D, IEEE=dtype == "float32", PAGED=part.endswith("paged"), IS_VARLEN=False)
    if kernel in ("dkdv", "dq"):
        c = kernel_module("flash_bwd", CUDA).default_config(kernel, width, itemsize, False, sm=sm, **flags)
    else:
        c = kernel_module("flash_fwd", CUDA).default_config(_variants.VARIANTS["pointer"], width, itemsize,
                                                            1 if kernel == "decode" else 4096, sm=sm, **flags)
    return _variants.tile_of(c)


def spilling(rows: list[dict], cc: int = TARGETS[0]) -> list[str]:
    """Each tile that spills registers compiled for ``sm_<cc>``, in words."""
    return [f"{r['dtype']} {r['part']} at D = {r['D']}: {tuple(r['tile'])} spills {r[f'sm_{cc}_spill_bytes']} B"
            for r in rows if r.get(f"sm_{cc}_spill_bytes")]


def untuned_defaults_that_spill(rows: list[dict], cc: int = TARGETS[0], hopper: bool = False) -> list[str]:
    """Each (dtype, part, head dim) whose untuned default tile (:func:`untuned_default` on a GPU whose code is
    ``sm_<cc>``'s, or with ``hopper`` Hopper's) spills on ``sm_<cc>``."""
    spills = {(r["dtype"], r["part"], r["D"], tuple(r["tile"])): r.get(f"sm_{cc}_spill_bytes") for r in rows}
    found = []
    for dtype, part, D in sorted({(r["dtype"], r["part"], r["D"]) for r in rows}):
        tile = untuned_default(part, dtype, D, None if hopper else cc)
        if spills.get((dtype, part, D, tile)):
            found.append(f"{dtype} {part} at D = {D}: {tile} spills {spills[dtype, part, D, tile]} B")
    return found


def kernel_of(part: str) -> str:
    """The kernel whose list a part's tiles are in: a decoding step runs the forward kernel, whose autotuning list
    holds both its prefill and its decoding tiles (a launch may fall back to any of them); on a paged cache, the
    forward's list compiled deeper (``forward paged``)."""
    return part.replace("decode", "forward")


def gaps(rows: list[dict]) -> list[str]:
    """Each (GPU class, dtype, head dim, kernel) none of whose tiles fits, in words."""
    found = []
    for gpu, (cc, limit) in GPUS.items():
        for dtype, D, kernel in sorted({(r["dtype"], r["D"], kernel_of(r["part"])) for r in rows}):
            needs = [r[f"sm_{cc}"] for r in rows if (r["dtype"], r["D"], kernel_of(r["part"])) == (dtype, D, kernel)]
            if not any(isinstance(n, int) and n <= limit for n in needs):
                least = min((n for n in needs if isinstance(n, int)), default=None)
                found.append(f"{gpu}: {dtype} {kernel} at D = {D}: no tile fits {limit} B (least {least})")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--out", type=Path, default=RESULTS / "kernel_shared_memory.json")
    args = p.parse_args(argv)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
        todo, tma_todo = jobs(), tma_jobs()
        rows = list(kernel_resources.progress(pool.imap(measure, todo), len(todo), "pointer tiles"))
        tma_rows = list(kernel_resources.progress(pool.imap(measure_tma, tma_todo), len(tma_todo),
                                                  f"sm_{TMA_TARGET} variant tiles"))
    rows.sort(key=lambda r: (r["dtype"], r["D"], PARTS.index(r["part"]), r["tile"]))
    for r in rows:
        print(f"{r['dtype']:8s} D={r['D']:3d} {r['part']:12s} {'x'.join(map(str, r['tile'][:2]))} w{r['tile'][2]} "
              f"s{r['tile'][3]}  " + "  ".join(f"sm_{cc} {r[f'sm_{cc}']} B, {r.get(f'sm_{cc}_registers')} regs, spill "
                                                  f"{r.get(f'sm_{cc}_spill_bytes')}" for cc in TARGETS))
    report = {"targets": [f"sm_{cc}" for cc in TARGETS], "gpus": {name: {"compiled_as": f"sm_{cc}", "limit": limit}
                                                                   for name, (cc, limit) in GPUS.items()},
              "triton": triton.__version__, "torch": torch.__version__, "machine": platform.machine(),
              "compile_seconds": round(time.perf_counter() - start, 1), "compile_seconds_note": CACHE_NOTE,
              "rows": rows, "gaps": gaps(rows), "spilling": {f"sm_{cc}": spilling(rows, cc) for cc in TARGETS},
              "hopper_defaults_that_spill": {f"sm_{cc}": untuned_defaults_that_spill(rows, cc, hopper=True)
                                             for cc in TARGETS},
              "untuned_defaults_that_spill": {f"sm_{cc}": untuned_defaults_that_spill(rows, cc) for cc in TARGETS},
              "tma_rows": tma_rows, "tma_summary": tma_summary(tma_rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("\n".join(report["gaps"]) or "every list has a tile that fits each GPU class")
    for target, spilled in report["spilling"].items():
        print(f"{target}: {len(spilled)} tiles spill, {len(report['hopper_defaults_that_spill'][target])} of them "
              f"Hopper's untuned defaults; its own untuned defaults that do: "
              f"{'; '.join(report['untuned_defaults_that_spill'][target]) or 'none'}")
    print("\n".join(f"sm_{TMA_TARGET} {name}: {clean} clean" for name, clean in report["tma_summary"].items()))
    print(f"{len(rows)} tiles; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
