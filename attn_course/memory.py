"""Measure the peak memory of an attention implementation, in a fresh subprocess.

Why a subprocess: the peak resident set size (Linux's ``VmHWM``) only ever goes up within a process, and
PyTorch's CPU allocator may keep freed memory around, so measuring several implementations one after
another in one process would mix them up. Each measurement here starts a new Python, builds the inputs,
resets the high-water mark, runs the implementation once and reports how far the peak rose above the
memory in use just before the call. That number is *measured*, not computed from a formula.

    >>> peak_memory("naive", T=4096)["peak_extra_bytes"]      # doctest: +SKIP
    >>> python -m attn_course.memory naive 4096 --d 64        # the same, from a shell
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

IMPLEMENTATIONS = ("naive", "tiled", "kernel")
# glibc's malloc serves large blocks with mmap, but after a large block is freed it raises that threshold
# and serves the next ones from its heap, where freed memory may stay resident: the same call then
# measured 7.6 MB in one run and 20.8 MB in the next (naive, T = 1024). Fixing the threshold (setting it
# turns the adjustment off) gives every tensor its own mapping, returned to the system when freed, so
# the resident peak is the live data, run after run.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def rss_reading_slack_bytes(cpus: int | None = None) -> int:
    """How far a peak reading (``VmHWM``) may sit below the true peak resident size, in bytes.

    The kernel does not count resident pages exactly at every fault. Since Linux 6.2 a process's RSS
    counters are per-CPU ``percpu_counter``s; the high-water mark is recorded from their shared total, which
    leaves out each CPU's unfolded remainder (below the counter batch, ``max(32, 2 * CPUs)`` pages). Older
    kernels batched per thread instead, up to 64 page events each. So a peak may read up to
    ``CPUs * max(64, 2 * CPUs)`` pages low (512 KiB on 2 CPUs). Measured on 2 CPUs (Linux 6.18): mapping and
    touching n pages moves ``VmRSS`` by exactly n, while ``VmHWM`` reads 32 to 63 pages short; the same call
    measured twice differs by up to 0.24 MB for this reason alone."""
    cpus = cpus or os.cpu_count() or 1
    return cpus * max(64, 2 * cpus) * resource.getpagesize()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn):
    """Call ``fn()`` once in this process; return ``(its result, resident bytes just before, peak resident bytes
    during the call, whether the peak could be reset first)``. The peak reads low by up to
    :func:`rss_reading_slack_bytes`."""
    reset = _reset_peak()
    before = _status_kib("VmRSS") * 1024
    if not reset:  # fall back to the lifetime peak; the call's own peak can only be larger
        before = max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    out = fn()
    return out, before, _status_kib("VmHWM") * 1024, reset


def _run_child(impl: str, T: int, d: int, dtype: str, causal: bool, block: int) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    q, k, v = (torch.randn(1, 1, T, d, dtype=dt) for _ in range(3))  # (B=1, H=1, T, d)
    if impl == "naive":
        from attn_course import attention

        def fn():
            return attention(q, k, v, causal=causal)
    elif impl == "tiled":
        from attn_course import flash_attention_reference

        def fn():
            return flash_attention_reference(q, k, v, causal=causal, block_q=block, block_k=block)[0]
    elif impl == "kernel":
        from attn_course.kernels import flash_attention

        def fn():
            return flash_attention(q, k, v, causal=causal)
    else:
        raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")

    # Warm up on a small problem first: the first call pages in library code (BLAS, Triton) and initialises
    # thread pools, which would otherwise count as the call's memory although it is not data.
    small = min(T, 2 * block)
    q_s, k_s, v_s = q[..., :small, :].clone(), k[..., :small, :].clone(), v[..., :small, :].clone()
    _warm(impl, q_s, k_s, v_s, causal, block)
    out, before, peak, reset = measure_peak(fn)
    return {
        "impl": impl, "T": T, "d": d, "dtype": dtype, "causal": causal, "block": block,
        "rss_before_bytes": before, "peak_bytes": peak, "peak_extra_bytes": max(peak - before, 0),
        "output_bytes": out.numel() * out.element_size(), "peak_reset": reset,
        "reading_slack_bytes": rss_reading_slack_bytes(),
    }


def _warm(impl: str, q, k, v, causal: bool, block: int) -> None:
    if impl == "naive":
        from attn_course import attention

        attention(q, k, v, causal=causal)
    elif impl == "tiled":
        from attn_course import flash_attention_reference

        flash_attention_reference(q, k, v, causal=causal, block_q=block, block_k=block)
    else:
        from attn_course.kernels import flash_attention

        flash_attention(q, k, v, causal=causal)


def peak_memory(impl: str, T: int, d: int = 64, *, dtype: str = "float32", causal: bool = False,
                block: int = 512, timeout: float = 600) -> dict:
    """Run ``impl`` ("naive" = :func:`attn_course.attention`, "tiled" = :func:`flash_attention_reference`
    with ``block``-sized tiles, "kernel" = :func:`attn_course.kernels.flash_attention`) once on one head of
    ``[1, 1, T, d]`` inputs in a fresh subprocess, and return a dict whose ``peak_extra_bytes`` is how far the
    peak resident memory rose above what was in use just before the call, to within
    :func:`rss_reading_slack_bytes` (``reading_slack_bytes``: the kernel's peak counter is approximate)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    cmd = [sys.executable, "-m", "attn_course.memory", impl, str(T), "--d", str(d), "--dtype", dtype,
           "--block", str(block)] + (["--causal"] if causal else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", **STEADY_MALLOC)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {impl!r} at T={T} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Peak memory of one attention call, measured in this process.")
    p.add_argument("impl", choices=IMPLEMENTATIONS)
    p.add_argument("T", type=int)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--causal", action="store_true")
    a = p.parse_args(argv)
    print(json.dumps(_run_child(a.impl, a.T, a.d, a.dtype, a.causal, a.block)))


if __name__ == "__main__":
    main()
