"""Read the sandbox's results file in the trusted parent: framing, safe unpickling, and structure checks.

The file is written by untrusted code (see ``runner.py``), so every byte is treated as hostile: records are
length-prefixed and size-capped, each is loaded with ``torch.load(weights_only=True)`` (no pickle code can run,
only tensors and plain containers come back), and each must have exactly the expected shape. A torn last
record (the process died while writing) ends the stream; anything malformed is an error and nothing from the
file is trusted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch

MAX_RECORDS = 100_000
MAX_TEXT = 4000


class BadResults(ValueError):
    """The results file does not follow the protocol (garbled, tampered with, or inconsistent with the job)."""


@dataclass
class Results:
    started: bool = False
    done: bool = False
    cells: list[dict] = field(default_factory=list)  # {"index", "error": [type, message] | None, "seconds"}
    probes: dict[str, list[dict]] = field(default_factory=dict)
    torn: bool = False  # the last record was cut short


def split_records(data: bytes) -> tuple[list[bytes], bool]:
    """The payloads of the length-prefixed records, and whether the stream ends in a torn record."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 8:
            return out, True
        size = int.from_bytes(data[pos : pos + 8], "big")
        if pos + 8 + size > len(data):
            return out, True
        out.append(data[pos + 8 : pos + 8 + size])
        pos += 8 + size
        if len(out) > MAX_RECORDS:
            raise BadResults(f"more than {MAX_RECORDS} records")
    return out, False


def _is_text(x) -> bool:
    return isinstance(x, str) and len(x) <= MAX_TEXT


def _unusual(value, depth: int = 0) -> str | None:
    """Why an output is not plain data the judges may touch, or None. Only dense (strided) CPU tensors, numbers,
    strings, None and lists, tuples and dicts of them pass: a sparse tensor with out-of-range indices loads
    without complaint and can crash the process that densifies or sums it, and the judges run in the parent."""
    if depth > 20:
        return "it is nested more than 20 levels deep"
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided or value.device.type != "cpu" or value.is_quantized or value.is_nested:
            return (f"it holds a tensor of layout {value.layout} on {value.device.type}"
                    f"{' (quantized)' if value.is_quantized else ''}; return an ordinary dense tensor")
        return None
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes, torch.dtype, torch.device)):
        return None
    if isinstance(value, (list, tuple)):
        return next((r for r in (_unusual(x, depth + 1) for x in value) if r), None)
    if isinstance(value, dict):
        return next((r for r in (_unusual(x, depth + 1) for x in (*value.keys(), *value.values())) if r), None)
    return f"it holds a {type(value).__name__}"


def _check_outcome(entry, where: str) -> dict:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise BadResults(f"{where}: expected {{'ok': ...}} or {{'raised': [type, message]}}, got {type(entry)}")
    if "ok" in entry:
        why = _unusual(entry["ok"])
        if why is not None:  # this case fails, with the reason; the rest of the file is still read
            return {"raised": ["UnsupportedOutput", f"the grader cannot compare your output: {why}"]}
        return {"ok": entry["ok"]}
    raised = entry.get("raised")
    if isinstance(raised, (list, tuple)) and len(raised) == 2 and all(_is_text(x) for x in raised):
        return {"raised": [raised[0], raised[1]]}
    raise BadResults(f"{where}: malformed 'raised' entry")


def parse(data: bytes, expected_cases: dict[str, int]) -> Results:
    """Validate and decode the results file against the job (probe id -> number of cases). Raise BadResults."""
    payloads, torn = split_records(data)
    res = Results(torn=torn)
    for n, payload in enumerate(payloads):
        if res.done:
            break  # the runner exits right after "done": anything later is not its
        try:
            rec = torch.load(io.BytesIO(payload), weights_only=True)
        except Exception as exc:
            raise BadResults(f"record {n} cannot be loaded safely ({type(exc).__name__}: {str(exc)[:200]})") from None
        kind = rec.get("kind") if isinstance(rec, dict) else None
        if kind == "start":
            res.started = True
        elif kind == "cell":
            error = rec.get("error")
            ok_error = error is None or (isinstance(error, (list, tuple)) and len(error) == 2
                                         and all(_is_text(x) for x in error))
            if not isinstance(rec.get("index"), int) or not ok_error or not isinstance(rec.get("seconds"), float):
                raise BadResults(f"record {n}: malformed cell record")
            res.cells.append({"index": rec["index"], "error": None if error is None else list(error),
                              "seconds": rec["seconds"]})
        elif kind == "probe":
            pid, outputs = rec.get("id"), rec.get("outputs")
            if pid not in expected_cases:
                raise BadResults(f"record {n}: unknown probe id {pid!r}")
            if pid in res.probes:
                raise BadResults(f"record {n}: probe {pid!r} reported twice")
            if not isinstance(outputs, list) or len(outputs) != expected_cases[pid]:
                raise BadResults(f"record {n}: probe {pid!r} should have {expected_cases[pid]} outputs")
            res.probes[pid] = [_check_outcome(o, f"probe {pid!r} case {i}") for i, o in enumerate(outputs)]
        elif kind == "done":
            res.done = True
        else:
            raise BadResults(f"record {n}: unknown kind {kind!r}")
    return res
