"""Benchmark the Triton FlashAttention kernels (``make bench``).

On a CUDA GPU: forward and forward + backward of ``attn_course.kernels.flash_attention`` (as users get
it, and forced to its pointer variant, so the gain of the TMA variants shows in the same run) against
each of PyTorch SDPA's backends on its own (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION,
EFFICIENT_ATTENTION, MATH) and a naive PyTorch attention, for T = 512 ... 16384 (longest first), D in 64
and 128, causal and not, float16 and bfloat16, timed with ``triton.testing.do_bench``. Prints TFLOP/s
(FLOPs from ``attn_course.cost.attention_flops``), the variant that ran and the kernel's speed ratio to
every other implementation (medians, with the 20th-80th percentile spread in the JSON), and the kernel's
TFLOP/s as a fraction of the device's ceiling measured in the same run (a dense matrix product; a copy's
bandwidth is recorded beside it); writes ``benchmarks/results/<device>.json`` (after every shape, so a run cut
short keeps what it measured) and ``<device>.png``, stamped with the device and the torch, triton and CUDA
versions.

Then one decoding step (one new query per sequence against a long key/value cache, GQA 32/8 heads as in
Llama-3-8B): ``flash_attention_kvcache`` with its keys split by its own rule (``num_splits=0``,
``kernels/flash_split.py``), unsplit (``num_splits=1``) and from the same cache cut into scattered pages of 16
positions (``block_table``, as vLLM lays a cache out) against SDPA's backends (``enable_gqa``) and the naive
version. Decoding is bound by memory bandwidth, so these rows give TB/s (bytes of the cache read per
second) and the fraction of the copy bandwidth measured in the same run. ``--decode-only`` times just these.

Then a packed (varlen) batch: eight causal sequences of ragged lengths, about 8k tokens, through
``flash_attention_varlen``, forward and forward + backward, as users get it (``triton``: on Hopper the TMA
forward and the pointer backward, ``kernels/_variants.py``) and forced to each variant (``triton-pointer``,
``triton-tma``), so whether TMA pays for packed batches is measured rather than assumed. SDPA has no
packed form to compare with.

On a CPU there is no honest speed comparison (the kernel runs in Triton's interpreter), so it measures
what a CPU can show: the peak memory of the naive attention, the tiled reference and the kernel as T
grows, each call in a fresh subprocess (``attn_course.memory``). Writes ``benchmarks/results/cpu.json``
and ``cpu.png``.

    python benchmarks/bench_attention.py            # the device this machine has
    python benchmarks/bench_attention.py --quick    # fewer shapes (a smoke run)
    python benchmarks/bench_attention.py --warm-workers 8 --budget-s 300   # a time-boxed GPU session
    python benchmarks/bench_attention.py --decode-only                    # the decoding rows alone
    python benchmarks/bench_attention.py --warm-only --warm-workers 8     # compile only (then time later)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch
import triton

from attn_course.cost import attention_flops
from attn_course.kernels._checks import head_dim_argument

RESULTS = Path(__file__).resolve().parent / "results"
TOKENS = 16384  # batch * T is kept at this, like flash-attn's benchmark
MODEL_DIM = 2048  # heads = MODEL_DIM // D


def stamp() -> dict:
    """Where and with what the numbers were taken."""
    gpu = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda if gpu else None,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# --------------------------------------------------------------------------------------------- GPU
def naive_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(D)) v with the whole [T, T] matrix, in the inputs' dtype (softmax in float32)."""
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, T)
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


