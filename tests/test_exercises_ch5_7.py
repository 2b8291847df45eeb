"""The graded exercises of chapters 5-7 (``solutions/ch5_multihead``, ``ch6_cost``, ``ch7_flash``).

What is checked, per assignment:

* valid nbgrader metadata (schema 3), ``### Task <chapter>.<n>`` banners in order, test cells that name their
  task, a few manually graded written answers;
* the trusted-verdict spec ``autograder/specs/<assignment>.py`` covers exactly the autograded cells, with the
  same points, checkers that exist, functions the notebook defines, and test cells that call exactly those
  checkers (visible, and hidden with ``hidden=True``);
* the solutions pass every check, visible and hidden (run here, in-process, the way the trusted grader calls
  them; ``tests/test_release.py`` runs the same notebooks in real kernels through ``nbgrader validate``);
* the student version (nbgrader's own ClearSolutions and ClearHiddenTests) runs its non-test cells cleanly and
  every check says "not implemented yet";
* classic mistakes planted in the solutions fail exactly their check, with the mistake named, and only it.

The Triton kernel of Task 7.3 runs in the interpreter here; on a GPU machine it also runs compiled.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbgrader.nbgraderformat import MetadataValidator
from notebook_tools import is_test_cell, load, nbgrader_meta, run_cells, spec, student_version

from attn_course.check import CHECKS, CheckFailed, NotImplementedYet

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ("ch5_multihead", "ch6_cost", "ch7_flash")

# Planted mistakes: (solution cell, text in it, wrong text, spec cell that must fail, the mistake the checker
# must name). Each is planted alone; every other check of the notebook must still pass.
MUTANTS = [
    ("ch5_mha", ".view(heads).transpose(1, 2)", ".view(B, self.n_heads, T, self.d_head)",
     "test_ch5_mha", "split_view_bug"),
    ("ch5_gqa", "scores = (qg @ k.transpose(-2, -1)) / math.sqrt(D)", "scores = qg @ k.transpose(-2, -1)",
     "test_ch5_gqa", "no_scale"),
    ("ch5_kv", "per_token_per_layer = 2 * n_kv_heads * d_head", "per_token_per_layer = n_kv_heads * d_head",
     "test_ch5_kv", "missing_factor_2"),
    ("ch6_flops", "return 2 * (projections + attention_core)", "return projections + attention_core",
     "test_ch6_flops", "macs_not_flops"),
    ("ch6_scores", "return B * H * T * T * bytes_per_element", "return B * H * T * bytes_per_element",
     "test_ch6_scores", "T_not_squared"),
    ("ch7_online", "l = l * torch.exp(m - base) + torch.exp(x_j - base)", "l = l + torch.exp(x_j - base)",
     "test_ch7_online", "forgot_rescale"),
    ("ch7_tiled", "torch.where(seen, m + torch.log(l_safe)", "torch.where(seen, torch.log(l_safe)",
     "test_ch7_tiled", "lse_missing_max"),
    ("ch7_kernel", "acc = acc / l_i[:, None]", "acc = acc", "test_ch7_triton", "out_not_normalised"),
]


# --- helpers -------------------------------------------------------------------------------------------
def namespace_of(nb, monkeypatch) -> dict:
    """Run every non-test code cell in this process, as the trusted grader's sandbox does, and return the
    names it defines. Cell sources go into ``linecache`` because ``@triton.jit`` reads its function's source."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the notebook sets it too; this keeps it out of other tests
    ns = run_cells(nb)
    if "triton_forward" in ns and not torch.cuda.is_available():
        ns["triton_forward"] = in_fresh_interpreter(ns["triton_forward"])
    return ns


def in_fresh_interpreter(fn):
    """In a learner's fresh kernel the notebook sets TRITON_INTERPRET before importing triton, so Triton's own
    library is interpreted too. In this test process triton may already have been imported in compiled mode
    (by other tests), so run the launch in the kernels package's interpreter scope, as a fresh kernel would."""
    from attn_course.kernels._runtime import interpreter_scope

    def run(*args, **kwargs):
        with interpreter_scope():
            return fn(*args, **kwargs)

    return run


def checks_of(assignment: str):
    """``(grade_id, checker, target)`` for every check the spec lists."""
    return [(gid, c, t) for gid, entry in spec(assignment).items() for c, t in entry["checks"]]


def plant(nb, sol_id: str, old: str, new: str) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    (cell,) = [c for c in nb.cells if nbgrader_meta(c).get("grade_id") == sol_id]
    assert old in cell.source, f"mutant for {sol_id}: {old!r} is no longer in the solution"
    cell.source = cell.source.replace(old, new)
    return nb


