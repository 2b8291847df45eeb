"""The instructor release: ``autograder.course``, ``autograder.leakcheck`` and ``autograder.release``.

* the leak check finds a solution line planted in a release notebook, a hidden test pasted into a book page
  (syntax-highlighted HTML) and a leak inside a zip, ignores lines under its documented threshold and text
  that the sources show publicly, and passes on a clean student version;
* validation catches a solution that fails its own test and a student version whose stub earns points, and
  then publishes nothing;
* the real release of every assignment runs end to end and produces the notebooks, the zips and the book.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from nbgrader.preprocessors import ClearHiddenTests, ClearSolutions
from notebook_tools import private_socket_probe

from autograder import leakcheck
from autograder.course import ASSIGNMENTS, available_assignments, prepare_course
from autograder.release import ReleaseError, release, validate_all

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fast_tmp(tmp_path):
    """A scratch folder on tmpfs when there is one: the SQLite gradebook commits (fsyncs) hundreds of times
    while nbgrader generates the assignments, which costs seconds on a disk and nothing in memory."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="attn-course-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- a tiny synthetic course (no torch: its kernels start fast) -------------------------------------------
def _meta(grade_id, *, grade, solution, locked, points=None):
    m = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    return {"nbgrader": m | ({"points": points} if points is not None else {})}


def tiny_notebook(solution_body="return x + 1", hidden="assert add_one(41) == 42", visible="assert add_one(1) == 2"):
    cells = [
        new_markdown_cell("### Task 1.1: add one"),
        new_code_cell(f"def add_one(x):\n    ### BEGIN SOLUTION\n    {solution_body}\n    ### END SOLUTION"),
        new_code_cell(f"# Task 1.1: test\n{visible}\n### BEGIN HIDDEN TESTS\n{hidden}\n### END HIDDEN TESTS"),
        new_markdown_cell("The secret model answer says that adding one is the successor function."),
    ]
    cells[1].metadata = _meta("add_one", grade=False, solution=True, locked=False)
    cells[2].metadata = _meta("test_add_one", grade=True, solution=False, locked=True, points=2.0)
    cells[3].metadata = _meta("written", grade=True, solution=True, locked=False, points=1.0)
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def student_version(nb):
    """What nbgrader releases: solution regions stubbed out, hidden tests removed."""
    nb, resources = ClearSolutions().preprocess(nb, {})
    return ClearHiddenTests().preprocess(nb, resources)[0]


def write_solutions(root: Path, nb, name="ch1_intuition") -> Path:
    (root / name).mkdir(parents=True)
    nbformat.write(nb, str(root / name / f"{name}.ipynb"))
    return root


def fake_book(root: Path, body: str = "<p>Attention, from first principles.</p>") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(f"<html><body>{body}</body></html>")
    return root


# --- the leak check --------------------------------------------------------------------------------------
LONG_SOLUTION = "total = sum(value * weight for value, weight in pairs)"
LONG_HIDDEN = "assert add_one(10**6) == 10**6 + 1, 'large inputs'"


@pytest.fixture
def leaky_sources(tmp_path):
    nb = tiny_notebook(solution_body=f"{LONG_SOLUTION}\n    return out", hidden=LONG_HIDDEN)
    return write_solutions(tmp_path / "solutions", nb)


def test_secrets_are_the_marked_blocks_above_the_threshold(leaky_sources):
    found = {s.text: s.kind for s in leakcheck.collect_secrets(leaky_sources)}
    assert found[LONG_SOLUTION] == "solution"
    assert found[LONG_HIDDEN] == "hidden test"
    assert found["The secret model answer says that adding one is the successor function."] == "written answer"
    assert "return out" not in found  # 10 characters: under MIN_SECRET_CHARS, too generic to prove anything
    assert all(len(text) >= leakcheck.MIN_SECRET_CHARS for text in found)
    assert not any("BEGIN" in text or "END" in text for text in found)  # the markers themselves are public


def test_text_quoted_in_a_public_cell_is_not_secret(tmp_path):
    nb = tiny_notebook(solution_body=f"{LONG_SOLUTION}\n    return out")
    nb.cells[0].source += f"\n\nHint: the answer is `{LONG_SOLUTION}`."
    found = {s.text for s in leakcheck.collect_secrets(write_solutions(tmp_path, nb))}
    assert LONG_SOLUTION not in found


