"""Benchmark the Triton FlashAttention kernels (``make bench``).

On a CUDA GPU: forward and forward + backward of ``attn_course.kernels.flash_attention`` against each of
PyTorch SDPA's backends on its own (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION,
EFFICIENT_ATTENTION, MATH) and a naive PyTorch attention, for T = 512 ... 16384, D in 64 and 128, causal
and not, float16 and bfloat16, timed with ``triton.testing.do_bench``. Prints TFLOP/s (FLOPs from
``attn_course.cost.attention_flops``) and the kernel's speed ratio to every other implementation; writes
``benchmarks/results/<device>.json`` and ``<device>.png``, stamped with the device and the torch, triton and
CUDA versions.

On a CPU there is no honest speed comparison (the kernel runs in Triton's interpreter), so it measures
what a CPU can show: the peak memory of the naive attention, the tiled reference and the kernel as T
grows, each call in a fresh subprocess (``attn_course.memory``). Writes ``benchmarks/results/cpu.json``
and ``cpu.png``.

    python benchmarks/bench_attention.py            # the device this machine has
    python benchmarks/bench_attention.py --quick    # fewer shapes (a smoke run)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import sys
from pathlib import Path

import torch
import triton

from attn_course.cost import attention_flops

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
    """name -> f(q, k, v, causal) for every contender; SDPA backends forced one at a time."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    from attn_course.kernels import flash_attention

    def sdpa_with(backend):
        def run(q, k, v, causal):
            with sdpa_kernel(backend):
                return sdpa(q, k, v, is_causal=causal)  # T_q == T_k: top-left and bottom-right agree
        return run

    impls = {"triton": lambda q, k, v, causal: flash_attention(q, k, v, causal=causal)}
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        impls[name] = sdpa_with(getattr(SDPBackend, name))
    impls["naive"] = naive_attention
    return impls


def time_one(fn, q, k, v, causal, backward: bool):
    """Milliseconds per call (median of do_bench), or None when the implementation cannot run this shape."""
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
        return triton.testing.do_bench(step, warmup=25, rep=100)
    except (RuntimeError, torch.OutOfMemoryError) as e:  # unsupported shape / backend, or out of memory
        print(f"    ({type(e).__name__}: {str(e).splitlines()[0][:100]})")
        torch.cuda.empty_cache()
        return None


def run_gpu(quick: bool) -> dict:
    Ts = [512, 4096, 16384] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    impls = implementations()
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for D in (64, 128):
            for causal in (False, True):
                for T in Ts:
                    B, H = max(TOKENS // T, 1), MODEL_DIM // D
                    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype) for _ in range(3))
                    for backward in (False, True):
                        flops = attention_flops(B, H, T, T, D, causal=causal, backward=backward)
                        row = {"dtype": str(dtype)[6:], "D": D, "causal": causal, "T": T, "B": B, "H": H,
                               "pass": "fwd+bwd" if backward else "fwd", "ms": {}, "tflops": {}}
                        for name, fn in impls.items():
                            ms = time_one(fn, q, k, v, causal, backward)
                            row["ms"][name] = ms
                            row["tflops"][name] = None if ms is None else flops / ms * 1e-9
                        tri = row["ms"]["triton"]
                        row["speedup_vs"] = {n: (None if m is None or tri is None else m / tri)
                                             for n, m in row["ms"].items() if n != "triton"}
                        rows.append(row)
                        print(format_row(row), flush=True)
                    del q, k, v
                    torch.cuda.empty_cache()
    return {"kind": "gpu-speed", "rows": rows}


def format_row(row) -> str:
    tf = "  ".join(f"{n}={'-' if t is None else f'{t:6.1f}'}" for n, t in row["tflops"].items())
    sp = " ".join(f"{n}:{'-' if r is None else f'{r:.2f}x'}" for n, r in row["speedup_vs"].items())
    return (f"{row['dtype']:8s} D={row['D']:3d} causal={row['causal']!s:5s} T={row['T']:5d} {row['pass']:7s} "
            f"TFLOP/s {tf} | triton speed-up vs {sp}")


def plot_gpu(result: dict, path: Path, st: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["D"], r["causal"], r["pass"]) for r in result["rows"]})
    cols = 4
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(4 * cols, 3 * len(panels) / cols + 1),
                             squeeze=False)
    for ax, key in zip(axes.flat, panels, strict=False):
        rows = [r for r in result["rows"] if (r["dtype"], r["D"], r["causal"], r["pass"]) == key]
        for name in rows[0]["tflops"]:
            pts = [(r["T"], r["tflops"][name]) for r in rows if r["tflops"][name] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name, lw=2.5 if name == "triton" else 1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{key[0]} D={key[1]} {'causal' if key[2] else 'full'} {key[3]}", fontsize=9)
        ax.set_xlabel("T")
        ax.set_ylabel("TFLOP/s")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{st['device']} | torch {st['torch']} | triton {st['triton']} | CUDA {st['cuda']} | {st['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


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
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    st = stamp()
    print(f"benchmarking on {st['device']} (torch {st['torch']}, triton {st['triton']}, CUDA {st['cuda']})")
    gpu = torch.cuda.is_available()
    if args.replot:
        name = device_slug(st["device"]) if gpu else "cpu"
        result = json.loads((RESULTS / f"{name}.json").read_text())
        (plot_gpu if gpu else plot_cpu)(result, RESULTS / f"{name}.png", result["stamp"])
        print(f"redrew {RESULTS / name}.png")
        return 0
    if gpu:
        result, name, plot = run_gpu(args.quick), device_slug(st["device"]), plot_gpu
    else:
        result, name, plot = run_cpu(args.quick, args.max_kernel_T), "cpu", plot_cpu
    result = {"stamp": st, **result}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=1))
    plot(result, RESULTS / f"{name}.png", st)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
