"""What every tile shape the autotuner may try costs on Hopper, measured without a GPU.

Each config of each kernel (forward: ``pointer``, ``tma``, ``tma+ws``; the forward's 16-row decoding tiles,
``decode``, for one query against a 4096-key cache split in 4 slices: ``pointer``, ``tma``; the same on a
paged cache of 16-row pages, ``decode paged``, a prompt's 256-query chunk against one, ``forward paged``, and a
packed batch against one, ``forward varlen paged``: ``pointer``, the only variant they run, each tile with the
stages a paged launch compiles it with, ``flash_paged.deeper``; backward dK/dV
and dQ: ``pointer``, ``tma``; and the forward, dK/dV and dQ of a packed (varlen) batch, ``forward varlen``
etc.: ``pointer``, ``tma``, at D = 16 and 32 (16- and 32-wide tiles), 40, 80 and 160 (padded head dims: 64-,
128- and 256-wide tiles, 24, 48 and 96 columns masked), 64 and 128 and, for the forward, 256 (and 160); and with
attention dropout, ``forward dropout`` etc., logit soft-capping, ``forward softcap`` etc., or ALiBi, ``forward
alibi`` etc., and with each pair of them and all three, ``forward dropout+softcap`` etc., through TMA at all eight
head dims, the backward at 160 and 256 through pointers, as ``auto`` runs it there; and float32's own tile
lists, dtype ``float32``: forward, decode, dK/dV and dQ through pointers at all eight head dims and through TMA
at 64 and 128, and through pointers with each feature, pair and all three, packed and paged) is compiled for sm_90
(``attn_course.kernels._compile``) and read back with ``cuobjdump``: registers per thread, bytes of spill
stack, shared memory, warps, and counts of Hopper's tensor-core (HGMMA) and TMA (UTMALDG) instructions. A
config that spills, or whose tile is too small for wgmma (HMMA only; not flagged for the decoding tiles,
narrow by design, nor for float32, which has no tensor-core products), is flagged: on a GPU it would only cost
autotuning time. No speed is measured here.

    python benchmarks/kernel_resources.py                 # fp16 and fp32, D = 16, 32, 40, 64, 80, 128, 160, 256
    python benchmarks/kernel_resources.py --dtype float32 --out /tmp/f32.json   # float32's lists alone
    python benchmarks/kernel_resources.py --workers 16    # compile in parallel (default: all cores)
    python benchmarks/kernel_resources.py --head-dim 48 --out /tmp/d48.json   # a one-off probe, any D 1..256

Writes ``benchmarks/results/kernel_resources_sm90.json``. Registers depend on the ``ptxas`` the triton wheel
ships, so the report is kept twice: this machine's triton 3.9 (that file) and the GPU machines' triton 3.6
(``kernel_resources_sm90_triton3.6.json``, from a small venv with triton 3.6 beside the CPU torch).
``make survey`` writes both. The tile lists offer the autotuner no config that spills under either.

Read small differences as noise. ``ptxas`` allocates from the PTX *with its debug line labels*, so moving
kernel source lines, with the compiled code otherwise the same op for op, has moved a decoding tile from
96 to 78 registers and a packed dK/dV tile's spill from 296 to 320 bytes (triton 3.6; seen when the
bfloat16 rounding for the interpreter went in, ``_tiles.narrow``, and again by toggling
``TRITON_DISABLE_LINE_INFO``). A tile a few bytes from spilling may tip over on an unrelated edit; rerun
``make survey`` after editing a kernel file, and the tests say whether an offered tile now spills.

Triton 3.6's ``ptxas`` (12.8.93, the GPU machines') also varies from run to run on the *same* PTX: its allocation
follows the process's address layout. One 16-bit TMA dK/dV tile at D = 80 (64 x 64, 8 warps, 3 stages) spilled 184 B
in seven of twelve runs and 208 B in five, and 184 B in all twelve with address randomisation off (``setarch -R``).
A rerun of the 3.6 report, two thirds of it compiled cold, changed 34 of its 3095 rows this way, every one a 16-bit
TMA dK/dV tile, by 8 to 32 B of spill or 2 to 6 registers, and moved no tile between clean and spilling; the 302
clean 16-bit forward, dQ and dK/dV rows at 240 registers or more each stayed clean in four more runs. (The 296 to
320 B above may have been this rather than the moved lines.) Triton 3.9's ``ptxas`` (13.4) gave the same result
every time it was tried on those tiles, and a rerun of its report, the last 966 configs compiled cold, equalled the
committed one. A warm rerun loads the cubins from Triton's cache, so it shows neither: it checks the tile lists and
the parsing, not ``ptxas``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import torch
import triton

from attn_course.kernels._checks import head_dim_argument

RESULTS = Path(__file__).resolve().parent / "results"
# surveyed by default, 16-bit and float32 (the kernels' tests of the report expect all eight); 16 and 32: narrow
# tiles (float32's 32-wide lists serve both: _variants.float32_width); 40, 80 and 160 are padded head dims: tiles
# 64, 128 and 256 columns wide whose last 24, 48 and 96 are masked on every pointer load and store
# (_tiles.head_dim_tile), offered the configs of their tile's width (the kernels key their lists by it) less their
# own PADDED spill lists, which the survey is the evidence for
HEAD_DIMS = (16, 32, 40, 64, 80, 128, 160, 256)
# (auto runs a packed batch's backward on pointers, flash_bwd.tma_pays; both variants surveyed at these)
VARLEN_BACKWARD_HEAD_DIMS = (16, 32, 40, 64, 80, 128)
# dropout, softcap, ALiBi: the tiles auto runs on Hopper (the forward through TMA, warp-specialised too; the backward
# through TMA, or in 256-wide tiles through pointers: flash_bwd.tma_pays), at every head dim surveyed by default (a
# one-off probe, --head-dim 48, compiles 16-bit inputs' plain, packed and paged parts only)
SINGLE_FEATURES = {"dropout": dict(dropout_p=0.1), "softcap": dict(softcap=30.0), "alibi": dict(alibi=True)}
FEATURES = {**SINGLE_FEATURES,  # each alone, each pair ("dropout+softcap": both on) and all three, at those dims
            **{"+".join(names): {k: v for name in names for k, v in SINGLE_FEATURES[name].items()}
               for names in (("dropout", "softcap"), ("dropout", "alibi"), ("softcap", "alibi"),
                             ("dropout", "softcap", "alibi"))}}


def jobs(dtypes=("float16", "float32"), head_dims=None):
    """(part, variant, dtype, D, tile, warp_spec) for every config the autotuner may try: ``float16`` stands for
    both 16-bit types (one tile list), ``float32`` has lists of its own (:func:`float32_jobs`). ``head_dims``:
    :data:`HEAD_DIMS` unless given."""
    from attn_course.kernels._compile import CUDA
    from attn_course.kernels._runtime import kernel_module
    from attn_course.kernels._tiles import head_dim_tile

    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    out = float32_jobs(head_dims or HEAD_DIMS) if "float32" in dtypes else []
    for dtype in (d for d in dtypes if d != "float32"):
        for D in head_dims or HEAD_DIMS:
            out += plain_jobs(fwd, bwd, dtype, D)
            out += [("decode paged", "pointer", dtype, D, tuple(t), False) for t in fwd.decode_tiles(D)]
            out += [(f"forward {paged}", "pointer", dtype, D, tuple(t), False)
                    for paged in ("paged", "varlen paged") for t in fwd.candidate_tiles(D, False)]
            for variant in ("pointer", "tma"):  # a packed batch (the same tiles; its own loads and loops)
                out += [("forward varlen", variant, dtype, D, tuple(t), False) for t in fwd.candidate_tiles(D, False)]
                for part in ("dkdv", "dq"):
                    out += [(f"{part} varlen", variant, dtype, D, tuple(t), False) for t in bwd.candidate_tiles(part, D)
                            if D in VARLEN_BACKWARD_HEAD_DIMS]
            for feature in FEATURES if D in HEAD_DIMS else ():  # a Philox number, a tanh, a bias per score
                out += [(f"forward {feature}", "tma", dtype, D, tuple(t), False) for t in fwd.candidate_tiles(D, False)]
                out += [(f"forward {feature}", "tma+ws", dtype, D, tuple(t), True)
                        for t in fwd.candidate_tiles(D, True)]
                backward = "tma" if bwd.tma_pays(head_dim_tile(D), False, torch.float16) else "pointer"
                for part in ("dkdv", "dq"):
                    out += [(f"{part} {feature}", backward, dtype, D, tuple(t), False)
                            for t in bwd.candidate_tiles(part, D)]
    return out


def plain_jobs(fwd, bwd, dtype: str, D: int) -> list[tuple]:
    """The plain parts of a 16-bit survey at head dim ``D``: the forward through pointers, TMA and warp-specialised
    TMA, a decoding step and both backward kernels through pointers and TMA."""
    out = []
    for variant in ("pointer", "tma"):
        out += [("forward", variant, dtype, D, tuple(t), False) for t in fwd.candidate_tiles(D, False)]
        out += [("decode", variant, dtype, D, tuple(t), False) for t in fwd.decode_tiles(D)]
        out += [(part, variant, dtype, D, tuple(t), False) for part in ("dkdv", "dq")
                for t in bwd.candidate_tiles(part, D)]
    return out + [("forward", "tma+ws", dtype, D, tuple(t), True) for t in fwd.candidate_tiles(D, True)]


# float32's TMA tiles (evidence for flash_fwd/flash_bwd.tma_pays, which keep float32 on pointers), surveyed at these
# widths; in 256-wide tiles each spills kilobytes too, and takes ptxas up to a minute (probed once, not surveyed)
FLOAT32_TMA_HEAD_DIMS = (64, 128)


# float32's parts beyond the plain ones, through pointers: every feature alone, each pair and all three, and packed
# batches; paged caches beside them (float32's pruning skips the tiles that spill there, flash_fwd and
# flash_bwd.FLOAT32_SPILLS, and its defaults avoid them: tests/test_kernels_compile.py)
FLOAT32_EXTRA_PARTS = (*FEATURES, "varlen")


def float32_jobs(head_dims) -> list[tuple]:
    """float32's own tiles (``flash_fwd.FLOAT32_TILES`` and ``FLOAT32_DECODE_TILES``, ``flash_bwd.FLOAT32_TILES``):
    the forward, a decoding step and both backward kernels, through pointers (what ``auto`` runs for float32) at
    every head dim surveyed, and through TMA at :data:`FLOAT32_TMA_HEAD_DIMS`; then through pointers with each
    feature, pair and all three, and for packed batches (:data:`FLOAT32_EXTRA_PARTS`), and on a paged cache
    (``forward paged``, ``forward varlen paged``, ``decode paged``)."""
    plain = ("forward", "decode", "dkdv", "dq")
    extra = [f"{kernel} {suffix}" for suffix in FLOAT32_EXTRA_PARTS for kernel in ("forward", "dkdv", "dq")]
    extra += ["forward paged", "forward varlen paged", "decode paged"]
    out = []
    for D in head_dims:
        for variant in ("pointer", "tma") if D in FLOAT32_TMA_HEAD_DIMS else ("pointer",):
            out += [(part, variant, "float32", D, tuple(t), False) for part in plain for t in tile_list(part, D, True)]
        out += [(part, "pointer", "float32", D, tuple(t), False) for part in extra for t in tile_list(part, D, True)]
    return out


def tile_list(part: str, D: int, float32: bool = False) -> list:
    """The tile list a survey part's kernel (its first word: forward, decode, dkdv, dq) has at head dim ``D``, for
    16-bit inputs (not warp-specialised) or, ``float32``, float32's own."""
    from attn_course.kernels._compile import CUDA
    from attn_course.kernels._runtime import kernel_module

    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    kernel = part.split(" ")[0]
    if kernel == "forward":
        return fwd.candidate_tiles(D, False, float32)
    return fwd.decode_tiles(D, float32) if kernel == "decode" else bwd.candidate_tiles(kernel, D, float32)


