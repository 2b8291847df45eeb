"""Intake: find the submissions in a folder and decide, before anything runs, which ones can be graded.

The folder is laid out as nbgrader's ``submitted/`` is::

    <submissions>/<student_id>/<assignment>/<assignment>.ipynb   (+ any other files the learner handed in)

Everything here is a pure reading of files; nothing a learner wrote is executed. A submission that cannot be
graded is not an error of the run: it becomes a :class:`Submission` with ``problem`` set (reported as
"rejected: <problem>") and the rest of the class is graded. What gets rejected, and why:

- no ``<assignment>.ipynb`` in the folder (missing), or only notebooks under other names (renamed: nbgrader
  grades notebooks by their released name, so we say which name we expected and which we found);
- a notebook that is empty, larger than ``max_bytes``, not UTF-8, not JSON, or JSON that is not an nbformat 4
  notebook (no ``cells`` list, a cell without ``cell_type``/``source`` ...);
- a symbolic link anywhere in the submission (it could point at the solutions; we read only plain files);
- a student id or assignment folder name the gradebook and the feedback paths could not hold safely.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

#: The largest notebook we parse. Real answers are a few hundred kB; 100 MB of printed output is an attack.
MAX_NOTEBOOK_BYTES = 20 * 2**20
#: Student ids become gradebook keys and folder names under build/grades/feedback/.
STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]{0,63}$")
_CHUNK = 2**20


class RejectedNotebook(ValueError):
    """A submitted notebook that cannot be graded; the message says why, in words the learner can act on."""


@dataclass(frozen=True)
class Submission:
    """One learner's hand-in of one assignment, as found on disk.

    ``digest`` is a SHA-256 over the names and bytes of every file in the folder, so any change to what was
    handed in (and nothing else) makes the grader look at it again. ``notebook`` is the file to grade, or None
    when ``problem`` says why the submission is rejected.
    """

    student: str
    assignment: str
    folder: Path
    digest: str
    notebook: Path | None = None
    problem: str | None = None
    timestamp: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.student, self.assignment)


def discover(submissions_dir: Path, assignments: list[str] | tuple[str, ...]) -> list[Submission]:
    """Every ``<student>/<assignment>/`` folder under ``submissions_dir``, sorted by (student, assignment).

    ``assignments`` are the names the course knows; a folder under any other name is rejected, not ignored,
    so that a learner who misnamed a folder hears about it. Loose files at the student level are ignored.
    """
    submissions_dir = Path(submissions_dir)
    if not submissions_dir.is_dir():
        raise ValueError(f"submissions folder {submissions_dir} does not exist "
                         f"(expected <dir>/<student_id>/<assignment>/<assignment>.ipynb)")
    found = []
    for student_dir in sorted(submissions_dir.iterdir()):
        if not _is_plain_dir(student_dir):
            continue
        for folder in sorted(student_dir.iterdir()):
            if _is_plain_dir(folder):
                found.append(inspect_submission(folder, student_dir.name, folder.name, assignments))
    return found


def inspect_submission(folder: Path, student: str, assignment: str, assignments) -> Submission:
    """Check one submission folder; return it graded-ready (``notebook`` set) or rejected (``problem`` set)."""
    digest = folder_digest(folder)
    timestamp = _read_timestamp(folder)
    reject = lambda problem: Submission(student, assignment, folder, digest, problem=problem, timestamp=timestamp)
    if not STUDENT_ID.match(student):
        return reject(f"student id {student!r} is not usable: letters, digits and _ . @ + - only (at most 64)")
    if assignment not in assignments:
        return reject(f"unknown assignment folder {assignment!r}: "
                      f"the course's assignments are {', '.join(assignments)}")
    links = [p.name for p in folder.rglob("*") if p.is_symlink()]
    if links:
        return reject(f"the submission contains symbolic links ({', '.join(sorted(links)[:3])}); hand in plain files")
    expected = folder / f"{assignment}.ipynb"
    if not expected.is_file():
        others = sorted(p.name for p in folder.glob("*.ipynb"))
        if others:
            return reject(f"notebook renamed: expected {expected.name!r} but found {', '.join(map(repr, others))}; "
                          f"notebooks are graded by their released name, so rename it back")
        return reject(f"missing notebook: no {expected.name!r} in the submission")
    try:
        load_notebook(expected)
    except RejectedNotebook as e:
        return reject(str(e))
    return Submission(student, assignment, folder, digest, notebook=expected, timestamp=timestamp)


def load_notebook(path: Path, max_bytes: int = MAX_NOTEBOOK_BYTES) -> dict:
    """Parse a submitted notebook as plain JSON and check it has the shape of an nbformat 4 notebook.

    Returns the parsed dict. Raises :class:`RejectedNotebook` with a message naming the problem. Only the
    structure the grader relies on is checked (cells with a ``cell_type`` and a ``source``); learner metadata is
    kept but never trusted.
    """
    size = path.stat().st_size
    name = path.name
    if size == 0:
        raise RejectedNotebook(f"{name!r} is an empty file (0 bytes): was the notebook saved before handing it in?")
    if size > max_bytes:
        raise RejectedNotebook(f"{name!r} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit: "
                               f"clear the outputs (Kernel > Restart & Clear Output) and save again")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RejectedNotebook(f"{name!r} is not UTF-8 text (byte {e.start}): it is not a notebook") from None
    try:
        nb = json.loads(text)
    except json.JSONDecodeError as e:
        raise RejectedNotebook(f"{name!r} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): "
                               f"the file is corrupt; open it in Jupyter to repair it, or hand in a fresh copy"
                               ) from None
    except RecursionError:
        raise RejectedNotebook(f"{name!r} is JSON nested too deeply to be a notebook") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise RejectedNotebook(f"{name!r} is JSON but not a notebook: it has no list of 'cells'")
    if nb.get("nbformat") != 4:
        raise RejectedNotebook(f"{name!r} has nbformat {nb.get('nbformat')!r}; the course uses nbformat 4")
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            raise RejectedNotebook(f"{name!r}: cell {i} is not a notebook cell (no valid 'cell_type')")
        source = cell.get("source")
        if not (isinstance(source, str) or (isinstance(source, list) and all(isinstance(s, str) for s in source))):
            raise RejectedNotebook(f"{name!r}: cell {i} has no text 'source'")
    return nb


def cell_source(cell: dict) -> str:
    """A cell's source as one string (nbformat allows a string or a list of lines)."""
    source = cell.get("source", "")
    return source if isinstance(source, str) else "".join(source)


