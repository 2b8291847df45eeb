"""The graded exercises of chapters 1-4 (``solutions/ch1_intuition`` ... ``solutions/ch4_masks``).

What is checked, per assignment:

* the nbgrader metadata is valid (schema 3) and every exercise carries a ``Task <chapter>.<n>`` banner;
* the trusted-verdict spec ``autograder/specs/<assignment>.py`` covers exactly the notebook's autograded
  cells, with the same points, naming checkers that exist and functions the notebook defines, and each test
  cell's visible and hidden tests call exactly those checkers;
* the source notebook, run in a real kernel with its solutions, passes every test cell;
* the student version (nbgrader's own ClearSolutions and ClearHiddenTests) runs its non-test cells cleanly
  and fails every autograded cell with "not implemented yet", and ships no solution or hidden test;
* a copy of the notebook with classic mistakes planted fails exactly the matching cells, each with the
  diagnosis the checker gives for that mistake, and passes the others.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbgrader.nbgraderformat import MetadataValidator
from nbgrader.utils import determine_grade
from notebook_tools import is_test_cell, load, nbgrader_meta, student_version

from attn_course.check import CHECKS, CheckFailed

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ("ch1_intuition", "ch2_qkv", "ch3_sdpa", "ch4_masks")
CELL_TIMEOUT_S = 60

# Planted mistakes, one wrong copy of the notebook per assignment. Each entry: the solution cell, the line
# edits that plant the mistake, the test cell that must then fail, its checker and target, and the name the
# checker's mutant catalogue gives the mistake. Every other test cell of the copy must still pass.
MUTANTS = {
    "ch1_intuition": [
        ("ch1-soft-lookup", [("scores = keys @ query", "scores = keys @ query / keys.shape[-1] ** 0.5")],
         "ch1-soft-lookup-test", "soft_lookup", "soft_lookup", "scaled_scores"),
        ("ch1-temperature", [("torch.softmax(x / temperature, dim=-1)", "torch.softmax(x * temperature, dim=-1)")],
         "ch1-temperature-test", "softmax_temperature", "softmax_temperature", "multiplied_by_temperature"),
    ],
    "ch2_qkv": [
        ("ch2-projections", [("q = x @ w_q.T", "q = x @ w_q"), ("k = x @ w_k.T", "k = x @ w_k"),
                             ("v = x @ w_v.T", "v = x @ w_v")],
         "ch2-projections-test", "qkv_projections", "qkv_projections", "weight_not_transposed"),
        ("ch2-split", [("x = x.reshape(B, T, n_heads, d_head)", "return x.reshape(B, n_heads, T, d_head)")],
         "ch2-split-test", "split_heads", "split_heads", "view_bug"),
    ],
    "ch3_sdpa": [
        ("ch3-sdpa", [("weights = attention_weights(q, k, mask)", "weights = attention_weights(q, k)")],
         "ch3-sdpa-test", "scaled_dot_product_attention", "scaled_dot_product_attention", "mask_ignored"),
        ("ch3-variance", [("dots = (q * k).sum(dim=-1)", "dots = q * k")],
         "ch3-variance-test", "dot_product_variance", "dot_product_variance", "variance_after_scaling"),
    ],
    "ch4_masks": [
        ("ch4-causal", [("i = torch.arange(T_q)[:, None] + (T_k - T_q)", "i = torch.arange(T_q)[:, None]")],
         "ch4-causal-test", "causal_mask", "causal_mask", "top_left_alignment"),
        ("ch4-masked-attention", [("weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1)",
                                   "weights = torch.softmax(scores, dim=-1)"),
                                  ("weights = weights.masked_fill(dead, 0.0)", "pass")],
         "ch4-masked-attention-test", "masked_attention", "masked_attention", "nan_on_fully_masked_rows"),
    ],
}


# What the solutions must print in the notebooks' own demonstration cells.
DEMO_OUTPUT = {
    "ch3_sdpa": "matches the printed weights: True | matches the printed output: True",  # the worked example
}


# --- helpers -------------------------------------------------------------------------------------------
def is_solution_cell(cell) -> bool:
    return cell.cell_type == "code" and nbgrader_meta(cell).get("solution", False)


def autograded_cells(nb) -> dict:
    return {nbgrader_meta(c)["grade_id"]: c for c in nb.cells if is_test_cell(c)}


def cell_by_id(nb, grade_id: str):
    (cell,) = [c for c in nb.cells if nbgrader_meta(c).get("grade_id") == grade_id]
    return cell


def execute(nb, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel (errors recorded, not raised), in ``workdir``."""
    nb = copy.deepcopy(nb)
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT_S, allow_errors=True,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def error_of(cell) -> tuple[str, str] | None:
    """``(exception type, message)`` of the error a cell raised, or None."""
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            return out.ename, out.evalue
    return None