def implementations():
    """name -> f(q, k, v, causal) for every contender; SDPA backends forced one at a time. ``triton`` is
    the kernel as users get it (``auto``: on Hopper the TMA variants); ``triton-pointer`` forces the
    pointer variant, so the TMA / warp-specialisation gain is measured in the same run."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from attn_course.kernels import flash_attention

    def sdpa_with(backend):
        def run(q, k, v, causal):
            with sdpa_kernel(backend):
                return sdpa(q, k, v, is_causal=causal)  # T_q == T_k: top-left and bottom-right agree
        return run

    kernel = lambda q, k, v, causal: flash_attention(q, k, v, causal=causal)  # noqa: E731
    impls = {"triton": kernel, "triton-pointer": kernel}  # the latter timed under VARIANT_OF's setting
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        impls[name] = sdpa_with(getattr(SDPBackend, name))
    impls["naive"] = naive_attention
    return impls


# contenders that are the kernel with a variant forced (for its forward and its backward alike)
VARIANT_OF = {"triton-pointer": "pointer", "triton-tma": "tma"}


def kernel_variant(name: str | None):
    """``ATTN_COURSE_KERNEL=name`` for the calls inside (``None``: as it is)."""
    from attn_course.kernels import _variants

    return _variants.settings(kernel=name)


QUANTILES = [0.5, 0.2, 0.8]  # do_bench returns its mean unless asked: the median, and the spread around it


def time_one(name, fn, q, k, v, causal, backward: bool):
    """``(median ms per call, (20th, 80th percentile ms))`` from do_bench, or ``(None, None)`` when the
    implementation cannot run this shape. A ratio between two contenders whose spreads overlap is noise."""
    try:
        if backward:
            qg, kg, vg = (x.detach().requires_grad_(True) for x in (q, k, v))
            out = fn(qg, kg, vg, causal)
            dout = torch.randn_like(out)

            def step():
                qg.grad = kg.grad = vg.grad = None
                fn(qg, kg, vg, causal).backward(dout)
        else:
            def step():
                fn(q, k, v, causal)
        step()
        median, low, high = triton.testing.do_bench(step, warmup=25, rep=100, quantiles=QUANTILES)
        return median, (low, high)
    except (RuntimeError, torch.OutOfMemoryError) as e:  # unsupported shape / backend, or out of memory
        print(f"    {name}: ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None, None


def measure_ceilings(device="cuda", n=8192, copy_bytes=1 << 32) -> dict:
    """The device's two ceilings, measured in this run (METHOD.md): a dense ``n x n x n`` matrix product per
    16-bit dtype on random data (TFLOP/s: attention's products cannot beat it) and a device-to-device copy
    (TB/s, counting bytes read and written). Each is the median of do_bench."""
    def median_ms(fn):
        return triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=QUANTILES)[0]

    ceilings = {"matmul_n": n, "matmul_tflops": {}, "copy_bytes": copy_bytes}
    for dtype in (torch.float16, torch.bfloat16):
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        ceilings["matmul_tflops"][str(dtype)[6:]] = 2 * n**3 / median_ms(lambda a=a, b=b: a @ b) * 1e-9
    src = torch.randn(copy_bytes // 4, device=device)  # float32
    dst = torch.empty_like(src)
    ceilings["copy_tbps"] = 2 * copy_bytes / median_ms(lambda: dst.copy_(src)) * 1e-9
    return ceilings


def format_ceilings(c: dict) -> str:
    mm = ", ".join(f"{d} {t:.0f}" for d, t in c["matmul_tflops"].items())
    return (f"ceilings measured in this run: {c['matmul_n']}^3 matrix product TFLOP/s {mm}; "
            f"copy {c['copy_tbps']:.2f} TB/s")


HEAD_DIMS = (64, 128)  # the goals' head dims; --head-dim adds others (256)


def gpu_shapes(quick: bool, head_dims=HEAD_DIMS):
    """(T, dtype, D, causal), longest sequences first: the goals are stated at T >= 4096, so a run cut
    short by its time budget still has them."""
    Ts = [16384, 4096, 512] if quick else [16384, 8192, 4096, 2048, 1024, 512]
    return [(T, dtype, D, causal) for T in Ts for dtype in (torch.float16, torch.bfloat16) for D in head_dims
            for causal in (False, True)]


def _warm_one(job):
    """Compile (into Triton's on-disk cache) every config the autotuner will try for one (dtype, D,
    variant): a small forward and backward with the benchmark's layout (same specialisation)."""
    dtype_name, D, variant = job
    from attn_course.kernels import flash_attention

    start = time.perf_counter()
    dtype = getattr(torch, dtype_name)
    if variant == "decode":  # the cache kernel, split by the rule (B = 1 on any big GPU), unsplit and paged
        impls = decode_implementations()
        q = torch.randn(1, DECODE_HEADS[0], 1, D, device="cuda", dtype=dtype)
        k, v = (torch.randn(1, DECODE_HEADS[1], 4096, D, device="cuda", dtype=dtype) for _ in range(2))
        for name in ("triton", "triton-nosplit", "triton-paged"):
            impls[name](q, k, v, False)
        torch.cuda.synchronize()
        return f"{dtype_name} D={D} decoding: {time.perf_counter() - start:.0f} s"
    if variant.startswith("packed "):  # a packed batch, as the packed rows run it, in one variant
        lengths = (300, 77)
        q, k, v = (torch.randn(sum(lengths), MODEL_DIM // D, D, device="cuda", dtype=dtype, requires_grad=True)
                   for _ in range(3))
        name = variant.removeprefix("packed ")
        with kernel_variant(VARIANT_OF.get(name)):
            packed_implementations()[name](lengths, "cuda")(q, k, v, True).sum().backward()
        torch.cuda.synchronize()
        return f"{dtype_name} D={D} {variant}: {time.perf_counter() - start:.0f} s"
    q, k, v = (torch.randn(1, MODEL_DIM // D, 512, D, device="cuda", dtype=dtype, requires_grad=True)
               for _ in range(3))
    with kernel_variant(variant):
        flash_attention(q, k, v, causal=True).sum().backward()
    torch.cuda.synchronize()
    return f"{dtype_name} D={D} {variant}: {time.perf_counter() - start:.0f} s"


def warm_compile(workers: int, head_dims=HEAD_DIMS) -> None:
    """Triton's autotuner compiles its configs one after another; with many CPU cores it pays to compile
    them first in parallel processes, whose cubins land in the shared on-disk cache."""
    import multiprocessing

    jobs = [(d, D, variant) for d in ("float16", "bfloat16") for D in head_dims for variant in ("auto", "pointer")]
    jobs += [(d, 128, "decode") for d in ("float16", "bfloat16")]
    jobs += [(d, 128, f"packed {name}") for d in ("float16", "bfloat16") for name in ("triton", "triton-tma")]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
        for line in pool.imap_unordered(_warm_one, jobs):
            print(f"  compiled {line}", flush=True)
    print(f"warm-up compile: {time.perf_counter() - start:.0f} s with {workers} processes", flush=True)


def run_gpu(shapes, budget_s: float | None, save, *, impls=None, device="cuda", tokens=TOKENS,
            model_dim=MODEL_DIM, ceilings=None) -> dict:
    """Time every contender on every shape of ``shapes`` (see :func:`gpu_shapes`); ``save(result)`` after
    each shape (a run killed or cut short by ``budget_s`` keeps what it measured). A shape has
    ``tokens // T`` sequences of ``model_dim // D`` heads. With ``ceilings`` (:func:`measure_ceilings`),
    each row also gives the kernel's TFLOP/s as a fraction of the matrix product's in its dtype."""
    from attn_course.kernels import _variants

    impls = implementations() if impls is None else impls
    start = time.perf_counter()
    result = {"kind": "gpu-speed", "complete": False, "rows": [], "skipped_for_time": []}
    if ceilings is not None:
        result["ceilings"] = ceilings
    for T, dtype, D, causal in shapes:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            result["skipped_for_time"].append({"T": T, "dtype": str(dtype)[6:], "D": D, "causal": causal})
            continue
        B, H = max(tokens // T, 1), model_dim // D
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype) for _ in range(3))
        for backward in (False, True):
            flops = attention_flops(B, H, T, T, D, causal=causal, backward=backward)
            row = {"dtype": str(dtype)[6:], "D": D, "causal": causal, "T": T, "B": B, "H": H,
                   "pass": "fwd+bwd" if backward else "fwd", "ms": {}, "spread_ms": {}, "tflops": {}}
            for name, fn in impls.items():
                with kernel_variant(VARIANT_OF.get(name)):
                    ms, spread = time_one(name, fn, q, k, v, causal, backward)
                row["ms"][name], row["spread_ms"][name] = ms, spread
                row["tflops"][name] = None if ms is None else flops / ms * 1e-9
                if name == "triton":  # which variant auto ran (the last launch for this dtype and head dim)
                    row["variant"] = variants_that_ran(q.device, dtype, D, backward)
            tri = row["ms"]["triton"]
            row["speedup_vs"] = speedups(row["ms"])
            if ceilings is not None and tri is not None:
                row["triton_of_matmul"] = row["tflops"]["triton"] / ceilings["matmul_tflops"][row["dtype"]]
            result["rows"].append(row)
            print(format_row(row), flush=True)
        del q, k, v
        result["variant_failures"] = {" ".join(map(str, k)): why for k, why in _variants.broken().items()}
        result["tuned_configs"] = _variants.tuned_configs()  # the tile shapes that won, per kernel and key
        shape_done(save, result, device)
    result["complete"] = not result["skipped_for_time"]
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    return result


DECODE_HEADS = (32, 8)  # query heads, key/value heads (Llama-3-8B's GQA)


def decode_shapes(quick: bool):
    """(B, H, H_kv, T_k, D, dtype) of one decoding step, longest caches first."""
    Ts = [65536, 4096] if quick else [65536, 16384, 4096]
    return [(B, *DECODE_HEADS, T_k, 128, dtype) for T_k in Ts for dtype in (torch.float16, torch.bfloat16)
            for B in (1, 16)]


DECODE_PAGE_SIZE = 16  # the paged contender's page: vLLM's default block of 16 positions


def paged_cache(k: torch.Tensor, v: torch.Tensor, page_size: int = DECODE_PAGE_SIZE, seed: int = 0):
    """The contiguous cache ``k, v [B, H_kv, T_k, D]`` cut into pages of ``page_size`` positions, as a paged
    cache holds it: ``(k_pool, v_pool, block_table, cache_seqlens)``, the pages scattered over the pool in a
    random order (as an allocator hands them out), the last page of each sequence zero-padded."""
    B, H_kv, T_k, D = k.shape
    per_seq = -(-T_k // page_size)
    order = torch.randperm(B * per_seq, generator=torch.Generator().manual_seed(seed)).to(k.device)

    def pool_of(x):
        x = torch.nn.functional.pad(x, (0, 0, 0, per_seq * page_size - T_k))  # (B, H_kv, per_seq * page, D)
        x = x.view(B, H_kv, per_seq, page_size, D).transpose(1, 2)  # (B, per_seq, H_kv, page, D)
        pool = torch.empty(B * per_seq, H_kv, page_size, D, dtype=x.dtype, device=x.device)
        pool[order] = x.reshape(B * per_seq, H_kv, page_size, D)  # sequence b's page i -> slot order[b, i]
        return pool

    table = order.view(B, per_seq).to(torch.int32)
    return pool_of(k), pool_of(v), table, torch.full((B,), T_k, dtype=torch.int32, device=k.device)


def decode_implementations():
    """name -> f(q, k, v, causal) for one decoding step: q ``[B, H, 1, D]`` against the whole cache
    ``[B, H_kv, T_k, D]``. ``triton`` splits the keys by its own rule, ``triton-nosplit`` never does;
    ``triton-paged`` reads the same cache cut into scattered pages (:func:`paged_cache`, made on its first
    call for a cache and reused, so that the timed calls do not include it), which prices the page lookups."""
    import weakref

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from attn_course.kernels import flash_attention_kvcache

    def kvcache(splits):
        return lambda q, k, v, causal: flash_attention_kvcache(q, k, v, causal=causal, num_splits=splits)

    made = {}  # the cache last paged (weak references, so a dropped cache is freed) and its pages

    def forget(of):  # the paged cache was dropped: drop its pages too (unless another cache's replaced them)
        if made.get("of") is of:
            made.clear()

    def paged(q, k, v, causal):
        if made.get("of") is None or made["of"][0]() is not k or made["of"][1]() is not v:
            made.clear()  # (first: drop the last cache's pages)
            made["pages"], made["of"] = paged_cache(k, v), (weakref.ref(k), weakref.ref(v))
            weakref.finalize(k, forget, made["of"])
        k_pool, v_pool, table, seqlens = made["pages"]
        return flash_attention_kvcache(q, k_pool, v_pool, seqlens, causal=causal, block_table=table)

    def sdpa_with(backend):
        def run(q, k, v, causal):  # (one query: no mask either way, as the kernel's bottom-right causal)
            with sdpa_kernel(backend):
                return sdpa(q, k, v, enable_gqa=True)
        return run

    def naive(q, k, v, causal):
        G = q.shape[1] // k.shape[1]  # (B, H_kv, T_k, D) -> (B, H, T_k, D): naive GQA copies the cache
        return naive_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), False)

    impls = {"triton": kvcache(0), "triton-nosplit": kvcache(1), "triton-paged": paged}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        impls[name] = sdpa_with(getattr(SDPBackend, name))
    impls["naive"] = naive
    return impls


def decode_splits(B: int, H: int, H_kv: int, T_k: int, device) -> int:
    """How many slices the kernel's rule gives one decoding step of this shape on ``device``."""
    from attn_course.kernels._runtime import kernel_module

    fwd = kernel_module("flash_fwd", torch.device(device))
    return fwd.planned_splits(0, B, H, H_kv, 1, T_k, torch.device(device))


def run_decode(shapes, budget_s: float | None, save, result: dict, *, impls=None, device="cuda") -> dict:
    """Time one decoding step of every contender on every shape of ``shapes`` (:func:`decode_shapes`),
    appending to ``result["decode_rows"]`` and calling ``save(result)`` after each shape. ``budget_s``
    counts from this call; shapes past it go to ``result["skipped_for_time"]``."""
    impls = decode_implementations() if impls is None else impls
    start = time.perf_counter()
    rows = result.setdefault("decode_rows", [])
    result.setdefault("skipped_for_time", [])
    copy_tbps = result.get("ceilings", {}).get("copy_tbps")
    for B, H, H_kv, T_k, D, dtype in shapes:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            result["skipped_for_time"].append({"decode": True, "B": B, "T_k": T_k, "dtype": str(dtype)[6:]})
            continue
        q = torch.randn(B, H, 1, D, device=device, dtype=dtype)
        k, v = (torch.randn(B, H_kv, T_k, D, device=device, dtype=dtype) for _ in range(2))
        moved = (2 * k.numel() + 2 * q.numel()) * k.element_size()  # the cache read once, q read, out written
        row = {"pass": "decode", "dtype": str(dtype)[6:], "D": D, "B": B, "H": H, "H_kv": H_kv, "T_k": T_k,
               "splits": decode_splits(B, H, H_kv, T_k, device), "bytes": moved, "ms": {}, "spread_ms": {}, "tbps": {}}
        for name, fn in impls.items():
            ms, spread = time_one(name, fn, q, k, v, False, False)
            row["ms"][name], row["spread_ms"][name] = ms, spread
            row["tbps"][name] = None if ms is None else moved / ms * 1e-9
        tri = row["ms"]["triton"]
        row["speedup_vs"] = speedups(row["ms"])
        if copy_tbps and tri is not None:
            row["triton_of_copy"] = row["tbps"]["triton"] / copy_tbps
        rows.append(row)
        print(format_decode_row(row), flush=True)
        del q, k, v
        shape_done(save, result, device)
    return result


PACKED_LENGTHS = (3000, 1900, 1300, 800, 513, 250, 100, 57)  # 7920 tokens; every sequence ends mid-tile


def packed_shapes(quick: bool):
    """(lengths, H, D, dtype) of one packed causal batch (:data:`PACKED_LENGTHS`), ``MODEL_DIM // D`` heads."""
    return [(PACKED_LENGTHS, MODEL_DIM // D, D, dtype) for D in ((128,) if quick else (128, 64))
            for dtype in (torch.float16, torch.bfloat16)]


def packed_implementations():
    """name -> f(q, k, v, causal) for one packed batch (``q, k, v`` ``[total_T, H, D]``, the batch's
    ``cu_seqlens`` and longest length bound in): the kernel as users get it, and forced to each variant
    (timed under :data:`VARIANT_OF`'s setting)."""
    from attn_course.kernels import flash_attention_varlen

    def kernel(lengths, device):
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
        longest = max(lengths)
        return lambda q, k, v, causal: flash_attention_varlen(q, k, v, cu, cu, longest, longest, causal=causal)

    return {name: kernel for name in ("triton", "triton-pointer", "triton-tma")}


def run_packed(shapes, budget_s: float | None, save, result: dict, *, impls=None, device="cuda") -> dict:
    """Time forward and forward + backward of every contender on every packed batch of ``shapes``
    (:func:`packed_shapes`), appending to ``result["packed_rows"]`` and calling ``save(result)`` after each
    shape; shapes past ``budget_s`` (from this call) go to ``result["skipped_for_time"]``."""
    impls = packed_implementations() if impls is None else impls
    start = time.perf_counter()
    rows = result.setdefault("packed_rows", [])
    result.setdefault("skipped_for_time", [])
    for lengths, H, D, dtype in shapes:
        if budget_s is not None and time.perf_counter() - start > budget_s:
            result["skipped_for_time"].append({"packed": list(lengths), "D": D, "dtype": str(dtype)[6:]})
            continue
        q, k, v = (torch.randn(sum(lengths), H, D, device=device, dtype=dtype) for _ in range(3))  # (total_T, H, D)
        for backward in (False, True):
            flops = sum(attention_flops(1, H, T, T, D, causal=True, backward=backward) for T in lengths)
            row = {"pass": "packed " + ("fwd+bwd" if backward else "fwd"), "dtype": str(dtype)[6:], "D": D, "H": H,
                   "lengths": list(lengths), "ms": {}, "spread_ms": {}, "tflops": {}}
            for name, make in impls.items():
                with kernel_variant(VARIANT_OF.get(name)):
                    ms, spread = time_one(name, make(lengths, device), q, k, v, True, backward)
                row["ms"][name], row["spread_ms"][name] = ms, spread
                row["tflops"][name] = None if ms is None else flops / ms * 1e-9
                if name == "triton":
                    row["variant"] = variants_that_ran(q.device, dtype, D, backward)
            row["speedup_vs"] = speedups(row["ms"])
            rows.append(row)
            print(format_packed_row(row), flush=True)
        del q, k, v
        shape_done(save, result, device)
    return result


def format_packed_row(row) -> str:
    tf, sp = rates_and_ratios(row, "tflops")
    ran = "/".join(str(v) for v in row.get("variant", {}).values())
    return (f"{row['pass']:14s} {row['dtype']:8s} D={row['D']} {len(row['lengths'])} seqs, "
            f"{sum(row['lengths'])} tokens TFLOP/s {tf} | triton ({ran}) speed-up vs {sp}")


def format_decode_row(row) -> str:
    bw, sp = rates_and_ratios(row, "tbps", "5.2f")
    of = f", {row['triton_of_copy']:.0%} of copy" if "triton_of_copy" in row else ""
    return (f"decode {row['dtype']:8s} D={row['D']} B={row['B']:2d} H={row['H']}/{row['H_kv']} T_k={row['T_k']:5d} "
            f"TB/s {bw} | triton ({row['splits']} slices{of}) speed-up vs {sp}")


def variants_that_ran(device, dtype, D: int, backward: bool) -> dict:
    """Which variant ``auto`` ran for the forward (and the backward) just timed: the last launch for this
    device, dtype and head dim."""
    from attn_course.kernels import _variants

    parts = ("forward", "backward") if backward else ("forward",)
    return {part: _variants.used((str(device), dtype, D, part)) for part in parts}


def shape_done(save, result: dict, device) -> None:
    """After each shape (whose tensors the caller has dropped): hand their memory back, save the results."""
    if device == "cuda":
        torch.cuda.empty_cache()
    save(result)


def rates_and_ratios(row, key: str, fmt: str = "6.1f") -> tuple[str, str]:
    """A row's per-contender rates (``row[key]``, formatted with ``fmt``) and the kernel's speed-ups, as printed."""
    rates = "  ".join(f"{n}={'-' if t is None else format(t, fmt)}" for n, t in row[key].items())
    ratios = " ".join(f"{n}:{'-' if r is None else f'{r:.2f}x'}" for n, r in row["speedup_vs"].items())
    return rates, ratios


def speedups(ms: dict) -> dict:
    """The kernel's speed ratio to every other contender: their time over ``triton``'s (``None`` where
    either could not run)."""
    tri = ms["triton"]
    return {n: (None if m is None or tri is None else m / tri) for n, m in ms.items() if n != "triton"}


def format_row(row) -> str:
    tf, sp = rates_and_ratios(row, "tflops")
    ran = ",".join(f"{v}" for v in row.get("variant", {}).values())
    of = f", {row['triton_of_matmul']:.0%} of matmul" if "triton_of_matmul" in row else ""
    return (f"{row['dtype']:8s} D={row['D']:3d} causal={row['causal']!s:5s} T={row['T']:5d} {row['pass']:7s} "
            f"TFLOP/s {tf} | triton ({ran}{of}) speed-up vs {sp}")


def plot_gpu(result: dict, path: Path, st: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["D"], r["causal"], r["pass"]) for r in result["rows"]})
    decode = sorted({(r["dtype"], r["B"]) for r in result.get("decode_rows", [])})
    packed = sorted({r["pass"] for r in result.get("packed_rows", [])}, key=len)  # fwd, then fwd+bwd
    cols, n = 4, len(panels) + len(decode) + len(packed)
    fig, axes = plt.subplots(max((n + cols - 1) // cols, 1), cols, figsize=(4 * cols, 3 * n / cols + 1),
                             squeeze=False)
    for ax, key in zip(list(axes.flat)[len(panels):], decode, strict=False):
        plot_decode_panel(ax, [r for r in result["decode_rows"] if (r["dtype"], r["B"]) == key], result)
    for ax, key in zip(list(axes.flat)[len(panels) + len(decode):], packed, strict=False):
        plot_packed_panel(ax, [r for r in result["packed_rows"] if r["pass"] == key])
    for ax, key in zip(axes.flat, panels, strict=False):
        rows = [r for r in result["rows"] if (r["dtype"], r["D"], r["causal"], r["pass"]) == key]
        plot_contenders(ax, rows, "T", "tflops")
        if "ceilings" in result:
            ax.axhline(result["ceilings"]["matmul_tflops"][key[0]], ls="--", c="grey", lw=1,
                       label="matrix product (measured)")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{key[0]} D={key[1]} {'causal' if key[2] else 'full'} {key[3]}", fontsize=9)
        ax.set_xlabel("T")
        ax.set_ylabel("TFLOP/s")
    for ax in axes.flat[:1] if panels else ():
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{st['device']} | torch {st['torch']} | triton {st['triton']} | CUDA {st['cuda']} | {st['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_contenders(ax, rows, x: str, metric: str) -> None:
    """One line per contender: ``row[metric][name]`` against ``row[x]`` (missing points left out), the
    kernel drawn thicker."""
    for name in rows[0][metric]:
        pts = [(r[x], r[metric][name]) for r in rows if r[metric][name] is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name, lw=2.5 if name == "triton" else 1)


def plot_packed_panel(ax, rows) -> None:
    """TFLOP/s of each contender, bars grouped by (dtype, head dim), for one pass of the packed-batch rows."""
    names = list(rows[0]["tflops"])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        bars = [(j + i * width, r["tflops"][name]) for j, r in enumerate(rows) if r["tflops"][name] is not None]
        if bars:
            ax.bar(*zip(*bars, strict=True), width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [f"{r['dtype']} D={r['D']}" for r in rows],
                  fontsize=7)
    ax.set_title(f"{rows[0]['pass']}: {len(rows[0]['lengths'])} causal sequences, "
                 f"{sum(rows[0]['lengths'])} tokens", fontsize=9)
    ax.set_ylabel("TFLOP/s")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.4)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=3, loc="upper center")


def plot_decode_panel(ax, rows, result) -> None:
    """TB/s of each contender against the cache length, for one (dtype, batch) of the decoding rows."""
    plot_contenders(ax, rows, "T_k", "tbps")
    if "ceilings" in result:
        ax.axhline(result["ceilings"]["copy_tbps"], ls="--", c="grey", lw=1, label="copy (measured)")
    ax.set_xscale("log", base=2)
    r = rows[0]
    ax.set_title(f"decode {r['dtype']} D={r['D']} B={r['B']} H={r['H']}/{r['H_kv']}", fontsize=9)
    ax.set_xlabel("cached keys T_k")
    ax.set_ylabel("TB/s")
    ax.legend(fontsize=7)


# --------------------------------------------------------------------------------------------- CPU
def run_cpu(quick: bool, max_kernel_T: int) -> dict:
    from attn_course.memory import peak_memory

    Ts = [256, 1024, 4096] if quick else [256, 512, 1024, 2048, 4096, 8192]
    rows = []
    for T in Ts:
        for impl in ("naive", "tiled", "kernel"):
            if impl == "kernel" and T > max_kernel_T:
                continue  # the interpreter's time grows as T^2; its memory does not
            r = peak_memory(impl, T, d=64, dtype="float32", causal=True, block=128)
            rows.append(r)
            print(f"T={T:5d} {impl:6s} peak extra memory {r['peak_extra_bytes'] / 2**20:8.2f} MiB "
                  f"(output itself {r['output_bytes'] / 2**20:.2f} MiB; the [T, T] scores would be "
                  f"{T * T * 4 / 2**20:.1f} MiB)", flush=True)
    return {"kind": "cpu-memory", "note": "peak resident memory above the pre-call level, one head, "
            "[1, 1, T, 64] float32, causal; each call in a fresh subprocess (attn_course.memory)", "rows": rows}


def plot_cpu(result: dict, path: Path, st: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for impl, label in (("naive", "naive (materialises [T, T])"), ("tiled", "tiled reference (PyTorch)"),
                        ("kernel", "Triton kernel (interpreted)")):
        # a zero rise (below the page-granular resolution of VmHWM) cannot go on a log axis: left out
        pts = [(r["T"], r["peak_extra_bytes"] / 2**20) for r in result["rows"]
               if r["impl"] == impl and r["peak_extra_bytes"] > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    Ts = sorted({r["T"] for r in result["rows"]})
    ax.plot(Ts, [T * T * 4 / 2**20 for T in Ts], ls="--", c="grey", label="one [T, T] float32 matrix")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.set_title(f"{st['device']} | torch {st['torch']} | triton {st['triton']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.add_argument("--replot", action="store_true", help="redraw the plot from this device's saved JSON")
    p.add_argument("--max-kernel-T", type=int, default=4096,
                   help="CPU only: longest T for the interpreted kernel (its run time grows as T^2)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="GPU only: start no new shape after this many seconds (the JSON lists what was skipped)")
    p.add_argument("--warm-workers", type=int, default=0,
                   help="GPU only: compile the autotuner's configs first in this many parallel processes")
    p.add_argument("--head-dim", type=head_dim_argument, action="append", metavar="D",
                   help=f"GPU only: head dims to time, 1 to 256 (repeatable; default "
                        f"{', '.join(map(str, HEAD_DIMS))}; 80 or 96 time the padded tiles)")
    p.add_argument("--decode-only", action="store_true", help="GPU only: time only the decoding-step rows")
    p.add_argument("--warm-only", action="store_true",
                   help="GPU only: compile the autotuner's configs (with --warm-workers processes) and stop; a "
                        "later run finds them in Triton's cache (gpu_session.sh does this beside the GPU tests)")
    p.add_argument("--results", type=Path, default=RESULTS, help="where to write <device>.json and .png")
    args = p.parse_args(argv)
    args.results.mkdir(parents=True, exist_ok=True)
    st = stamp()
    print(f"benchmarking on {st['device']} (torch {st['torch']}, triton {st['triton']}, CUDA {st['cuda']})")
    gpu = torch.cuda.is_available()
    if args.warm_only and not gpu:
        print("--warm-only compiles the kernels for a CUDA GPU, and this machine has none: nothing to do")
        return 2
    name = device_slug(st["device"]) if gpu else "cpu"
    out = args.results / f"{name}.json"
    if args.replot:
        result = json.loads(out.read_text())
        (plot_gpu if gpu else plot_cpu)(result, out.with_suffix(".png"), result["stamp"])
        print(f"redrew {out.with_suffix('.png')}")
        return 0

    def save(result):
        out.write_text(json.dumps({"stamp": st, **result}, indent=1))

    if gpu:
        head_dims = tuple(args.head_dim or HEAD_DIMS)
        if args.warm_only:
            warm_compile(max(args.warm_workers, 1), head_dims)
            return 0
        if args.warm_workers > 1:
            warm_compile(args.warm_workers, head_dims)
        ceilings = measure_ceilings()
        print(format_ceilings(ceilings), flush=True)
        started = time.perf_counter()
        shapes = [] if args.decode_only else gpu_shapes(args.quick, head_dims)
        result = run_gpu(shapes, args.budget_s, save, ceilings=ceilings)
        left = None if args.budget_s is None else max(args.budget_s - (time.perf_counter() - started), 0.0)
        result = run_decode(decode_shapes(args.quick), left, save, result)
        if not args.decode_only:
            left = None if args.budget_s is None else max(args.budget_s - (time.perf_counter() - started), 0.0)
            result = run_packed(packed_shapes(args.quick), left, save, result)
        result["complete"] = not result["skipped_for_time"]
        plot = plot_gpu
    else:
        result, plot = run_cpu(args.quick, args.max_kernel_T), plot_cpu
    save(result)
    plot({"stamp": st, **result}, out.with_suffix(".png"), st)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    if gpu:  # the verdict on the speed goals, last (benchmarks/goals.py)
        print(load_goals().summary({"stamp": st, **result}))
    return 0


def load_goals():
    """``benchmarks/goals.py`` (beside this file), which judges a run against the speed goals."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("goals", Path(__file__).resolve().parent / "goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)
    return goals


if __name__ == "__main__":
    sys.exit(main())
