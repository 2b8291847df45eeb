"""The whole autograding loop on a synthetic class built from the real assignments (two fast ones).

The class: a student who hands in the solutions (full marks), one who hands in the untouched release (zero,
nothing crashes), one with a chosen mix of right, wrong and unfinished answers (an exact partial score), and
broken hand-ins (corrupt JSON, a renamed notebook, a missing notebook, an empty file) that are rejected with a
message while the rest is graded. Then: a rerun grades only what is new or changed; a run killed midway
resumes without regrading what was done; WORKERS=2 gives exactly the sequential result.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autograder.course import prepare_course
from autograder.grading import synthetic as syn
from autograder.grading.gradebook import dump, open_gradebook
from autograder.grading.pipeline import grade_class
from autograder.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["ch1_intuition", "ch3_sdpa"]
SEED = 20261123
LIMITS = Limits(wall_s=120, cell_timeout_s=30)

# The partial student: per assignment, the answer cells filled in (solution, or a wrong answer of our own),
# and the autograded points that mix must earn. Unlisted answer cells stay as released (not implemented).
WRONG_SOFT_LOOKUP = '''def soft_lookup(query, keys, values):
    return values.mean(dim=0)  # ignores the query: a uniform average, not softmax-weighted
'''
WRONG_SDPA = '''def scaled_dot_product_attention(q, k, v, mask=None):
    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)  # forgot the 1/sqrt(d_k) scale
    return weights @ v
'''
PARTIAL = {
    "ch1_intuition": ({"ch1-hard-lookup"}, {"ch1-soft-lookup": WRONG_SOFT_LOOKUP}, 1.0),  # hard lookup only
    "ch3_sdpa": ({"ch3-weights"}, {"ch3-sdpa": WRONG_SDPA}, 3.0),  # weights right, sdpa unscaled
}
# autograded points of each assignment (from the specs) and the written-answer points (from the notebooks)
AUTO_MAX = {"ch1_intuition": 5.0, "ch3_sdpa": 7.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A course with the two assignments (nbgrader generate_assignment runs once per module)."""
    base = tmp_path_factory.mktemp("course")
    solutions = base / "solutions"
    for a in ASSIGNMENTS:
        shutil.copytree(ROOT / "solutions" / a, solutions / a)
    return prepare_course(base / "course", solutions=solutions)


def fresh_course(prepared: Path, tmp_path: Path) -> Path:
    """A private copy of the prepared course (its own SQLite gradebook)."""
    return Path(shutil.copytree(prepared, tmp_path / "course"))


def release(course: Path, a: str) -> dict:
    return syn.read(course / "release" / a / f"{a}.ipynb")


def build_class(course: Path, subs: Path) -> dict[tuple[str, str], tuple[str, float]]:
    """Write the synthetic class; return (student, assignment) -> (expected outcome, expected auto score)."""
    sol = ROOT / "solutions"
    expected = {}
    for a in ASSIGNMENTS:
        syn.write_submission(subs, "alice", a, syn.solved(course, sol, a))
        expected["alice", a] = ("graded", AUTO_MAX[a])
        syn.write_submission(subs, "bob", a, release(course, a))
        expected["bob", a] = ("graded", 0.0)
        right, wrong, points = PARTIAL[a]
        nb = syn.fill(syn.solved(course, sol, a, only=right), wrong)
        syn.write_submission(subs, "carol", a, nb)
        expected["carol", a] = ("graded", points)
    a1, a2 = ASSIGNMENTS
    syn.write_submission(subs, "dave", a1, b'{"cells": [ {"cell_type": "code", "sour')  # truncated upload
    syn.write_submission(subs, "dave", a2, syn.solved(course, sol, a2))  # dave's other notebook is fine
    expected["dave", a1], expected["dave", a2] = ("rejected", 0.0), ("graded", AUTO_MAX[a2])
    syn.write_submission(subs, "erin", a1, syn.solved(course, sol, a1), name="my answers é.ipynb")
    expected["erin", a1] = ("rejected", 0.0)
    (subs / "frank" / a1).mkdir(parents=True)
    (subs / "frank" / a1 / "notes.txt").write_text("forgot the notebook")
    expected["frank", a1] = ("rejected", 0.0)
    syn.write_submission(subs, "gina", a2, b"")
    expected["gina", a2] = ("rejected", 0.0)
    return expected


