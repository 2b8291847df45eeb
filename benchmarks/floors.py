"""The two numbers for the kernels' speed goals, before any GPU run (``benchmarks/NOTES.md`` quotes the table).

For each shape the goals name (T >= 4096, D = 64 and 128, causal or not; the benchmark's layout: ``16384 // T``
sequences of ``2048 // D`` heads), the time its FLOPs take at the matrix units' rate and the time its bytes
take at the memory's. The larger is the floor no implementation beats; the benchmark then reports each
contender's TFLOP/s as a fraction of the same ceiling, measured in its own run.

The ceilings here are leads, not measurements of ours: an 8192^3 bfloat16 matrix product at 798 TFLOP/s and a
device-to-device copy at 3.0 TB/s (bytes read plus written), as seen on this workplace's H100 machine
(``.library/device/KINDS.md``, 2026-11-13). The FLOPs are ``attn_course.cost.attention_flops`` (the
benchmark's count); the bytes are the fewest a forward can move: q, k, v read once and out written once,
16-bit.

The last columns frame the forward goal with published speeds (FlashAttention-3 paper, H100 80GB SXM5,
float16, not causal, FlashAttention-2 at T = 4k, 8k, 16k): the time FlashAttention-2 takes at that rate, the
time 1.15x faster than it (the goal), and what share of the ceiling that asks for. Only the non-causal rows
have a published rate here; the causal goal is judged on the benchmark's own ratios.

    python benchmarks/floors.py        # prints the table in Markdown
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attn_course.cost import attention_flops  # noqa: E402

MATMUL_TFLOPS = 798.0  # H100, bf16 8192^3 product, random data (KINDS.md, seen 2026-11-13)
COPY_TBPS = 3.0  # H100, device-to-device copy, bytes read + written (KINDS.md, seen 2026-11-13)
TOKENS, MODEL_DIM = 16384, 2048  # the benchmark's layout (bench_attention.TOKENS, MODEL_DIM)
GOAL_TS, GOAL_DS = (4096, 8192, 16384), (64, 128)
FORWARD_GOAL = 1.15  # x FlashAttention-2's forward speed (issue 3)
# FlashAttention-2's published forward TFLOP/s on an H100 SXM5, fp16, not causal (FlashAttention-3 paper's
# figure "Attention forward speed, head dim 64 / 128"), keyed by (D, T)
FA2_PUBLISHED_TFLOPS = {(64, 4096): 321, (64, 8192): 322, (64, 16384): 324,
                        (128, 4096): 368, (128, 8192): 370, (128, 16384): 370}


def floors(T: int, D: int, causal: bool) -> dict:
    """One shape's two numbers (milliseconds) and, where a published FlashAttention-2 rate exists, the goal."""
    B, H = TOKENS // T, MODEL_DIM // D
    flops = attention_flops(B, H, T, T, D, causal=causal)
    moved = 4 * B * H * T * D * 2  # q, k, v read and out written, once each, 2 bytes an element
    row = {"B": B, "H": H, "T": T, "D": D, "causal": causal, "gflop": flops / 1e9, "mbytes": moved / 1e6,
           "compute_ms": flops / (MATMUL_TFLOPS * 1e9), "memory_ms": moved / (COPY_TBPS * 1e9)}
    fa2 = None if causal else FA2_PUBLISHED_TFLOPS.get((D, T))
    if fa2 is not None:
        row["fa2_ms"] = flops / (fa2 * 1e9)
        row["goal_ms"] = row["fa2_ms"] / FORWARD_GOAL
        row["goal_of_ceiling"] = fa2 * FORWARD_GOAL / MATMUL_TFLOPS
    return row


def table() -> str:
    """The Markdown table of :func:`floors` over the goal shapes."""
    lines = ["| B x H x T, D | causal | GFLOP | MB moved | compute floor (ms) | memory floor (ms) | bound by "
             "| FA2 published (ms) | goal, 1.15x FA2 (ms) | goal as share of the ceiling |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for T in GOAL_TS:
        for D in GOAL_DS:
            for causal in (False, True):
                r = floors(T, D, causal)
                bound = "compute" if r["compute_ms"] > r["memory_ms"] else "memory"
                goal = (f"{r['fa2_ms']:.3f} | {r['goal_ms']:.3f} | {r['goal_of_ceiling']:.0%}" if "fa2_ms" in r
                        else "- | - | -")
                lines.append(f"| {r['B']} x {r['H']} x {T}, {D} | {'yes' if causal else 'no'} | {r['gflop']:.0f} | "
                             f"{r['mbytes']:.0f} | {r['compute_ms']:.3f} | {r['memory_ms']:.3f} | {bound} | {goal} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
