"""An adversarial class: hostile notebooks from the sandbox corpus (tests/hostile/) graded in one run with honest
students, through the whole pipeline (intake, sandbox, judging in the parent, gradebook, feedback, grades.csv).

Every entry of the corpus is in the one class run (infinite loops, fork bomb, memory bomb, 100 MB of output, a
200 MB file, ``os._exit``/``sys.exit``/segfault mid-notebook, network, reading secrets, writing outside,
monkeypatching, a fake pass, edited test cells), with small limits passed through ``grade_class`` so that the
run stays quick, two workers, files that are not notebooks, odd file and folder names, and honest students.

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
from autograder.grading.gradebook import dump, open_gradebook, record_submission
from autograder.grading.journal import Journal
from autograder.grading.pipeline import grade_class
from autograder.grading.verdicts import CellResult
from autograder.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = ROOT / "tests" / "hostile"
A = "ch3_sdpa"
MANIFEST = json.loads((HOSTILE / "manifest.json").read_text())
ATTACKS = sorted(MANIFEST)  # the whole corpus, in one run
OUTCOME = {"ok": "graded", "timeout": "timed out", "crashed": "crashed"}
# small limits so that the class stays quick: the loops meet the 3 s alarm, the alarm-proof loop the 20 s wall
# clock, the fork bomb 48 processes, the memory bomb 2 GiB, the big file 32 MiB and a 64 MiB scratch folder
LIMITS = Limits(wall_s=20, cpu_s=18, cell_timeout_s=3, call_timeout_s=6, memory_bytes=2 * 2**30, processes=48,
                file_bytes=32 * 2**20, scratch_bytes=64 * 2**20, log_bytes=16 * 1024)
EARLIER = "earlier_student"  # graded in an earlier run: the hostile run must leave their rows alone


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


def rows_of(db_url: str, student: str) -> list:
    gb = open_gradebook(db_url)
    try:
        return [row for row in dump(gb) if row[0] == student]
    finally:
        gb.close()


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    solutions = tmp / "solutions"
    shutil.copytree(ROOT / "solutions" / A, solutions / A)
    course = prepare_course(tmp / "course", solutions=solutions)
    manifest = MANIFEST
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
    syn.write_submission(subs, "José García", A, syn.solved(course, ROOT / "solutions", A))  # not a usable id
    # honest students, in the same run
    syn.write_submission(subs, "honest_full", A, syn.solved(course, ROOT / "solutions", A))
    syn.write_submission(subs, "honest_part", A, syn.solved(course, ROOT / "solutions", A, only={"ch3-weights"}))
    # an honest student who also handed in files with spaces and non-ASCII names (one holding a secret to hunt)
    syn.write_submission(subs, "honest_odd_files", A, syn.solved(course, ROOT / "solutions", A))
    syn.write_submission(subs, "honest_odd_files", A, "SECRET-TOKEN-bob notes", name="Notizen zur Lösung (v2) ✓.txt")
    syn.write_submission(subs, "honest_odd_files", A, syn.solved(course, ROOT / "solutions", A, only=set()),
                         name="Kopie von ch3 ß.ipynb")
    (out / "planted").mkdir(parents=True)
    (out / "planted" / "secret.txt").write_text("SECRET-TOKEN-grades")  # what a hunt inside the sandbox looks for

    db_url = f"sqlite:///{course / 'gradebook.db'}"
    gb = open_gradebook(db_url)
    try:  # an earlier run's verdicts (3 of 7) for a student not in this run
        earlier = [CellResult(gid, 3.0 if gid == "ch3-weights-test" else 0.0, m, ()) for gid, m in
                   [("ch3-weights-test", 3.0), ("ch3-sdpa-test", 2.0), ("ch3-variance-test", 2.0)]]
        record_submission(gb, EARLIER, A, earlier, None)
    finally:
        gb.close()
    # the repository's files the sandbox can see read-only (this assignment's: other parts are edited elsewhere)
    repo_files = [ROOT / "solutions" / A / f"{A}.ipynb", ROOT / "autograder" / "specs" / f"{A}.py"]
    before = {"repo": [p.read_bytes() for p in repo_files], "solutions": tree_hash(solutions),
              "subs": tree_hash(subs), "course_files": tree_hash(course / "source") + tree_hash(course / "release"),
              "definition": course_definition(db_url), "earlier_rows": rows_of(db_url, EARLIER)}
    report = grade_class(subs, course_dir=course, out_dir=out, workers=2, secret_seed=99, limits=LIMITS,
                         prepare=False, log=lambda *_: None)
    after = {"repo": [p.read_bytes() for p in repo_files], "solutions": tree_hash(solutions),
             "subs": tree_hash(subs), "course_files": tree_hash(course / "source") + tree_hash(course / "release"),
             "definition": course_definition(db_url), "earlier_rows": rows_of(db_url, EARLIER)}
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
    for text in manifest[name]["log_lacks"] + ["LEAK-FOUND", "LEAK-OPENED"]:  # the attack was blocked
        assert text not in record["log_tail"], f"{name}: {text!r} in the log:\n{record['log_tail'][-2000:]}"
    for text in manifest[name]["log_has"]:
        assert text in record["log_tail"], f"{name}: {text!r} missing from the log:\n{record['log_tail'][-2000:]}"
    assert "SECRET-TOKEN" not in json.dumps(record)


def report_counts(report: dict) -> dict:
    counts: dict[str, int] = {}
    for e in report["submissions"]:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    return counts


def test_files_that_are_not_notebooks_are_rejected(hostile_run):
    _, report, _, _, _, _, _ = hostile_run
    entries = {e["student"]: e for e in report["submissions"]}
    for name, words in [("not_json", "not UTF-8"), ("empty", "empty"), ("huge", "200 MiB"),
                        ("odd_name", "mein Notizbuch ü.ipynb"), ("José García", "is not usable")]:
        assert entries[name]["outcome"] == "rejected" and words in entries[name]["detail"], entries[name]
        assert entries[name]["score"] == 0.0


def test_honest_students_are_graded_exactly(hostile_run):
    _, report, _, _, _, db_url, out = hostile_run
    scores = {e["student"]: (e["outcome"], e["score"]) for e in report["submissions"]}
    assert scores["honest_full"] == ("graded", 7.0)
    assert scores["honest_part"] == ("graded", 3.0)
    assert scores["honest_odd_files"] == ("graded", 7.0)
    assert len(scores) == len(ATTACKS) + 8  # the run finished every submission
    assert report_counts(report) == {"graded": sum(m["outcome"] == "ok" for m in MANIFEST.values()) + 3,
                                     "timed out": sum(m["outcome"] == "timeout" for m in MANIFEST.values()),
                                     "crashed": sum(m["outcome"] == "crashed" for m in MANIFEST.values()),
                                     "rejected": 5}
    csv = (out / "grades.csv").read_text()
    for student, score in [("honest_full", 7), ("honest_part", 3), ("honest_odd_files", 7), (EARLIER, 3)]:
        assert f"{student},{A},{score}," in csv


def test_nothing_outside_the_grader_was_touched(hostile_run):
    _, report, before, after, journal, db_url, _ = hostile_run
    assert after == before  # solutions, specs, submissions, course files, gradebook definitions, earlier rows
    gb = open_gradebook(db_url)
    try:
        rows = dump(gb)
    finally:
        gb.close()
    # a student id the course refuses is reported, never written to the gradebook (nor journaled)
    assert journal.get("José García", A) is None
    assert not [r for r in rows if r[0] == "José García"]
    for e in report["submissions"]:  # every auto score in the gradebook is the parent's verdict
        if e["student"] == "José García":
            continue
        record = journal.get(e["student"], A)
        verdicts = {c["grade_id"]: c["score"] for c in record["cells"]}
        stored = {cell: auto for s, a, _, cell, auto, _, _, _ in rows if s == e["student"] and cell in verdicts}
        assert stored == verdicts
