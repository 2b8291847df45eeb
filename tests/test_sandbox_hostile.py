"""The hostile corpus (tests/hostile/) through the real bubblewrap sandbox, with small limits.

For every hostile notebook: the run finishes with the expected outcome; the attack shows in the log as
blocked; the wrong answer earns nothing when the *trusted* judge (in this process) looks at the returned data;
the honest answer's outputs are exactly what the same code gives here, and the reference agrees; no process of
the sandbox survives; nothing outside the sandbox changed (a planted class folder with another student's work
and a gradebook; no file appears in the repository, the virtualenv or the system folders).
"""

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from attn_course.check import CHECKS, Raised
from autograder.sandbox import Limits, run_submission
from tests.hostile.build import CORPUS, HONEST, build

HOSTILE = Path(__file__).resolve().parent / "hostile"
ROOT = HOSTILE.parent.parent
SEED = 20261123
LIMITS = Limits(wall_s=30, cpu_s=25, cell_timeout_s=3, call_timeout_s=5, memory_bytes=2 * 2**30, processes=48,
                file_bytes=32 * 2**20, scratch_bytes=64 * 2**20, log_bytes=16 * 1024)


def honest_reference():
    """The honest attention_weights, run here (trusted), to compare the sandbox's outputs with exactly."""
    namespace = {}
    exec(HONEST, namespace)
    return namespace["attention_weights"]


@pytest.fixture(scope="module")
def probes():
    return [
        {"id": "weights", "check": "attention_weights", "target": "attention_weights",
         "cases": CHECKS["attention_weights"].make_cases(SEED, hidden=True)},
        {"id": "sdpa", "check": "scaled_dot_product_attention", "target": "scaled_dot_product_attention",
         "cases": CHECKS["scaled_dot_product_attention"].make_cases(SEED, hidden=True)},
    ]


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """Another student's submission and a gradebook next to the one being graded, as the grader lays them out."""
    root = tmp_path_factory.mktemp("class")
    (root / "submitted" / "bob" / "ch3_sdpa").mkdir(parents=True)
    (root / "submitted" / "bob" / "ch3_sdpa" / "ch3_sdpa.ipynb").write_text("SECRET-TOKEN-bob " + "x" * 100)
    (root / "gradebook.db").write_bytes(b"SQLite format 3\x00" + b"SECRET-TOKEN-gradebook")
    return root


def snapshot(*roots: Path) -> dict:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def sandbox_processes(uid) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


def judge_all(probe, entries):
    chk = CHECKS[probe["check"]]
    pairs = zip(probe["cases"], entries, strict=True)
    return [chk.judge(case, e["ok"] if "ok" in e else Raised(*e["raised"])) for case, e in pairs]


def assert_honest_exact(probe, entries, allow_missing: bool):
    fn = honest_reference()
    for case, entry in zip(probe["cases"], entries, strict=True):
        if "raised" in entry and allow_missing:
            assert entry["raised"][0] == "NoResult", entry
            continue
        expected = CHECKS["attention_weights"].call(fn, case)
        assert torch.equal(entry["ok"], expected), "the honest function's output changed inside the sandbox"
    verdicts = judge_all(probe, entries)
    assert all(v.passed for v, e in zip(verdicts, entries, strict=True) if "ok" in e)


