"""Feedback pages: the learner's notebook with each test cell's verdict, and no hidden test in sight.

We build an "autograded" notebook from trusted parts and render it with nbconvert:

- a summary cell first (score, and one line per test cell: points and the verdict message);
- the learner's own cells in their order, outputs cleared (a learner's saved output is not evidence of
  anything, and "all tests passed" printed by the learner must not look like ours);
- each test cell replaced by the *released* cell's visible source (hidden tests are not in it), with the
  verdict as its only output; test cells the learner deleted are appended at the end, so every test appears.

HTML in the learner's markdown is sanitised by nbconvert (``sanitize_html``), and every string of ours that
may carry a learner's text (an exception message) is escaped.
"""

from __future__ import annotations

import html
from pathlib import Path

from .intake import cell_source
from .probes import is_test_cell
from .trusted import TrustedAssignment
from .verdicts import CellResult


def _code(source: str, outputs: list | None = None) -> dict:
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": outputs or [], "source": source}


def _markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source}


def _verdict_output(result: CellResult) -> dict:
    mark = "PASSED" if result.passed else "FAILED"
    lines = [f"{mark}: {result.score:g} / {result.max_score:g} points (decided by the grader, not by this cell)"]
    lines += [f"  {'ok  ' if c.passed else 'FAIL'} {c.check}({c.target}): {c.message}" for c in result.checks]
    return {"output_type": "stream", "name": "stdout" if result.passed else "stderr", "text": "\n".join(lines) + "\n"}


def summary_markdown(student: str, trusted: TrustedAssignment, results: list[CellResult], outcome: str,
                     detail: str) -> str:
    """The top cell of a feedback page: totals, the run's outcome, and a table of the test cells."""
    e = html.escape
    auto = sum(r.score for r in results)
    rows = "\n".join(
        f"<tr><td>{e(r.grade_id)}</td><td>{r.score:g} / {r.max_score:g}</td><td>{'passed' if r.passed else 'failed'}"
        f"</td><td>{e(next((c.message for c in r.checks if not c.passed), r.checks[0].message if r.checks else ''))}"
        f"</td></tr>" for r in results)
    manual = (f"<p>Written answers and other hand-graded cells: {trusted.manual_max:g} more points, marked by "
              f"your instructor.</p>" if trusted.manual else "")
    return (f"<h1>Feedback: {e(trusted.name)} ({e(student)})</h1>\n"
            f"<p>Outcome: <b>{e(outcome)}</b>{(': ' + e(detail)) if detail else ''}</p>\n"
            f"<p>Autograded score: <b>{auto:g} / {trusted.auto_max:g}</b></p>\n{manual}\n"
            f"<table><tr><th>test cell</th><th>points</th><th>verdict</th><th>message</th></tr>\n{rows}\n</table>")


def feedback_notebook(student: str, trusted: TrustedAssignment, results: list[CellResult], nb: dict | None,
                      outcome: str, detail: str = "") -> dict:
    """The notebook rendered as feedback (nbformat 4 dict). ``nb`` is the parsed submission, None if rejected."""
    by_id = {r.grade_id: r for r in results}
    cells = [_markdown(summary_markdown(student, trusted, results, outcome, detail))]
    shown = set()
    for cell in (nb or {}).get("cells", []):
        if is_test_cell(cell, trusted):
            test = _match_test(cell, trusted, shown)
            if test is not None:
                shown.add(test.grade_id)
                cells.append(_code(test.visible_source, [_verdict_output(by_id[test.grade_id])]))
            continue
        source = cell_source(cell)
        cells.append(_markdown(source) if cell["cell_type"] == "markdown" else _code(source))
    missing = [t for t in trusted.tests if t.grade_id not in shown]
    if missing and nb is not None:
        cells.append(_markdown("## Test cells missing from your notebook\nThey were graded all the same:"))
    cells += [_code(t.visible_source, [_verdict_output(by_id[t.grade_id])]) for t in missing]
    for i, cell in enumerate(cells):
        cell["id"] = f"feedback-{i}"
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _match_test(cell: dict, trusted: TrustedAssignment, shown: set):
    """The released test cell a submitted test cell stands for: by grade id, else by source; None if a
    duplicate of one already shown."""
    meta = cell.get("metadata")
    nbgrader = meta.get("nbgrader") if isinstance(meta, dict) else None
    grade_id = nbgrader.get("grade_id") if isinstance(nbgrader, dict) else None
    source = cell_source(cell).strip()
    for t in trusted.tests:
        if t.grade_id not in shown and (t.grade_id == grade_id or t.visible_source.strip() == source):
            return t
    return None


_EXPORTER = None


def render_html(notebook: dict) -> str:
    """HTML of a feedback notebook (nbconvert's lab template, sanitised, no execution)."""
    global _EXPORTER
    import nbformat
    from nbconvert import HTMLExporter

    if _EXPORTER is None:
        _EXPORTER = HTMLExporter(template_name="lab", sanitize_html=True)
    body, _ = _EXPORTER.from_notebook_node(nbformat.from_dict(notebook))
    return body


def write_feedback(path: Path, notebook: dict) -> None:
    """Render and write one feedback page atomically."""
    from .journal import atomic_write

    atomic_write(path, render_html(notebook).encode())