def test_planted_solution_line_in_a_release_notebook_is_caught(leaky_sources, tmp_path):
    shipped = tmp_path / "release"
    shipped.mkdir()
    student = student_version(nbformat.read(str(leaky_sources / "ch1_intuition" / "ch1_intuition.ipynb"), 4))
    nbformat.write(student, str(shipped / "clean.ipynb"))
    assert leakcheck.check_paths([shipped], leaky_sources) == []

    student.cells.append(new_code_cell(f"# a helpful hint\n   {LONG_SOLUTION}   "))  # whitespace differs
    nbformat.write(student, str(shipped / "leaky.ipynb"))
    leaks = leakcheck.check_paths([shipped], leaky_sources)
    assert [(Path(x.shipped).name, x.secret.kind, x.secret.text) for x in leaks] == [
        ("leaky.ipynb", "solution", LONG_SOLUTION)
    ]
    assert "ch1_intuition/ch1_intuition.ipynb [add_one]" in str(leaks[0])


def test_hidden_test_pasted_into_a_highlighted_book_page_is_caught(leaky_sources, tmp_path):
    # Sphinx/Pygments split code into spans and escape quotes: the check reads the page's text.
    page = (
        '<div class="highlight"><pre><span class="k">assert</span> <span class="n">add_one</span>'
        '<span class="p">(</span><span class="mi">10</span><span class="o">**</span><span class="mi">6</span>'
        '<span class="p">)</span> <span class="o">==</span> <span class="mi">10</span><span class="o">**</span>'
        '<span class="mi">6</span> <span class="o">+</span> <span class="mi">1</span><span class="p">,</span> '
        '<span class="s1">&#39;large inputs&#39;</span></pre></div>'
    )
    book = fake_book(tmp_path / "book" / "html", page)
    leaks = leakcheck.check_paths([book], leaky_sources)
    assert [(x.secret.kind, x.secret.text) for x in leaks] == [("hidden test", LONG_HIDDEN)]
    assert leaks[0].shipped.endswith("index.html")


def test_a_leak_inside_a_zip_is_caught_and_named(leaky_sources, tmp_path):
    archive = tmp_path / "ch1_intuition.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ch1_intuition/notes.txt", f"remember: {LONG_SOLUTION}\n")
        zf.writestr("ch1_intuition/data.txt", "nothing to see")
    leaks = leakcheck.check_paths([archive], leaky_sources)
    assert [x.shipped for x in leaks] == [f"{archive}!ch1_intuition/notes.txt"]


def test_reviewed_book_exceptions_apply_to_the_book_only(leaky_sources, tmp_path, monkeypatch):
    monkeypatch.setitem(leakcheck.BOOK_MAY_SHOW, LONG_SOLUTION, "the chapter derives it")
    book = fake_book(tmp_path / "release" / "book", f"<pre>{LONG_SOLUTION}</pre>")
    assert leakcheck.check_paths([book], leaky_sources) == []
    notebook = tmp_path / "release" / "ch1_intuition" / "ch1_intuition.ipynb"
    notebook.parent.mkdir(parents=True)
    nbformat.write(new_notebook(cells=[new_code_cell(LONG_SOLUTION)]), str(notebook))
    assert [x.shipped for x in leakcheck.check_paths([tmp_path / "release"], leaky_sources)] == [str(notebook)]


def test_leakcheck_command_exit_status(leaky_sources, tmp_path, capsys):
    clean = fake_book(tmp_path / "clean")
    assert leakcheck.main([str(clean), "--solutions", str(leaky_sources)]) == 0
    dirty = fake_book(tmp_path / "dirty", f"<code>{LONG_SOLUTION}</code>")
    assert leakcheck.main([str(dirty), "--solutions", str(leaky_sources)]) == 1
    assert "LEAK" in capsys.readouterr().out


# --- validation and publishing -----------------------------------------------------------------------------
def test_course_is_idempotent_and_knows_every_grade_cell(tmp_path, fast_tmp):
    from nbgrader.api import Gradebook

    sols = write_solutions(tmp_path / "solutions", tiny_notebook())
    for _ in range(2):
        course = prepare_course(fast_tmp / "course", solutions=sols)
    assert (course / "release" / "ch1_intuition" / "ch1_intuition.ipynb").is_file()
    assert "c.Execute.timeout" in (course / "nbgrader_config.py").read_text()
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "attn-course") as gb:
        (nb,) = gb.find_assignment("ch1_intuition").notebooks
        assert {(c.name, c.max_score) for c in nb.grade_cells} == {("test_add_one", 2.0), ("written", 1.0)}


def test_validation_catches_a_broken_solution_and_a_stub_that_earns_points(tmp_path, fast_tmp):
    sols = write_solutions(tmp_path / "solutions", tiny_notebook(solution_body="return x - 1"))
    # ch2: a test that passes whatever the learner writes, so the student version's stub earns its points
    write_solutions(sols, tiny_notebook(visible="assert True", hidden="assert 1 == 1"), name="ch2_qkv")
    out = tmp_path / "release"
    with pytest.raises(ReleaseError) as info:
        release(out, course_dir=fast_tmp / "course", book_html=None, solutions=sols)
    msg = str(info.value)
    failed = r"solution ch1_intuition/ch1_intuition.ipynb .*\n\s+test cell FAILED: 'assert add_one\(1\) == 2'"
    assert re.search(failed, msg)
    assert "AssertionError" in msg  # the notebook's own error is shown
    assert re.search(r"student version ch2_qkv/ch2_qkv.ipynb .*\n\s+test cell PASSED on the student version", msg)
    assert not out.exists()


