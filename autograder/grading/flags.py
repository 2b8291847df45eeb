"""Instructor flags: learner code that leans on the course's own reference implementations.

The verdict compares *data*: the outputs of the learner's functions on the grader's inputs. A learner whose
``scaled_dot_product_attention`` simply returns ``attn_course.attention(q, k, v, mask)`` (or PyTorch's
``F.scaled_dot_product_attention``, or a checker's own ``check.CHECKS[name].reference``) produces the right
data and passes, and no comparison of outputs can tell. So the trusted parent also reads the code: every code
cell the learner wrote or changed (a cell whose source is not one of the released notebook's) is parsed, and
uses of the reference (the checkers' insides included), of PyTorch's ready-made attention, and of dynamic
imports or ``exec`` are listed for the instructor in the run report.

A flag never changes a score, and the scan is no defence against a determined cheat (``getattr`` on a
string-built module name passes it): it points a person at the notebooks worth reading.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

#: attn_course's parts a learner may use in their own code: the self-checks only
ALLOWED_COURSE_PARTS = {"check"}
#: ready-made attention from PyTorch that an exercise asks the learner to write themselves
READY_MADE = {"scaled_dot_product_attention", "MultiheadAttention", "multi_head_attention_forward"}
#: what a learner may reach through ``check`` besides the checkers themselves
CHECK_PUBLIC = {"CheckFailed"}
#: ways to reach code the scan cannot see
DYNAMIC = {"__import__", "import_module", "exec", "eval", "compile"}


def released_code(release_notebook: Path) -> set[str]:
    """The stripped sources of every code cell of a released notebook (given code, stubs and tests)."""
    nb = json.loads(Path(release_notebook).read_text())
    return {_source(c).strip() for c in nb["cells"] if c.get("cell_type") == "code"}


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _parse(source: str) -> ast.AST | None:
    """Python source of a cell, with IPython syntax (magics, ``!cmd``) turned into plain Python first."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001  (an odd cell is simply parsed as it is)
        pass
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        # not Python, or Python built to choke a parser ("-" * 100000 + "1", a call chain 100000 deep)
        return None


def _course_part(module: str) -> str | None:
    """``attn_course.check.sdpa`` -> ``check``; ``attn_course`` -> ``""``; other modules -> None."""
    if module == "attn_course":
        return ""
    if module.startswith("attn_course."):
        return module.split(".")[1]
    return None


def _via_check(node: ast.AST) -> bool:
    """``check.scaled_dot_product_attention`` is the self-check of that name, not PyTorch's function."""
    return (isinstance(node, ast.Name) and node.id == "check") or (isinstance(node, ast.Attribute)
                                                                   and node.attr == "check")


def _checker_names() -> set[str]:
    from attn_course.check import CHECKS

    return set(CHECKS) | CHECK_PUBLIC


def cell_flags(tree: ast.AST) -> list[str]:
    """What one parsed cell does that an instructor should look at, one phrase per finding."""
    found: list[str] = []
    checkers = _checker_names()
    aliases = set()  # names bound to the attn_course package itself
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                part = _course_part(a.name)
                if part == "" or (part is not None and a.asname is None):
                    aliases.add(a.asname or "attn_course")
                if (part and part not in ALLOWED_COURSE_PARTS) or a.name.startswith("attn_course.check."):
                    found.append(f"imports {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            part = _course_part(node.module)
            if part == "check":  # check's insides hold every reference (CHECKS[...].reference)
                found.append(f"imports from {node.module}")
            elif part == "":
                found += [f"imports attn_course.{a.name}" for a in node.names if a.name not in ALLOWED_COURSE_PARTS]
            elif part is not None and part not in ALLOWED_COURSE_PARTS:
                found.append(f"imports from {node.module}")
            found += [f"uses PyTorch's ready-made {a.name}" for a in node.names if a.name in READY_MADE]
        elif isinstance(node, ast.Attribute):
            if node.attr in READY_MADE and not _via_check(node.value):
                found.append(f"uses PyTorch's ready-made {node.attr}")
            if _via_check(node.value) and node.attr not in checkers:
                found.append(f"uses check.{node.attr} (the self-checks' insides hold the reference)")
            if isinstance(node.value, ast.Name) and node.value.id in aliases and node.attr not in ALLOWED_COURSE_PARTS:
                found.append(f"uses attn_course.{node.attr}")
        elif isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name in DYNAMIC:
                found.append(f"calls {name}() (code the scan cannot read)")
    return found


def reference_use_flags(executable_nb: dict, released: set[str]) -> list[str]:
    """Flags for the learner-written cells of ``executable_nb`` (the submission's non-test code cells, in
    order): ``"cell 3: uses attn_course.attention"``. Cells identical to a released cell are skipped, so the
    given code of an assignment is never flagged. A cell that does not parse is flagged as such."""
    flags: list[str] = []
    for i, cell in enumerate(executable_nb.get("cells", [])):
        source = _source(cell)
        if not source.strip() or source.strip() in released:
            continue
        tree = _parse(source)
        if tree is None:
            flags.append(f"cell {i}: does not parse as Python (read it by hand)")
            continue
        seen: list[str] = []
        for finding in cell_flags(tree):
            if finding not in seen:
                seen.append(finding)
        flags += [f"cell {i}: {f}" for f in seen]
    return flags
