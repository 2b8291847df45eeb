"""What a run leaves for the instructor: ``grades.csv`` and the run report.

``grades.csv`` is read back from the gradebook (so it includes the instructor's manual marks once given),
one row per (student known to the gradebook, assignment), sorted::

    student, assignment, score, max_score, auto_score, auto_max_score, manual_score, manual_max_score,
    manual_pending, status

``score`` is nbgrader's: each grade cell's manual score if given, else its auto score (plus extra credit);
``max_score`` counts every point of the notebook, written answers included. Manual points are explicit:
``manual_score`` is empty until an instructor has marked at least one hand-graded cell, and
``manual_pending`` counts the hand-graded cells still unmarked. ``status`` is the submission's outcome
(graded, timed out, crashed, rejected) or "no submission".

The run report lists every submission found in this run with its outcome, whether it was graded now or was
already done, its autograded score and its instructor flags (learner code that calls the course's reference
or PyTorch's ready-made attention, see :mod:`.flags`; never a score change): ``report.json`` (for tools),
``report.txt`` (for people), and a copy of both under ``runs/`` named by the run's start time, so earlier runs
stay readable.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from nbgrader.api import Assignment, Grade, GradeCell, Student, SubmittedAssignment, SubmittedNotebook

from .journal import atomic_write

CSV_COLUMNS = ["student", "assignment", "score", "max_score", "auto_score", "auto_max_score", "manual_score",
               "manual_max_score", "manual_pending", "status"]


def _num(x: float) -> str:
    return f"{x:g}"


def grade_rows(gb, assignments: list[str], journal) -> list[dict]:
    """The rows of grades.csv (dicts keyed by :data:`CSV_COLUMNS`), from the gradebook and the journal."""
    grades: dict[tuple[str, str], list] = {}
    query = (gb.db.query(Grade, SubmittedAssignment.student_id, Assignment.name)
             .join(SubmittedNotebook, Grade.notebook_id == SubmittedNotebook.id)
             .join(SubmittedAssignment, SubmittedNotebook.assignment_id == SubmittedAssignment.id)
             .join(Assignment, SubmittedAssignment.assignment_id == Assignment.id))
    for grade, student, assignment in query.all():
        grades.setdefault((student, assignment), []).append(grade)
    students = sorted(s.id for s in gb.db.query(Student).all())
    maxima = {}
    for a in assignments:
        cells = [c for nb in gb.find_assignment(a).notebooks for c in list(nb.grade_cells) + list(nb.task_cells)]
        solution = {c.name for nb in gb.find_assignment(a).notebooks for c in nb.solution_cells}
        auto = {c.name for c in cells if isinstance(c, GradeCell) and c.cell_type == "code" and c.name not in solution}
        maxima[a] = (auto, sum(c.max_score for c in cells if c.name in auto),
                     sum(c.max_score for c in cells if c.name not in auto))
    rows = []
    for student in students:
        for a in assignments:
            auto_ids, auto_max, manual_max = maxima[a]
            row = {"student": student, "assignment": a, "max_score": _num(auto_max + manual_max),
                   "auto_max_score": _num(auto_max), "manual_max_score": _num(manual_max)}
            got = grades.get((student, a))
            if got is None:
                row.update(score="0", auto_score="0", manual_score="", manual_pending="", status="no submission")
            else:
                auto = [g for g in got if g.cell.name in auto_ids]
                manual = [g for g in got if g.cell.name not in auto_ids]
                marked = [g for g in manual if g.manual_score is not None]
                record = journal.get(student, a)
                row.update(score=_num(sum(float(g.score) for g in got)),
                           auto_score=_num(sum(g.auto_score or 0.0 for g in auto)),
                           manual_score=_num(sum(g.manual_score for g in marked)) if marked else "",
                           manual_pending=str(len(manual) - len(marked)),
                           status=record["outcome"] if record else "graded elsewhere")
            rows.append(row)
    gb.db.rollback()  # end the read transaction
    return rows


def write_grades_csv(path: Path, gb, assignments: list[str], journal) -> list[dict]:
    """Write grades.csv atomically; return its rows."""
    rows = grade_rows(gb, assignments, journal)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), buf.getvalue().encode())
    return rows


def summary_text(report: dict) -> str:
    """The readable form of a run report."""
    lines = [f"autograde run started {report['started']}, {report['wall_s']:.1f} s, {report['workers']} worker(s)",
             "counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(report["counts"].items())), ""]
    width = max([len(f"{e['student']}/{e['assignment']}") for e in report["submissions"]] + [10])
    for e in report["submissions"]:
        when = "graded now" if e["graded_now"] else "unchanged, graded earlier"
        detail = f"  -- {e['detail']}" if e["detail"] and e["outcome"] != "graded" else ""
        lines.append(f"{e['student'] + '/' + e['assignment']:<{width}}  {e['outcome']:<9}  "
                     f"{e['score']:g}/{e['max_score']:g}  ({when}){detail}")
        lines += [f"{'':<{width}}  flag: {flag}" for flag in e.get("flags", [])]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, entries: list[dict], started: float, workers: int) -> dict:
    """Write report.json and report.txt (and their copies under runs/); return the report."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    counts["graded now"] = sum(e["graded_now"] for e in entries)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    report = {"started": stamp, "wall_s": round(time.time() - started, 3), "workers": workers,
              "counts": counts, "submissions": entries}
    data, text = json.dumps(report, indent=1).encode(), summary_text(report).encode()
    for folder, name in ((out_dir, "report"), (out_dir / "runs", f"run-{stamp}-{time.time_ns() % 10**6:06d}")):
        atomic_write(folder / f"{name}.json", data)
        atomic_write(folder / f"{name}.txt", text)
    return report
