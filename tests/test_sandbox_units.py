"""The sandbox's parent-side pieces without starting a sandbox: limits, notebook intake and the test-cell
policy, the results-file reader (against tampered files), the mounts, and the Makefile's missing-tool message."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autograder.sandbox import Limits, Rejected, SandboxUnavailable, bwrap
from autograder.sandbox.notebook import cells_to_run, read_notebook
from autograder.sandbox.records import BadResults, parse

ROOT = Path(__file__).resolve().parent.parent


def record(**data) -> bytes:
    buf = io.BytesIO()
    torch.save(data, buf)
    return len(buf.getvalue()).to_bytes(8, "big") + buf.getvalue()


def test_limits_reject_nonsense():
    with pytest.raises(ValueError, match="wall_s must be positive"):
        Limits(wall_s=0)
    with pytest.raises(TypeError, match="processes must be a number"):
        Limits(processes=True)
    with pytest.raises(ValueError, match="torch alone"):
        Limits(processes=2)
    assert Limits(cpu_s=5).for_runner()["cpu_s"] == 5


def _cell(src, nbgrader=None, kind="code"):
    return {"cell_type": kind, "metadata": {"nbgrader": nbgrader} if nbgrader else {}, "source": src}


@pytest.mark.parametrize("content, why", [
    (b"", "empty"), (b"{not json", "not valid notebook JSON"), (b"\xff\xfe\x00garbage", "not valid notebook JSON"),
    (b"[1, 2, 3]", "not a Jupyter notebook"), (b'{"cells": [42]}', "not a notebook cell"),
    (b"[" * 100_000, "not valid notebook JSON"),
])
def test_read_notebook_rejects_what_is_not_a_notebook(tmp_path, content, why):
    path = tmp_path / "sub.ipynb"
    path.write_bytes(content)
    with pytest.raises(Rejected, match=why):
        read_notebook(path, max_bytes=1 << 20)


def test_read_notebook_rejects_an_oversized_file_without_reading_it(tmp_path):
    path = tmp_path / "huge.ipynb"
    with open(path, "wb") as f:
        f.truncate(200 * 2**20)  # 200 MB, sparse
    with pytest.raises(Rejected, match="200 MiB, over the 20 MiB limit"):
        read_notebook(path, max_bytes=20 * 2**20)


def test_cells_to_run_follows_the_test_cell_policy():
    nb = {"cells": [
        _cell("# title", kind="markdown"),
        _cell("a = 1", {"grade": False, "solution": True, "grade_id": "answer"}),
        _cell("assert a == 1", {"grade": True, "solution": False, "grade_id": "t1"}),  # marked test: skipped
        _cell("b = 2", {"grade_id": "t2"}),  # metadata edited, but the caller knows t2 is a test
        _cell(["c = ", "3"]),
    ]}
    ran = cells_to_run(nb, skip_grade_ids={"t2"})
    assert [(c.index, c.source) for c in ran] == [(1, "a = 1"), (4, "c = 3")]
    assert [c.index for c in cells_to_run(nb, skip_marked_tests=False)] == [1, 2, 3, 4]


def test_records_roundtrip_and_torn_tail():
    data = record(kind="start", n_cells=1) + record(kind="cell", index=0, error=None, seconds=0.5)
    data += record(kind="probe", id="p", outputs=[{"ok": torch.ones(2)}, {"raised": ["ValueError", "bad"]}])
    full = parse(data + record(kind="done"), {"p": 2})
    assert full.done and full.started and full.cells == [{"index": 0, "error": None, "seconds": 0.5}]
    assert torch.equal(full.probes["p"][0]["ok"], torch.ones(2)) and full.probes["p"][1]["raised"][0] == "ValueError"
    torn = parse(data + record(kind="done")[:-3], {"p": 2})
    assert torn.torn and not torn.done and "p" in torn.probes


def test_outputs_that_are_not_plain_dense_data_fail_their_case_only():
    """A sparse tensor with out-of-range indices loads without complaint and can crash whoever densifies it;
    the judges run in the parent, so such an output fails its case, with the reason, and the rest is read."""
    bad_sparse = torch.sparse_coo_tensor(torch.tensor([[0, 10**9]]), torch.ones(2), (4,), check_invariants=False)
    outputs = [{"ok": bad_sparse}, {"ok": (torch.ones(2), [1, {"a": torch.zeros(1)}])},
               {"ok": [torch.ones(1).to_sparse()]}, {"ok": torch.float32}]
    res = parse(record(kind="probe", id="p", outputs=outputs) + record(kind="done"), {"p": 4})
    got = res.probes["p"]
    assert got[0]["raised"][0] == "UnsupportedOutput" and "sparse_coo" in got[0]["raised"][1]
    assert torch.equal(got[1]["ok"][0], torch.ones(2))
    assert got[2]["raised"][0] == "UnsupportedOutput"
    assert got[3] == {"ok": torch.float32}


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/attn-sandbox-pwned",))


@pytest.mark.parametrize("bad, why", [
    (b"\x00" * 8 + b"", None),  # a zero-length record is not a torch file
    (len(b"garbage").to_bytes(8, "big") + b"garbage", "cannot be loaded safely"),
    (record(kind="probe", id="p", outputs=[{"ok": 1}]) * 2, "reported twice"),
    (record(kind="probe", id="q", outputs=[]), "unknown probe"),
    (record(kind="probe", id="p", outputs=[{"ok": 1}, {"ok": 2}]), "should have 1 outputs"),
    (record(kind="probe", id="p", outputs=[{"raised": ["X"]}]), "malformed 'raised'"),
    (record(kind="launch-missiles"), "unknown kind"),
    (record(kind="cell", index="0", error=None, seconds=1.0), "malformed cell"),
])
def test_records_reject_tampering(bad, why):
    with pytest.raises(BadResults, match=why):
        parse(bad, {"p": 1})


def test_records_never_unpickle_code(tmp_path):
    marker = Path("/tmp/attn-sandbox-pwned")
    marker.unlink(missing_ok=True)
    buf = io.BytesIO()
    torch.save({"kind": "done", "payload": Evil()}, buf)
    with pytest.raises(BadResults, match="cannot be loaded safely"):
        parse(len(buf.getvalue()).to_bytes(8, "big") + buf.getvalue(), {})
    assert not marker.exists()


def test_mounts_expose_the_package_but_never_the_repository():
    import attn_course

    package = Path(attn_course.__file__).resolve().parent
    assert str(ROOT) in sys.path  # conftest put the repository root on sys.path: it must still not be mounted
    paths = bwrap.python_paths(ROOT, [package, (package / "kernels").resolve()])
    assert package in paths and (ROOT / "kernels") in paths
    for p in paths:
        real = p.resolve()
        assert real != ROOT and ROOT not in real.parents or real in (package, ROOT / "kernels") \
            or ROOT / ".venv" in [real, *real.parents], p
        assert real not in ROOT.parents and real != Path("/")
    forbidden = [ROOT / "solutions", ROOT / "autograder", ROOT / "tests", ROOT / "build"]
    assert not any(f == p or p in f.parents for f in forbidden for p in paths)


def test_the_working_directory_and_pythonpath_are_never_mounted(tmp_path, monkeypatch):
    """``cd ~/fall26 && PYTHONPATH=... python -m autograder.grading ...`` puts the course folder (submissions,
    gradebook, secret seed) on sys.path: only the interpreter's own folders may be mounted in the sandbox."""
    import attn_course

    course_folder, extra = tmp_path / "fall26", tmp_path / "on_pythonpath"
    course_folder.mkdir()
    extra.mkdir()
    monkeypatch.chdir(course_folder)
    monkeypatch.setattr(sys, "path", ["", str(course_folder), str(extra), *sys.path])
    package = Path(attn_course.__file__).resolve().parent
    paths = bwrap.python_paths(ROOT, [package, (package / "kernels").resolve()])
    for p in paths:
        assert not (p == tmp_path or tmp_path in p.parents or p in tmp_path.parents), p
    assert package in paths  # still importable inside


