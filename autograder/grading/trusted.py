"""What an assignment is graded on, read from trusted sources only.

Three sources, cross-checked against each other, and never the learner's notebook:

- the **gradebook** (written by ``generate_assignment``): the notebook, every grade cell and its points, and
  which grade cells are autograded tests (a code grade cell that is not also a solution cell) and which are
  marked by hand (written answers, tasks);
- the **released notebook** (``<course_dir>/release/<a>/<a>.ipynb``): the visible source of each test cell,
  used to recognise those cells in a submission and to show them in feedback (it has no hidden tests);
- the **spec** ``autograder/specs/<a>.py``: ``GRADED[grade_id] = {"points", "checks": [[checker, target], ...]}``,
  which says how the parent decides each test cell without running its source.

A disagreement between them is the course's fault, not a learner's, so it raises :class:`SpecError` before
anything is graded.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .intake import cell_source

_HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS.*?### END HIDDEN TESTS\n?", re.S)


class SpecError(ValueError):
    """The gradebook, the released notebook and the spec of an assignment disagree."""


@dataclass(frozen=True)
class AutoCell:
    """An autograded test cell: earns ``points`` iff every (checker, target) check passes on every case."""

    grade_id: str
    points: float
    checks: tuple[tuple[str, str], ...]
    visible_source: str


@dataclass(frozen=True)
class ManualCell:
    """A grade cell an instructor marks by hand (a written answer, a task); the grader leaves it alone."""

    grade_id: str
    points: float
    cell_type: str


@dataclass(frozen=True)
class TrustedAssignment:
    """Everything the parent needs to grade one assignment. ``fingerprint`` changes iff any of it changes,
    and is part of each submission's journal key, so editing a spec or a test regrades the class."""

    name: str
    notebook: str
    tests: tuple[AutoCell, ...]
    manual: tuple[ManualCell, ...]
    fingerprint: str

    @property
    def auto_max(self) -> float:
        return sum(c.points for c in self.tests)

    @property
    def manual_max(self) -> float:
        return sum(c.points for c in self.manual)

    def test_cell(self, grade_id: str) -> AutoCell:
        return next(c for c in self.tests if c.grade_id == grade_id)


def load_spec(assignment: str) -> dict:
    """``GRADED`` of ``autograder/specs/<assignment>.py``, checked for shape (not yet against the gradebook)."""
    try:
        module = importlib.import_module(f"autograder.specs.{assignment}")
    except ModuleNotFoundError as e:
        raise SpecError(f"no trusted-verdict spec for {assignment!r}: expected autograder/specs/{assignment}.py "
                        f"defining GRADED ({e})") from None
    graded = getattr(module, "GRADED", None)
    if not isinstance(graded, dict) or not graded:
        raise SpecError(f"autograder/specs/{assignment}.py must define a non-empty dict GRADED")
    for grade_id, entry in graded.items():
        checks = entry.get("checks") if isinstance(entry, dict) else None
        ok = isinstance(checks, (list, tuple)) and checks and all(
            isinstance(c, (list, tuple)) and len(c) == 2 and all(isinstance(s, str) for s in c) for c in checks)
        if not ok or not isinstance(entry.get("points"), (int, float)):
            raise SpecError(f"autograder/specs/{assignment}.py: GRADED[{grade_id!r}] must be "
                            f'{{"points": float, "checks": [[checker, target], ...]}}, got {entry!r}')
    return graded


def released_test_sources(release_notebook: Path) -> dict[str, str]:
    """grade_id -> source of each autograded test cell of a released notebook, hidden blocks removed."""
    nb = json.loads(Path(release_notebook).read_text())
    out = {}
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell["cell_type"] == "code" and meta.get("grade") and not meta.get("solution"):
            out[meta["grade_id"]] = _HIDDEN.sub("", cell_source(cell))
    return out


def load_trusted(assignment: str, gradebook, course_dir: Path, checks: dict) -> TrustedAssignment:
    """Build the :class:`TrustedAssignment` of ``assignment`` from an open nbgrader ``Gradebook``, the course's
    released notebook and the spec; ``checks`` is the registry of checkers (``attn_course.check.CHECKS``)."""
    notebooks = gradebook.find_assignment(assignment).notebooks
    if len(notebooks) != 1 or notebooks[0].name != assignment:
        names = [n.name for n in notebooks]
        raise SpecError(f"assignment {assignment!r} should have one notebook named {assignment!r} in the gradebook, "
                        f"found {names}: run prepare_course again")
    nb = notebooks[0]
    solution_ids = {c.name for c in nb.solution_cells}
    auto = {c.name: float(c.max_score) for c in nb.grade_cells if c.cell_type == "code" and c.name not in solution_ids}
    manual = [ManualCell(c.name, float(c.max_score), c.cell_type) for c in nb.grade_cells if c.name not in auto]
    manual += [ManualCell(c.name, float(c.max_score), "task") for c in nb.task_cells]

    release = Path(course_dir) / "release" / assignment / f"{assignment}.ipynb"
    if not release.is_file():
        raise SpecError(f"no released notebook at {release}: run prepare_course first")
    visible = released_test_sources(release)
    if set(visible) != set(auto):
        raise SpecError(f"{assignment}: the released notebook's test cells {sorted(visible)} differ from the "
                        f"gradebook's {sorted(auto)}: run prepare_course again")

    spec = load_spec(assignment)
    missing, extra = sorted(set(auto) - set(spec)), sorted(set(spec) - set(auto))
    if missing or extra:
        raise SpecError(f"autograder/specs/{assignment}.py must cover exactly the autograded test cells: "
                        f"missing {missing}, not test cells {extra}")
    tests = []
    for grade_id in visible:  # in notebook order, as the learner meets them
        entry = spec[grade_id]
        if abs(float(entry["points"]) - auto[grade_id]) > 1e-9:
            raise SpecError(f"autograder/specs/{assignment}.py: {grade_id!r} is worth {entry['points']} points but "
                            f"the notebook says {auto[grade_id]}")
        for checker, _target in entry["checks"]:
            if checker not in checks:
                raise SpecError(f"autograder/specs/{assignment}.py: {grade_id!r} names checker {checker!r}, "
                                f"which attn_course.check.CHECKS does not have")
        pairs = tuple((c, t) for c, t in entry["checks"])
        tests.append(AutoCell(grade_id, auto[grade_id], pairs, visible[grade_id]))
    manual.sort(key=lambda c: c.grade_id)
    blob = json.dumps([assignment, [(c.grade_id, c.points, c.checks, c.visible_source) for c in tests],
                       [(c.grade_id, c.points) for c in manual]], sort_keys=True)
    return TrustedAssignment(assignment, assignment, tuple(tests), tuple(manual),
                             hashlib.sha256(blob.encode()).hexdigest()[:16])
