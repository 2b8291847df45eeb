"""How long autograding takes on this machine (a benchmark, not a test: nothing here asserts a time).

Three figures, written to ``benchmarks/results/grading_<device>.json`` and printed:

1. **one student, seven notebooks**: wall time of ``grade_class`` for one learner who hands in the solutions
   of every assignment (sandbox start-up, the learner's cells, the hidden cases, judging, gradebook, feedback);
   the aim is under 90 s on 2 CPU cores;
2. **a class of 100 submissions** (50 students x ch1_intuition and ch3_sdpa, a mix of full, empty and partial
   answers) with 1 and with 2 workers;
3. **the sandbox's overhead per notebook**: ``autograder.sandbox.run_submission`` (bubblewrap, limits, probes)
   against nbgrader's own unsandboxed ``autograde`` of the same notebook (a Jupyter kernel running every cell,
   hidden tests included), median of a few runs per assignment.

    python benchmarks/bench_grading.py [--quick] [--out benchmarks/results/grading_cpu.json]

``--quick`` grades 10 submissions instead of 100 and repeats the overhead runs once (a smoke run).
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


def sandbox_overhead(course: Path, work: Path, repeats: int) -> dict:
    """Per assignment: median seconds of nbgrader's unsandboxed autograde vs our sandboxed run of one notebook."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    from attn_course.check import CHECKS
    from autograder.grading.gradebook import open_gradebook
    from autograder.grading.probes import build_probes, executable_notebook, make_cases
    from autograder.grading.trusted import load_trusted
    from autograder.grading.worker import sandbox_runner

    out = {}
    course = Path(shutil.copytree(course, work / "course_overhead"))
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
    gb = open_gradebook(f"sqlite:///{course / 'gradebook.db'}")
    for a in CLASS_ASSIGNMENTS:
        nb = syn.solved(course, ROOT / "solutions", a)
        nbgrader_s, sandbox_s = [], []
        for r in range(repeats):
            student = f"bench{r}"
            syn.write_submission(course / "submitted", student, a, nb)
            gb.update_or_create_student(student)
            t = time.perf_counter()
            result = api.autograde(a, student, force=True, create=True)
            nbgrader_s.append(time.perf_counter() - t)
            if not result["success"]:
                raise RuntimeError(f"nbgrader autograde failed: {result.get('error')}\n{result.get('log')}")
            trusted = load_trusted(a, gb, course, CHECKS)
            job = {"name": f"{a}.ipynb", "notebook": json.dumps(executable_notebook(nb, trusted)),
                   "probes": build_probes(trusted, make_cases(trusted, 1, CHECKS)), "limits": None}
            t = time.perf_counter()
            res = sandbox_runner(job)
            sandbox_s.append(time.perf_counter() - t)
            if res["outcome"] != "ok":
                raise RuntimeError(f"sandbox run of {a} ended {res['outcome']}: {res['details']}")
        out[a] = {"nbgrader_unsandboxed_s": round(statistics.median(nbgrader_s), 2),
                  "sandboxed_s": round(statistics.median(sandbox_s), 2),
                  "overhead_s": round(statistics.median(sandbox_s) - statistics.median(nbgrader_s), 2)}
    gb.close()
    return out


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
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                        "load_average_at_start": [round(x, 1) for x in os.getloadavg()]},
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
            results["sandbox_overhead_per_notebook"] = sandbox_overhead(course, work, 1 if args.quick else 3)
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