def test_scratch_tmpfs_is_mounted_before_the_read_only_binds(tmp_path):
    """A checkout (and its .venv) under /tmp, as in a CI clone there, must stay visible: bwrap applies mounts in
    order, so a tmpfs on /tmp mounted *after* the binds would hide them (the sandbox then had no Python)."""
    venv = Path("/tmp/some-clone/.venv")
    argv = bwrap.command(python=venv / "bin" / "python", runner=tmp_path / "runner.py", job=tmp_path / "job.pt",
                         notebook=tmp_path / "a.ipynb", notebook_name="a.ipynb", ro_paths=[venv],
                         scratch_bytes=2**20, gpu=False, uid=123456, runner_args=["{}", "3"])
    mounts = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i] in ("--tmpfs", "--ro-bind")]
    tmpfs_at = mounts.index(("--tmpfs", "/tmp"))
    bind_at = next(i for i, (kind, path) in enumerate(mounts) if kind == "--ro-bind" and path == str(venv))
    assert tmpfs_at < bind_at, mounts


def test_missing_bwrap_is_named(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match=r"bwrap.*apt-get install bubblewrap"):
        bwrap.require_tools()


def test_make_sandbox_check_names_the_missing_tool():
    make = shutil.which("make")
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = subprocess.run([make, "-s", "-C", str(ROOT), "sandbox-check"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "bubblewrap ('bwrap') is not installed" in proc.stdout + proc.stderr
    ok = subprocess.run([make, "-s", "-C", str(ROOT), "sandbox-check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_probe_validation_is_the_callers_error(tmp_path):
    from autograder.sandbox import run_submission

    nb = tmp_path / "n.ipynb"
    nb.write_text(json.dumps({"cells": []}))
    with pytest.raises(ValueError, match="unknown checker"):
        run_submission(nb, [{"id": "a", "check": "nope", "target": "f", "cases": []}], workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="unique"):
        probe = {"id": "a", "check": "attention_weights", "target": "f", "cases": []}
        run_submission(nb, [probe, probe], workdir=tmp_path / "w")


STRAGGLERS = r'''
import os, sys, time
from autograder.sandbox import runner

runner.become_subreaper()
for _ in range(3):  # plain children, each forking one more
    if os.fork() == 0:
        os.fork()
        time.sleep(60)
        os._exit(0)
if os.fork() == 0:  # a double fork: the grandchild is orphaned at once, and comes back to us as subreaper
    if os.fork() == 0:
        time.sleep(60)
    os._exit(0)
time.sleep(0.5)
before = len(runner.descendants(runner.processes(), os.getpid()))
found = runner.stop_stragglers(sandboxed=False)
after = runner.descendants(runner.processes(), os.getpid())
print(before, found, len(after), flush=True)
'''


def test_unsandboxed_clean_up_stops_its_descendants_and_nothing_else(tmp_path):
    """Without bubblewrap (the overhead benchmark), the runner's clean-up after a cell must not be ``kill(-1)``,
    which would reach every process of the user: it kills, reaps and waits for its own descendants only, the
    orphaned ones included."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # ours, not the runner's
    try:
        done = subprocess.run([sys.executable, "-c", STRAGGLERS], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        before, found, after = map(int, done.stdout.split())
        # 3 children + their 3 children + the double fork's exited middle one (a zombie until reaped) + its
        # orphaned child, which is only ours because the runner is a subreaper
        assert before == 8
        assert found == 7 and after == 0  # the zombie only needed reaping; the 7 live ones were stopped
        assert bystander.poll() is None, "the clean-up killed a process that was not the runner's"
    finally:
        bystander.kill()
        bystander.wait()


def test_processes_reads_names_with_spaces_and_parentheses(tmp_path):
    """``/proc/PID/stat`` puts the command name in parentheses, and a learner chooses that name."""
    from autograder.sandbox import runner

    code = ("import ctypes, time; ctypes.CDLL(None).prctl(15, b'x) R 1 (y', 0, 0, 0); "  # 15 = PR_SET_NAME
            "print('named', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "named"
        assert runner.processes()[child.pid] == os.getpid()  # a split at the first ")" would read 1 here
        assert child.pid in runner.descendants(runner.processes(), os.getpid())
    finally:
        child.kill()
        child.wait()
