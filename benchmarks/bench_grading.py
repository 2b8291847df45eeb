"""How long autograding takes on this machine (a benchmark, not a test: nothing here asserts a time).

Three figures, written to ``benchmarks/results/grading_<device>.json`` and printed:

1. **one student, seven notebooks**: wall time of ``grade_class`` for one learner who hands in the solutions
   of every assignment (sandbox start-up, the learner's cells, the hidden cases, judging, gradebook, feedback);
   the aim is under 90 s on 2 CPU cores;
2. **a class of 100 submissions** (50 students x ch1_intuition and ch3_sdpa, a mix of full, empty and partial
   answers) with 1 and with 2 workers;
3. **the sandbox's overhead per notebook**, like for like: the same notebook through the same runner without
   bubblewrap and limits, without bubblewrap but with the limits, and through ``run_submission`` (bubblewrap,
   limits, probes), with nbgrader's own unsandboxed ``autograde`` of the same notebook (a Jupyter kernel
   running every cell, hidden tests included) as the named baseline; interleaved, median of a few runs per
   assignment, with the ratios. Machine and software versions are stamped in the JSON.

    python benchmarks/bench_grading.py [--quick] [--out benchmarks/results/grading_cpu.json]

``--quick`` grades 10 submissions instead of 100 and repeats the overhead runs once (a smoke run);
``--skip one class overhead`` leaves parts out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autograder.course import ASSIGNMENTS, available_assignments, prepare_course  # noqa: E402
from autograder.grading import synthetic as syn  # noqa: E402
from autograder.grading.pipeline import grade_class  # noqa: E402

CLASS_ASSIGNMENTS = ["ch1_intuition", "ch3_sdpa"]


def one_student_all_notebooks(course: Path, work: Path) -> dict:
    subs = work / "one_student"
    assignments = available_assignments()
    for a in assignments:
        syn.write_submission(subs, "alice", a, syn.solved(course, ROOT / "solutions", a))
    out = {}
    for workers in (1, 2):
        course_copy = Path(shutil.copytree(course, work / f"course_one_{workers}"))
        t = time.perf_counter()
        report = grade_class(subs, course_dir=course_copy, out_dir=work / f"grades_one_{workers}", workers=workers,
                             prepare=False, log=lambda *_: None)
        wall = time.perf_counter() - t
        out[f"workers_{workers}"] = {
            "wall_s": round(wall, 1),
            "per_notebook_sandbox_s": {e["assignment"]: e["wall_s"] for e in report["submissions"]},
            "scores": {e["assignment"]: [e["score"], e["max_score"], e["outcome"]] for e in report["submissions"]},
        }
    out["notebooks"] = len(assignments)
    return out


def class_of(course: Path, subs: Path, n_submissions: int) -> None:
    """n submissions over CLASS_ASSIGNMENTS: a third full marks, a third the untouched release, a third partial."""
    sol = ROOT / "solutions"
    partial = {"ch1_intuition": {"ch1-hard-lookup"}, "ch3_sdpa": {"ch3-weights"}}
    for i in range(n_submissions):
        student, a = f"s{i // len(CLASS_ASSIGNMENTS):03d}", CLASS_ASSIGNMENTS[i % len(CLASS_ASSIGNMENTS)]
        kind = (i // len(CLASS_ASSIGNMENTS)) % 3
        nb = (syn.solved(course, sol, a) if kind == 0 else
              syn.read(course / "release" / a / f"{a}.ipynb") if kind == 1 else syn.solved(course, sol, a, partial[a]))
        syn.write_submission(subs, student, a, nb)


def class_wall_times(course: Path, work: Path, n_submissions: int) -> dict:
    subs = work / "class"
    class_of(course, subs, n_submissions)
    out = {"submissions": n_submissions, "assignments": CLASS_ASSIGNMENTS}
    results = {}
    for workers in (1, 2):
        course_copy = Path(shutil.copytree(course, work / f"course_class_{workers}"))
        t = time.perf_counter()
        report = grade_class(subs, course_dir=course_copy, out_dir=work / f"grades_class_{workers}", workers=workers,
                             secret_seed=1, prepare=False, log=lambda *_: None)
        out[f"workers_{workers}_wall_s"] = round(time.perf_counter() - t, 1)
        results[workers] = (out[f"workers_{workers}_wall_s"],
                            sorted((e["student"], e["assignment"], e["score"]) for e in report["submissions"]))
    out["speedup"] = round(results[1][0] / results[2][0], 2)
    out["same_grades_1_and_2_workers"] = results[1][1] == results[2][1]
    return out


def _sandbox_env() -> dict[str, str]:
    """The environment bubblewrap gives the runner (its ``--setenv`` pairs), so the bare runs get the same one."""
    from autograder.sandbox import bwrap

    argv = bwrap.command(python=Path(sys.executable), runner=Path("r"), job=Path("j"), notebook=Path("n"),
                         notebook_name="n.ipynb", ro_paths=[], scratch_bytes=1, gpu=bwrap.gpu_present(), uid=1,
                         runner_args=[])
    return {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setenv"}


def bare_runner(notebook: Path, probes: list[dict], limits, rlimits: bool) -> dict:
    """The sandbox's own runner on the same job, started directly: no bubblewrap (no namespaces, mounts, tmpfs),
    and with ``rlimits=False`` no ``setrlimit`` either. Same interpreter, flags, environment, cells, probes and
    results file as :func:`autograder.sandbox.run_submission`; returns the outcome and the seconds.

    The runner still runs as a spare uid (``setpriv``, as in the sandbox, when we are root; the runner refuses
    to start as root). Started like this, its clean-up after each cell signals only its own descendants, not
    ``kill(-1)`` as inside the sandbox's PID namespace, so an unprivileged benchmark run spares the user's
    other processes."""
    import subprocess

    import torch

    from autograder.sandbox import bwrap
    from autograder.sandbox.notebook import cells_to_run, read_notebook
    from autograder.sandbox.records import parse
    from autograder.sandbox.run import RUNNER, _reap

    t = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="attn-bench-bare-"))  # its own folder, opened to the spare uid
    inputs, home = work / "inputs", work / "home"
    (inputs / "submission").mkdir(parents=True)
    home.mkdir()
    for path in (work, inputs, inputs / "submission"):
        path.chmod(0o755)
    home.chmod(0o1777)
    shutil.copy(notebook, inputs / "submission" / notebook.name)
    cells = cells_to_run(read_notebook(notebook, limits.notebook_bytes))
    torch.save({"notebook_name": notebook.name, "cells": [(c.index, c.source) for c in cells], "probes": probes},
               inputs / "job.pt")
    for path in (inputs / "job.pt", inputs / "submission" / notebook.name):
        path.chmod(0o644)
    results = work / "results.bin"
    fd = os.open(results, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    uid = bwrap.pick_uid() if os.geteuid() == 0 else None
    drop = ([shutil.which("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]
            if uid is not None else [])
    try:
        argv = [*drop, sys.executable, "-I", "-B", "-X", "faulthandler", str(RUNNER),
                json.dumps({**limits.for_runner(), "rlimits": rlimits}), str(fd), str(inputs)]
        proc = subprocess.run(argv, cwd=home, env=_sandbox_env(), pass_fds=(fd,), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=limits.wall_s)
    finally:
        os.close(fd)
        if uid is not None:
            _reap(uid)
    res = parse(results.read_bytes(), {p["id"]: len(p["cases"]) for p in probes})
    seconds = time.perf_counter() - t
    shutil.rmtree(work)
    ok = res.done and proc.returncode == 0
    return {"ok": ok, "s": seconds, "log": proc.stdout.decode(errors="replace")[-2000:]}


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def sandbox_overhead(course: Path, work: Path, repeats: int) -> dict:
    """Per assignment, the same solved notebook four ways, interleaved, median seconds of ``repeats`` runs each:

    * ``runner_bare_s``: the sandbox's runner with no bubblewrap and no resource limits;
    * ``runner_rlimits_s``: the same with its ``setrlimit`` limits (still no bubblewrap);
    * ``sandboxed_s``: :func:`autograder.sandbox.run_submission` (bubblewrap, setpriv, tmpfs, limits, reaping);
    * ``nbgrader_autograde_s``: plain nbgrader ``autograde`` of the notebook (a Jupyter kernel running every
      cell, hidden tests included, unsandboxed): the named baseline.

    The sandbox's overhead is ``sandboxed_s - runner_bare_s`` (like for like: same runner, job and outputs).
    """
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    from attn_course.check import CHECKS
    from autograder.grading.gradebook import open_gradebook
    from autograder.grading.probes import build_probes, executable_notebook, make_cases
    from autograder.grading.trusted import load_trusted
    from autograder.sandbox import Limits, run_submission

    limits = Limits()  # the production limits
    out = {"repeats": repeats, "limits": limits.for_runner() | {"wall_s": limits.wall_s}}
    course = Path(shutil.copytree(course, work / "course_overhead"))
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    gb = open_gradebook(f"sqlite:///{course / 'gradebook.db'}")
    for a in CLASS_ASSIGNMENTS:
        nb = syn.solved(course, ROOT / "solutions", a)
        trusted = load_trusted(a, gb, course, CHECKS)
        probes = build_probes(trusted, make_cases(trusted, 1, CHECKS))
        notebook = work / "overhead_inputs" / a / f"{a}.ipynb"
        notebook.parent.mkdir(parents=True)
        notebook.write_text(json.dumps(executable_notebook(nb, trusted)))
        times: dict[str, list[float]] = {"runner_bare_s": [], "runner_rlimits_s": [], "sandboxed_s": [],
                                         "nbgrader_autograde_s": []}
        for r in range(repeats + 1):  # run 0 warms the file cache and is not counted
            keep = r > 0
            for key, rlimits in (("runner_bare_s", False), ("runner_rlimits_s", True)):
                res = bare_runner(notebook, probes, limits, rlimits)
                if not res["ok"]:
                    raise RuntimeError(f"unsandboxed runner on {a} failed:\n{res['log']}")
                times[key] += [res["s"]] * keep
            t = time.perf_counter()
            result = run_submission(notebook, probes, workdir=work / f"sandboxed_{a}_{r}", limits=limits)
            times["sandboxed_s"] += [time.perf_counter() - t] * keep
            if result.outcome != "ok":
                raise RuntimeError(f"sandbox run of {a} ended {result.outcome}: {result.details}")
            student = f"bench{r}"
            syn.write_submission(course / "submitted", student, a, nb)
            gb.update_or_create_student(student)
            t = time.perf_counter()
            graded = api.autograde(a, student, force=True, create=True)
            times["nbgrader_autograde_s"] += [time.perf_counter() - t] * keep
            if not graded["success"]:
                raise RuntimeError(f"nbgrader autograde failed: {graded.get('error')}\n{graded.get('log')}")
        m = {key: _median(v) for key, v in times.items()}
        out[a] = {**m, "all_runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
                  "sandbox_overhead_s": round(m["sandboxed_s"] - m["runner_bare_s"], 3),
                  "ratio_sandboxed_to_bare_runner": round(m["sandboxed_s"] / m["runner_bare_s"], 2),
                  "ratio_rlimits_to_bare_runner": round(m["runner_rlimits_s"] / m["runner_bare_s"], 2),
                  "ratio_sandboxed_to_nbgrader": round(m["sandboxed_s"] / m["nbgrader_autograde_s"], 2)}
    gb.close()
    return out


def versions() -> dict:
    """The software the figures were taken with."""
    import subprocess
    from importlib.metadata import version

    bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    return {"python": platform.python_version(), "bubblewrap": bwrap,
            **{pkg: version(pkg) for pkg in ("torch", "nbgrader", "ipykernel", "jupyter_client", "IPython")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 submissions, one repeat (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "grading_cpu.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["one", "class", "overhead"])
    args = parser.parse_args()
    missing = [a for a in ASSIGNMENTS if a not in available_assignments()]
    work = Path(tempfile.mkdtemp(prefix="attn-bench-grading-"))
    try:
        t = time.perf_counter()
        course = prepare_course(work / "course")
        results = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                        "load_average_at_start": [round(x, 1) for x in os.getloadavg()]},
            "software": versions(),
            "date": time.strftime("%Y-%m-%d"),
            "prepare_course_s": round(time.perf_counter() - t, 1),
            "missing_assignments": missing,
        }
        if "one" not in args.skip:
            results["one_student_seven_notebooks"] = one_student_all_notebooks(course, work)
            print(json.dumps(results["one_student_seven_notebooks"], indent=1), flush=True)
        if "class" not in args.skip:
            results["class"] = class_wall_times(course, work, 10 if args.quick else 100)
            print(json.dumps(results["class"], indent=1), flush=True)
        if "overhead" not in args.skip:
            results["sandbox_overhead_per_notebook"] = sandbox_overhead(course, work, 1 if args.quick else 5)
            print(json.dumps(results["sandbox_overhead_per_notebook"], indent=1), flush=True)
        results["machine"]["load_average_at_end"] = [round(x, 1) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