def text_of(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.extend(out.data.get(kind, "") for kind in ("text/plain", "text/html"))
    return "".join(parts)


def spec(assignment: str) -> dict:
    return importlib.import_module(f"autograder.specs.{assignment}").GRADED


def solution_blocks(nb) -> list[str]:
    """The non-blank lines inside ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` regions."""
    lines = []
    for cell in nb.cells:
        inside = False
        for line in cell.source.splitlines():
            if "BEGIN SOLUTION" in line:
                inside = True
            elif "END SOLUTION" in line:
                inside = False
            elif inside and line.strip():
                lines.append(line.strip())
    return lines


def plant(nb, mutants) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    for sol_id, edits, *_ in mutants:
        cell = cell_by_id(nb, sol_id)
        for old, new in edits:
            assert old in cell.source, f"mutant for {sol_id}: the line {old!r} is no longer in the solution"
            cell.source = cell.source.replace(old, new)
    return nb


def run_in_process(nb) -> dict[str, tuple[str, str] | None]:
    """Run every code cell in order in one namespace, as a kernel would (these cells are plain Python);
    return ``grade_id -> (exception type, message)`` or None for each nbgrader cell."""
    ns: dict = {"__name__": "__main__"}
    errors = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        grade_id = nbgrader_meta(cell).get("grade_id", cell.get("id"))
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(cell.source, f"<{grade_id}>", "exec"), ns)
            errors[grade_id] = None
        except Exception as exc:
            errors[grade_id] = (type(exc).__name__, str(exc))
    return errors


# --- structure -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_metadata_is_valid_nbgrader_schema_3(assignment):
    nb = load(assignment)
    MetadataValidator().validate_nb(nb)  # raises on a missing grade_id, points, duplicate ids, ...
    for cell in nb.cells:
        m = nbgrader_meta(cell)
        if m:
            assert m["schema_version"] == 3, f"{m.get('grade_id')}: schema_version {m['schema_version']}"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_exercise_has_a_task_banner(assignment):
    """Task cells are numbered <chapter>.1, <chapter>.2, ... in order; each test cell names its task."""
    nb = load(assignment)
    chapter = assignment[2]
    numbers = [int(n) for c in nb.cells if c.cell_type == "markdown"
               for n in re.findall(rf"^### Task {chapter}\.(\d+)", c.source, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1)), f"task numbers out of order: {numbers}"
    for grade_id, cell in autograded_cells(nb).items():
        assert re.match(rf"# Task {chapter}\.\d+: ", cell.source), f"{grade_id} does not say which task it checks"
    written = [c for c in nb.cells if c.cell_type == "markdown" and nbgrader_meta(c).get("grade")]
    assert len(written) >= 2, "each assignment has a few manually graded written answers"
    assert all(nbgrader_meta(c)["points"] > 0 for c in written)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_spec_covers_exactly_the_autograded_cells(assignment):
    nb = load(assignment)
    cells, graded = autograded_cells(nb), spec(assignment)
    assert set(graded) == set(cells), "the spec must list every autograded test cell and nothing else"
    defined = {name for c in nb.cells if is_solution_cell(c) for name in re.findall(r"^def (\w+)\(", c.source, re.M)}
    for grade_id, entry in graded.items():
        cell = cells[grade_id]
        assert isinstance(entry["points"], float)
        assert entry["points"] == float(nbgrader_meta(cell)["points"]) > 0, grade_id
        visible, _, hidden = cell.source.partition("### BEGIN HIDDEN TESTS")
        assert hidden, f"{grade_id} has no hidden tests"
        for checker, target in entry["checks"]:
            assert checker in CHECKS, f"{grade_id}: no checker {checker!r} in attn_course.check.CHECKS"
            assert target in defined, f"{grade_id}: the notebook defines no function {target!r} in a solution cell"
            assert f"check.{checker}({target})" in visible, f"{grade_id}: visible test does not call {checker}"
            assert f"check.{checker}({target}, hidden=True)" in hidden, f"{grade_id}: hidden test misses {checker}"
        called = set(re.findall(r"check\.(\w+)\(", cell.source))
        assert called == {c for c, _ in entry["checks"]}, f"{grade_id} calls checkers the spec does not list"


