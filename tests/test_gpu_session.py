"""``benchmarks/gpu_session.sh``, the one command a lent GPU machine runs, checked here without a GPU.

A device is lent for minutes, so a slip in the script's own logic (a budget not enforced, a result not
copied back, a failure reported as success) would cost the only run. The script is run from a copy of
``benchmarks/`` in a temporary tree with ``PYTHON`` set to a stand-in that records what it is asked to do and
plays the part of pytest and the benchmark: their exit status, how long they take, the files they write.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = r"""#!/usr/bin/env bash
# python as gpu_session.sh calls it: records each call, then acts as asked by the STUB_* variables
printf '%s\n' "$*" >> "$CALLS"
case "$1" in
  -c) echo "python 3.12.3 | torch stand-in | triton 3.6.0 | numpy 2.3.5 | CUDA 13.0"; exit 0 ;;
  -m)
    case "$2" in
      pip) mkdir -p /tmp/site; exit 0 ;;
      pytest) echo "PYTHONPATH=$PYTHONPATH"; echo "test_kernels_gpu.py::test_one PASSED"
              sleep "${STUB_TEST_SECONDS:-0}"; exit "${STUB_TEST_RC:-0}" ;;
    esac ;;
  benchmarks/goals.py) echo "speed goals on stand-in: fwd >= 1.15x FlashAttention-2: 1 of 1"; exit 0 ;;
  benchmarks/bench_attention.py)
    if [ "$2" = --warm-only ]; then
      echo "  compiled float16 D=64 auto: 1 s"; sleep "${STUB_WARM_SECONDS:-0}"; exit "${STUB_WARM_RC:-0}"
    fi
    mkdir -p benchmarks/results
    echo '{"stamp": {"device": "stand-in"}}' > benchmarks/results/stand-in-gpu.json
    echo png > benchmarks/results/stand-in-gpu.png
    echo '{}' > benchmarks/results/cpu.json  # (a CPU run's file: never taken for a GPU result)
    sleep "${STUB_BENCH_SECONDS:-0}"; exit "${STUB_BENCH_RC:-0}" ;;
