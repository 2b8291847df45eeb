"""An adversarial class: hostile notebooks from the sandbox corpus (tests/hostile/) graded in one run with honest
students, through the whole pipeline (intake, sandbox, judging in the parent, gradebook, feedback, grades.csv).

For each hostile submission: it earns no point it did not deserve (``deserves_at_most`` in the corpus manifest:
the honest ``attention_weights`` it carries is worth its 3 points when the notebook runs to the end, the
unscaled ``scaled_dot_product_attention`` nothing), its outcome is the one the manifest expects, and the run
finishes. The honest students' grades are exactly right, and the gradebook's course definition, the solutions,
the specs and every other submission are byte-for-byte untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from autograder.course import prepare_course
from autograder.grading import synthetic as syn
from autograder.grading.gradebook import dump, open_gradebook
from autograder.grading.journal import Journal
from autograder.grading.pipeline import grade_class
from autograder.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
A = "ch3_sdpa"
# the attacks this class carries (the sandbox's own tests run the whole corpus one by one)
ATTACKS = ["monkeypatch", "fake_pass", "edited_tests", "read_secrets", "write_outside", "os_exit",
           "exit_in_function", "infinite_loop_no_alarm"]
OUTCOME = {"ok": "graded", "timeout": "timed out", "crashed": "crashed"}
LIMITS = Limits(wall_s=20, cell_timeout_s=8, call_timeout_s=8)


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def course_definition(db_url: str) -> list:
    """The gradebook's assignments, notebooks, grade cells and source cells (what no grading may change)."""
    from nbgrader.api import GradeCell, SourceCell

    gb = open_gradebook(db_url)
    try:
        cells = [(c.notebook.name, c.name, c.max_score, c.cell_type) for c in gb.db.query(GradeCell).all()]
        sources = [(c.notebook.name, c.name, c.checksum, c.source) for c in gb.db.query(SourceCell).all()]
        return sorted(cells) + sorted(sources)
    finally:
        gb.close()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    solutions = tmp / "solutions"
    shutil.copytree(ROOT / "solutions" / A, solutions / A)
    course = prepare_course(tmp / "course", solutions=solutions)
    manifest = json.loads((HOSTILE / "manifest.json").read_text())
    subs, out = tmp / "subs", tmp / "grades"
    for name in ATTACKS:
        assert manifest[name]["assignment"] == A
        syn.write_submission(subs, name, A, (HOSTILE / manifest[name]["file"]).read_bytes())
    # files that are not notebooks at all
    syn.write_submission(subs, "not_json", A, b"\x89PNG\r\n\x1a\n definitely not a notebook")
    syn.write_submission(subs, "empty", A, b"")
    huge = syn.write_submission(subs, "huge", A, b"")
    with open(huge, "wb") as f:
        f.truncate(200 * 2**20)  # a 200 MB file (sparse: its size is what matters)
    syn.write_submission(subs, "odd_name", A, syn.solved(course, ROOT / "solutions", A), name="mein Notizbuch ü.ipynb")
    # honest students, in the same run
    syn.write_submission(subs, "honest_full", A, syn.solved(course, ROOT / "solutions", A))
    syn.write_submission(subs, "honest_part", A, syn.solved(course, ROOT / "solutions", A, only={"ch3-weights"}))
    (out / "planted").mkdir(parents=True)
    (out / "planted" / "secret.txt").write_text("SECRET-TOKEN-grades")  # what a hunt inside the sandbox looks for

    db_url = f"sqlite:///{course / 'gradebook.db'}"
    # the repository's files the sandbox can see read-only (this assignment's: other parts are edited elsewhere)
    repo_files = [ROOT / "solutions" / A / f"{A}.ipynb", ROOT / "autograder" / "specs" / f"{A}.py"]
    before = {"repo": [p.read_bytes() for p in repo_files], "solutions": tree_hash(solutions),
              "subs": tree_hash(subs), "course_files": tree_hash(course / "source") + tree_hash(course / "release"),
              "definition": course_definition(db_url)}
    report = grade_class(subs, course_dir=course, out_dir=out, workers=2, secret_seed=99, limits=LIMITS,
                         prepare=False, log=lambda *_: None)
    after = {"repo": [p.read_bytes() for p in repo_files], "solutions": tree_hash(solutions),
             "subs": tree_hash(subs), "course_files": tree_hash(course / "source") + tree_hash(course / "release"),
             "definition": course_definition(db_url)}
    return manifest, report, before, after, Journal(out / "journal"), db_url, out


@pytest.mark.parametrize("name", ATTACKS)
def test_hostile_submission_earns_nothing_undeserved(hostile_run, name):
    manifest, report, _, _, journal, _, _ = hostile_run
    entry = next(e for e in report["submissions"] if e["student"] == name)
    assert entry["outcome"] == OUTCOME[manifest[name]["outcome"]], entry["detail"]
    record = journal.get(name, A)
    deserved = manifest[name]["deserves_at_most"]
    cells = {c["grade_id"]: c["score"] for c in record["cells"]}
    assert set(cells) == set(deserved)
    for grade_id, score in cells.items():
        assert score <= deserved[grade_id], f"{name} earned {score} on {grade_id}"
    if manifest[name]["outcome"] == "ok":  # it ran to the end: its honest function earns exactly its points
        assert cells == deserved
    assert "LEAK-FOUND" not in record["log_tail"] and "LEAK-OPENED" not in record["log_tail"]
    assert "SECRET-TOKEN" not in json.dumps(record)


def test_files_that_are_not_notebooks_are_rejected(hostile_run):
    _, report, _, _, _, _, _ = hostile_run
    entries = {e["student"]: e for e in report["submissions"]}
    for name, words in [("not_json", "not UTF-8"), ("empty", "empty"), ("huge", "200 MiB"),
                        ("odd_name", "mein Notizbuch ü.ipynb")]:
        assert entries[name]["outcome"] == "rejected" and words in entries[name]["detail"], entries[name]
        assert entries[name]["score"] == 0.0


def test_honest_students_are_graded_exactly(hostile_run):
    _, report, _, _, _, db_url, out = hostile_run
    scores = {e["student"]: (e["outcome"], e["score"]) for e in report["submissions"]}
    assert scores["honest_full"] == ("graded", 7.0)
    assert scores["honest_part"] == ("graded", 3.0)
    assert len(scores) == len(ATTACKS) + 6  # the run finished every submission
    csv = (out / "grades.csv").read_text()
    assert f"honest_full,{A},7," in csv and f"honest_part,{A},3," in csv


def test_nothing_outside_the_grader_was_touched(hostile_run):
    _, report, before, after, journal, db_url, _ = hostile_run
    assert after == before  # solutions, specs, submissions, course files, gradebook definitions
    gb = open_gradebook(db_url)
    try:
        rows = dump(gb)
    finally:
        gb.close()
    for e in report["submissions"]:  # every auto score in the gradebook is the parent's verdict
        record = journal.get(e["student"], A)
        verdicts = {c["grade_id"]: c["score"] for c in record["cells"]}
        stored = {cell: auto for s, a, _, cell, auto, _, _, _ in rows if s == e["student"] and cell in verdicts}
        assert stored == verdicts
