"""The trusted grader's parts, one at a time, without a sandbox: intake, test-cell stripping, judging forged
outputs, the journal, gradebook transactions, grades.csv with manual points, and the specs of every assignment."""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from attn_course.check import CHECKS, Raised
from autograder.grading import intake
from autograder.grading.export import grade_rows
from autograder.grading.gradebook import dump, open_gradebook, record_submission
from autograder.grading.journal import Journal
from autograder.grading.probes import build_probes, case_seed, executable_notebook, make_cases
from autograder.grading.trusted import (
    AutoCell,
    ManualCell,
    SpecError,
    TrustedAssignment,
    load_spec,
    load_trusted,
    released_test_sources,
)
from autograder.grading.verdicts import CellResult, CheckResult, judge_submission

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ["ch1_intuition", "ch2_qkv", "ch3_sdpa", "ch4_masks", "ch5_multihead", "ch6_cost", "ch7_flash"]


def code(source, grade_id=None, test=False):
    meta = {"nbgrader": {"grade": test, "solution": not test, "grade_id": grade_id}} if grade_id else {}
    return {"cell_type": "code", "metadata": meta, "outputs": [], "execution_count": None, "source": source}


def notebook(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


# -- intake --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"{\"cells\": [", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2, 3]", "not a notebook"),
    (json.dumps({"cells": [], "nbformat": 3}).encode(), "nbformat 3"),
    (json.dumps({"cells": [{"cell_type": "code"}], "nbformat": 4}).encode(), "no text 'source'"),
    (json.dumps({"cells": [{"cell_type": "widget", "source": ""}], "nbformat": 4}).encode(), "cell 0"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_load_notebook_rejects_what_is_not_a_notebook(tmp_path, content, words):
    path = tmp_path / "ch1_intuition.ipynb"
    path.write_bytes(content)
    with pytest.raises(intake.RejectedNotebook, match=words):
        intake.load_notebook(path)


def test_load_notebook_rejects_a_huge_file_unread(tmp_path):
    path = tmp_path / "nb.ipynb"
    with open(path, "wb") as f:
        f.truncate(intake.MAX_NOTEBOOK_BYTES + 1)
    with pytest.raises(intake.RejectedNotebook, match="over the 20 MiB limit"):
        intake.load_notebook(path)


def test_discover_reports_every_kind_of_bad_submission(tmp_path):
    good = json.dumps(notebook(code("x = 1")))
    layout = {"ok/ch1_intuition/ch1_intuition.ipynb": good, "ren/ch1_intuition/Copy of ch1.ipynb": good,
              "miss/ch1_intuition/readme.txt": "hi", "bad id/ch1_intuition/ch1_intuition.ipynb": good,
              "wrong/ch9_other/ch9_other.ipynb": good}
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "link" / "ch1_intuition").mkdir(parents=True)
    os.symlink(ROOT / "solutions" / "ch1_intuition" / "ch1_intuition.ipynb",
               tmp_path / "link" / "ch1_intuition" / "ch1_intuition.ipynb")
    found = {s.student: s for s in intake.discover(tmp_path, ["ch1_intuition"])}
    assert found["ok"].problem is None and found["ok"].notebook.name == "ch1_intuition.ipynb"
    assert "renamed" in found["ren"].problem and "Copy of ch1.ipynb" in found["ren"].problem
    assert "missing notebook" in found["miss"].problem
    assert "student id" in found["bad id"].problem
    assert "unknown assignment folder 'ch9_other'" in found["wrong"].problem
    assert "symbolic links" in found["link"].problem  # a link could point at the solutions


def test_digest_follows_content_and_names_only(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "nb.ipynb").write_text("one")
    first = intake.folder_digest(a)
    os.utime(a / "nb.ipynb", (1, 1))
    assert intake.folder_digest(a) == first  # touching a file is not a new submission
    (a / "nb.ipynb").write_text("two")
    assert intake.folder_digest(a) != first
    (a / "nb.ipynb").write_text("one")
    (a / "extra.py").write_text("")
    assert intake.folder_digest(a) != first


# -- which cells run -----------------------------------------------------------------------------------------
TRUSTED = TrustedAssignment(
    "ch6_cost", "ch6_cost",
    (AutoCell("t-flops", 3.0, (("layer_flops", "layer_flops"),), "check.layer_flops(layer_flops)\n"),
     AutoCell("t-both", 2.0, (("layer_flops", "layer_flops"), ("scores_bytes", "scores_bytes")),
              "check.scores_bytes(scores_bytes)\n")),
    (ManualCell("written", 2.0, "markdown"),), "fp")


def test_test_cells_are_recognised_by_release_id_or_source_never_run():
    nb = notebook(
        code("import torch"),
        code("def layer_flops(T, d):\n    return 1\n", grade_id="sol-1"),
        code("check.layer_flops(layer_flops)\n", grade_id="t-flops", test=True),  # intact test cell
        code("check.scores_bytes(scores_bytes)"),  # test cell with its metadata stripped
        code("print('all tests passed')", grade_id="t-both", test=False),  # learner code relabelled as a test id
        code("def scores_bytes(*a):\n    return 0\n", grade_id="mine", test=True),  # learner marked own answer a test
        {"cell_type": "markdown", "metadata": {}, "source": "# notes"},
    )
    sources = [c["source"] for c in executable_notebook(nb, TRUSTED)["cells"]]
    # the learner's own cells run whatever their metadata says; cells that are (or pose as) tests do not
    assert sources == ["import torch", "def layer_flops(T, d):\n    return 1\n",
                       "def scores_bytes(*a):\n    return 0\n"]


def test_probes_carry_the_parents_cases_with_a_secret_dependent_seed():
    cases = make_cases(TRUSTED, 123, CHECKS)
    probes = build_probes(TRUSTED, cases)
    assert [p["id"] for p in probes] == ["t-flops::0", "t-both::0", "t-both::1"]
    assert probes[0]["cases"] is cases["layer_flops"] and probes[2]["check"] == "scores_bytes"
    assert case_seed(123, "ch6_cost", "layer_flops") != case_seed(124, "ch6_cost", "layer_flops")
    assert case_seed(123, "ch6_cost", "layer_flops") == case_seed(123, "ch6_cost", "layer_flops")


# -- judging in the parent -----------------------------------------------------------------------------------
def honest_outputs(cases):
    flops = [{"ok": CHECKS["layer_flops"].call(lambda T, d_model: 2 * (4 * T * d_model**2 + 2 * T**2 * d_model), c)}
             for c in cases["layer_flops"]]
    scores = [{"ok": CHECKS["scores_bytes"].call(lambda B, H, T, bytes_per_element: B * H * T * T * bytes_per_element,
                                                 c)} for c in cases["scores_bytes"]]
    return {"t-flops::0": flops, "t-both::0": flops, "t-both::1": scores}


def judge(outputs, outcome="ok"):
    cases = make_cases(TRUSTED, 5, CHECKS)
    return {r.grade_id: r for r in judge_submission(TRUSTED, cases, outcome, outputs(cases), CHECKS, Raised)}


def test_right_outputs_earn_every_point():
    results = judge(honest_outputs)
    assert {g: r.score for g, r in results.items()} == {"t-flops": 3.0, "t-both": 2.0}
    assert all(c.passed for r in results.values() for c in r.checks)


@pytest.mark.parametrize("forge, words", [
    (lambda out: [{"ok": "✓ all cases passed"}] * len(out), ""),  # printing a pass is not an output
    (lambda out: out[:-1], "expected"),  # one result short
    (lambda out: [{"ok": 1, "raised": None}] * len(out), "not an output record"),
    (lambda out: [{"raised": ["NotImplementedError", ""]}] * len(out), "not implemented"),
    (lambda out: "PASSED", "expected"),
])
def test_forged_or_missing_outputs_earn_nothing(forge, words):
    def outputs(cases):
        out = honest_outputs(cases)
        out["t-both::1"] = forge(out["t-both::1"])
        return out

    results = judge(outputs)
    assert results["t-flops"].score == 3.0
    assert results["t-both"].score == 0.0  # one failing check sinks the whole cell
    assert words in results["t-both"].checks[1].message


def test_a_probe_that_never_ran_fails_with_the_reason():
    def outputs(cases):
        out = honest_outputs(cases)
        del out["t-flops::0"]
        return out

    results = judge(outputs, outcome="timeout")
    assert results["t-flops"].score == 0.0 and "ran out of time" in results["t-flops"].checks[0].message


def test_an_output_that_breaks_the_judge_is_a_failure(monkeypatch):
    def exploding(case, output):
        raise RuntimeError("boom")

    monkeypatch.setattr(CHECKS["scores_bytes"], "judge", exploding)
    results = judge(honest_outputs)
    assert results["t-both"].score == 0.0 and "could not be judged" in results["t-both"].checks[1].message


# -- journal -------------------------------------------------------------------------------------------------
def test_journal_keeps_whole_records_and_ignores_debris(tmp_path):
    journal = Journal(tmp_path)
    journal.put({"student": "s1", "assignment": "a", "score": 1.0})
    assert journal.get("s1", "a")["score"] == 1.0
    (tmp_path / "s1" / ".a.json.123.tmp").write_text('{"student": "s1", "assi')  # a write cut off by a kill
    (tmp_path / "s2").mkdir()
    (tmp_path / "s2" / "a.json").write_text('{"student": "s2", "assignm')  # torn record (not by us): regrade
    assert journal.get("s2", "a") is None
    assert [r["student"] for r in journal.records()] == ["s1"]
    assert journal.get("s1", "a")["score"] == 1.0


# -- gradebook and export ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gradebook_template(tmp_path_factory) -> Path:
    """A gradebook file with one assignment: two autograded test cells, one written answer and one code answer
    graded by hand (built through nbgrader's API, as generate_assignment would; made once, it is slow)."""
    path = tmp_path_factory.mktemp("gradebook") / "gb.db"
    gb = open_gradebook(f"sqlite:///{path}")
    try:
        gb.add_assignment("ch6_cost")
        gb.add_notebook("ch6_cost", "ch6_cost")
        for name, points, kind in [("t-flops", 3.0, "code"), ("t-both", 2.0, "code"), ("written", 2.0, "markdown"),
                                   ("handcode", 1.0, "code")]:
            gb.add_grade_cell(name, "ch6_cost", "ch6_cost", max_score=points, cell_type=kind)
        for name in ("written", "handcode"):
            gb.add_solution_cell(name, "ch6_cost", "ch6_cost")
    finally:
        gb.close()
    return path


@pytest.fixture
def small_gradebook(gradebook_template, tmp_path):
    shutil.copy(gradebook_template, tmp_path / "gb.db")
    gb = open_gradebook(f"sqlite:///{tmp_path / 'gb.db'}")
    yield gb
    gb.close()


def cells(flops, both):
    return [CellResult("t-flops", flops, 3.0, (CheckResult("layer_flops", "layer_flops", bool(flops), ""),)),
            CellResult("t-both", both, 2.0, (CheckResult("scores_bytes", "scores_bytes", bool(both), ""),))]


def test_gradebook_write_is_one_transaction(small_gradebook, monkeypatch):
    gb = small_gradebook

    def failing_commit():
        raise RuntimeError("power cut")

    monkeypatch.setattr(gb.db, "commit", failing_commit)
    with pytest.raises(RuntimeError, match="power cut"):
        record_submission(gb, "ann", "ch6_cost", cells(3.0, 0.0))
    monkeypatch.undo()
    assert dump(gb) == [] and gb.students == []  # nothing half-written: no student, no submission, no grade
    record_submission(gb, "ann", "ch6_cost", cells(3.0, 0.0))
    record_submission(gb, "ann", "ch6_cost", cells(3.0, 0.0))  # idempotent
    assert [(r[0], r[3], r[4], r[7]) for r in dump(gb)] == [
        ("ann", "handcode", None, True),
        ("ann", "t-both", 0.0, False), ("ann", "t-flops", 3.0, False), ("ann", "written", None, True)]


def test_grades_csv_is_explicit_about_manual_points(small_gradebook, tmp_path):
    gb = small_gradebook
    journal = Journal(tmp_path / "journal")
    record_submission(gb, "ann", "ch6_cost", cells(3.0, 0.0))
    journal.put({"student": "ann", "assignment": "ch6_cost", "outcome": "graded"})
    gb.add_student("ben")
    row = lambda: {r["student"]: r for r in grade_rows(gb, ["ch6_cost"], journal)}
    ann = row()["ann"]
    assert (ann["score"], ann["max_score"], ann["auto_score"], ann["auto_max_score"]) == ("3", "8", "3", "5")
    assert (ann["manual_score"], ann["manual_max_score"], ann["manual_pending"]) == ("", "3", "2")
    assert row()["ben"]["status"] == "no submission" and row()["ben"]["score"] == "0"
    grade = gb.find_grade("written", "ch6_cost", "ch6_cost", "ann")  # the instructor marks the written answer
    grade.manual_score = 1.5
    gb.db.commit()
    ann = row()["ann"]
    assert (ann["score"], ann["manual_score"], ann["manual_pending"], ann["status"]) == ("4.5", "1.5", "1", "graded")
    record_submission(gb, "ann", "ch6_cost", cells(3.0, 2.0))  # a regrade keeps the instructor's mark
    assert row()["ann"]["score"] == "6.5"


# -- specs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_spec_covers_its_notebooks_test_cells(assignment):
    source = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
    tests = released_test_sources(source)  # grade_id -> visible source (hidden blocks removed)
    assert all("hidden=True" not in s for s in tests.values())
    points = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"]
              for c in json.loads(source.read_text())["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id")
              in tests}
    spec = load_spec(assignment)
    assert set(spec) == set(tests)
    assert {g: float(e["points"]) for g, e in spec.items()} == {g: float(p) for g, p in points.items()}
    assert all(check in CHECKS for e in spec.values() for check, _ in e["checks"])


