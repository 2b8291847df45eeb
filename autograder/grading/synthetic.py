"""Synthetic learners, for the tests and the benchmark: notebooks built from the real released assignments.

A synthetic submission starts from the student version (``<course_dir>/release/<a>/<a>.ipynb``) and fills
in some of its solution cells with the instructor's answers from the source notebook (the ``### BEGIN/END
SOLUTION`` markers removed), or with any source the caller writes (a wrong answer, a hostile one). So the
"student" hands in exactly what a real one would: the release, edited in its answer cells.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from .intake import cell_source

_MARKER = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.M)


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def solution_sources(source_nb: dict) -> dict[str, str]:
    """grade_id -> the instructor's answer of every solution cell of a source notebook, markers removed."""
    return {_grade_id(c): _MARKER.sub("", cell_source(c)) for c in source_nb["cells"]
            if c.get("metadata", {}).get("nbgrader", {}).get("solution") and c["cell_type"] == "code"}


def fill(release_nb: dict, answers: dict[str, str]) -> dict:
    """A copy of the release notebook with the solution cells named in ``answers`` (grade_id -> source)
    replaced. Raises ValueError naming any grade_id that is not a cell of the notebook."""
    nb = copy.deepcopy(release_nb)
    ids = {_grade_id(c) for c in nb["cells"]}
    unknown = sorted(set(answers) - ids)
    if unknown:
        raise ValueError(f"no cells with grade_id {unknown} in the notebook (it has {sorted(i for i in ids if i)})")
    for cell in nb["cells"]:
        if _grade_id(cell) in answers:
            cell["source"] = answers[_grade_id(cell)]
    return nb


def solved(course_dir: Path, source_dir: Path, assignment: str, only: set[str] | None = None) -> dict:
    """The release of ``assignment`` with every solution cell (or only those in ``only``) answered correctly."""
    release = read(Path(course_dir) / "release" / assignment / f"{assignment}.ipynb")
    answers = solution_sources(read(Path(source_dir) / assignment / f"{assignment}.ipynb"))
    return fill(release, {k: v for k, v in answers.items() if only is None or k in only})


def write_submission(submissions: Path, student: str, assignment: str, nb: dict | bytes | str,
                     name: str | None = None) -> Path:
    """Write one submission file (a notebook dict, or raw bytes/text for broken files); return its path."""
    path = Path(submissions) / student / assignment / (name or f"{assignment}.ipynb")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(nb, dict):
        path.write_text(json.dumps(nb, indent=1))
    elif isinstance(nb, bytes):
        path.write_bytes(nb)
    else:
        path.write_text(nb)
    return path
