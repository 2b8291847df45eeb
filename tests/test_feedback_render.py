"""Feedback pages are rendered within a time limit: nbconvert runs in a helper process that is killed when a
learner's notebook makes it crawl, and the page falls back to plain escaped text that keeps every verdict.

Timeouts here are small (2 s) against inputs that take nbconvert tens of seconds or more, and the only
wall-clock assertions are generous sanity bounds, so a loaded 2-core machine does not make them flaky.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from autograder.grading import feedback
from autograder.grading.feedback import fallback_html, feedback_notebook, render_html, write_feedback
from autograder.grading.trusted import AutoCell, TrustedAssignment
from autograder.grading.verdicts import CellResult, CheckResult

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "could not be rendered in time"
TRUSTED = TrustedAssignment("ch6_cost", "ch6_cost",
                            (AutoCell("t-flops", 3.0, (("layer_flops", "layer_flops"),),
                                      "check.layer_flops(layer_flops)\n"),), (), "fp")
RESULTS = [CellResult("t-flops", 0.0, 3.0, (CheckResult("layer_flops", "layer_flops", False,
                                                        "layer_flops(7, 13) returned 1, expected 2366"),))]
VERDICT = "FAIL layer_flops(layer_flops): layer_flops(7, 13) returned 1, expected 2366"


def page_for(*cells: dict) -> dict:
    """A real feedback notebook (summary, the learner's cells, the verdict cell) for these learner cells."""
    nb = {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    return feedback_notebook("alice", TRUSTED, RESULTS, nb, "graded")


def markdown(source: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": source}


def code(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": [], "execution_count": None}


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie does not burn CPU, so it counts as gone)."""
    try:
        import psutil
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def renderer_pid() -> int:
    process = feedback._RENDERER.process
    assert process is not None, "no renderer process is running after a successful render"
    return process.pid


def test_a_normal_page_is_rendered_by_nbconvert_with_its_verdict(tmp_path):
    page = render_html(page_for(markdown("# My notes"), code("x = 1")))
    assert NOTICE not in page, "a small, ordinary notebook fell back to plain text: the renderer is broken"
    assert "jp-Notebook" in page, "the page does not look like nbconvert's lab template"
    assert "expected 2366" in page and "My notes" in page
    path = tmp_path / "fb.html"
    write_feedback(path, page_for(code("x = 1")))
    assert "expected 2366" in path.read_text()


def test_a_pathological_notebook_times_out_kills_the_helper_and_keeps_every_verdict():
    render_html(page_for(code("x = 1")))  # start the helper, so its one-off import is not what we time
    pid = renderer_pid()
    hostile = page_for(markdown("<div>" * 40000), code("y = 2"))  # nbconvert needs minutes for this one
    started = time.monotonic()
    page = render_html(hostile, timeout=2)
    elapsed = time.monotonic() - started
    assert elapsed < 60, f"a 2 s render limit took {elapsed:.0f} s: the parent waited on the helper anyway"
    assert NOTICE in page, "the timed-out page has no notice saying why it is plain text"
    assert "&lt;div&gt;&lt;div&gt;" in page, "the learner's (escaped) markdown is missing from the fallback"
    assert VERDICT in page, "the fallback page lost a verdict: the learner cannot see why they lost points"
    assert "Autograded score: &lt;b&gt;0 / 3&lt;/b&gt;" in page, "the fallback page lost the summary's score"
    assert feedback._RENDERER.process is None
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the timed-out renderer (pid {pid}) is still running, burning a core"


def test_after_a_timeout_the_next_page_renders_through_nbconvert_again():
    render_html(page_for(markdown("<div>" * 40000)), timeout=2)
    page = render_html(page_for(markdown("# Fine again")))
    assert NOTICE not in page and "jp-Notebook" in page, "one timeout broke rendering for the rest of the class"
    assert "Fine again" in page and "expected 2366" in page
    assert alive(renderer_pid())


def test_the_fallback_escapes_everything_the_learner_wrote():
    nb = page_for(code("<script>alert(1)</script>"), markdown("<img src=x onerror=alert(2)>"))
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["<script>", "x</script>"]}]
    page = fallback_html(nb, "a reason with <b>markup</b>")
    assert "<script>" not in page and "<img" not in page and "<b>markup" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x" in page
    assert VERDICT in page and NOTICE in page


def test_a_renderer_error_falls_back_instead_of_failing_the_run():
    nb = page_for(code("x = 1"))
    nb["cells"].append({"cell_type": "no such type", "metadata": {}, "source": "odd"})
    page = render_html(nb)  # nbconvert refuses it (NotebookValidationError): the page is plain text
    assert NOTICE in page and "NotebookValidationError" in page and VERDICT in page and "odd" in page
    assert alive(renderer_pid()), "a renderer that raised was killed: only a timeout needs a fresh one"


def test_the_helper_is_stopped_at_interpreter_exit():
    script = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from autograder.grading import feedback
        assert "jp-Notebook" in feedback.render_html({"cells": [], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5})
        print(feedback._RENDERER.process.pid, flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"rendering one page in a fresh interpreter failed:\n{done.stderr}"
    pid = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the renderer (pid {pid}) outlived the interpreter that started it"
