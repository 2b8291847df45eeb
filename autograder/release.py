"""``make release``: prove the exercise sources, then ship the student notebooks, a zip per assignment and the book.

    1. course    prepare_course(): solutions/ -> build/course/source/, nbgrader generate_assignment for every
                 assignment -> build/course/release/ (student versions) and the gradebook
    2. validate  every solution notebook passes all its tests        (nbgrader validate)
                 every student version fails every one of its tests  (nbgrader validate --invert)
    3. stage     build/release.staging/<a>/<a>.ipynb, <a>.zip, book/ (a copy of build/book/html)
    4. leaks     nothing of a solution, a hidden test or a mark scheme appears in the staged files
    5. publish   the staging folder replaces build/release/ (a release that failed a step is never published)

Run it as ``python -m autograder.release [--no-book] [--assignments a b ...]``. Each failing step raises
:class:`ReleaseError` with what failed, where, and the notebook's error.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from attn_course._kernel_sockets import use_private_sockets

from .course import DEFAULT_COURSE_DIR, SOLUTIONS, available_assignments, ensure_venv_on_path, prepare_course
from .leakcheck import check_paths

DEFAULT_OUT = Path("build/release")
DEFAULT_BOOK = Path("build/book/html")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class ReleaseError(RuntimeError):
    """A step of the release failed; the message says which and why. Nothing was published."""


def log(msg: str) -> None:
    print(f"[release] {msg}", flush=True)


# --- step 2: validation ------------------------------------------------------------------------------------
def validate_notebook(notebook: Path, config_dir: Path, invert: bool) -> list[str]:
    """Run nbgrader's validator on one notebook; return its problems as readable strings (empty: fine).

    ``invert=False``: every autograded test cell must pass. ``invert=True``: every one must fail (the student
    version, whose solutions are stubs, must not earn points by accident).
    """
    from nbgrader.validator import Validator
    from traitlets.config.loader import PyFileConfigLoader

    ensure_venv_on_path()
    config = PyFileConfigLoader("nbgrader_config.py", path=str(config_dir)).load_config()
    config.Validator.invert = invert
    with tempfile.TemporaryDirectory(prefix="attn-validate-") as sockets:
        use_private_sockets(config, Path(sockets))
        results = Validator(config=config).validate(str(notebook))
    problems = []
    for cell in results.get("type_changed", []):
        problems.append(f"a cell changed type from {cell['old_type']} to {cell['new_type']}: {_first_line(cell)}")
    for cell in results.get("changed", []):
        problems.append(f"a locked test cell was modified: {_first_line(cell)}")
    for cell in results.get("failed", []):
        problems.append(f"test cell FAILED: {_first_line(cell)}\n{_tail(cell.get('raw_error', ''))}")
    for cell in results.get("passed", []):
        problems.append(f"test cell PASSED on the student version (the stub earns points): {_first_line(cell)}")
    return problems


def _first_line(cell: dict) -> str:
    lines = [ln for ln in cell.get("source", "").splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return repr(lines[0] if lines else cell.get("source", "")[:80])


def _tail(text: str, n: int = 12) -> str:
    text = _ANSI.sub("", text)  # IPython colours its tracebacks
    return "\n".join("      " + ln for ln in text.strip().splitlines()[-n:])


def validate_all(course_dir: Path, assignments: list[str], jobs: int = 2) -> None:
    """Validate the solution and the student version of every notebook, ``jobs`` at a time; raise
    :class:`ReleaseError` listing every problem."""
    runs = []  # (label, notebook, invert)
    for a in assignments:
        for nb in sorted((course_dir / "source" / a).glob("*.ipynb")):
            runs.append((f"solution {a}/{nb.name}", nb, False))
            runs.append((f"student version {a}/{nb.name}", course_dir / "release" / a / nb.name, True))
    # spawn, not fork: the parent has nbgrader (and its event loop machinery) loaded already
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(validate_notebook, nb, course_dir, invert) for _, nb, invert in runs]
        reports = []
        for (label, nb, _), fut in zip(runs, futures, strict=True):
            try:
                problems = fut.result()
            except Exception as exc:  # nbgrader itself failed (kernel died, bad metadata, ...)
                problems = [f"nbgrader could not validate it: {type(exc).__name__}: {exc}"]
            log(f"  {'ok  ' if not problems else 'FAIL'} {label}")
            reports += [f"{label} ({nb}):\n    " + p for p in problems]
    if reports:
        raise ReleaseError(
            "the exercise sources are not proven: every solution must pass all its tests and every student "
            "version must fail them.\n" + "\n".join(reports)
        )


# --- step 3: staging ---------------------------------------------------------------------------------------
def stage_release(course_dir: Path, assignments: list[str], stage: Path, book_html: Path | None) -> None:
    """Copy the student versions to ``stage/<a>/``, zip each as ``stage/<a>.zip`` and copy the book."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for a in assignments:
        shutil.copytree(course_dir / "release" / a, stage / a)
        with zipfile.ZipFile(stage / f"{a}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((stage / a).rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(stage).as_posix())  # members named <a>/<file>
    if book_html is not None:
        shutil.copytree(book_html, stage / "book")


# --- the whole pipeline --------------------------------------------------------------------------------------
def release(
    out: Path = DEFAULT_OUT,
    *,
    course_dir: Path = DEFAULT_COURSE_DIR,
    book_html: Path | None = DEFAULT_BOOK,
    assignments: list[str] | None = None,
    solutions: Path = SOLUTIONS,
    jobs: int = 2,
    validate: bool = True,
) -> Path:
    """Run the five steps above; return the published release folder. ``book_html=None`` ships no book."""
    out, course_dir, solutions = Path(out).resolve(), Path(course_dir).resolve(), Path(solutions).resolve()
    if book_html is not None:
        book_html = Path(book_html).resolve()
        if not (book_html / "index.html").is_file():
            raise ReleaseError(
                f"the built book is missing: no {book_html / 'index.html'}. Build it first with `make book` "
                "(`make release` does this for you), or release without it with --no-book."
            )
    known = available_assignments(solutions)
    assignments = list(assignments or known)
    unknown = sorted(set(assignments) - set(known))
    if unknown:
        raise ReleaseError(f"no source notebook for {unknown}: expected {solutions}/<a>/<a>.ipynb; have {known}")

    log(f"1/5 course: preparing {course_dir} ({len(known)} assignments)")
    try:
        prepare_course(course_dir, solutions=solutions)
    except Exception as exc:
        raise ReleaseError(f"nbgrader generate_assignment failed: {exc}") from exc

    if validate:
        log(f"2/5 validate: {len(assignments)} solutions must pass, their student versions must fail")
        validate_all(course_dir, assignments, jobs)
    else:
        log("2/5 validate: SKIPPED (--no-validate)")

    stage = out.with_name(out.name + ".staging")
    log(f"3/5 stage: notebooks, zips{' and the book' if book_html else ''} in {stage}")
    stage_release(course_dir, assignments, stage, book_html)

    log("4/5 leaks: comparing the secret lines of solutions/ with every staged file")
    leaks = check_paths([stage], solutions)
    if leaks:
        listing = "\n".join(f"    {leak}" for leak in leaks[:50])
        more = f"\n    ... and {len(leaks) - 50} more" if len(leaks) > 50 else ""
        raise ReleaseError(
            f"{len(leaks)} leak(s) of solutions or hidden tests into the release (nothing was published; the "
            f"staged files are in {stage}):\n{listing}{more}"
        )

    log(f"5/5 publish: {out}")
    if out.exists():
        shutil.rmtree(out)
    os.replace(stage, out)
    for a in assignments:
        log(f"  {out / a / (a + '.ipynb')}  {out / (a + '.zip')}")
    if book_html is not None:
        log(f"  {out / 'book' / 'index.html'}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: build/release")
    parser.add_argument("--course-dir", type=Path, default=DEFAULT_COURSE_DIR, help="default: build/course")
    parser.add_argument("--book", type=Path, default=DEFAULT_BOOK, help="the built book (default: build/book/html)")
    parser.add_argument("--no-book", action="store_true", help="release the notebooks only")
    parser.add_argument("--assignments", nargs="+", default=None, help="default: every assignment in solutions/")
    parser.add_argument("--jobs", type=int, default=2, help="notebooks validated at once (default 2)")
    parser.add_argument("--no-validate", action="store_true", help="skip step 2 (for a quick look; not for release)")
    args = parser.parse_args(argv)
    try:
        release(args.out, course_dir=args.course_dir, book_html=None if args.no_book else args.book,
                assignments=args.assignments, jobs=args.jobs, validate=not args.no_validate)
    except ReleaseError as exc:
        print(f"[release] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
