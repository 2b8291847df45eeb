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


def test_a_good_session_runs_the_tests_then_the_benchmark_and_brings_back_its_results(session):
    rc, output, calls, out = session()
    assert rc == 0, output
    assert calls[0].startswith("-c ")  # the versions, first
    pytest_call = next(c for c in calls if c.startswith("-m pytest"))
    assert "tests/test_kernels_gpu.py" in pytest_call and "-n 8" in pytest_call and "-v" in pytest_call
    bench_call = next(c for c in calls if c.startswith("benchmarks/bench_attention.py"))
    assert "--warm-workers 8" in bench_call and "--budget-s 220" in bench_call
    assert calls.index(pytest_call) < calls.index(bench_call)
    assert not any(c.startswith("-m pip") for c in calls), "no wheels were carried: nothing to install"
    assert "triton 3.6.0" in (out / "env.txt").read_text()
    assert "test_one PASSED" in (out / "gpu_tests.log").read_text()
    assert (out / "bench.log").exists()
    assert sorted(p.name for p in out.iterdir()) == ["bench.log", "env.txt", "goals.txt", "gpu_tests.log",
                                                     "stand-in-gpu.json", "stand-in-gpu.png"], \
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


def test_the_benchmark_is_cut_at_its_budget_plus_the_warm_up_allowance(session):
    """The benchmark is told its budget and stops itself; the script also kills it 150 s after that (the
    parallel warm-up compile is outside the budget), so a hung run cannot eat the machine's time."""
    rc, output, _, out = session(BENCH_BUDGET_S="-149", STUB_BENCH_SECONDS="20")
    assert rc != 0 and "benchmark exit 124" in output, output
    assert (out / "stand-in-gpu.json").exists()


def test_the_script_is_what_make_gpu_session_runs():
    make = subprocess.run(["make", "-n", "gpu-session", "PY=python3"], cwd=ROOT, capture_output=True, text=True)
    assert "benchmarks/gpu_session.sh" in make.stdout, make.stdout + make.stderr