def test_a_spec_that_disagrees_with_the_gradebook_stops_the_run(small_gradebook, tmp_path, monkeypatch):
    release = tmp_path / "release" / "ch6_cost" / "ch6_cost.ipynb"
    release.parent.mkdir(parents=True)
    release.write_text(json.dumps(notebook(code("check.layer_flops(layer_flops)", "t-flops", test=True),
                                           code("check.scores_bytes(scores_bytes)", "t-both", test=True))))
    spec = types.ModuleType("autograder.specs.ch6_cost")
    spec.GRADED = {"t-flops": {"points": 3.0, "checks": [["layer_flops", "layer_flops"]]},
                   "t-both": {"points": 2.0, "checks": [["scores_bytes", "scores_bytes"]]}}
    monkeypatch.setitem(sys.modules, "autograder.specs.ch6_cost", spec)
    trusted = load_trusted("ch6_cost", small_gradebook, tmp_path, CHECKS)
    assert [c.grade_id for c in trusted.tests] == ["t-flops", "t-both"] and trusted.manual_max == 3.0
    spec.GRADED["t-both"]["points"] = 4.0
    with pytest.raises(SpecError, match="worth 4.0 points but the notebook says 2.0"):
        load_trusted("ch6_cost", small_gradebook, tmp_path, CHECKS)
    del spec.GRADED["t-both"]
    with pytest.raises(SpecError, match=r"missing \['t-both'\]"):
        load_trusted("ch6_cost", small_gradebook, tmp_path, CHECKS)
    spec.GRADED["t-both"] = {"points": 2.0, "checks": [["no_such_checker", "x"]]}
    with pytest.raises(SpecError, match="no_such_checker"):
        load_trusted("ch6_cost", small_gradebook, tmp_path, CHECKS)


def test_case_inputs_survive_the_trip_to_the_sandbox(tmp_path):
    cases = make_cases(TRUSTED, 1, CHECKS)
    torch.save(cases, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True) == cases