# --- structure -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_metadata_banners_and_written_answers(assignment):
    nb = load(assignment)
    MetadataValidator().validate_nb(nb)  # grade ids, points, duplicates
    assert all(nbgrader_meta(c)["schema_version"] == 3 for c in nb.cells if nbgrader_meta(c))
    chapter = assignment[2]
    numbers = [int(n) for c in nb.cells if c.cell_type == "markdown"
               for n in re.findall(rf"^### Task {chapter}\.(\d+)", c.source, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1)), f"task banners out of order: {numbers}"
    for cell in nb.cells:
        if is_test_cell(cell):
            grade_id = nbgrader_meta(cell)["grade_id"]
            assert re.match(rf"# Task {chapter}\.\d+: ", cell.source), f"{grade_id} names no task"
    written = [c for c in nb.cells if c.cell_type == "markdown" and nbgrader_meta(c).get("grade")]
    assert len(written) >= 2 and all(nbgrader_meta(c)["solution"] and nbgrader_meta(c)["points"] > 0 for c in written)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_spec_covers_exactly_the_autograded_cells(assignment):
    nb = load(assignment)
    cells = {nbgrader_meta(c)["grade_id"]: c for c in nb.cells if is_test_cell(c)}
    graded = spec(assignment)
    assert set(graded) == set(cells), "the spec must list every autograded test cell and nothing else"
    defined = {name for c in nb.cells if c.cell_type == "code"
               for name in re.findall(r"^(?:def|class) (\w+)", c.source, re.M)}
    for grade_id, entry in graded.items():
        cell = cells[grade_id]
        assert isinstance(entry["points"], float) and entry["points"] == float(nbgrader_meta(cell)["points"]) > 0
        visible, _, hidden = cell.source.partition("### BEGIN HIDDEN TESTS")
        assert hidden, f"{grade_id} has no hidden tests"
        for checker, target in entry["checks"]:
            assert checker in CHECKS, f"{grade_id}: no checker {checker!r}"
            assert target in defined, f"{grade_id}: the notebook defines no {target!r}"
            assert f"print(check.{checker}({target}))" in visible
            assert f"print(check.{checker}({target}, hidden=True))" in hidden
        assert set(re.findall(r"check\.(\w+)\(", cell.source)) == {c for c, _ in entry["checks"]}


# --- behaviour -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solutions_pass_every_check_visible_and_hidden(assignment, monkeypatch):
    ns = namespace_of(load(assignment), monkeypatch)
    for grade_id, checker, target in checks_of(assignment):
        for hidden in (False, True):
            report = CHECKS[checker](ns[target], hidden=hidden)
            assert report.n_cases >= 3, f"{grade_id}: {checker} ran only {report.n_cases} cases"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_version_says_not_implemented_yet(assignment, monkeypatch):
    source = load(assignment)
    student = student_version(source)
    shipped = "\n".join(c.source for c in student.cells)
    assert "SOLUTION" not in shipped and "hidden=True" not in shipped
    ns = namespace_of(student, monkeypatch)  # the non-test cells run cleanly without the solutions
    for _, checker, target in checks_of(assignment):
        with pytest.raises(NotImplementedYet, match="not implemented yet"):
            CHECKS[checker](ns[target])


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m[-1] + "@" + m[0] for m in MUTANTS])
def test_planted_mistake_fails_its_check_with_the_diagnosis(mutant, monkeypatch):
    sol_id, old, new, failing, mistake = mutant
    assignment = next(a for a in ASSIGNMENTS if failing in spec(a))
    ns = namespace_of(plant(load(assignment), sol_id, old, new), monkeypatch)
    for grade_id, checker, target in checks_of(assignment):
        if grade_id == failing:
            with pytest.raises(CheckFailed) as info:
                CHECKS[checker](ns[target])
            assert info.value.verdict.mistake == mistake, str(info.value)
        elif checker != "triton_forward" or "kernel" in sol_id:  # only the kernel mutant re-runs the kernel
            CHECKS[checker](ns[target])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the kernel runs compiled there")
def test_triton_kernel_compiles_and_passes_on_the_gpu(monkeypatch):
    nb = load("ch7_flash")
    ns = namespace_of(nb, monkeypatch)
    assert ns["DEVICE"] == "cuda"
    CHECKS["triton_forward"](ns["triton_forward"], hidden=True)
    with pytest.raises(NotImplementedYet):  # the stub's raise inside @triton.jit, seen through the compiler
        CHECKS["triton_forward"](namespace_of(student_version(nb), monkeypatch)["triton_forward"])


# In a fresh process, as a learner's notebook runs: the setup cell sets TRITON_INTERPRET before triton is imported,
# so the kernel runs in Triton's own interpreter, outside attn_course.kernels' interpreter scope.
_CHECK_AT_DEPTHS = """
import json, sys
import nbformat
sys.path.insert(0, sys.argv[2])
from depth_probe import minor_faults_at_depths
from notebook_tools import run_cells
ns = run_cells(nbformat.read(sys.argv[1], as_version=4))
check, fn = ns["check"], ns["triton_forward"]
check.triton_forward(fn)  # (warm)
print(json.dumps(minor_faults_at_depths(lambda: check.triton_forward(fn), range(0, 160, 8))))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures the CPU interpreter; a GPU runs the kernel compiled")
def test_the_kernel_check_costs_the_same_at_every_depth_it_is_called_from():
    """A learner's kernel runs in Triton's interpreter straight from the notebook, so nothing in attn_course.kernels
    steadies where it lands on Python's data stack (attn_course/_data_stack.py). Without running each case from a
    fresh chunk, ``check.triton_forward`` of the solution faulted up to 36,096 times per check at caller depths 104-124
    (0.54 s against 0.2 s), and a few dozen at the other depths from 0 to 156; steps of 8 frames meet that window
    three times. Counted, not timed."""
    notebook = ROOT / "solutions" / "ch7_flash" / "ch7_flash.ipynb"
    run = subprocess.run([sys.executable, "-c", _CHECK_AT_DEPTHS, str(notebook), str(ROOT / "tests")],
                         capture_output=True, text=True, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert run.returncode == 0, run.stderr[-3000:]
    faults = json.loads(run.stdout.splitlines()[-1])
    assert len(faults) == 20 and max(faults) < 1000, (
        f"check.triton_forward page-faulted {max(faults)} times at caller depth {8 * faults.index(max(faults))} "
        f"(by depth, in steps of 8 frames: {faults}); is TritonForward.call still calling through "
        f"attn_course._data_stack.call_on_fresh_chunk?"
    )
