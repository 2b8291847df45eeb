"""What the sandbox is asked to do: run the learner's own cells, then call each checker on the parent's inputs.

Two things are built here, both in the trusted parent:

- the **probes**: one per (test cell, check), ``{"id", "check", "target", "cases"}``, whose cases come from
  ``CHECKS[check].make_cases(seed, hidden=True)`` with a seed derived from a secret only the parent knows
  (so a learner cannot precompute answers, and the same submission always meets the same cases);
- the **notebook to execute**: the submission's cells minus its test cells. Which cells are tests is decided
  from the released notebook (grade ids and visible sources), not from the submission's metadata: a learner
  who deletes, edits or relabels a test cell changes nothing, because test cells are never run -- their
  verdicts come from the probes.
"""

from __future__ import annotations

import copy
import hashlib

from .intake import cell_source
from .trusted import TrustedAssignment

PROBE_SEP = "::"


def case_seed(secret_seed: int, assignment: str, check: str) -> int:
    """The seed for one checker's hidden cases: a hash of the secret, so distinct per assignment and check."""
    digest = hashlib.sha256(f"{secret_seed}:{assignment}:{check}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def make_cases(trusted: TrustedAssignment, secret_seed: int, checks: dict) -> dict[str, list[dict]]:
    """checker name -> its hidden cases for this assignment (each checker's cases are made once)."""
    names = sorted({c for cell in trusted.tests for c, _ in cell.checks})
    return {name: checks[name].make_cases(case_seed(secret_seed, trusted.name, name), hidden=True) for name in names}


def probe_id(grade_id: str, index: int) -> str:
    return f"{grade_id}{PROBE_SEP}{index}"


def build_probes(trusted: TrustedAssignment, cases: dict[str, list[dict]]) -> list[dict]:
    """One probe per check of every test cell, in a fixed order (the cases are shared, not copied)."""
    return [{"id": probe_id(cell.grade_id, i), "check": check, "target": target, "cases": cases[check]}
            for cell in trusted.tests for i, (check, target) in enumerate(cell.checks)]


def _normalise(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def is_test_cell(cell: dict, trusted: TrustedAssignment) -> bool:
    """True if a submitted cell is one of the released test cells, by grade id or by (visible) source.

    Either is enough: a learner who strips the metadata of a test cell keeps its source, and one who edits the
    source keeps (or forges) the metadata. Wrongly counting a learner's own cell as a test only drops it from
    execution, which can cost that learner but never gain them anything.
    """
    if cell.get("cell_type") != "code":
        return False
    meta = cell.get("metadata")
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    grade_id = nbgrader.get("grade_id") if isinstance(nbgrader, dict) else None
    if isinstance(grade_id, str) and any(grade_id == t.grade_id for t in trusted.tests):
        return True
    source = _normalise(cell_source(cell))
    return any(source == _normalise(t.visible_source) for t in trusted.tests)


def executable_notebook(nb: dict, trusted: TrustedAssignment) -> dict:
    """A copy of the submission with only the cells the sandbox should run: code cells that are not tests.

    Outputs are cleared (they are the learner's, not ours) and markdown is dropped; the cells keep their order.
    Returns an nbformat 4 notebook dict.
    """
    cells = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or is_test_cell(cell, trusted):
            continue
        cells.append({"cell_type": "code", "id": f"cell-{len(cells)}", "execution_count": None, "metadata": {},
                      "outputs": [], "source": cell_source(cell)})
    return {"cells": cells, "metadata": copy.deepcopy(_KERNEL_METADATA), "nbformat": 4, "nbformat_minor": 5}


_KERNEL_METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
