"""Trusted-verdict specs, one module per assignment.

``autograder/specs/<assignment>.py`` defines ``GRADED = {grade_id: {"points": float, "checks": [[checker, target],
...]}}`` for every autograded test cell of ``solutions/<assignment>/<assignment>.ipynb``. The grader never runs the
test cells' source: it calls ``attn_course.check.CHECKS[checker].call(<learner's target>, case)`` inside the
sandbox and judges the returned data in the parent with ``CHECKS[checker].judge``.
"""
