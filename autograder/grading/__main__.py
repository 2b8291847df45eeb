"""``python -m autograder.grading SUBMISSIONS [--workers N] [--db-url URL]``: what ``make autograde`` runs.

Grades ``SUBMISSIONS/<student_id>/<assignment>/<assignment>.ipynb`` in the sandbox, writes the gradebook,
``build/grades/feedback/<student_id>/<assignment>/<assignment>.html``, ``build/grades/grades.csv`` and the run
report ``build/grades/report.{json,txt}``. Exit status 0 when the run finished (whatever the learners'
outcomes), 2 on a usage or course error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .pipeline import default_workers, grade_class
from .trusted import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("submissions", type=Path, help="folder of <student_id>/<assignment>/*.ipynb")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"concurrent sandboxes (default: the number of cores, {default_workers()})")
    parser.add_argument("--db-url", default=None, help="gradebook URL (default: SQLite build/course/gradebook.db)")
    parser.add_argument("--course-dir", type=Path, default=Path("build/course"), help="nbgrader course folder")
    parser.add_argument("--out-dir", type=Path, default=Path("build/grades"), help="feedback, grades.csv, report")
    parser.add_argument("--no-prepare", action="store_true", help="use the course folder as it is")
    parser.add_argument("--assignments", nargs="*", default=None, help="grade only these assignments")
    parser.add_argument("--timeout", type=float, default=None, help="sandbox wall-time limit per notebook (s)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    limits = None
    if args.timeout is not None:
        from autograder.sandbox import Limits

        limits = Limits(wall_s=args.timeout)
    try:
        report = grade_class(args.submissions, course_dir=args.course_dir, out_dir=args.out_dir, db_url=args.db_url,
                             workers=args.workers, limits=limits, assignments=args.assignments,
                             prepare=not args.no_prepare)
    except (SpecError, ValueError, FileNotFoundError) as e:
        print(f"autograde: {e}", file=sys.stderr)
        return 2
    print((args.out_dir / "report.txt").read_text(), end="")
    print(f"autograde: wrote {args.out_dir / 'grades.csv'} and feedback for {len(report['submissions'])} submissions")
    errors = report["counts"].get("grader error", 0)
    if errors:
        print(f"autograde: the grader failed on {errors} submission(s) (see 'grader error' in the report); a rerun "
              f"grades them again", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
