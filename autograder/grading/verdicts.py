"""Judging, in the trusted parent: the sandbox's outputs are data, and the verdict is ours.

For each test cell and each of its checks, the sandbox returned one entry per case, ``{"ok": output}`` or
``{"raised": [type_name, message]}`` (the learner's exception as text). We hand each to
``CHECKS[check].judge(case, output_or_Raised)``. A cell earns its points iff every check passes on every case;
anything missing (the notebook timed out or crashed before the probe ran, a list of the wrong length, an
entry of the wrong shape) is a failure with a message saying so. ``judge`` itself is guarded: an output built
to crash the judge is a failure, never a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .probes import probe_id
from .trusted import TrustedAssignment

#: why a probe may have no outputs, by sandbox outcome (the learner reads these in feedback)
NOT_RUN = {
    "timeout": "not checked: the notebook ran out of time before this check could run",
    "crashed": "not checked: the notebook's process died (exit, crash or memory limit) before this check ran",
    "rejected": "not checked: the submission was rejected",
    "ok": "not checked: the grader got no output for this check",
}


@dataclass(frozen=True)
class CheckResult:
    check: str
    target: str
    passed: bool
    message: str


@dataclass(frozen=True)
class CellResult:
    """The verdict on one autograded test cell: ``score`` is ``max_score`` if every check passed, else 0."""

    grade_id: str
    score: float
    max_score: float
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return self.score == self.max_score

    def to_dict(self) -> dict:
        return {"grade_id": self.grade_id, "score": self.score, "max_score": self.max_score,
                "checks": [asdict(c) for c in self.checks]}

    @classmethod
    def from_dict(cls, d: dict) -> CellResult:
        return cls(d["grade_id"], d["score"], d["max_score"], tuple(CheckResult(**c) for c in d["checks"]))


def judge_one(check, case: dict, entry, raised_type) -> tuple[bool, str]:
    """Judge one case's entry; never raises. Returns (passed, message)."""
    if isinstance(entry, dict) and set(entry) == {"ok"}:
        output = entry["ok"]
    elif (isinstance(entry, dict) and set(entry) == {"raised"} and isinstance(entry["raised"], (list, tuple))
          and len(entry["raised"]) == 2):
        output = raised_type(str(entry["raised"][0])[:200], str(entry["raised"][1])[:2000])
    else:
        return False, "the sandbox returned something that is not an output record"
    try:
        verdict = check.judge(case, output)
        return bool(verdict.passed), str(verdict.message)
    except Exception as e:  # an output crafted to break the judge earns nothing
        return False, f"your output could not be judged ({type(e).__name__}: {str(e)[:200]})"


def judge_probe(check, cases: list[dict], entries, raised_type) -> tuple[bool, str]:
    """All cases of one probe: (passed, message). The message names the first failing case."""
    if not isinstance(entries, list) or len(entries) != len(cases):
        return False, f"expected {len(cases)} results from the sandbox, got {_count(entries)}"
    for i, (case, entry) in enumerate(zip(cases, entries, strict=True)):
        passed, message = judge_one(check, case, entry, raised_type)
        if not passed:
            label = case.get("label") if isinstance(case, dict) else None
            where = f"hidden case {i + 1} of {len(cases)}" + (f" ({label})" if label else "")
            return False, f"{where}: {message}"
    return True, f"passed all {len(cases)} hidden cases"


def judge_submission(trusted: TrustedAssignment, cases: dict[str, list[dict]], outcome: str, outputs,
                     checks: dict, raised_type) -> list[CellResult]:
    """Verdicts for every test cell of ``trusted`` from one sandbox run's ``outputs`` (probe id -> entries)."""
    outputs = outputs if isinstance(outputs, dict) else {}
    results = []
    for cell in trusted.tests:
        check_results = []
        for i, (check, target) in enumerate(cell.checks):
            pid = probe_id(cell.grade_id, i)
            if pid not in outputs:
                check_results.append(CheckResult(check, target, False, NOT_RUN.get(outcome, NOT_RUN["ok"])))
                continue
            passed, message = judge_probe(checks[check], cases[check], outputs[pid], raised_type)
            check_results.append(CheckResult(check, target, passed, message))
        all_passed = all(c.passed for c in check_results)
        results.append(CellResult(cell.grade_id, cell.points if all_passed else 0.0, cell.points,
                                  tuple(check_results)))
    return results


def rejected_cells(trusted: TrustedAssignment, reason: str) -> list[CellResult]:
    """Zero on every test cell, each saying why (used for submissions that were never run)."""
    return [CellResult(c.grade_id, 0.0, c.points,
                       tuple(CheckResult(chk, tgt, False, f"not checked: {reason}") for chk, tgt in c.checks))
            for c in trusted.tests]


def _count(entries) -> str:
    return str(len(entries)) if isinstance(entries, (list, tuple)) else type(entries).__name__
