"""The sandbox's cgroup: memory, processes and CPU of the whole sandbox, all its processes together.

The per-process rlimits alone let a notebook fork a few children that each stay under the memory limit while
together they take the host's memory, or keep every core busy so that a neighbouring sandbox times out.
These tests run where the grader can make cgroups (as root, as in CI) and say why they are skipped elsewhere.
"""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from attn_course.check import CHECKS
from autograder.sandbox import Limits, cgroup, run_submission

SEED = 20261123
GiB = 2**30


def _available() -> str | None:
    try:
        group = cgroup.create(cgroup.group_name("probe"), memory_bytes=GiB, processes=16, cpus=1.0)
    except cgroup.CgroupUnavailable as e:
        return str(e)
    group.remove()
    return None


UNAVAILABLE = _available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no cgroup for the sandbox here: {UNAVAILABLE}")

WEIGHTS = '''import math, torch

def attention_weights(q, k, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0)
'''


def notebook(tmp_path: Path, *sources: str) -> Path:
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
             for s in (WEIGHTS, *sources)]
    path = tmp_path / "sub.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def fork_children(n: int, body: str) -> str:
    """A cell that forks ``n`` children, each running ``body`` (with os and time imported), and waits for them."""
    child = "\n".join("        " + line for line in body.splitlines())
    return (f"import os, time\nkids = []\nfor _ in range({n}):\n    pid = os.fork()\n    if pid == 0:\n{child}\n"
            f"        os._exit(0)\n    kids.append(pid)\nprint('children:', [os.waitpid(p, 0)[1] for p in kids])\n")


@pytest.fixture(scope="module")
def probes():
    return [{"id": "weights", "check": "attention_weights", "target": "attention_weights",
             "cases": CHECKS["attention_weights"].make_cases(SEED, hidden=True)}]


def test_a_group_holds_its_limits_and_every_process_started_in_it(tmp_path):
    group = cgroup.create(cgroup.group_name("unit"), memory_bytes=3 * GiB, processes=40, cpus=0.5)
    try:
        assert set(group.dirs) == {"memory", "pids", "cpu"} and all(d.is_dir() for d in group.dirs.values())
        if group.kind == "v1":
            assert (group.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(3 * GiB)
            assert (group.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        else:
            assert (group.dirs["memory"] / "memory.max").read_text().strip() == str(3 * GiB)
            assert (group.dirs["cpu"] / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (group.dirs["pids"] / "pids.max").read_text().strip() == "40"
        # a process and the children it starts (in a new session, as the sandbox is) are all inside
        proc = subprocess.Popen(group.wrap(["sh", "-c", "sleep 60 & sleep 60 & wait"]), start_new_session=True)
        deadline = time.monotonic() + 10
        while len(group.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.pid in group.pids() and len(group.pids()) == 3
        group.kill_all()
        assert proc.wait(timeout=10) != 0 and group.pids() == []
    finally:
        group.remove()
    assert not any(d.exists() for d in group.dirs.values())


def test_children_that_each_fit_the_limit_cannot_together_pass_it(probes, tmp_path):
    """Three forked children of 700 MiB each: every one is under the per-process 1.5 GiB, together they are not."""
    fork_and_fill = fork_children(3, """block = bytearray(700 * 2**20)  # touched page by page: resident, not reserved
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(3)""")
    limits = Limits(wall_s=60, cpu_s=50, cell_timeout_s=30, memory_bytes=int(1.5 * GiB), processes=48, cpus=1.0)
    result = run_submission(notebook(tmp_path, fork_and_fill), probes, workdir=tmp_path / "work", limits=limits)
    note = result.details["cgroup"]
    assert note["kind"] in ("v1", "v2"), note
    assert note["oom_kills"] >= 1, (note, result.log[-2000:])
    if note["memory_peak_bytes"] is not None:
        assert note["memory_peak_bytes"] <= limits.memory_bytes, note
    assert "memory limit" in result.details["reason"], result.details["reason"]
    # the learner's answers from before the bomb still came back (the grader decides on them, as always)
    assert all("ok" in e for e in result.outputs["weights"]) or result.outcome == "crashed"


def test_a_notebook_that_spins_every_core_is_held_to_its_quota(probes, tmp_path):
    # each child spins for CPU time, not wall time, so the demand (4 x 0.4 CPU-s) is the same however busy the
    # machine is; half a core of quota is exceeded even if the children only ever get one core between them
    spin = fork_children(4, """end = time.process_time() + 0.4
while time.process_time() < end:
    pass""")
    limits = Limits(wall_s=60, cpu_s=50, cell_timeout_s=30, cpus=0.5)
    result = run_submission(notebook(tmp_path, spin), probes, workdir=tmp_path / "work", limits=limits)
    assert result.outcome == "ok", result.log[-2000:]
    assert result.details["cgroup"]["cpu_throttled_periods"] > 0, result.details["cgroup"]


def _ours(pid: int) -> list[Path]:
    return [p for p in cgroup.ROOT.rglob(f"{cgroup.PREFIX}*-{pid}") if p.is_dir()]


def test_no_group_is_left_behind(probes, tmp_path):
    result = run_submission(notebook(tmp_path, "x = 1"), probes, workdir=tmp_path / "work",
                            limits=Limits(wall_s=60))
    assert result.outcome == "ok" and result.details["cgroup"]["oom_kills"] == 0
    assert _ours(os.getpid()) == []


def test_groups_of_a_killed_grader_are_swept_by_the_next_one():
    """A grader killed mid-run (kill -9, as in the resume test) cannot remove its groups: the next run does."""
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    dead = proc.pid  # a pid that no longer runs: the "killed grader"
    stale = cgroup.create(f"{cgroup.PREFIX}stale-{dead}", memory_bytes=GiB, processes=16, cpus=1.0)
    sleeper = subprocess.Popen(stale.wrap(["sleep", "60"]), start_new_session=True)
    deadline = time.monotonic() + 10
    while sleeper.pid not in stale.pids() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _ours(dead)
    fresh = cgroup.create(cgroup.group_name("next"), memory_bytes=GiB, processes=16, cpus=1.0)
    try:
        assert _ours(dead) == []  # swept, and the process left in it was killed
        assert sleeper.wait(timeout=10) != 0
    finally:
        fresh.remove()
