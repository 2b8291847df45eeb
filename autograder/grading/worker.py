"""The part of grading that runs in a worker process: hand one submission to the sandbox, bring back data.

A worker holds no secrets it does not need and writes nothing the parent relies on: it gets the executable
notebook (already stripped of test cells), the probes (checker, target, the parent's cases) and a scratch
folder, and returns the sandbox's outcome and outputs as plain data. Judging and every write happen in the
parent. A sandbox that cannot start (bubblewrap missing, say) raises, and the run stops with that message
rather than giving the class zeros.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

#: how much of the sandbox log we keep for the run report
LOG_TAIL = 4000


def sandbox_runner(job: dict) -> dict:
    """Run ``job`` (``notebook`` JSON text, ``name``, ``probes``, ``limits``) in ``autograder.sandbox``.

    Returns ``{"outcome", "outputs", "log", "wall_s", "details"}``. The scratch folder is created here, outside
    the course and build folders, and removed afterwards.
    """
    from autograder.sandbox import Limits, run_submission

    scratch = Path(tempfile.mkdtemp(prefix="attn-grade-"))
    try:
        notebook = scratch / "submission" / job["name"]
        notebook.parent.mkdir()
        notebook.write_text(job["notebook"])
        limits = job.get("limits") or Limits()
        result = run_submission(notebook, job["probes"], workdir=scratch / "work", limits=limits)
        return {"outcome": result.outcome, "outputs": result.outputs, "log": str(result.log)[-LOG_TAIL:],
                "wall_s": float(result.wall_s), "details": result.details}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
