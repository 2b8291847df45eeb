"""How much shared memory each tile shape needs on GPUs older than Hopper, measured without a GPU.

The tile lists are chosen on Hopper, where one program may use 227 KiB of shared memory. Before Hopper the
kernels run the ``pointer`` variant (``auto`` picks TMA only from compute capability 9.0), and a GPU gives a
program less: an A100 (sm_80) 163 KiB; an A10, A40, RTX 30 series (sm_86), L4, L40 or RTX 40 series (sm_89)
99 KiB. A tile that needs more is refused as it loads, and the launch takes the next of its list
(``attn_course.kernels._fit``), so each list must hold one that fits.

This compiles every tile of the pointer forward, decoding step, dK/dV and dQ lists (16-bit and float32, at the
survey's eight head dims), and of the forward and decoding step on a paged cache (``forward paged``, ``decode
paged``: compiled deeper, ``flash_paged.deeper``, with a ring of page numbers beside the rows') for sm_80, whose
code the later pre-Hopper GPUs share (cp.async pipelining from 8.0; ``tests/test_kernels_fit.py`` checks an sm_86
compile against it), and records the shared memory each needs, and its registers and spill there. No speed is
measured. The lists are pruned by the sm_90 survey's spills (``kernel_resources.py``); compiled for sm_80, where the
products are mma.sync's and hold their operands differently, other tiles spill (``spilling``), among them the tile
Hopper runs with autotuning off for some launches (``hopper_defaults_that_spill``). A launch with autotuning off
on a GPU older than Hopper skips the tiles that spill there (``attn_course.kernels._pre_hopper``, whose table
``tests/test_kernels_fit.py`` checks against these reports); what it then runs and still spills, where every tile
would, is ``untuned_defaults_that_spill``. (The autotuner times a spilling tile with the rest: nothing prunes by
sm_80's spills.)

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
TARGETS = (80,)  # compute capabilities compiled for (sm_86 and sm_89 compile as sm_80 does)
PARTS = ("forward", "decode", "dkdv", "dq", "forward paged", "decode paged")
# each GPU class: the capability its code is compiled as, and the shared memory one program may use (bytes:
# cudaDevAttrMaxSharedMemoryPerBlockOptin, the figure Triton compares a kernel's need against)
GPUS = {
    "A100 (sm_80)": (80, 166_912),
    "A10, L4, RTX 30 / 40 (sm_86, sm_89)": (80, 101_376),
}


CACHE_NOTE = ("this run's wall time with Triton's on-disk cache as this machine had it: tiles compiled by an earlier "
              "run load from the cache instead; from a cold cache, about 15 minutes per triton on 2 cores")


sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_resources  # noqa: E402  (the sm_90 survey: its head dims, and how it records a part's launch)


def jobs() -> list[tuple]:
    """(part, dtype, D, tile) for every tile of every list: float16 stands for both 16-bit types."""
    return [(part, dtype, D, t) for dtype in ("float16", "float32") for D in kernel_resources.HEAD_DIMS
            for part in PARTS for t in map(tuple, kernel_resources.tile_list(part, D, dtype == "float32"))]


def measure(job) -> dict:
    part, dtype_name, D, tile = job
    from triton.backends.compiler import GPUTarget

    from attn_course.kernels._compile import compile_launch, resources

    row = {"part": part, "dtype": dtype_name, "D": D, "tile": list(tile)}
    fn, args, kwargs = kernel_resources.launch_of(part, "pointer", getattr(torch, dtype_name), D, tile, False)
    for cc in TARGETS:
        try:
            kernel = compile_launch(fn, args, dict(kwargs), GPUTarget("cuda", cc, 32))
        except Exception as e:  # a tile that does not compile is a finding, not a crash of the report
            row[f"sm_{cc}"] = kernel_resources.error_text(e)
            continue
        used = resources(kernel)  # (its shared bytes are the metadata's: the field the tests and gaps read)
        row[f"sm_{cc}"] = used["shared_bytes"]
        row[f"sm_{cc}_registers"], row[f"sm_{cc}_spill_bytes"] = used["registers"], used["spill_stack_bytes"]
    return row


def untuned_default(part: str, dtype: str, D: int, pre_hopper: bool = True) -> tuple:
    """The tile a launch of ``part`` at head dim ``D`` runs with autotuning off on a GPU older than Hopper, or with
    ``pre_hopper=False`` on Hopper (its list's names: a paged launch's deepened stages read back as listed)."""
    from attn_course.kernels import _variants
    from attn_course.kernels._compile import CUDA
    from attn_course.kernels._runtime import kernel_module
    from attn_course.kernels._tiles import head_dim_tile

    kernel, width, itemsize = part.split(" ")[0], head_dim_tile(D), 4 if dtype == "float32" else 2
    flags = dict(HEAD_DIM=width, D_REAL=D, IEEE=dtype == "float32", PAGED=part.endswith("paged"), IS_VARLEN=False)
    if kernel in ("dkdv", "dq"):
        c = kernel_module("flash_bwd", CUDA).default_config(kernel, width, itemsize, False, pre_hopper=pre_hopper,
                                                            **flags)
    else:
        c = kernel_module("flash_fwd", CUDA).default_config(_variants.VARIANTS["pointer"], width, itemsize,
                                                            1 if kernel == "decode" else 4096, pre_hopper=pre_hopper,
                                                            **flags)
    return _variants.tile_of(c)


def spilling(rows: list[dict], cc: int = TARGETS[0]) -> list[str]:
    """Each tile that spills registers compiled for ``sm_<cc>``, in words."""
    return [f"{r['dtype']} {r['part']} at D = {r['D']}: {tuple(r['tile'])} spills {r[f'sm_{cc}_spill_bytes']} B"
            for r in rows if r.get(f"sm_{cc}_spill_bytes")]


def untuned_defaults_that_spill(rows: list[dict], cc: int = TARGETS[0], pre_hopper: bool = True) -> list[str]:
    """Each (dtype, part, head dim) whose untuned default tile (:func:`untuned_default`: before Hopper, or with
    ``pre_hopper=False`` Hopper's) spills on ``sm_<cc>``."""
    spills = {(r["dtype"], r["part"], r["D"], tuple(r["tile"])): r.get(f"sm_{cc}_spill_bytes") for r in rows}
    found = []
    for dtype, part, D in sorted({(r["dtype"], r["part"], r["D"]) for r in rows}):
        tile = untuned_default(part, dtype, D, pre_hopper)
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
        rows = list(pool.imap(measure, jobs()))
    rows.sort(key=lambda r: (r["dtype"], r["D"], PARTS.index(r["part"]), r["tile"]))
    for r in rows:
        print(f"{r['dtype']:8s} D={r['D']:3d} {r['part']:12s} {'x'.join(map(str, r['tile'][:2]))} w{r['tile'][2]} "
              f"s{r['tile'][3]}  " + "  ".join(f"sm_{cc} {r[f'sm_{cc}']} B, {r.get(f'sm_{cc}_registers')} regs, spill "
                                                  f"{r.get(f'sm_{cc}_spill_bytes')}" for cc in TARGETS))
    report = {"targets": [f"sm_{cc}" for cc in TARGETS], "gpus": {name: {"compiled_as": f"sm_{cc}", "limit": limit}
                                                                   for name, (cc, limit) in GPUS.items()},
              "triton": triton.__version__, "torch": torch.__version__, "machine": platform.machine(),
              "compile_seconds": round(time.perf_counter() - start, 1), "compile_seconds_note": CACHE_NOTE,
              "rows": rows, "gaps": gaps(rows), "spilling": spilling(rows),
              "hopper_defaults_that_spill": untuned_defaults_that_spill(rows, pre_hopper=False),
              "untuned_defaults_that_spill": untuned_defaults_that_spill(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("\n".join(report["gaps"]) or "every list has a tile that fits each GPU class")
    print(f"{len(report['spilling'])} tiles spill on sm_80, {len(report['hopper_defaults_that_spill'])} of them "
          f"Hopper's untuned defaults; pre-Hopper untuned defaults that do: "
          f"{'; '.join(report['untuned_defaults_that_spill']) or 'none'}")
    print(f"{len(rows)} tiles; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