CACHE_NOTE = ("this run's wall time with Triton's on-disk cache as this machine had it: configs compiled by an "
              "earlier run load from the cache instead, so a cold run takes longer (make survey: about 145 minutes "
              "for both tritons on 2 cores)")


def launch_of(part: str, variant: str, dtype, D: int, tile, ws: bool):
    """``(fn, args, kwargs)``: the launch of survey part ``part`` (``forward``, ``decode``, ``dkdv``, ``dq``, with a
    suffix: a feature of :data:`FEATURES`, ``varlen``, ``paged`` or ``varlen paged``) in ``tile``, recorded on the
    CPU (``attn_course.kernels._compile``) to be compiled for any target."""
    from attn_course.kernels import _variants
    from attn_course.kernels._compile import backward_launches, decoding_launches, forward_launches

    part, _, suffix = part.partition(" ")
    varlen, extra = suffix.startswith("varlen"), FEATURES.get(suffix, {})
    page_size = 16 if suffix.endswith("paged") else None
    if part == "forward":  # (paged, not packed: a prompt's chunk against a paged cache of per-sequence lengths)
        used = torch.tensor([256, 200], dtype=torch.int32) if page_size and not varlen else None
        (launch,) = forward_launches(variant, dtype, D, config=_variants.config(*tile, WARP_SPEC=ws), varlen=varlen,
                                     page_size=page_size, seqused_k=used, **extra)
        return launch
    if part == "decode":
        launch, _ = decoding_launches(variant, dtype, D, page_size=page_size,
                                      config=_variants.config(*tile, WARP_SPEC=False))
        return launch
    launches = backward_launches(variant, dtype, D, config=_variants.config(*tile), varlen=varlen, **extra)
    (launch,) = [c for c in launches if c[0].__name__ == f"_bwd_{part}"]
    return launch


