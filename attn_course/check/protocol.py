"""The self-check protocol: what a checker is, what it returns, and the registry of checkers by name.

A check happens in three steps, so that the untrusted part (running the learner's code) can happen in a
different process from the trusted part (deciding the verdict)::

    cases   = chk.make_cases(seed, hidden=False)   # inputs only: plain data that survives torch.save/load
    output  = chk.call(fn, case)                   # run the learner's callable; may raise
    verdict = chk.judge(case, output_or_error)     # a pure function of data -> Verdict(passed, message)

In a notebook all three run at once: ``chk(fn)`` returns a :class:`CheckReport` or raises
:class:`CheckFailed` / :class:`NotImplementedYet` (both ``AssertionError``, so nbgrader counts them as a
failed test) carrying the first diagnosis.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

NOT_IMPLEMENTED = "not implemented yet"


@dataclass(frozen=True)
class Verdict:
    """The judgement on one case. ``mistake`` names the recognised classic mistake (a key of the mutant
    catalogue, or ``"not_implemented"``), ``None`` when the answer is right or the mistake is unknown."""

    passed: bool
    message: str
    mistake: str | None = None


@dataclass(frozen=True)
class Raised:
    """A record of the exception a learner's callable raised, as plain data (it crosses process borders)."""

    type_name: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> Raised:
        return cls(type(exc).__name__, str(exc))


class CheckFailed(AssertionError):
    """A check found a wrong answer. ``verdict`` is the first failing case's diagnosis."""

    def __init__(self, message: str, verdict: Verdict | None = None, case_index: int | None = None):
        super().__init__(message)
        self.verdict = verdict
        self.case_index = case_index


class NotImplementedYet(AssertionError):
    """The learner's callable still raises ``NotImplementedError``."""


@dataclass(frozen=True)
class CheckReport:
    """A passed check: which checker, on how many cases."""

    name: str
    n_cases: int
    hidden: bool = False
    seed: int = 0

    def __str__(self) -> str:
        kind = "hidden" if self.hidden else "visible"
        return f"✓ {self.name}: all {self.n_cases} {kind} cases passed (seed {self.seed})"

    def _repr_html_(self) -> str:
        return f'<div style="color:#1a7f37;font-weight:bold">{html.escape(str(self))}</div>'


class Check:
    """A learner self-check. Subclasses provide :meth:`make_cases`, :meth:`call` and :meth:`judge`.

    ``name`` is the registry key; ``expects`` says in one line what callable the learner should pass.
    """

    name: str = ""
    expects: str = ""

    def make_cases(self, seed: int, hidden: bool = False) -> list[dict]:
        raise NotImplementedError

    def call(self, fn, case: dict):
        raise NotImplementedError

    def judge(self, case: dict, output) -> Verdict:
        raise NotImplementedError

    def __call__(self, fn, hidden: bool = False, seed: int = 0) -> CheckReport:
        """Run every case locally; raise on the first wrong one, with its diagnosis."""
        if not callable(fn):
            raise TypeError(f"check {self.name!r} needs your function (a callable), got {type(fn).__name__}")
        cases = self.make_cases(seed, hidden=hidden)
        for i, case in enumerate(cases):
            try:
                output = self.call(fn, case)
            except NotImplementedError as exc:
                output = Raised.from_exception(exc)
            except Exception as exc:  # the learner's bug: judged below like any other output
                output = Raised.from_exception(exc)
            verdict = self.judge(case, output)
            if verdict.mistake == "not_implemented":
                raise NotImplementedYet(
                    f"{self.name}: {verdict.message} (your function still raises NotImplementedError: "
                    f"replace that line with your implementation)"
                )
            if not verdict.passed:
                label = case.get("label", "")
                where = f"case {i + 1} of {len(cases)}" + (f" ({label})" if label else "")
                raise CheckFailed(f"{self.name}, {where}: {verdict.message}", verdict, i)
        return CheckReport(self.name, len(cases), hidden, seed)

    def __repr__(self) -> str:
        return f"<check {self.name!r}: {self.expects}>"


#: every checker, by name
CHECKS: dict[str, Check] = {}


def register(check):
    """Add a checker (a :class:`Check` instance, or a subclass, which is instantiated) to :data:`CHECKS`
    under its name; usable as a class decorator. Names are unique."""
    instance = check() if isinstance(check, type) else check
    if not isinstance(instance, Check) or not instance.name or instance.name in CHECKS:
        raise ValueError(f"cannot register {check!r}: not a Check, or its name is empty or already taken")
    CHECKS[instance.name] = instance
    return check
