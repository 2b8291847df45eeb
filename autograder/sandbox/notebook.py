"""Read a submitted notebook in the trusted parent and decide which code cells the sandbox will run.

The parent parses the JSON itself (size-capped, plain ``json``: no code runs) so that a file that is not a
notebook is *rejected* before any sandbox starts, and so that the choice of cells is the parent's.

Test-cell policy
----------------
nbgrader's autograded test cells (``metadata.nbgrader``: ``grade: true, solution: false``) are never run: the
verdict comes from the probes (the learner's functions called on the grader's inputs), not from test cells.
A learner can edit metadata, so the caller names the test cells it knows from the released notebook or the
gradebook (``skip_grade_ids``); cells the submission itself marks as tests are skipped as well. Neither choice
can earn a point: skipping a cell only removes learner code, and running a mislabelled "test" cell only runs
more learner code, inside the same sandbox and limits.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path


class Rejected(Exception):
    """The submission cannot be run at all (empty, too big, not JSON, not a notebook). The message says why."""


@dataclass(frozen=True)
class CodeCell:
    index: int  # position among all the notebook's cells (markdown included), as Jupyter numbers them
    source: str
    grade_id: str | None


def _source(cell: dict, index: int) -> str:
    src = cell.get("source", "")
    if isinstance(src, list) and all(isinstance(s, str) for s in src):
        return "".join(src)
    if isinstance(src, str):
        return src
    raise Rejected(f"cell {index} has a 'source' that is neither a string nor a list of strings")


def _nbgrader(cell: dict) -> dict:
    meta = cell.get("metadata")
    nbg = meta.get("nbgrader") if isinstance(meta, dict) else None
    return nbg if isinstance(nbg, dict) else {}


def read_notebook(path: Path, max_bytes: int) -> dict:
    """Parse ``path`` as a Jupyter notebook (a JSON object with a ``cells`` list), or raise :class:`Rejected`."""
    if not path.is_file():
        raise Rejected(f"{path.name!r} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise Rejected(f"{path.name!r} is empty (0 bytes): was the notebook saved before submitting?")
    if size > max_bytes:
        raise Rejected(f"{path.name!r} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit "
                       "for a notebook (clear large outputs before submitting)")
    raw = path.read_bytes()
    try:
        nb = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise Rejected(f"{path.name!r} is not valid notebook JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise Rejected(f"{path.name!r} is JSON but not a Jupyter notebook (no 'cells' list)")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            raise Rejected(f"cell {i} of {path.name!r} is not a notebook cell (no 'cell_type')")
    return nb


def is_marked_test(cell: dict) -> bool:
    """True when the cell's own metadata says it is an nbgrader autograded test cell."""
    nbg = _nbgrader(cell)
    return nbg.get("grade") is True and nbg.get("solution") is False


def cells_to_run(nb: dict, skip_grade_ids: Collection[str] = (), skip_marked_tests: bool = True) -> list[CodeCell]:
    """The code cells the sandbox executes, in order, after the test-cell policy (see the module docstring)."""
    skip = set(skip_grade_ids)
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        grade_id = _nbgrader(cell).get("grade_id")
        grade_id = grade_id if isinstance(grade_id, str) else None
        if (grade_id is not None and grade_id in skip) or (skip_marked_tests and is_marked_test(cell)):
            continue
        out.append(CodeCell(i, _source(cell, i), grade_id))
    return out
