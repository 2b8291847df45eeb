"""Turning outputs into plain data, and saying in words how an output differs from the expected one.

Every message here is written for a learner: it names the shapes, dtypes, positions and sizes of the
difference, never a stack trace from inside the checker.
"""

from __future__ import annotations

import math
import numbers

import torch

#: default tolerances for float32 cases (different but correct formulations differ by ~1e-6)
ATOL, RTOL = 1e-5, 1e-4
#: looser tolerances for recognising a mutant (the learner wrote the same mistake in their own way)
MUTANT_ATOL, MUTANT_RTOL = 1e-4, 1e-3


def plain(obj, _depth: int = 0):
    """The learner's output as plain data (tensors detached on the CPU, numbers, tuples, lists, dicts).

    Anything else (a numpy array, a module, a function, ...) becomes a marker
    ``{"__unsupported__": type name, "detail": its shape, if it has one}`` so that the judge can say what
    came back (and so that the output still survives ``torch.save``/``torch.load(weights_only=True)``).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu").clone()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, numbers.Number) and hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (tuple, list)) and _depth < 4:
        items = [plain(x, _depth + 1) for x in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    if isinstance(obj, dict) and _depth < 4 and all(isinstance(k, str) for k in obj):
        return {k: plain(v, _depth + 1) for k, v in obj.items()}
    kind = type(obj)
    extra = f" with shape {tuple(obj.shape)}" if hasattr(obj, "shape") else ""
    return {"__unsupported__": f"{kind.__module__}.{kind.__qualname__}", "detail": extra}


def describe_type(obj) -> str:
    """A short description of what an output is: ``tensor float32 (2, 3)``, ``int 42``, ``tuple of 2``."""
    if isinstance(obj, dict) and "__unsupported__" in obj:
        return f"a {obj['__unsupported__']}{obj.get('detail', '')}"
    if isinstance(obj, torch.Tensor):
        return f"a {str(obj.dtype).replace('torch.', '')} tensor of shape {tuple(obj.shape)}"
    if obj is None:
        return "None"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} item(s)"
    if isinstance(obj, (bool, int, float)):
        return f"{type(obj).__name__} {obj!r}"
    return f"a {type(obj).__name__}"


def close(a, b, atol: float = ATOL, rtol: float = RTOL, equal_nan: bool = False) -> bool:
    """True if ``a`` and ``b`` have the same structure and shapes and equal-enough values."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return False
        if (a.dtype == torch.bool) != (b.dtype == torch.bool):
            return False
        if a.dtype == torch.bool:
            return bool(torch.equal(a, b))
        if a.dtype.is_complex or b.dtype.is_complex:
            return False
        return bool(torch.allclose(b.double(), a.double(), atol=atol, rtol=rtol, equal_nan=equal_nan))
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(close(x, y, atol, rtol, equal_nan) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int) and isinstance(b, (int, float)):
        return b == a
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol) or (equal_nan and math.isnan(a) and math.isnan(b))
    return a == b


def _fmt_row(row: torch.Tensor, n: int = 8) -> str:
    vals = row.flatten().tolist()
    body = ", ".join(_fmt_num(x) for x in vals[:n])
    return "[" + body + (", ..." if len(vals) > n else "") + "]"


def _fmt_num(x) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.4g}"


def tensor_difference(expected: torch.Tensor, got, name: str = "your output", atol=ATOL, rtol=RTOL) -> str | None:
    """``None`` if ``got`` matches ``expected``; otherwise one or two sentences saying how it differs."""
    if not isinstance(got, torch.Tensor):
        return f"{name} should be a torch.Tensor of shape {tuple(expected.shape)}, but it is {describe_type(got)}"
    if got.shape != expected.shape:
        msg = f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if sorted(got.shape) == sorted(expected.shape):
            msg += " (the same sizes in a different order: a transpose or permute is missing or extra)"
        return msg
    if expected.dtype == torch.bool:
        return _mask_difference(expected, got, name)
    if not (got.dtype.is_floating_point and not got.dtype.is_complex):
        return f"{name} has dtype {got.dtype}, expected a floating-point tensor ({expected.dtype})"
    g, e = got.double(), expected.double()
    bad_nan = torch.isnan(g) & ~torch.isnan(e)
    if bad_nan.any():
        idx = tuple(bad_nan.nonzero()[0].tolist())
        return f"{name} has {int(bad_nan.sum())} NaN value(s) where a number was expected, the first at index {idx}"
    if close(e, g, atol, rtol):
        return None
    err = torch.where(g == e, 0.0, (g - e).abs()).nan_to_num(nan=math.inf)  # equal infinities are no error
    bad = ~torch.isclose(g, e, atol=atol, rtol=rtol)
    first = tuple(bad.nonzero()[0].tolist())
    msg = f"{name} is wrong at {int(bad.sum())} of {bad.numel()} entries (max abs error {err.max().item():.3g})"
    if expected.dim() >= 2:
        row = first[:-1]
        msg += f"; first wrong row {row}: expected {_fmt_row(e[row])}, got {_fmt_row(g[row])}"
    else:
        msg += f"; first wrong entry {first}: expected {_fmt_num(e[first].item())}, got {_fmt_num(g[first].item())}"
    return msg


def _mask_difference(expected: torch.Tensor, got: torch.Tensor, name: str) -> str | None:
    if got.dtype != torch.bool:
        x = got.double()
        zero_one = bool(((x == 0) | (x == 1)).all()) and torch.equal(x == 1, expected)  # 1 = may attend
        additive = bool(((x == 0) | torch.isneginf(x)).all()) and torch.equal(x == 0, expected)  # 0 = may attend
        if zero_one or additive:
            return (
                f"{name} has the right pattern but dtype {got.dtype}: return a bool tensor "
                f"(True = may attend), e.g. with .bool() or a comparison like j <= i"
            )
        return f"{name} has dtype {got.dtype}; a mask must be a bool tensor with True = may attend"
    if torch.equal(got, expected):
        return None
    bad = got != expected
    first = tuple(bad.nonzero()[0].tolist())
    msg = f"{name} differs at {int(bad.sum())} of {bad.numel()} positions, the first at index {first}"
    if expected.dim() >= 2:
        row = first[:-1]
        msg += f"; row {row}: expected {_fmt_bits(expected[row])}, got {_fmt_bits(got[row])}"
    return msg


def _fmt_bits(row: torch.Tensor) -> str:
    return "".join("1" if x else "0" for x in row.flatten().tolist()[:40])


def number_difference(expected: int | float, got, name: str = "your answer", rtol: float = 0.0) -> str | None:
    """``None`` if ``got`` equals ``expected`` (to ``rtol``); otherwise a sentence with both and their ratio."""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not got.dtype.is_complex:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        kind = "an int" if isinstance(expected, int) else "a float"
        return f"{name} should be {kind}, but it is {describe_type(got)}"
    if math.isnan(got):
        return f"{name} is NaN, expected {_fmt_num(expected)}"
    if math.isclose(got, expected, rel_tol=rtol, abs_tol=0.0 if isinstance(expected, int) else 1e-12):
        return None
    ratio = f" (ratio {got / expected:.4g})" if expected else ""
    return f"{name} is {_fmt_num(got)}, expected {_fmt_num(expected)}{ratio}"
