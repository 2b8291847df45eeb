"""The checker most exercises use: compare with a reference, then name the mistake from a catalogue.

``judge`` works in four steps, each a pure function of the case and the learner's output:

1. the learner's function raised: ``NotImplementedError`` means "not implemented yet"; an error that a
   catalogued mistake produces (e.g. ``q @ k`` on non-square shapes) is named; anything else is reported;
2. the output matches the reference (to float32 tolerance): passed;
3. the output matches one of the catalogued wrong implementations ("mutants"), run on the same case:
   the mistake is named, with an explanation and a hint;
4. otherwise: a description of the difference (type, shape, dtype, NaN, max error, first wrong row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .compare import (
    ATOL,
    MUTANT_ATOL,
    MUTANT_RTOL,
    RTOL,
    close,
    describe_type,
    number_difference,
    plain,
    tensor_difference,
)
from .protocol import NOT_IMPLEMENTED, Check, Raised, Verdict


@dataclass(frozen=True)
class Mutant:
    """A classic mistake, written as a wrong implementation with the learner's signature.

    ``message`` says what the output shows and what was probably done, ``hint`` how to fix it.
    ``raises`` recognises the error this mistake raises on cases where it cannot run (``None``: never).
    """

    name: str
    message: str
    hint: str
    fn: Callable
    raises: Callable[[dict, Raised], bool] | None = None

    def diagnosis(self) -> str:
        return f"{self.message} Hint: {self.hint}"


class ReferenceCheck(Check):
    """A checker defined by its cases, the argument names it passes, a reference and a mutant catalogue.

    Subclasses set ``name``, ``expects``, ``args`` (case keys passed positionally; a key whose value is
    ``None`` is left out, so ``mask=None`` cases call ``fn(q, k, v)``), ``mutants``, and implement
    :meth:`build_cases` and :meth:`reference`. ``output_names`` labels the items of a tuple output.
    """

    args: tuple[str, ...] = ()
    mutants: tuple[Mutant, ...] = ()
    output_names: tuple[str, ...] = ()
    atol: float = ATOL
    rtol: float = RTOL

    # --- cases -------------------------------------------------------------------------------------
    def make_cases(self, seed: int, hidden: bool = False) -> list[dict]:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        salt = sum(map(ord, self.name))  # different checkers draw different tensors for the same seed
        gen = torch.Generator().manual_seed((seed * 7919 + salt + (104729 if hidden else 0)) % 2**63)
        return self.build_cases(gen, hidden)

    def build_cases(self, gen: torch.Generator, hidden: bool) -> list[dict]:
        raise NotImplementedError

    # --- running the learner's code ------------------------------------------------------------------
    def arguments(self, case: dict) -> tuple:
        """The positional arguments for one case; tensors are cloned so in-place edits cannot leak."""
        vals = (case[a] for a in self.args if case.get(a) is not None)
        return tuple(v.clone() if isinstance(v, torch.Tensor) else _copy(v) for v in vals)

    def call(self, fn, case: dict):
        with torch.no_grad():
            return plain(fn(*self.arguments(case)))

    # --- judging -------------------------------------------------------------------------------------
    def reference(self, case: dict):
        raise NotImplementedError

    def judge(self, case: dict, output) -> Verdict:
        try:
            return self._judge(case, output)
        except Exception as exc:  # never show the learner a traceback from inside the checker
            return Verdict(
                False,
                f"the checker could not make sense of your output ({describe_type(output)}): "
                f"{type(exc).__name__}: {exc}",
            )

    def _judge(self, case: dict, output) -> Verdict:
        if isinstance(output, Raised):
            return self.judge_raised(case, output)
        if output is None:
            return Verdict(False, "your function returned None: did you forget the `return` statement?")
        expected = self.reference(case)
        problem = self.difference(case, expected, output)
        if problem is None:
            return Verdict(True, "correct")
        suspects = self.recognise(case, output, expected)
        if suspects:
            message = suspects[0].diagnosis()
            for other in suspects[1:]:  # the same wrong answer can come from different slips
                message += f" (Or: {other.message[0].lower()}{other.message[1:]})"
            return Verdict(False, message, suspects[0].name)
        return Verdict(False, problem[0].upper() + problem[1:] + ".")

    def judge_raised(self, case: dict, raised: Raised) -> Verdict:
        if raised.type_name == "NotImplementedError":
            return Verdict(False, NOT_IMPLEMENTED, "not_implemented")
        for m in self.mutants:
            if m.raises is not None and m.raises(case, raised):
                return Verdict(False, m.diagnosis(), m.name)
        return Verdict(False, f"your function raised {raised.type_name}: {raised.message}")

    def difference(self, case: dict, expected, got) -> str | None:
        """``None`` if ``got`` is right, else a description of how it differs."""
        return difference(expected, got, self.output_names, self.atol, self.rtol)

    def mutant_output(self, mutant: Mutant, case: dict):
        """What the mistake returns on this case (``None`` if it raises there)."""
        try:
            return self.call(mutant.fn, case)
        except Exception:
            return None

    def recognise(self, case: dict, output, expected) -> list[Mutant]:
        """The catalogued mistakes whose output on this case equals the learner's (and differs from the
        reference, so that the match means something), in catalogue order, one per name."""
        found = {}
        for m in self.mutants:
            if m.name in found:
                continue
            wrong = self.mutant_output(m, case)
            if wrong is None or close(expected, wrong, self.atol, self.rtol):
                continue
            if close(wrong, output, max(MUTANT_ATOL, self.atol), max(MUTANT_RTOL, self.rtol), equal_nan=True):
                found[m.name] = m
        return list(found.values())


def difference(expected, got, names: tuple[str, ...] = (), atol: float = ATOL, rtol: float = RTOL) -> str | None:
    """How ``got`` differs from ``expected`` (a tensor, a number, or a tuple of those), or ``None``."""
    if isinstance(expected, tuple):
        names = names or tuple(f"item {i}" for i in range(len(expected)))
        if isinstance(got, torch.Tensor) and got.shape == expected[0].shape:
            return f"your function returned one tensor; it should return a tuple ({', '.join(names)})"
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"your function should return a tuple ({', '.join(names)}), but it returned {describe_type(got)}"
        for e, g, n in zip(expected, got, names, strict=True):
            if isinstance(e, torch.Tensor):
                problem = tensor_difference(e, g, f"`{n}`", atol, rtol)
            else:
                problem = number_difference(e, g, f"`{n}`")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        return tensor_difference(expected, got, "your output", atol, rtol)
    return number_difference(expected, got)


def _copy(v):
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_copy(x) for x in v)
    return v
