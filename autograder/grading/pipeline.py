"""``grade_class``: grade every submission in a folder, concurrently, resumably, into the gradebook.

One run::

    discover + check files  ->  skip what the journal says is done  ->  sandbox the rest (N workers)
        ->  judge here  ->  gradebook transaction  ->  feedback page  ->  journal record  ->  grades.csv, report

Only this (parent) process writes the gradebook, the feedback and the journal, in the order above, so a
run killed at any moment resumes correctly: a submission with a journal record is done, one without is
graded again, and re-recording its verdicts in the gradebook is idempotent. Results do not depend on the
order in which workers finish: each submission's verdicts depend only on its files, the course and the
secret seed, so ``workers=N`` gives the same gradebook as ``workers=1``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import secrets
import time
from pathlib import Path

from ..course import normalise_db_url
from .export import write_grades_csv, write_report
from .feedback import feedback_notebook, write_feedback
from .flags import reference_use_flags, released_code
from .gradebook import open_gradebook, record_submission, recorded_scores
from .intake import STUDENT_ID, Submission, discover, load_notebook, safe_name
from .journal import Journal, atomic_write
from .probes import build_probes, executable_notebook, make_cases
from .trusted import TrustedAssignment, load_trusted
from .verdicts import CellResult, judge_submission, rejected_cells
from .worker import LOG_TAIL, sandbox_runner

#: bump to regrade every submission after a change in how verdicts are decided
GRADER_VERSION = "1"
#: sandbox outcome -> outcome in the report and grades.csv
OUTCOMES = {"ok": "graded", "timeout": "timed out", "crashed": "crashed", "rejected": "rejected"}
_ROOT = Path(__file__).resolve().parents[2]


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def load_secret_seed(out_dir: Path) -> int:
    """The class's secret seed, made once (``<out_dir>/.secret_seed``, readable by the owner only) and kept,
    so that a rerun meets the same hidden cases. The sandbox never sees ``out_dir``."""
    path = Path(out_dir) / ".secret_seed"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, str(secrets.randbits(62)).encode(), mode=0o600)
    return int(path.read_text().strip())


def _checker_code_hash() -> str:
    """A hash of attn_course/check's source: a new judge regrades the class."""
    h = hashlib.sha256()
    for path in sorted((_ROOT / "attn_course" / "check").rglob("*.py")):
        h.update(path.relative_to(_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


class Grader:
    """The state of one run: course, gradebook, journal, secret, and the results gathered so far."""

    def __init__(self, submissions: Path, course_dir: Path, out_dir: Path, db_url: str, secret_seed: int,
                 limits, runner, assignments, log):
        from attn_course.check import CHECKS, Raised

        self.submissions, self.course_dir, self.out_dir = Path(submissions), Path(course_dir), Path(out_dir)
        self.db_url, self.secret_seed, self.limits, self.runner, self.log = db_url, secret_seed, limits, runner, log
        self.checks, self.raised = CHECKS, Raised
        self.gb = open_gradebook(db_url)
        known = [a.name for a in self.gb.assignments]
        gb_assignments = sorted(known) if assignments is None else [a for a in assignments if a in known]
        missing = [a for a in (assignments or []) if a not in known]
        if missing:
            raise ValueError(f"assignments {missing} are not in the gradebook {db_url}: run prepare_course first")
        self.assignments = gb_assignments
        self.trusted: dict[str, TrustedAssignment] = {
            a: load_trusted(a, self.gb, self.course_dir, self.checks) for a in self.assignments}
        self.cases = {a: make_cases(t, secret_seed, self.checks) for a, t in self.trusted.items()}
        self.released = {a: released_code(self.course_dir / "release" / a / f"{a}.ipynb") for a in self.assignments}
        self.journal = Journal(self.out_dir / "journal")
        self.code_hash = _checker_code_hash()
        self.entries: list[dict] = []

    # -- keys and paths ---------------------------------------------------------------------------------
    def key(self, sub: Submission) -> str:
        """What a journal record must match to count as done: files, course, checkers, grader, secret."""
        fingerprint = self.trusted[sub.assignment].fingerprint if sub.assignment in self.trusted else "-"
        seed_tag = hashlib.sha256(str(self.secret_seed).encode()).hexdigest()[:8]
        return f"{sub.digest[:32]}:{fingerprint}:{self.code_hash}:{GRADER_VERSION}:{seed_tag}"

    def feedback_path(self, student: str, assignment: str) -> Path:
        return self.out_dir / "feedback" / safe_name(student) / safe_name(assignment) / f"{safe_name(assignment)}.html"

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, workers: int) -> dict:
        started = time.time()
        subs = discover(self.submissions, self.assignments)
        todo = []
        for sub in subs:
            record = self.journal.get(sub.student, sub.assignment)
            if record is not None and record.get("key") == self.key(sub):
                self._resync(sub, record)
                self.entries.append(_entry(record, graded_now=False))
            elif sub.problem is not None or sub.assignment not in self.trusted:
                self.finish_guarded(sub, {"outcome": "rejected", "outputs": {}, "details": sub.problem, "wall_s": 0.0},
                                    None)
            else:
                todo.append(sub)
        self.log(f"autograde: {len(subs)} submissions, {len(subs) - len(todo)} already done or rejected, "
                 f"{len(todo)} to run with {workers} worker(s)")
        if todo:
            from autograder.sandbox import cgroup

            self.log(f"autograde: sandbox limits: {cgroup.describe()}")
        jobs = {}
        for sub in list(todo):
            try:
                jobs[sub.key] = self.job(sub)
            except Exception as exc:  # noqa: BLE001  (one submission must not stop the class)
                todo.remove(sub)
                self.grader_error(sub, exc, 0.0)
        by_key = {sub.key: sub for sub in todo}
        if workers <= 1 or len(todo) <= 1:
            for sub in todo:
                self.finish_guarded(sub, self.runner(jobs[sub.key][0]), jobs[sub.key][1])
        else:
            ctx = multiprocessing.get_context("forkserver")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {pool.submit(self.runner, job): key for key, (job, _) in jobs.items()}
                try:
                    for fut in cf.as_completed(futures):
                        key = futures[fut]
                        self.finish_guarded(by_key[key], fut.result(), jobs[key][1])
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
        self.entries.sort(key=lambda e: (e["student"], e["assignment"]))
        write_grades_csv(self.out_dir / "grades.csv", self.gb, self.assignments, self.journal)
        return write_report(self.out_dir, self.entries, started, workers)

    def job(self, sub: Submission) -> tuple[dict, dict]:
        """(the job for a worker, the parsed submission kept here for feedback)."""
        nb = load_notebook(sub.notebook)
        trusted = self.trusted[sub.assignment]
        executable = executable_notebook(nb, trusted)
        probes = build_probes(trusted, self.cases[sub.assignment])
        job = {"name": f"{sub.assignment}.ipynb", "notebook": json.dumps(executable), "probes": probes,
               "limits": self.limits, "student": sub.student, "assignment": sub.assignment}
        return job, nb

    def finish_guarded(self, sub: Submission, result: dict, nb: dict | None) -> None:
        """:meth:`finish`, but a grader failure on one submission (a bug of ours, or learner content that breaks
        a trusted step) becomes a :meth:`grader_error` and the class goes on."""
        try:
            self.finish(sub, result, nb)
        except Exception as exc:  # noqa: BLE001  (one submission must not stop the class)
            self.grader_error(sub, exc, float(result.get("wall_s") or 0.0))

    def grader_error(self, sub: Submission, exc: Exception, wall_s: float) -> None:
        """Report ``sub`` as ``grader error``. Nothing is journaled for it, so the next run grades it again (the
        gradebook holds the parent's verdict if that step had come before the failure)."""
        detail = f"the grader failed on this submission ({type(exc).__name__}: {str(exc)[:300]}); " \
                 f"it is graded again on the next run"
        self.entries.append({"student": sub.student, "assignment": sub.assignment, "outcome": "grader error",
                             "detail": detail, "score": 0.0,
                             "max_score": getattr(self.trusted.get(sub.assignment), "auto_max", 0.0),
                             "graded_now": True, "wall_s": wall_s})
        self.log(f"  {sub.student}/{sub.assignment}: grader error: {detail}")

    def finish(self, sub: Submission, result: dict, nb: dict | None) -> None:
        """Judge one sandbox result and record it: gradebook, feedback, then the journal record (last)."""
        trusted = self.trusted.get(sub.assignment)
        outcome = OUTCOMES.get(result.get("outcome"), "crashed")
        detail = _detail(result.get("details"))
        if trusted is None or not STUDENT_ID.match(sub.student):
            # a folder that is not an assignment, or a student id the gradebook cannot hold (nbgrader's ids are
            # at most 128 characters; PostgreSQL would refuse a longer one and stop the class): report only
            self.entries.append({"student": sub.student, "assignment": sub.assignment, "outcome": "rejected",
                                 "detail": detail, "score": 0.0,
                                 "max_score": trusted.auto_max if trusted else 0.0, "graded_now": True,
                                 "wall_s": 0.0})
            return
        if outcome == "rejected" and not result.get("outputs"):
            cells = rejected_cells(trusted, detail or "the submission was rejected")
        else:
            cells = judge_submission(trusted, self.cases[sub.assignment], result.get("outcome", "crashed"),
                                     result.get("outputs"), self.checks, self.raised)
        # for the instructor only (never a score change): learner code that calls the reference or ready-mades
        try:
            flags = reference_use_flags(executable_notebook(nb, trusted), self.released[sub.assignment]) if nb else []
        except Exception as exc:  # noqa: BLE001  (the scan is advisory: it must never cost a verdict)
            flags = [f"the code scan failed ({type(exc).__name__}): read this notebook by hand"]
        record_submission(self.gb, sub.student, sub.assignment, cells, sub.timestamp)
        write_feedback(self.feedback_path(sub.student, sub.assignment),
                       feedback_notebook(sub.student, trusted, cells, nb, outcome, detail))
        record = {"student": sub.student, "assignment": sub.assignment, "key": self.key(sub), "digest": sub.digest,
                  "outcome": outcome, "detail": detail, "score": sum(c.score for c in cells),
                  "max_score": trusted.auto_max, "cells": [c.to_dict() for c in cells],
                  "wall_s": round(float(result.get("wall_s") or 0.0), 3), "timestamp": sub.timestamp,
                  "log_tail": str(result.get("log") or "")[-LOG_TAIL:], "flags": flags}
        self.journal.put(record)
        self.entries.append(_entry(record, graded_now=True))
        self.log(f"  {sub.student}/{sub.assignment}: {outcome}, {record['score']:g}/{record['max_score']:g}"
                 + (f" ({detail})" if detail and outcome != "graded" else ""))

    def _resync(self, sub: Submission, record: dict) -> None:
        """A journaled submission: make sure the gradebook and feedback agree with the record (no regrading)."""
        cells = [CellResult.from_dict(c) for c in record["cells"]]
        current = recorded_scores(self.gb, sub.student, sub.assignment)
        if current is None or any(current.get(c.grade_id) != c.score for c in cells):
            record_submission(self.gb, sub.student, sub.assignment, cells, sub.timestamp)
        path = self.feedback_path(sub.student, sub.assignment)
        if not path.exists():
            nb = load_notebook(sub.notebook) if sub.notebook is not None else None
            write_feedback(path, feedback_notebook(sub.student, self.trusted[sub.assignment], cells, nb,
                                                   record["outcome"], record.get("detail", "")))


def _detail(details) -> str:
    if details is None:
        return ""
    if isinstance(details, dict):
        details = details.get("reason") or details.get("message") or json.dumps(details, default=str)
    return str(details)[:500]


def _entry(record: dict, graded_now: bool) -> dict:
    return {"student": record["student"], "assignment": record["assignment"], "outcome": record["outcome"],
            "detail": record.get("detail", ""), "score": record["score"], "max_score": record["max_score"],
            "graded_now": graded_now, "wall_s": record.get("wall_s", 0.0), "flags": record.get("flags", [])}


def grade_class(submissions: Path, *, course_dir: Path = Path("build/course"), out_dir: Path = Path("build/grades"),
                db_url: str | None = None, workers: int | None = None, secret_seed: int | None = None,
                limits=None, runner=sandbox_runner, assignments: list[str] | None = None, prepare: bool = True,
                log=print) -> dict:
    """Autograde ``<submissions>/<student_id>/<assignment>/<assignment>.ipynb`` into the course's gradebook.

    ``course_dir`` is the nbgrader course (prepared first with ``autograder.course.prepare_course`` unless
    ``prepare=False``); ``db_url`` its gradebook (default SQLite ``<course_dir>/gradebook.db``); ``out_dir``
    receives ``feedback/``, ``grades.csv``, ``report.json``/``report.txt`` and the ``journal/``. ``workers``
    defaults to the number of cores. ``secret_seed`` (default: made once and kept in ``out_dir``) seeds the
    hidden cases. ``limits`` are the sandbox's (``autograder.sandbox.Limits``); ``runner`` runs one job and is
    replaceable for tests. Returns the run report (a dict, also written to ``out_dir/report.json``).
    """
    from autograder.course import default_db_url, prepare_course

    course_dir = Path(course_dir).resolve()
    db_url = normalise_db_url(db_url or default_db_url(course_dir))
    if prepare:
        prepare_course(course_dir, db_url=db_url)
    out_dir = Path(out_dir).resolve()
    seed = load_secret_seed(out_dir) if secret_seed is None else int(secret_seed)
    grader = Grader(submissions, course_dir, out_dir, db_url, seed, limits, runner, assignments, log)
    try:
        return grader.run(default_workers() if workers is None else max(1, int(workers)))
    finally:
        grader.gb.close()