def run(course: Path, subs: Path, out: Path, workers: int) -> dict:
    return grade_class(subs, course_dir=course, out_dir=out, workers=workers, secret_seed=SEED, limits=LIMITS,
                       assignments=ASSIGNMENTS, prepare=False, log=lambda *_: None)


def outputs_of(course: Path, out: Path) -> tuple:
    """Everything a run produces that must not depend on the number of workers or on interruptions."""
    gb = open_gradebook(f"sqlite:///{course / 'gradebook.db'}")
    try:
        grades = dump(gb)
    finally:
        gb.close()
    feedback = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "feedback").rglob("*.html"))}
    return grades, (out / "grades.csv").read_text(), feedback


@pytest.fixture(scope="module")
def parallel_run(prepared, tmp_path_factory):
    """The class graded once with WORKERS=2: (course, submissions, out dir, expected, report)."""
    tmp = tmp_path_factory.mktemp("parallel")
    course, subs, out = fresh_course(prepared, tmp), tmp / "subs", tmp / "grades"
    expected = build_class(course, subs)
    report = run(course, subs, out, workers=2)
    return course, subs, out, expected, report


def test_each_submission_gets_its_exact_outcome_and_score(parallel_run):
    _, _, _, expected, report = parallel_run
    got = {(e["student"], e["assignment"]): (e["outcome"], e["score"]) for e in report["submissions"]}
    assert got == expected
    details = {(e["student"], e["assignment"]): e["detail"] for e in report["submissions"]}
    a1, a2 = ASSIGNMENTS
    assert "not valid JSON" in details["dave", a1]
    assert "renamed" in details["erin", a1] and "my answers é.ipynb" in details["erin", a1]
    assert "missing notebook" in details["frank", a1]
    assert "empty" in details["gina", a2]


def test_grades_csv_has_every_student_and_assignment(parallel_run):
    course, _, out, expected, _ = parallel_run
    rows = (out / "grades.csv").read_text().splitlines()
    assert rows[0] == ("student,assignment,score,max_score,auto_score,auto_max_score,manual_score,"
                       "manual_max_score,manual_pending,status")
    gb = open_gradebook(f"sqlite:///{course / 'gradebook.db'}")
    try:  # hand-graded cells per assignment (written answers), straight from nbgrader's grade cells
        manual_max, n_manual = {}, {}
        for a in ASSIGNMENTS:
            nb = gb.find_notebook(a, a)
            solution = {c.name for c in nb.solution_cells}
            manual = [c for c in nb.grade_cells if c.cell_type == "markdown" or c.name in solution]
            manual_max[a], n_manual[a] = sum(c.max_score for c in manual), len(manual)
    finally:
        gb.close()
    want = []
    for student in ["alice", "bob", "carol", "dave", "erin", "frank", "gina"]:
        for a in ASSIGNMENTS:
            total = f"{AUTO_MAX[a] + manual_max[a]:g}"
            if (student, a) not in expected:
                want.append(f"{student},{a},0,{total},0,{AUTO_MAX[a]:g},,{manual_max[a]:g},,no submission")
                continue
            outcome, score = expected[student, a]
            want.append(f"{student},{a},{score:g},{total},{score:g},{AUTO_MAX[a]:g},,{manual_max[a]:g},"
                        f"{n_manual[a]},{outcome}")
    assert rows[1:] == want


def test_feedback_shows_verdicts_but_no_hidden_test(parallel_run):
    course, _, out, expected, _ = parallel_run
    for student, a in expected:
        page = (out / "feedback" / student / a / f"{a}.html").read_text()
        assert "hidden=True" not in page and "BEGIN HIDDEN TESTS" not in page
        assert f"Feedback: {a} ({student})" in page
    carol = (out / "feedback" / "carol" / "ch3_sdpa" / "ch3_sdpa.html").read_text()
    assert "PASSED: 3 / 3 points" in carol and "FAILED: 0 / 2 points" in carol
    assert "not implemented yet" in carol  # Task 3.4 was left as released
    assert "sqrt" in carol  # the unscaled-softmax mutant is named
    bob = (out / "feedback" / "bob" / "ch1_intuition" / "ch1_intuition.html").read_text()
    assert "Autograded score: <b>0 / 5</b>" in bob


