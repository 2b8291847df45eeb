"""The course's grading pipeline: nbgrader course setup and release, the sandbox that runs learners' code,
and the trusted grader that decides verdicts outside the learner's process. Run its tools from the
repository root as ``python -m autograder.<module>``."""