def measure(job) -> dict:
    part, variant, dtype_name, D, tile, ws = job
    from attn_course.kernels._compile import compile_launch, resources

    row = {"part": part, "variant": variant, "dtype": dtype_name, "D": D, "tile": list(tile)}
    try:
        fn, args, kwargs = launch_of(part, variant, getattr(torch, dtype_name), D, tile, ws)
        row.update(resources(compile_launch(fn, args, kwargs)))
    except Exception as e:  # a config that does not compile is a finding, not a crash of the report
        row["error"] = error_text(e)
    return row


def progress(results, total: int, what: str, *, every_s: float = 60.0, clock=time.monotonic, out=None):
    """``results`` (a pool's ``imap``) passed through in order, with a line on ``out`` (stderr) at most every
    ``every_s`` seconds and after the last: how many of ``total`` are done, the minutes so far and, at the pace so
    far, the minutes left (the last line: the total). A survey from a cold Triton cache runs for hours and writes its
    report only at the end; rerun after an interruption, the configs already compiled load from the cache (a second
    or so each, for the disassembly that counts their instructions)."""
    start = last = clock()
    for done, result in enumerate(results, 1):
        now = clock()
        if now - last >= every_s or done == total:
            last, elapsed = now, now - start
            left = "" if done == total else f"; at this pace about {elapsed / done * (total - done) / 60:.0f} min left"
            print(f"{what}: {done}/{total} compiled in {elapsed / 60:.1f} min{left}", file=out or sys.stderr,
                  flush=True)
        yield result