esac
echo "stand-in python: unexpected call: $*" >&2
exit 99
"""


@pytest.fixture
def session(tmp_path):
    """``run(**env) -> (exit status, output, calls, out dir)``: the script in a fresh tree of its own."""
    tree = tmp_path / "repo"
    (tree / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "benchmarks" / "gpu_session.sh", tree / "benchmarks" / "gpu_session.sh")
    (tree / "benchmarks" / "results" / "grading_cpu.json").write_text("{}")  # (an older result, left alone)
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.txt"
    out = tmp_path / "out"

    def run(**env):
        env = {**os.environ, "PYTHON": str(python), "CALLS": str(calls), "PATH": os.environ["PATH"], **env}
        env.pop("OUT", None)
        done = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_session.sh"), str(out)], env=env,
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        return done.returncode, done.stdout + done.stderr, calls.read_text().splitlines(), out

    run.tree = tree
    return run


def bench_budget(call: str) -> int:
    return int(call.split("--budget-s ")[1].split()[0])


def test_a_good_session_runs_the_tests_then_the_benchmark_and_brings_back_its_results(session):
    rc, output, calls, out = session()
    assert rc == 0, output
    assert calls[0].startswith("-c ")  # the versions, first
    pytest_call = next(c for c in calls if c.startswith("-m pytest"))
    assert "tests/test_kernels_gpu.py" in pytest_call and "-n 8" in pytest_call and "-v" in pytest_call
    warm_call = next(c for c in calls if "--warm-only" in c)
    assert "--warm-workers 8" in warm_call
    bench_call = next(c for c in calls if c.startswith("benchmarks/bench_attention.py") and c != warm_call)
    assert "--warm-workers 0" in bench_call, "the warm-up already ran beside the tests"
    assert 505 <= bench_budget(bench_call) <= 510, "the session's 570 s, less the tail of 60, less what was spent"
    assert calls.index(pytest_call) < calls.index(bench_call)
    assert not any(c.startswith("-m pip") for c in calls), "no wheels were carried: nothing to install"
    assert "triton 3.6.0" in (out / "env.txt").read_text()
    assert "test_one PASSED" in (out / "gpu_tests.log").read_text()
    assert "compiled float16" in (out / "warm.log").read_text() and "warm-up compile: exit 0" in output
    assert sorted(p.name for p in out.iterdir()) == ["bench.log", "env.txt", "goals.txt", "gpu_tests.log",
                                                     "stand-in-gpu.json", "stand-in-gpu.png", "warm.log"], \
        "the CPU and grading results stay"
    assert calls[-1] == "benchmarks/goals.py", "the verdict on the goals comes last"
    assert "1 of 1" in (out / "goals.txt").read_text()
    assert output.rstrip().splitlines()[-2].startswith("speed goals on stand-in"), "printed just before the end"
    assert "GPU tests exit 0, benchmark exit 0" in output


def test_carried_wheels_go_first_on_the_path_of_every_later_call(session):
    (session.tree / ".whl").mkdir()
    (session.tree / ".whl" / "numpy-2.3.5-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    rc, output, calls, _ = session()
    assert rc == 0, output
    pip = next(c for c in calls if c.startswith("-m pip"))
    assert "--target /tmp/site" in pip and "--no-index" in pip and ".whl/numpy-2.3.5" in pip
    assert "PYTHONPATH=/tmp/site:" in output, "pytest must see the carried numpy before the machine's"


@pytest.mark.parametrize("test_rc,bench_rc", [(1, 0), (0, 3)])
def test_a_failure_of_either_half_fails_the_session_and_the_other_half_still_runs(session, test_rc, bench_rc):
    rc, output, calls, out = session(STUB_TEST_RC=str(test_rc), STUB_BENCH_RC=str(bench_rc))
    assert rc != 0
    assert f"GPU tests exit {test_rc}, benchmark exit {bench_rc}" in output
    assert any(c.startswith("benchmarks/bench_attention.py") for c in calls)
    assert (out / "stand-in-gpu.json").exists(), "what the benchmark measured comes back even so"


def test_the_tests_budget_is_enforced_and_the_benchmark_still_gets_its_turn(session):
    rc, output, calls, out = session(TEST_BUDGET_S="1", STUB_TEST_SECONDS="20")
    assert rc != 0 and "GPU tests exit 124" in output, output
    assert "test_one PASSED" in (out / "gpu_tests.log").read_text(), "the lines written before the cut are kept"
    assert (out / "stand-in-gpu.json").exists()


def test_the_benchmark_is_cut_at_what_the_session_has_left_plus_its_tail(session):
    """The benchmark is told what the session has left (less a tail for its last shape) and stops itself;
    the script also kills it at the end of that tail, so a hung run cannot eat the machine's time."""
    started = time.monotonic()
    rc, output, _, out = session(SESSION_S="3", TAIL_S="1", MIN_BENCH_S="1", STUB_BENCH_SECONDS="20")
    assert rc != 0 and "benchmark exit 124" in output, output
    assert time.monotonic() - started < 10
    assert (out / "stand-in-gpu.json").exists()


def test_the_warm_up_runs_beside_the_tests_and_the_benchmark_gets_the_time_left(session):
    """The warm-up compile and the GPU tests overlap (the session takes the longer of the two, not their
    sum); the benchmark's budget is then what the session has left."""
    started = time.monotonic()
    rc, output, calls, _ = session(STUB_WARM_SECONDS="5", STUB_TEST_SECONDS="5", SESSION_S="100", TAIL_S="10")
    assert rc == 0, output
    assert time.monotonic() - started < 8.5, "the warm-up and the tests ran one after the other (10 s)"
    bench_call = next(c for c in calls if c.startswith("benchmarks/bench_attention.py") and "--warm-only" not in c)
    assert 80 <= bench_budget(bench_call) <= 85, "100 s, less the tail, less the 5 s spent"


def test_a_warm_up_past_its_budget_is_cut_and_the_benchmark_still_runs(session):
    rc, output, calls, _ = session(WARM_BUDGET_S="1", STUB_WARM_SECONDS="20")
    assert rc == 0 and "warm-up compile: exit 124" in output, output
    assert any(c.startswith("benchmarks/bench_attention.py --warm-workers 0") for c in calls)


def test_the_script_is_what_make_gpu_session_runs():
    make = subprocess.run(["make", "-n", "gpu-session", "PY=python3"], cwd=ROOT, capture_output=True, text=True)
    assert "benchmarks/gpu_session.sh" in make.stdout, make.stdout + make.stderr