def folder_digest(folder: Path) -> str:
    """SHA-256 over the relative names and contents of every plain file under ``folder`` (sorted, so stable).

    Files bigger than 4 x :data:`MAX_NOTEBOOK_BYTES` are hashed by name, size and mtime only: they are rejected
    anyway, and reading gigabytes to say so would hold up the class.
    """
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode):
            h.update(f"{path.relative_to(folder).as_posix()}\0{stat.filemode(info.st_mode)}\0".encode())
            continue
        h.update(f"{path.relative_to(folder).as_posix()}\0{info.st_size}\0".encode())
        if info.st_size > 4 * MAX_NOTEBOOK_BYTES:
            h.update(str(info.st_mtime_ns).encode())
            continue
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _is_plain_dir(path: Path) -> bool:
    return not path.is_symlink() and path.is_dir() and not path.name.startswith(".")


def _read_timestamp(folder: Path) -> str | None:
    """nbgrader's ``timestamp.txt`` when the submission has one (the exchange writes it), else None."""
    path = folder / "timestamp.txt"
    if path.is_file() and not path.is_symlink() and path.stat().st_size < 200:
        text = path.read_text(errors="replace").strip()
        return text or None
    return None


def safe_name(name: str) -> str:
    """A file-name-safe form of a notebook or id, for paths under build/grades/ (keeps it readable)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]", "_", name)
    return cleaned or "_"


__all__ = ["MAX_NOTEBOOK_BYTES", "RejectedNotebook", "Submission", "cell_source", "discover", "folder_digest",
           "inspect_submission", "load_notebook", "safe_name"]
