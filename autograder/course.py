"""The nbgrader course directory: ``build/course/`` laid out the way nbgrader expects.

    solutions/<assignment>/<assignment>.ipynb      (instructor sources, in git)
        --copy-->      build/course/source/<assignment>/
        --generate_assignment-->  build/course/release/<assignment>/   (student versions)
                                  build/course/gradebook.db            (every notebook, grade cell, point value)

:func:`prepare_course` does all of it and is idempotent: run it again and the sources are refreshed, the
student versions regenerated and the gradebook updated in place (students and submissions are kept).

Run it by hand with ``python -m autograder.course [COURSE_DIR] [--db-url URL]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
DEFAULT_COURSE_DIR = Path("build/course")
COURSE_ID = "attn-course"

# The assignments, one per chapter, in teaching order. Only those with a source notebook are prepared.
ASSIGNMENTS = (
    "ch1_intuition",
    "ch2_qkv",
    "ch3_sdpa",
    "ch4_masks",
    "ch5_multihead",
    "ch6_cost",
    "ch7_flash",
)

# Per-cell time limit while nbgrader executes a notebook (validate, autograde). The slowest correct cell on
# the 2-core CPU machine (the Triton kernel in the interpreter) takes a few seconds; a hung cell is cut off
# here instead of holding the class up. The per-notebook limit belongs to the sandbox that runs nbgrader.
CELL_TIMEOUT_S = 60

# Files in a solutions folder that must never reach the course (editor and build debris).
_IGNORE = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "*.pyc", ".DS_Store")


def available_assignments(solutions: Path = SOLUTIONS) -> list[str]:
    """The assignments of :data:`ASSIGNMENTS` whose ``solutions/<a>/<a>.ipynb`` exists, in order."""
    return [a for a in ASSIGNMENTS if (solutions / a / f"{a}.ipynb").is_file()]


def default_db_url(course_dir: Path) -> str:
    """The SQLite gradebook nbgrader uses by default: ``<course_dir>/gradebook.db``."""
    return f"sqlite:///{Path(course_dir).resolve() / 'gradebook.db'}"


def config_text(db_url: str | None = None) -> str:
    """The ``nbgrader_config.py`` of the course. The course root is the folder holding the file, so
    ``nbgrader`` run from there (or with ``--config`` pointing at it) finds the same course and gradebook."""
    db_line = (
        f"c.CourseDirectory.db_url = {db_url!r}"
        if db_url
        else "c.CourseDirectory.db_url = 'sqlite:///' + os.path.join(_root, 'gradebook.db')"
    )
    return f'''"""nbgrader configuration of the attn-course course, written by autograder/course.py: edit that."""
import os

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)
_root = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.root = _root
c.CourseDirectory.course_id = {COURSE_ID!r}
{db_line}

# Per-cell time limit (seconds) when nbgrader executes a notebook; a correct CPU solution needs a few seconds.
c.Execute.timeout = {CELL_TIMEOUT_S}
c.Execute.interrupt_on_timeout = True

# The student stub that solution blocks are replaced with: attn_course.check reports it as "not implemented yet".
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
'''


def copy_sources(course_dir: Path, assignments: list[str], solutions: Path = SOLUTIONS) -> None:
    """Replace ``<course_dir>/source/<a>/`` with a fresh copy of ``solutions/<a>/`` for each assignment."""
    for a in assignments:
        dest = course_dir / "source" / a
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(solutions / a, dest, ignore=_IGNORE)


def ensure_venv_on_path() -> None:
    """nbgrader runs its gradebook migrations by calling the ``alembic`` *command*, which lives next to this
    interpreter (``.venv/bin``), not necessarily on ``PATH`` (e.g. ``.venv/bin/pytest`` run from a clean shell)."""
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("alembic") is None and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def generate_assignments(course_dir: Path, assignments: list[str]) -> None:
    """``nbgrader generate_assignment --force`` for each assignment, through nbgrader's Python API with the
    course's own ``nbgrader_config.py``. Raises ``RuntimeError`` carrying nbgrader's log when one fails."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    ensure_venv_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(course_dir)).load_config()
    coursedir = CourseDirectory(config=config)
    api = NbGraderAPI(coursedir=coursedir, config=config)
    for a in assignments:
        result = api.generate_assignment(a, force=True, create=True)
        if not result["success"]:
            raise RuntimeError(
                f"nbgrader generate_assignment failed for {a!r} (source: {course_dir / 'source' / a}).\n"
                f"{result.get('error', '')}\n{result.get('log', '')}"
            )


def normalise_db_url(db_url: str) -> str:
    """``postgresql://...`` with the driver this project installs (psycopg2) spelled out.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which we do not depend on; nbgrader passes the
    URL straight through, so we name the driver when psycopg 3 is missing. Other URLs are returned unchanged.
    """
    if db_url.startswith("postgresql://") or db_url.startswith("postgres://"):
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "postgresql+psycopg2://" + db_url.split("://", 1)[1]
    return db_url


def prepare_course(
    course_dir: Path = DEFAULT_COURSE_DIR, db_url: str | None = None, *, solutions: Path = SOLUTIONS
) -> Path:
    """Build (or refresh) the nbgrader course directory and its gradebook; return its absolute path.

    Copies every ``solutions/<a>/`` into ``<course_dir>/source/<a>/``, writes ``nbgrader_config.py``
    (course id, gradebook URL, per-cell timeout, student stubs) and runs ``generate_assignment`` for every
    assignment, so the gradebook knows every notebook, grade cell and point value and
    ``<course_dir>/release/<a>/`` holds the student versions.

    ``db_url`` selects another gradebook (e.g. ``postgresql://user@host/db``); by default the SQLite file
    ``<course_dir>/gradebook.db``. ``solutions`` is the folder of source notebooks (tests point it
    elsewhere). Idempotent: students and submissions already in the gradebook stay.
    """
    course_dir = Path(course_dir).resolve()
    solutions = Path(solutions).resolve()
    assignments = available_assignments(solutions)
    if not assignments:
        raise FileNotFoundError(
            f"no assignment notebooks found: expected <assignment>/<assignment>.ipynb under {solutions} "
            f"for some of {', '.join(ASSIGNMENTS)}"
        )
    (course_dir / "source").mkdir(parents=True, exist_ok=True)
    (course_dir / "nbgrader_config.py").write_text(config_text(normalise_db_url(db_url) if db_url else None))
    copy_sources(course_dir, assignments, solutions)
    generate_assignments(course_dir, assignments)
    return course_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.course", description=prepare_course.__doc__)
    parser.add_argument("course_dir", nargs="?", default=str(DEFAULT_COURSE_DIR), help="default: build/course")
    parser.add_argument("--db-url", default=None, help="gradebook URL (default: SQLite <course_dir>/gradebook.db)")
    args = parser.parse_args(argv)
    path = prepare_course(Path(args.course_dir), db_url=args.db_url)
    print(f"course ready: {path} ({', '.join(available_assignments())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