def test_validation_kernels_listen_on_private_unix_sockets_not_tcp(tmp_path, fast_tmp):
    """The kernels nbgrader validate starts run the course's solutions; they talk to nbgrader over Unix sockets
    in a folder made for each notebook (which no other user can enter), not over TCP ports on localhost that any
    process on the machine could connect to. The notebook's test asks its own kernel; without the setting it
    fails ('tcp'), and ipykernel 7 warns once per kernel."""
    check = private_socket_probe("attn-validate-") + "assert add_one(1) == 2"
    sols = write_solutions(tmp_path / "solutions", tiny_notebook(visible=check))
    validate_all(prepare_course(fast_tmp / "course", solutions=sols), ["ch1_intuition"], jobs=2)


def test_a_socket_folder_too_deep_for_a_unix_socket_keeps_tcp():
    """Linux caps a socket's path at 107 bytes; under a long TMPDIR the kernel could not bind its sockets, so
    validation keeps TCP there rather than fail the release."""
    from traitlets.config import Config

    from attn_course._kernel_sockets import use_private_sockets

    shallow, deep = Config(), Config()
    assert use_private_sockets(shallow, Path("/tmp/attn-validate-x1y2z3"))
    assert shallow.KernelManager.transport == "ipc" and shallow.KernelManager.ip == "/tmp/attn-validate-x1y2z3/kernel"
    assert not use_private_sockets(deep, Path("/home/" + "a-long-user-name/" * 6 + "tmp/attn-validate-x1y2z3"))
    assert "transport" not in deep.KernelManager


def test_release_refuses_a_missing_book_and_a_leaky_book(tmp_path, fast_tmp):
    sols = write_solutions(tmp_path / "solutions", tiny_notebook(hidden=LONG_HIDDEN))
    kw = dict(course_dir=fast_tmp / "course", solutions=sols, validate=False)
    with pytest.raises(ReleaseError, match="make book"):
        release(tmp_path / "out", book_html=tmp_path / "nowhere", **kw)
    book = fake_book(tmp_path / "html", f"<pre>{LONG_HIDDEN}</pre>")
    with pytest.raises(ReleaseError, match=r"1 leak\(s\).*\n.*hidden test line"):
        release(tmp_path / "out", book_html=book, **kw)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def real_course():
    """The course's own sources, prepared once for the tests below (on tmpfs when there is one)."""
    shm = Path("/dev/shm")
    base = Path(tempfile.mkdtemp(prefix="attn-course-real-", dir=shm if os.access(shm, os.W_OK) else None))
    yield prepare_course(base / "course")
    shutil.rmtree(base, ignore_errors=True)


def test_the_real_release_produces_every_file(tmp_path, real_course):
    """``make release`` on the course's own sources (with a stand-in for the built book). Validation of the
    real notebooks is the next test (chapters 5-7) and tests/test_exercises_ch1_4.py (chapters 1-4)."""
    assert available_assignments() == list(ASSIGNMENTS), "every chapter has its source notebook"
    book = fake_book(tmp_path / "book_html")
    out = release(tmp_path / "release", course_dir=real_course, book_html=book, validate=False)
    assert (out / "book" / "index.html").read_text() == (book / "index.html").read_text()
    for a in ASSIGNMENTS:
        student = json.loads((out / a / f"{a}.ipynb").read_text())
        text = "\n".join("".join(c["source"]) for c in student["cells"])
        assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text
        assert "raise NotImplementedError()" in text
        with zipfile.ZipFile(out / f"{a}.zip") as zf:
            assert f"{a}/{a}.ipynb" in zf.namelist()
            assert json.loads(zf.read(f"{a}/{a}.ipynb")) == student
    assert not out.with_name(out.name + ".staging").exists()
    assert leakcheck.check_paths([out]) == []
    # publishing again replaces the old release cleanly
    again = release(out, course_dir=real_course, book_html=None, validate=False)
    assert not (again / "book").exists() and (again / "ch7_flash.zip").is_file()


def test_every_chapter_validates_in_real_kernels(real_course):
    """nbgrader validate, as `make release` runs it: the solutions earn every point (no stderr, no stray
    execute_result), the student versions earn none. Raises ReleaseError listing the problems otherwise."""
    validate_all(real_course, ASSIGNMENTS, jobs=2)
