"""The trusted grader: the half of ``make autograde`` that never runs a learner's code itself.

For every ``<submissions>/<student_id>/<assignment>/<assignment>.ipynb`` it

1. checks the files (:mod:`.intake`): a missing, renamed, corrupt, empty or huge notebook is *rejected* with a
   message, and the rest of the class is graded;
2. learns what to grade from trusted sources only (:mod:`.trusted`): the gradebook's grade cells and points, the
   released notebook's test cells, and ``autograder/specs/<assignment>.py`` -- never the submission's metadata;
3. asks the sandbox (``autograder.sandbox.run_submission``) to run the learner's own cells and then call each
   checker on inputs made here from a secret seed (:mod:`.probes`), and gets the outputs back as data;
4. judges those outputs here, in the parent (:mod:`.verdicts`): a test cell earns its points iff every check of
   the cell passes on every case;
5. writes the gradebook in one transaction per submission (:mod:`.gradebook`), the feedback page
   (:mod:`.feedback`), and finally a journal record (:mod:`.journal`), so that a killed run resumes where it
   stopped and a rerun grades only what is new or changed;
6. exports ``grades.csv`` and the run report (:mod:`.export`).

:func:`autograder.grading.pipeline.grade_class` ties it together; ``python -m autograder.grading`` is the CLI
that ``make autograde`` calls.
"""