# --- execution -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_pass_every_test_cell(assignment, tmp_path):
    nb = execute(load(assignment), tmp_path)
    errors = {nbgrader_meta(c).get("grade_id", f"cell {i}"): error_of(c) for i, c in enumerate(nb.cells)}
    assert {k: v for k, v in errors.items() if v} == {}
    for grade_id, cell in autograded_cells(nb).items():
        assert "hidden cases passed" in text_of(cell), f"{grade_id} did not report its hidden check"
        # nbgrader reads an execute_result as partial credit and stderr as failure: the reports are printed
        points = float(nbgrader_meta(cell)["points"])
        assert determine_grade(cell) == (points, points), f"nbgrader would not give {grade_id} full marks"
    if assignment in DEMO_OUTPUT:
        assert DEMO_OUTPUT[assignment] in "".join(text_of(c) for c in nb.cells)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_version_fails_cleanly_until_done(assignment, tmp_path):
    source = load(assignment)
    student = student_version(source)
    shipped = "\n".join(c.source for c in student.cells)
    assert "HIDDEN TESTS" not in shipped and "hidden=True" not in shipped
    assert "SOLUTION" not in shipped
    leaked = [line for line in solution_blocks(source) if len(line) > 12 and line in shipped]
    assert leaked == [], f"solution lines left in the student version: {leaked}"

    nb = execute(student, tmp_path)
    for i, cell in enumerate(nb.cells):
        err = error_of(cell)
        if is_test_cell(cell):
            assert err is not None, f"{nbgrader_meta(cell)['grade_id']} passed in the student version"
            assert err[0] == "NotImplementedYet" and "not implemented yet" in err[1], err
            assert determine_grade(cell)[0] == 0
        else:  # the definitions a grader executes must run without the solutions
            assert err is None, f"cell {i} ({nbgrader_meta(cell).get('grade_id', cell.cell_type)}) raised {err}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_planted_mistakes_fail_their_cells_with_the_diagnosis(assignment):
    mutants = MUTANTS[assignment]
    wrong = plant(load(assignment), mutants)
    errors = run_in_process(wrong)
    expected_failures = {test_id for _, _, test_id, *_ in mutants}
    assert {g for g, e in errors.items() if e is not None} == expected_failures, errors

    ns = _definitions(wrong)  # the planted copy's functions, judged directly by each checker
    for _, _, test_id, checker, target, mistake in mutants:
        with pytest.raises(CheckFailed) as info:
            CHECKS[checker](ns[target])
        assert errors[test_id] == ("CheckFailed", str(info.value)), "the cell must fail with the checker's diagnosis"
        assert info.value.verdict.mistake == mistake, f"{test_id} was not diagnosed as {mistake}: {info.value}"


def _definitions(nb) -> dict:
    """The setup and solution cells of ``nb`` run in a fresh namespace: the objects a grader would judge."""
    ns: dict = {}
    for cell in nb.cells:
        m = nbgrader_meta(cell)
        if cell.cell_type == "code" and (m.get("solution") or (m.get("locked") and not m.get("grade"))):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(cell.source, f"<{m['grade_id']}>", "exec"), ns)
    return ns