def test_gradebook_holds_per_cell_auto_scores_and_leaves_manual_cells(parallel_run):
    course, _, _, _, _ = parallel_run
    gb = open_gradebook(f"sqlite:///{course / 'gradebook.db'}")
    try:
        rows = {(s, a, cell): (auto, manual, needs) for s, a, _, cell, auto, manual, _, needs in dump(gb)}
    finally:
        gb.close()
    assert rows["carol", "ch3_sdpa", "ch3-weights-test"] == (3.0, None, False)
    assert rows["carol", "ch3_sdpa", "ch3-sdpa-test"] == (0.0, None, False)
    assert rows["alice", "ch1_intuition", "ch1-soft-lookup-test"] == (2.0, None, False)
    manual = [v for (s, a, cell), v in rows.items() if s == "alice" and a == "ch3_sdpa" and not cell.endswith("test")]
    assert manual and all(v == (None, None, True) for v in manual)  # written answers wait for the instructor


def test_rerun_grades_only_new_or_changed_submissions(parallel_run, tmp_path):
    course, subs, out, expected, _ = parallel_run
    course, new_subs, new_out = fresh_course(course, tmp_path), tmp_path / "subs", tmp_path / "grades"
    shutil.copytree(subs, new_subs)
    shutil.copytree(out, new_out)
    a1 = ASSIGNMENTS[0]
    syn.write_submission(new_subs, "bob", a1, syn.solved(course, ROOT / "solutions", a1))  # bob finishes ch1
    syn.write_submission(new_subs, "hana", a1, release(course, a1))  # a late student
    report = run(course, new_subs, new_out, workers=1)
    now = {(e["student"], e["assignment"]) for e in report["submissions"] if e["graded_now"]}
    assert now == {("bob", a1), ("hana", a1)}
    scores = {(e["student"], e["assignment"]): e["score"] for e in report["submissions"]}
    assert scores["bob", a1] == AUTO_MAX[a1] and scores["hana", a1] == 0.0
    assert scores["alice", a1] == AUTO_MAX[a1]  # earlier verdicts are kept from the journal
    csv = (new_out / "grades.csv").read_text()
    assert f"bob,{a1},{AUTO_MAX[a1]:g}," in csv and f"hana,{a1},0," in csv


def test_sequential_run_equals_parallel_run(parallel_run, prepared, tmp_path):
    ref_course, subs, ref_out, _, _ = parallel_run
    course, out = fresh_course(prepared, tmp_path), tmp_path / "grades"
    run(course, subs, out, workers=1)
    assert outputs_of(course, out) == outputs_of(ref_course, ref_out)


def test_killed_run_resumes_without_regrading(parallel_run, prepared, tmp_path):
    ref_course, subs, ref_out, expected, _ = parallel_run
    course, out = fresh_course(prepared, tmp_path), tmp_path / "grades"
    out.mkdir()
    (out / ".secret_seed").write_text(str(SEED))
    n_rejected = sum(outcome == "rejected" for outcome, _ in expected.values())
    cmd = [sys.executable, "-m", "autograder.grading", str(subs), "--course-dir", str(course), "--out-dir", str(out),
           "--no-prepare", "--workers", "1", "--timeout", "120", "--assignments", *ASSIGNMENTS]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    journal = out / "journal"
    try:
        deadline = time.monotonic() + 120
        while len(list(journal.glob("*/*.json"))) < n_rejected + 1:  # rejections, then one sandboxed notebook
            assert proc.poll() is None, "the grader exited before it could be killed"
            assert time.monotonic() < deadline, "the grader made no progress"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the grader's own process group, sandboxes included
        proc.wait()
    done = {(p.parent.name, p.stem) for p in journal.glob("*/*.json")}
    assert n_rejected + 1 <= len(done) < len(expected), "the kill did not land midway"

    report = run(course, subs, out, workers=2)
    now = {(e["student"], e["assignment"]) for e in report["submissions"] if e["graded_now"]}
    assert now == set(expected) - done  # nothing journaled was graded again
    got = {(e["student"], e["assignment"]): (e["outcome"], e["score"]) for e in report["submissions"]}
    assert got == expected
    assert outputs_of(course, out) == outputs_of(ref_course, ref_out)
    assert json.loads((out / "report.json").read_text())["counts"]["graded now"] == len(expected) - len(done)