def error_text(e: Exception) -> str:
    """A compile error in one line, for a report's row."""
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def flags(row) -> list[str]:
    if "error" in row:
        return ["does not compile"]
    found = []
    if row["spill_stack_bytes"]:
        found.append(f"spills {row['spill_stack_bytes']} B")
    # (16 rows: mma.sync by design; float32: IEEE products on the CUDA cores, no tensor cores by design)
    if row["HGMMA"] == 0 and not (row["part"].startswith("decode") and row["HMMA"]) and row["dtype"] != "float32":
        found.append("no wgmma" + (" (HMMA)" if row["HMMA"] else ""))
    from attn_course.kernels._compile import HOPPER_SHARED_MEMORY

    if row["shared_bytes"] > HOPPER_SHARED_MEMORY:
        found.append(f"shared memory over {HOPPER_SHARED_MEMORY // 1024} KiB")
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--dtype", action="append", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--head-dim", type=head_dim_argument, action="append", metavar="D")
    p.add_argument("--out", type=Path, default=RESULTS / "kernel_resources_sm90.json")
    args = p.parse_args(argv)
    todo = jobs(tuple(args.dtype or ["float16", "float32"]), tuple(args.head_dim) if args.head_dim else None)
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(max(1, args.workers)) as pool:
        rows = list(progress(pool.imap(measure, todo), len(todo), "sm_90 configs"))
    rows.sort(key=lambda r: (r["dtype"], r["D"], r["part"], r["variant"], r["tile"]))
    for r in rows:
        tile = "x".join(map(str, r["tile"][:2])) + f" w{r['tile'][2]} s{r['tile'][3]}"
        usage = "" if "error" in r else (f"{r['registers']:3d} regs  {r['shared_bytes'] // 1024:3d} KiB smem  "
                                         f"{r['warps']:2d} warps  HGMMA {r['HGMMA']:3d}  UTMALDG {r['UTMALDG']:2d}")
        print(f"{r['dtype']:8s} D={r['D']:3d} {r['part']:14s} {r['variant']:7s} {tile:16s} {usage}  "
              f"{'; '.join(flags(r))}")
    import platform

    report = {"target": "sm_90 (compiled on the CPU, no GPU involved)", "triton": triton.__version__,
              "torch": torch.__version__, "machine": platform.machine(),
              "compile_seconds": round(time.perf_counter() - start, 1), "compile_seconds_note": CACHE_NOTE,
              "rows": rows,
              "flagged": [dict(r, flags=flags(r)) for r in rows if flags(r)]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(rows)} configs, {len(report['flagged'])} flagged; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
