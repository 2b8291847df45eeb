"""Learner self-checks: run your implementation on small awkward cases and get a diagnosis.

    from attn_course import check
    check.scaled_dot_product_attention(my_attention)          # raises CheckFailed with a diagnosis, or passes
    check.CHECKS["causal_mask"](my_causal_mask, hidden=True)  # the same, by name

Every checker is a :class:`Check` in :data:`CHECKS` with three parts that can run in different processes
(see :mod:`attn_course.check.protocol`): ``make_cases``, ``call`` (runs your code) and ``judge`` (a pure
function of data). When your answer is wrong in a known way (scaling twice, softmax over the wrong axis,
a top-left causal mask, ...) the judge names the mistake: the catalogue is in
:mod:`attn_course.check.mutants`.
"""

from . import cost, flash, heads, lookup, masks, sdpa  # noqa: F401  (importing registers the checkers)
from .base import Mutant, ReferenceCheck
from .protocol import CHECKS, Check, CheckFailed, CheckReport, NotImplementedYet, Raised, Verdict, register

__all__ = [
    "CHECKS", "Check", "CheckFailed", "CheckReport", "NotImplementedYet", "Raised", "Verdict", "Mutant",
    "ReferenceCheck", "register",
]  # fmt: skip


def _shortcut(name: str):
    def run(fn, hidden: bool = False, seed: int = 0) -> CheckReport:
        return CHECKS[name](fn, hidden=hidden, seed=seed)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = f"Check your ``{name}``: {CHECKS[name].expects}. Same as ``CHECKS[{name!r}](fn, ...)``."
    return run


# check.<name>(fn, hidden=False, seed=0) for every checker, e.g. check.causal_mask(my_causal_mask)
for _name in CHECKS:
    globals()[_name] = _shortcut(_name)
    __all__.append(_name)
del _name