def test_corpus_files_match_the_generator(tmp_path):
    build(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        assert path.read_bytes() == (HOSTILE / path.name).read_bytes(), f"rerun tests/hostile/build.py ({path.name})"


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_submission(name, probes, classroom, tmp_path):
    manifest = json.loads((HOSTILE / "manifest.json").read_text())[name]
    limits = Limits(**{**LIMITS.__dict__, **manifest["limits"]})
    if name == "infinite_loop_no_alarm":
        limits = Limits(**{**limits.__dict__, "wall_s": 12.0})
    watched = [classroom]  # (the repository's own folders are edited by others while tests run: see pwned below)
    before = snapshot(*watched)
    notebook = classroom / "submitted" / "mallory" / "ch3_sdpa" / "ch3_sdpa.ipynb"
    notebook.parent.mkdir(parents=True, exist_ok=True)
    notebook.write_bytes((HOSTILE / manifest["file"]).read_bytes())
    before[str(notebook)] = hashlib.sha256(notebook.read_bytes()).hexdigest()

    result = run_submission(notebook, probes, workdir=tmp_path / "work", limits=limits,
                            skip_grade_ids={"ch3-weights-test", "ch3-sdpa-test"})

    assert result.outcome == manifest["outcome"], (result.details["reason"], result.log[-3000:])
    for text in manifest["log_has"]:
        assert text in result.log, f"{text!r} missing from the log:\n{result.log[-3000:]}"
    for text in manifest["log_lacks"]:
        assert text not in result.log, f"{text!r} in the log:\n{result.log[-3000:]}"
    assert len(result.log) < 3 * limits.log_bytes
    assert result.wall_s < limits.wall_s + 15
    # the wrong (or sabotaged) answer earns nothing from the trusted judge, whatever was patched inside
    sdpa = next(p for p in probes if p["id"] == "sdpa")
    assert len(result.outputs["sdpa"]) == len(sdpa["cases"])
    assert not any(v.passed for v in judge_all(sdpa, result.outputs["sdpa"]))
    # the honest answer's outputs are exact when the run completed (and only NoResult is allowed otherwise)
    weights = next(p for p in probes if p["id"] == "weights")
    assert_honest_exact(weights, result.outputs["weights"], allow_missing=result.outcome != "ok")
    # nothing survives, nothing outside changed, nothing leaked
    if result.details["uid"] is not None:
        assert sandbox_processes(result.details["uid"]) == []
    assert snapshot(*watched) == before
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["submission.ipynb"]
    assert "SECRET-TOKEN" not in result.log
    for pwned in [ROOT / "attn_course" / "pwned.py", ROOT / ".venv" / "pwned", ROOT / "pwned", Path("/pwned"),
                  Path("/usr/pwned"), Path("/etc/pwned"), Path(torch.__file__).parent / "pwned"]:
        assert not pwned.exists(), pwned


def test_edited_test_cells_run_only_what_the_caller_allows(probes, tmp_path):
    """The edited_tests notebook marks its own wrong answer as a test cell: that cell is skipped, and the
    rewritten real test cell is skipped by grade id, not by its (edited) metadata."""
    result = run_submission(HOSTILE / "edited_tests.ipynb", probes, workdir=tmp_path, limits=LIMITS,
                            skip_grade_ids={"ch3-weights-test", "ch3-sdpa-test"})
    assert result.details["skipped_cells"] == [1, 2]
    assert result.outputs["sdpa"][0]["raised"][0] == "NameError"


def honest_student(tmp_path, name: str) -> Path:
    correct = (HONEST + "\n\ndef scaled_dot_product_attention(q, k, v, mask=None):\n"
               "    return attention_weights(q, k, mask) @ v\n")
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# Task 3.1"},
             {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": correct}]
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    return path


def test_honest_student_with_an_awkward_file_name(probes, tmp_path):
    path = honest_student(tmp_path, "mon cahier é 注意 (final).ipynb")
    result = run_submission(path, probes, workdir=tmp_path / "work", limits=LIMITS)
    assert result.outcome == "ok", result.log[-3000:]
    assert [c["error"] for c in result.details["cells"]] == [None] * len(result.details["cells"])
    for probe in probes:
        verdicts = judge_all(probe, result.outputs[probe["id"]])
        assert all(v.passed for v in verdicts), [v.message for v in verdicts if not v.passed]
    fn = honest_reference()
    for case, entry in zip(probes[1]["cases"], result.outputs["sdpa"], strict=True):
        q, k, v, mask = case["q"], case["k"], case["v"], case["mask"]
        assert torch.equal(entry["ok"], fn(q, k, mask) @ v)
        assert torch.allclose(entry["ok"], torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                              if mask is None else (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
                                  ~mask, float("-inf")), -1).nan_to_num(0.0) @ v, atol=1e-6)


@pytest.mark.parametrize("kind", ["empty", "not_json", "200MB", "symlink", "json_not_notebook"])
def test_unrunnable_files_are_rejected_without_a_sandbox(kind, probes, classroom, tmp_path):
    path = tmp_path / "sub.ipynb"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_json":
        path.write_text("def attention_weights(q, k): return q  # a .py file renamed to .ipynb")
    elif kind == "200MB":
        with open(path, "wb") as f:
            f.truncate(200 * 2**20)
    elif kind == "symlink":
        path.symlink_to(classroom / "gradebook.db")
    else:
        path.write_text('{"nbformat": 4}')
    result = run_submission(path, probes, workdir=tmp_path / "work", limits=LIMITS)
    assert result.outcome == "rejected" and result.wall_s < 5
    assert all(e["raised"][0] == "NoResult" for entries in result.outputs.values() for e in entries)
    assert "SECRET-TOKEN" not in json.dumps(result.details)


def test_tampered_results_file_fails_safe(probes, tmp_path):
    """A learner who writes into the runner's results file garbles it: nothing from it is trusted."""
    path = honest_student(tmp_path, "tamper.ipynb")
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "import os, sys\nos.write(int(sys.argv[2]), (10).to_bytes(8, 'big') + b'x' * 10)"})
    path.write_text(json.dumps(nb))
    result = run_submission(path, probes, workdir=tmp_path / "work", limits=LIMITS)
    assert result.outcome == "crashed" and "cannot be loaded safely" in result.details["results_error"]
    assert all(e["raised"][0] == "NoResult" for entries in result.outputs.values() for e in entries)


