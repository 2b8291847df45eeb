"""Writing verdicts into nbgrader's gradebook, one transaction per submission, from the trusted parent only.

nbgrader's own ``Gradebook.add_submission`` commits as it goes; we build the same rows (a submitted
assignment mirroring every notebook, grade cell and solution cell, as nbgrader does) inside one session
transaction instead, so a run killed in the middle of a write leaves the submission fully written or not at
all. The write is an upsert and idempotent: recording the same verdicts twice changes nothing, and an
instructor's manual scores and comments are never touched. SQLite and PostgreSQL behave the same (SQLAlchemy
underneath); the URL is nbgrader's ``db_url``.
"""

from __future__ import annotations

from nbgrader import utils
from nbgrader.api import (
    Assignment,
    Comment,
    Grade,
    Gradebook,
    Student,
    SubmittedAssignment,
    SubmittedNotebook,
)

from .verdicts import CellResult

#: nbgrader's course id for this course (matches autograder.course.COURSE_ID)
COURSE_ID = "attn-course"


def open_gradebook(db_url: str) -> Gradebook:
    """Connect to the gradebook at ``db_url`` (``sqlite:///...`` or ``postgresql://...``)."""
    from autograder.course import ensure_venv_on_path

    ensure_venv_on_path()  # nbgrader runs the `alembic` command when it creates a new gradebook
    return Gradebook(db_url, course_id=COURSE_ID)


def _parse_timestamp(text: str | None):
    if not text:
        return None
    try:
        return utils.parse_utc(text)
    except Exception:  # a learner-written timestamp.txt that is not a date: ignore it
        return None


def _new_submission(db, assignment: Assignment, student: Student) -> SubmittedAssignment:
    """A submitted assignment with a submitted notebook, a Grade per grade/task cell and a Comment per
    solution/task cell: the structure nbgrader's ``add_submission`` creates, not yet committed."""
    submission = SubmittedAssignment(assignment=assignment, student=student)
    for notebook in assignment.notebooks:
        nb = SubmittedNotebook(notebook=notebook, assignment=submission)
        for cell in notebook.grade_cells:
            Grade(cell_id=cell.id, notebook=nb)
        for cell in notebook.solution_cells:
            Comment(cell_id=cell.id, notebook=nb)
        for cell in notebook.task_cells:
            Comment(cell_id=cell.id, notebook=nb)
            Grade(cell_id=cell.id, notebook=nb)
    db.add(submission)  # cascades to the notebooks, grades and comments built above
    return submission


def record_submission(gb: Gradebook, student: str, assignment: str, cells: list[CellResult],
                      timestamp: str | None = None) -> None:
    """Set the auto score of every autograded cell of (student, assignment) in one transaction.

    Creates the student and the submission when new. Cells not in ``cells`` (the manually graded ones) are
    left for the instructor: their manual score is kept and they are flagged ``needs_manual_grade`` until
    one is given.
    """
    db = gb.db
    scores = {c.grade_id: c.score for c in cells}
    try:
        student_row = db.get(Student, student)
        if student_row is None:
            student_row = Student(id=student)
            db.add(student_row)
        assignment_row = gb.find_assignment(assignment)
        submission = (db.query(SubmittedAssignment)
                      .filter(SubmittedAssignment.assignment_id == assignment_row.id,
                              SubmittedAssignment.student_id == student).one_or_none())
        if submission is None:
            with db.no_autoflush:
                submission = _new_submission(db, assignment_row, student_row)
        submission.timestamp = _parse_timestamp(timestamp)
        db.flush()
        for nb in submission.notebooks:
            for grade in nb.grades:
                name = grade.cell.name
                if name in scores:
                    grade.auto_score = float(scores[name])
                    grade.needs_manual_grade = False
                else:
                    grade.needs_manual_grade = grade.manual_score is None
        db.commit()
    except BaseException:
        db.rollback()
        raise


def recorded_scores(gb: Gradebook, student: str, assignment: str) -> dict[str, float | None] | None:
    """grade cell -> auto score of (student, assignment) as the gradebook has it, or None if no submission."""
    rows = (gb.db.query(Grade).join(SubmittedNotebook).join(SubmittedAssignment).join(Assignment)
            .filter(Assignment.name == assignment, SubmittedAssignment.student_id == student).all())
    if not rows:
        return None
    return {g.cell.name: g.auto_score for g in rows}


def dump(gb: Gradebook) -> list[tuple]:
    """Every grade in the gradebook as sorted plain tuples
    (student, assignment, notebook, grade cell, auto score, manual score, max score, needs manual grade):
    two gradebooks holding the same grades dump the same list."""
    out = []
    for g in gb.db.query(Grade).all():
        nb = g.notebook
        out.append((nb.assignment.student_id, nb.assignment.assignment.name, nb.notebook.name, g.cell.name,
                    g.auto_score, g.manual_score, float(g.cell.max_score), bool(g.needs_manual_grade)))
    gb.db.rollback()  # end the read transaction (PostgreSQL would otherwise keep it open)
    return sorted(out, key=lambda t: tuple("" if x is None else str(x) for x in t))