def test_unusable_student_ids_are_reported_never_stored(prepared, tmp_path):
    """A folder name that cannot be a gradebook id (nbgrader's ids hold 128 characters; ours are ASCII) is
    rejected with the reason, and neither the gradebook, the journal nor grades.csv gets a row for it (on
    PostgreSQL such an insert would fail and stop the class)."""
    course, subs, out = fresh_course(prepared, tmp_path), tmp_path / "subs", tmp_path / "grades"
    a = ASSIGNMENTS[1]
    for student in ("student_" + "x" * 140, "José García"):
        syn.write_submission(subs, student, a, syn.solved(course, ROOT / "solutions", a))
    report = run(course, subs, out, workers=1)
    assert len(report["submissions"]) == 2
    for e in report["submissions"]:
        assert e["outcome"] == "rejected" and "is not usable" in e["detail"] and e["score"] == 0.0, e
        assert e["max_score"] == AUTO_MAX[a]
    grades, csv, feedback = outputs_of(course, out)
    assert grades == []  # no submission row at all in the gradebook
    assert "José" not in csv and "x" * 140 not in csv and not feedback
    assert not list((out / "journal").glob("*/*.json"))


def test_a_grader_failure_on_one_submission_does_not_stop_the_class(prepared, tmp_path, monkeypatch):
    """If a trusted step fails on one submission (here: writing bob's feedback), that submission is reported
    as a grader error and not journaled, the rest of the class is graded, and the next run grades it."""
    from autograder.grading import pipeline

    course, subs, out = fresh_course(prepared, tmp_path), tmp_path / "subs", tmp_path / "grades"
    a = ASSIGNMENTS[0]
    for student in ("alice", "bob"):
        syn.write_submission(subs, student, a, syn.solved(course, ROOT / "solutions", a))
    real = pipeline.write_feedback

    def flaky(path, nb):
        if "bob" in path.parts:
            raise RuntimeError("disk full (planted)")
        real(path, nb)

    monkeypatch.setattr(pipeline, "write_feedback", flaky)
    report = run(course, subs, out, workers=1)
    got = {e["student"]: e for e in report["submissions"]}
    assert got["alice"]["outcome"] == "graded" and got["alice"]["score"] == AUTO_MAX[a]
    assert got["bob"]["outcome"] == "grader error" and "disk full (planted)" in got["bob"]["detail"]
    assert report["counts"]["grader error"] == 1
    assert not (out / "journal" / "bob").exists() or not list((out / "journal" / "bob").glob("*.json"))

    monkeypatch.setattr(pipeline, "write_feedback", real)
    report = run(course, subs, out, workers=1)
    got = {e["student"]: (e["outcome"], e["score"], e["graded_now"]) for e in report["submissions"]}
    assert got == {"alice": ("graded", AUTO_MAX[a], False), "bob": ("graded", AUTO_MAX[a], True)}


def test_one_student_with_all_seven_solutions_scores_full_marks_everywhere(tmp_path):
    """The loop over the whole course (the class above uses two quick assignments): every solution notebook,
    submitted as a student would, earns every autograded point of its assignment, the Triton kernel of ch7
    included (compiled on a GPU when present, else in the interpreter inside the sandbox)."""
    import importlib

    from autograder.course import ASSIGNMENTS as ALL

    course = prepare_course(tmp_path / "course")
    subs, out = tmp_path / "subs", tmp_path / "grades"
    for a in ALL:
        syn.write_submission(subs, "zoe", a, syn.solved(course, ROOT / "solutions", a))
    report = grade_class(subs, course_dir=course, out_dir=out, workers=2, secret_seed=SEED, limits=LIMITS,
                         prepare=False, log=lambda *_: None)
    got = {e["assignment"]: (e["outcome"], e["score"], e["max_score"]) for e in report["submissions"]}
    assert set(got) == set(ALL)
    for a in ALL:
        outcome, score, max_score = got[a]
        spec_points = sum(cell["points"] for cell in importlib.import_module(f"autograder.specs.{a}").GRADED.values())
        assert outcome == "graded" and score == max_score == spec_points > 0, (a, got[a])
    rows = [line.split(",") for line in (out / "grades.csv").read_text().splitlines()[1:]]
    assert sorted(r[1] for r in rows if r[0] == "zoe" and r[-1] == "graded") == sorted(ALL)