def test_a_slow_function_times_out_per_call_and_the_rest_is_graded(probes, tmp_path):
    path = honest_student(tmp_path, "slow.ipynb")
    nb = json.loads(path.read_text())
    nb["cells"].append({"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "import time\n_fast = scaled_dot_product_attention\n"
                                  "def scaled_dot_product_attention(q, k, v, mask=None):\n"
                                  "    if q.shape[-1] == 13:\n        time.sleep(60)\n    return _fast(q, k, v, mask)"})
    path.write_text(json.dumps(nb))
    sdpa = [p for p in probes if p["id"] == "sdpa"]
    result = run_submission(path, sdpa, workdir=tmp_path / "work",
                            limits=Limits(**{**LIMITS.__dict__, "call_timeout_s": 1.0}))
    assert result.outcome == "ok"
    verdicts = judge_all(sdpa[0], result.outputs["sdpa"])
    for case, entry, verdict in zip(sdpa[0]["cases"], result.outputs["sdpa"], verdicts, strict=True):
        slow = case["q"].shape[-1] == 13
        assert (entry.get("raised", [None])[0] == "TimeLimitExceeded") == slow
        assert verdict.passed != slow


def test_gpu_devices_are_passed_through_when_asked(monkeypatch, tmp_path):
    from autograder.sandbox import bwrap

    argv = bwrap.command(python=Path("/py"), runner=Path("/r.py"), job=Path("/j"), notebook=Path("/n"),
                         notebook_name="n.ipynb", ro_paths=[], scratch_bytes=1, gpu=True, uid=1, runner_args=[])
    devices = sorted(Path("/dev").glob("nvidia*"))
    assert all(["--dev-bind", str(d), str(d)] == argv[i:i + 3] for d in devices for i in [argv.index(str(d)) - 1])
    assert "--unshare-net" in argv and "--die-with-parent" in argv and "TRITON_INTERPRET" not in argv
    cpu = bwrap.command(python=Path("/py"), runner=Path("/r.py"), job=Path("/j"), notebook=Path("/n"),
                        notebook_name="n.ipynb", ro_paths=[], scratch_bytes=1, gpu=False, uid=1, runner_args=[])
    assert "TRITON_INTERPRET" in cpu and not any(a.startswith("/dev/nvidia") for a in cpu)
    assert os.path.exists(argv[0])
