"""Issue 3's speed goals, judged from one GPU run of the benchmark (``benchmarks/results/<device>.json``).

The goals, as ratios measured in the same run: the kernel's forward at least 1.15x SDPA's FLASH_ATTENTION
backend (FlashAttention-2) and its forward + backward at least 1.0x, at D = 64 and 128, T >= 4096, float16
and bfloat16, causal and not; and as close to cuDNN as it gets. This prints, for every such row the run
measured, the ratios to FlashAttention-2 and cuDNN and whether the goal holds, then a tally per goal, the
goal shapes the run did not reach (its time budget), and the kernel's best forward TFLOP/s against cuDNN's.
A ratio is marked ``~`` when the two implementations' spreads (20th-80th percentile of their times) overlap:
such a ratio is within the run's noise, and so is its verdict.

``benchmarks/gpu_session.sh`` prints it last, so that the end of a session's output holds the verdict.

    python benchmarks/goals.py [RESULT_JSON]     # default: the newest GPU result in benchmarks/results/
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = {"fwd": 1.15, "fwd+bwd": 1.0}  # the kernel's speed over FLASH_ATTENTION's, per pass
GOAL_MIN_T, GOAL_DS, GOAL_DTYPES = 4096, (64, 128), ("float16", "bfloat16")
FA2, CUDNN = "FLASH_ATTENTION", "CUDNN_ATTENTION"


def is_goal_shape(T: int, D: int, dtype: str) -> bool:
    return T >= GOAL_MIN_T and D in GOAL_DS and dtype in GOAL_DTYPES


def within_noise(row: dict, other: str) -> bool:
    """Whether the kernel's and ``other``'s spreads of times overlap (their ratio is then noise)."""
    mine, theirs = row["spread_ms"].get("triton"), row["spread_ms"].get(other)
    if mine is None or theirs is None:
        return False
    return mine[0] <= theirs[1] and theirs[0] <= mine[1]


def verdicts(result: dict) -> list[dict]:
    """One entry per goal row the run measured: its shape, pass, the ratios to FA2 and cuDNN (``None`` where
    either did not run), whether each is within noise, and ``met``: the FA2 ratio reaches the pass's goal
    (``None`` where there is no ratio)."""
    out = []
    for row in result.get("rows", []):
        if row["pass"] not in GOALS or not is_goal_shape(row["T"], row["D"], row["dtype"]):
            continue
        fa2, cudnn = row["speedup_vs"].get(FA2), row["speedup_vs"].get(CUDNN)
        out.append({"dtype": row["dtype"], "D": row["D"], "causal": row["causal"], "T": row["T"],
                    "pass": row["pass"], "fa2": fa2, "fa2_noise": within_noise(row, FA2), "cudnn": cudnn,
                    "cudnn_noise": within_noise(row, CUDNN), "tflops": row["tflops"].get("triton"),
                    "cudnn_tflops": row["tflops"].get(CUDNN),
                    "met": None if fa2 is None else fa2 >= GOALS[row["pass"]]})
    return out


def unmeasured(result: dict) -> list[dict]:
    """The goal shapes the run skipped for time."""
    return [s for s in result.get("skipped_for_time", [])
            if "T" in s and is_goal_shape(s["T"], s["D"], s["dtype"])]


def _ratio(value, noise: bool) -> str:
    return "     -" if value is None else f"{'~' if noise else ' '}{value:.2f}x"


def summary(result: dict) -> str:
    """The verdict as text: a line per goal row, then the tallies."""
    stamp = result.get("stamp", {})
    lines = [f"speed goals on {stamp.get('device', '?')} (torch {stamp.get('torch', '?')}, triton "
             f"{stamp.get('triton', '?')}, CUDA {stamp.get('cuda', '?')}); ~ = within the run's noise",
             "dtype     D  causal      T  pass      TFLOP/s  vs FA2  vs cuDNN  goal"]
    rows = verdicts(result)
    for v in rows:
        tf = "      -" if v["tflops"] is None else f"{v['tflops']:7.1f}"
        verdict = "no ratio" if v["met"] is None else ("met" if v["met"] else "MISSED") + f" (>= {GOALS[v['pass']]}x)"
        lines.append(f"{v['dtype']:8s} {v['D']:3d}  {v['causal']!s:6s} {v['T']:6d}  {v['pass']:8s} {tf}  "
                     f"{_ratio(v['fa2'], v['fa2_noise'])}  {_ratio(v['cudnn'], v['cudnn_noise'])}   {verdict}")
    for pass_, goal in GOALS.items():
        judged = [v for v in rows if v["pass"] == pass_ and v["met"] is not None]
        met = [v for v in judged if v["met"]]
        lines.append(f"{pass_} >= {goal}x FlashAttention-2: {len(met)} of {len(judged)} measured goal rows"
                     + ("" if len(judged) == len(met) else
                        f" (missed by the smallest ratio {min(v['fa2'] for v in judged if not v['met']):.2f}x)"))
    best = max((v for v in rows if v["pass"] == "fwd" and v["tflops"] and v["cudnn_tflops"]),
               key=lambda v: v["tflops"], default=None)
    if best is not None:
        lines.append(f"best forward: {best['tflops']:.0f} TFLOP/s ({best['dtype']}, D={best['D']}, T={best['T']}, "
                     f"causal={best['causal']}); cuDNN there {best['cudnn_tflops']:.0f} "
                     f"({best['tflops'] / best['cudnn_tflops']:.0%})")
    missing = unmeasured(result)
    if missing:
        lines.append(f"not measured (time budget): {len(missing)} goal shapes, e.g. "
                     + ", ".join(f"T={s['T']} D={s['D']} {s['dtype']} causal={s['causal']}" for s in missing[:3]))
    if not rows:
        lines.append("no goal row in this run (a CPU run, or every goal shape skipped)")
    return "\n".join(lines)


def newest_gpu_result(results: Path = RESULTS) -> Path | None:
    """The most recently written GPU speed result under ``results`` (``kind`` "gpu-speed")."""
    found = []
    for path in results.glob("*.json"):
        try:
            if json.loads(path.read_text()).get("kind") == "gpu-speed":
                found.append(path)
        except (OSError, ValueError):
            continue
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else newest_gpu_result()
    if path is None:
        print(f"no GPU benchmark result in {RESULTS} (run make bench on a GPU machine)")
        return 1
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"cannot read a benchmark result from {path}: {e}")
        return 1
    print(summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
