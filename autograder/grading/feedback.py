"""Feedback pages: the learner's notebook with each test cell's verdict, and no hidden test in sight.

We build an "autograded" notebook from trusted parts and render it with nbconvert:

- a summary cell first (score, and one line per test cell: points and the verdict message);
- the learner's own cells in their order, outputs cleared (a learner's saved output is not evidence of
  anything, and "all tests passed" printed by the learner must not look like ours);
- each test cell replaced by the *released* cell's visible source (hidden tests are not in it), with the
  verdict as its only output; test cells the learner deleted are appended at the end, so every test appears.

nbconvert runs in a helper process with a time limit per page (learner content can make it superlinear); a
page it cannot render in time falls back to plain escaped text that still holds the summary and every verdict.

HTML in the learner's markdown is sanitised by nbconvert (``sanitize_html``), and every string of ours that
may carry a learner's text (an exception message) is escaped.
"""

from __future__ import annotations

import atexit
import html
import multiprocessing
import os
import threading
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


RENDER_TIMEOUT_S = 20.0  # one page; nbconvert renders a normal feedback page in well under a second
STARTUP_TIMEOUT_S = 120.0  # the helper's one-off import of nbconvert, kept out of the per-page limit
_NOTICE_LIMIT = 300  # characters of a renderer error shown in the fallback notice


class RenderError(Exception):
    """nbconvert could not render a page in time (or at all); the page falls back to plain text."""


def _serve(conn) -> None:
    """The helper process: import nbconvert once, then render notebooks sent over ``conn`` until told to stop.

    Replies ``("ready", None)`` once, then ``("ok", html)`` or ``("error", message)`` per notebook. It runs
    learner-controlled markdown and code through markdown-it, bleach and pygments, some of which are
    superlinear in hostile input: that is why it is a separate process the parent can kill.
    """
    try:
        import nbformat
        from nbconvert import HTMLExporter

        exporter = HTMLExporter(template_name="lab", sanitize_html=True)
    except Exception as e:  # a broken install: say so on every page rather than hang
        conn.send(("error", f"nbconvert could not be loaded: {e!r}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            notebook = conn.recv()
        except EOFError:  # the parent is gone
            return
        if notebook is None:
            return
        try:
            body, _ = exporter.from_notebook_node(nbformat.from_dict(notebook))
            conn.send(("ok", body))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class _Renderer:
    """One long-lived helper process rendering pages with a per-page time limit.

    Lazily started (forkserver, like the grading pool: no fork of a parent that has threads), reused for every
    page of a run, killed on a timeout and started afresh for the next page, stopped at interpreter exit.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.process = None
        self.conn = None
        self.owner = None  # the pid that started the helper: a forked copy of this module must not share it

    def render(self, notebook: dict, timeout: float) -> str:
        """nbconvert's HTML of ``notebook``; raises ``RenderError`` after ``timeout`` s or on a renderer error."""
        with self.lock:
            self._ensure_started()
            try:
                self.conn.send(notebook)
                ready = self.conn.poll(timeout)
                reply = self.conn.recv() if ready else None
            except (EOFError, OSError) as e:  # the helper died (e.g. killed for memory)
                self.stop()
                raise RenderError(f"the renderer process died ({type(e).__name__})") from e
            if reply is None:
                self.stop()  # it may be stuck for minutes more: kill it, the next page gets a fresh one
                raise RenderError(f"rendering took longer than {timeout:g} s")
            status, value = reply
            if status != "ok":
                raise RenderError(value)
            return value

    def _ensure_started(self) -> None:
        if self.process is not None and self.owner == os.getpid() and self.process.is_alive():
            return
        if self.owner == os.getpid():
            self.stop()
        ctx = multiprocessing.get_context("forkserver")
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child,), name="feedback-renderer", daemon=True)
        process.start()
        child.close()  # so that the helper's death reads as EOF here, not as a hang
        self.process, self.conn, self.owner = process, parent, os.getpid()
        if not parent.poll(STARTUP_TIMEOUT_S):
            self.stop()
            raise RenderError(f"the renderer did not start within {STARTUP_TIMEOUT_S:g} s")
        try:
            status, value = parent.recv()
        except (EOFError, OSError) as e:
            self.stop()
            raise RenderError("the renderer process died while starting") from e
        if status != "ready":
            self.stop()
            raise RenderError(value)

    def stop(self) -> None:
        """Kill the helper (if this process started it) and forget it; safe to call at any time."""
        process, conn = self.process, self.conn
        self.process = self.conn = None
        if process is None or self.owner != os.getpid():
            return
        process.kill()  # SIGKILL: a helper stuck in a regex does not read a polite request
        process.join(10)
        conn.close()


_RENDERER = _Renderer()
atexit.register(_RENDERER.stop)


def render_html(notebook: dict, timeout: float | None = None) -> str:
    """HTML of a feedback notebook: nbconvert's lab template (sanitised, no execution) in a helper process,
    within ``timeout`` seconds (default ``RENDER_TIMEOUT_S``); else the plain-text page of ``fallback_html``.

    Learner markdown and code can make nbconvert superlinear (``"<div>" * 100000`` takes minutes), and the
    pages are rendered one after another in the grading parent: without the limit, one submission could
    stall the feedback of the whole class.
    """
    try:
        return _RENDERER.render(notebook, RENDER_TIMEOUT_S if timeout is None else timeout)
    except RenderError as e:
        return fallback_html(notebook, str(e))


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _output_text(output: dict) -> str:
    """The readable text of one output: a stream (our verdicts), an error, or a result's text/plain."""
    kind = output.get("output_type")
    if kind == "stream":
        return _text(output.get("text"))
    if kind == "error":
        return "\n".join([f"{output.get('ename', '')}: {output.get('evalue', '')}", *output.get("traceback", [])])
    return _text((output.get("data") or {}).get("text/plain"))


def fallback_html(notebook: dict, reason: str) -> str:
    """A plain page built in linear time: a notice, then each cell's source and each output's text in
    ``<pre>``, all escaped. Nothing is lost: the summary (score) and every verdict are in it, as text."""
    e = html.escape
    reason = (reason.splitlines() or [""])[0][:_NOTICE_LIMIT]  # a validation error runs to pages: its gist
    parts = ["<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Feedback</title></head><body>\n",
             "<p style=\"border:2px solid #c60;padding:0.5em\"><b>This notebook could not be rendered in time "
             "and is shown as plain text.</b> Your grade is not affected: every verdict is below. "
             f"({e(reason)})</p>\n"]
    for cell in notebook.get("cells", []):
        kind = e(str(cell.get("cell_type", "")))
        parts.append(f"<h3>{kind} cell</h3>\n<pre>{e(cell_source(cell))}</pre>\n")
        for output in cell.get("outputs") or []:
            parts.append(f"<pre style=\"background:#f4f4f4\">{e(_output_text(output))}</pre>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_feedback(path: Path, notebook: dict) -> None:
    """Render and write one feedback page atomically."""
    from .journal import atomic_write

    atomic_write(path, render_html(notebook).encode())
