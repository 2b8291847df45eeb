"""The gradebook on a real PostgreSQL server (Debian's ``postgresql``) that this test starts and stops itself.

The server runs from a fresh ``initdb`` in a temporary folder, listening on a unix socket only (no TCP), as
the ``postgres`` user when the test runs as root (PostgreSQL refuses to run as root). A small class is graded
into it through nbgrader's ``db_url``; the scores are read back with plain SQL, and a rerun grades nothing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg2
import pytest

from autograder.course import normalise_db_url, prepare_course
from autograder.grading import synthetic as syn
from autograder.grading.pipeline import grade_class
from autograder.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENT = "ch1_intuition"
PORT = 55432


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/pg_ctl): install Debian's "
                    "'postgresql' package (`make setup` as root does it, from APT_PACKAGES in mk/grading.mk)")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_url():
    """A running PostgreSQL server with an empty database ``gradebook``; yields (SQLAlchemy URL, psycopg2
    connection arguments), and stops the server afterwards."""
    bin_dir = _pg_bin()
    base = Path(tempfile.mkdtemp(prefix="attn-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres will not run as root: hand the folder to the postgres user
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(*args: str) -> None:
        subprocess.run(as_user + list(args), check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "grader", "--no-sync", "-E", "UTF8")
    options = f"-k {sock} -p {PORT} -c listen_addresses='' -c fsync=off"
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w", "start")
    try:
        admin = psycopg2.connect(host=str(sock), port=PORT, user="grader", dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE gradebook")
        admin.close()
        yield (f"postgresql://grader@/gradebook?host={sock}&port={PORT}",
               {"host": str(sock), "port": PORT, "user": "grader", "dbname": "gradebook"})
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def test_grading_into_a_postgresql_gradebook(postgres_url, tmp_path):
    postgres_url, connect_args = postgres_url
    solutions = tmp_path / "solutions"
    shutil.copytree(ROOT / "solutions" / ASSIGNMENT, solutions / ASSIGNMENT)
    course = prepare_course(tmp_path / "course", db_url=normalise_db_url(postgres_url), solutions=solutions)
    assert not (course / "gradebook.db").exists()  # nothing went to the default SQLite file
    subs, out = tmp_path / "subs", tmp_path / "grades"
    syn.write_submission(subs, "alice", ASSIGNMENT, syn.solved(course, ROOT / "solutions", ASSIGNMENT))
    syn.write_submission(subs, "bob", ASSIGNMENT, syn.read(course / "release" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"))
    syn.write_submission(subs, "carol", ASSIGNMENT, "this is not a notebook")

    kwargs = dict(course_dir=course, out_dir=out, db_url=postgres_url, workers=2, secret_seed=7,
                  limits=Limits(wall_s=120), prepare=False, log=lambda *_: None)
    report = grade_class(subs, **kwargs)
    got = {e["student"]: (e["outcome"], e["score"]) for e in report["submissions"]}
    assert got == {"alice": ("graded", 5.0), "bob": ("graded", 0.0), "carol": ("rejected", 0.0)}

    query = """
        SELECT sa.student_id, gc.name, g.auto_score
        FROM grade g
        JOIN submitted_notebook sn ON g.notebook_id = sn.id
        JOIN submitted_assignment sa ON sn.assignment_id = sa.id
        JOIN base_cell gc ON g.cell_id = gc.id
        WHERE g.auto_score IS NOT NULL ORDER BY 1, 2"""
    conn = psycopg2.connect(**connect_args)
    try:
        cur = conn.cursor()
        cur.execute(query)
        rows = cur.fetchall()
    finally:
        conn.close()
    by_student: dict[str, float] = {}
    for student, _cell, score in rows:
        by_student[student] = by_student.get(student, 0.0) + score
    assert by_student == {"alice": 5.0, "bob": 0.0, "carol": 0.0}
    assert {cell for _, cell, _ in rows} == {"ch1-hard-lookup-test", "ch1-soft-lookup-test", "ch1-temperature-test"}
    assert "alice,ch1_intuition,5," in (out / "grades.csv").read_text()

    again = grade_class(subs, **kwargs)
    assert not any(e["graded_now"] for e in again["submissions"])
    assert {e["student"]: e["score"] for e in again["submissions"]} == {"alice": 5.0, "bob": 0.0, "carol": 0.0}
