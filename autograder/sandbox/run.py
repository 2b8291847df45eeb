"""``run_submission``: run one learner notebook in a fresh sandbox and bring back its functions' outputs.

    result = run_submission(Path("alice/ch3_sdpa/ch3_sdpa.ipynb"), probes, workdir=Path("build/work/alice-ch3"))
    result.outcome   # "ok" | "timeout" | "crashed" | "rejected"
    result.outputs   # {probe_id: [{"ok": output} | {"raised": [type_name, message]}, one per case]}

The parent (this module) is trusted; everything in the sandbox is not. The parent decides which cells run,
writes the grader's inputs to a read-only job file, starts ``bwrap`` (see :mod:`.bwrap`), keeps a capped log,
kills the whole sandbox at the wall-clock limit, and reads back the results as data only (see :mod:`.records`).
Nothing a submission does raises here: every failure becomes an outcome, and every probe the sandbox did not
answer gets a ``{"raised": ["NoResult", why]}`` entry per case, so missing results fail, never pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import bwrap, cgroup
from .limits import Limits
from .notebook import Rejected, cells_to_run, read_notebook
from .records import BadResults, parse

OUTCOMES = ("ok", "timeout", "crashed", "rejected")
REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("runner.py")
DEFAULT_LIMITS = Limits()
_SIGNALS = {int(s) for s in signal.Signals}


@dataclass(frozen=True)
class SandboxResult:
    """What came back from one sandboxed run (all plain data, decided by the parent).

    ``outcome``  "ok" (every cell ran and every probe was answered), "timeout" (wall clock or CPU limit: the
                 sandbox was killed), "crashed" (the process died or exited early: ``os._exit``, a segfault, the
                 memory limit, a garbled results file...), "rejected" (not run: empty, too big, not a notebook)
    ``outputs``  {probe_id: [per case: {"ok": output} or {"raised": [type_name, message]}]}, for every probe
    ``log``      what the sandbox printed (head and tail, capped)
    ``wall_s``   seconds from start to finish, sandbox start-up included
    ``details``  "reason" (one sentence), "cells" (index, error, seconds per executed cell), "exit_code",
                 "skipped_cells", "results_error", "log_bytes" (total printed), "gpu", "uid" (the sandbox's
                 host uid when the parent is root, so that a caller can check no process of it survived)
    """

    outcome: str
    outputs: dict[str, list[dict]]
    log: str
    wall_s: float
    details: dict = field(default_factory=dict)


def _check_probes(probes) -> dict[str, int]:
    from attn_course.check import CHECKS

    if not isinstance(probes, list):
        raise TypeError(f"probes must be a list of dicts, got {type(probes).__name__}")
    counts: dict[str, int] = {}
    for p in probes:
        if not isinstance(p, dict) or set(p) != {"id", "check", "target", "cases"}:
            raise ValueError(f"each probe is a dict with keys id, check, target, cases; got {p!r:.200}")
        if not isinstance(p["id"], str) or p["id"] in counts:
            raise ValueError(f"probe ids must be unique strings; {p['id']!r} is not")
        if p["check"] not in CHECKS:
            raise ValueError(f"probe {p['id']!r}: unknown checker {p['check']!r}; known: {sorted(CHECKS)}")
        if not isinstance(p["target"], str) or not p["target"].isidentifier():
            raise ValueError(f"probe {p['id']!r}: target must be a Python name, got {p['target']!r}")
        if not isinstance(p["cases"], list) or not all(isinstance(c, dict) for c in p["cases"]):
            raise ValueError(f"probe {p['id']!r}: cases must be a list of dicts (from make_cases)")
        counts[p["id"]] = len(p["cases"])
    return counts


def _missing(probes: list[dict], reason: str) -> dict[str, list[dict]]:
    return {p["id"]: [{"raised": ["NoResult", reason]} for _ in p["cases"]] for p in probes}


class _LogReader(threading.Thread):
    """Drain the sandbox's stdout+stderr, keeping the first ``cap`` bytes and the last ``cap // 4``."""

    def __init__(self, stream, cap: int):
        super().__init__(daemon=True)
        self.stream, self.cap, self.head, self.tail, self.total = stream, cap, bytearray(), bytearray(), 0

    def run(self):
        while chunk := self.stream.read1(1 << 16) if hasattr(self.stream, "read1") else self.stream.read(1 << 16):
            self.total += len(chunk)
            room = self.cap - len(self.head)
            self.head += chunk[:room]
            self.tail = (self.tail + chunk[room:])[-(self.cap // 4) :] if len(chunk) > room else self.tail

    def text(self) -> str:
        text = self.head.decode("utf-8", "replace")
        if self.total > len(self.head) + len(self.tail):
            text += f"\n[... {self.total - len(self.head) - len(self.tail)} bytes of output not kept ...]\n"
        return text + self.tail.decode("utf-8", "replace")


def _processes_of(uid: int) -> list[int]:
    alive = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    alive.append(int(entry.name))
            except FileNotFoundError:
                continue
    return alive


def _reap(uid: int, patience_s: float = 5.0) -> None:
    """Kill every process still running as the sandbox's uid (unique to this run) and wait until none is left.

    The kernel tears the PID namespace down when bubblewrap goes, but asynchronously; this makes the end of
    ``run_submission`` the end of the submission."""
    cgroup.kill_until_gone(lambda: _processes_of(uid), patience_s)


def _safe_name(name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "submission.ipynb"
    return name if name not in ("", ".", "..") else "submission.ipynb"


def run_submission(notebook: Path, probes: list[dict], *, workdir: Path, limits: Limits = DEFAULT_LIMITS,
                   gpu: bool | None = None, skip_grade_ids: Collection[str] = (),
                   skip_marked_tests: bool = True) -> SandboxResult:
    """Run ``notebook`` in a fresh sandbox, then each probe's checker ``call`` on the learner's object.

    ``probes``: ``[{"id", "check", "target", "cases"}]``; cases from ``CHECKS[check].make_cases(seed, hidden=True)``.
    ``workdir``: a folder of the parent's (created if needed) for the job and results files; never visible to
    the sandbox, which sees only a read-only copy of the notebook and the job.
    ``gpu``: pass ``/dev/nvidia*`` through (default: when present). ``skip_grade_ids`` / ``skip_marked_tests``:
    the test-cell policy of :mod:`.notebook` (the caller should pass the grade ids of the released notebook's
    autograded test cells). Raises only for the caller's mistakes (bad probes, bad limits) and when the
    sandbox tools are missing (:class:`~.bwrap.SandboxUnavailable`).
    """
    if not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits, got {type(limits).__name__}")
    notebook, workdir = Path(notebook), Path(workdir)
    counts = _check_probes(probes)
    bwrap.require_tools()
    gpu = bwrap.gpu_present() if gpu is None else bool(gpu)
    began = time.monotonic()

    def finish(outcome, reason, log="", outputs=None, **details):
        outputs = outputs if outputs is not None else _missing(probes, f"the submission was {outcome}: {reason}")
        return SandboxResult(outcome, outputs, log, round(time.monotonic() - began, 3),
                             {"reason": reason, "gpu": gpu, **details})

    try:
        if notebook.is_symlink():
            raise Rejected(f"{notebook.name!r} is a symbolic link, not a notebook file")
        nb = read_notebook(notebook, limits.notebook_bytes)
    except Rejected as exc:
        return finish("rejected", str(exc))
    cells = cells_to_run(nb, skip_grade_ids, skip_marked_tests)
    ran = {c.index for c in cells}
    skipped = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and i not in ran]

    workdir.mkdir(parents=True, exist_ok=True)
    name = _safe_name(notebook.name)
    copy, job, results = workdir / "submission.ipynb", workdir / "job.pt", workdir / "results.bin"
    copy.write_bytes(notebook.read_bytes())
    torch.save({"notebook_name": name, "cells": [(c.index, c.source) for c in cells], "probes": probes}, job)
    for path in (copy, job):
        path.chmod(0o644)  # readable by the sandbox's unprivileged uid, through read-only mounts only

    import attn_course

    package = Path(attn_course.__file__).resolve().parent
    package_dirs = [package] + ([(package / "kernels").resolve()] if (package / "kernels").exists() else [])
    uid = bwrap.pick_uid()
    try:  # memory, processes and CPU of the whole sandbox (see .cgroup); without it, per-process limits only
        group = cgroup.create(cgroup.group_name(str(uid)), memory_bytes=limits.memory_bytes,
                              processes=limits.processes, cpus=limits.cpus)
        group_note: dict = {}
    except cgroup.CgroupUnavailable as exc:
        group, group_note = None, {"kind": None, "unavailable": str(exc)}
    fd = os.open(results, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the runner's only way out
    try:
        argv = bwrap.command(
            python=Path(sys.executable), runner=RUNNER, job=job, notebook=copy, notebook_name=name,
            ro_paths=bwrap.python_paths(REPO_ROOT, package_dirs), scratch_bytes=limits.scratch_bytes, gpu=gpu,
            uid=uid, runner_args=[json.dumps(limits.for_runner()), str(fd)],
        )
        proc = subprocess.Popen(group.wrap(argv) if group else argv, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                pass_fds=(fd,))
    except BaseException:
        if group:
            group.remove()
        raise
    finally:
        os.close(fd)
    reader = _LogReader(proc.stdout, limits.log_bytes)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies; --die-with-parent takes the PID namespace with it
        proc.wait()
    if group:
        group.kill_all()
        group_note = group.report()
        group.remove()
    if os.geteuid() == 0:
        _reap(uid)
    reader.join(timeout=10)
    log = reader.text()
    common = {"exit_code": proc.returncode, "skipped_cells": skipped, "log_bytes": reader.total,
              "uid": uid if os.geteuid() == 0 else None, "cgroup": group_note}

    try:
        size = results.stat().st_size
        if size > limits.results_bytes:
            raise BadResults(f"results file is {size} bytes, over the {limits.results_bytes} limit")
        res = parse(results.read_bytes(), counts)
    except BadResults as exc:
        return finish("crashed", f"the sandbox's results were unusable ({exc})", log, cells=[],
                      results_error=str(exc), **common)
    finally:
        for path in (job, results):
            path.unlink(missing_ok=True)

    oom = (f"the sandbox reached its memory limit of {limits.memory_bytes / 2**30:.3g} GiB, all processes "
           f"together" if group_note.get("oom_kills") else "")
    cpu_killed = proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)
    if timed_out or cpu_killed:
        limit = f"wall-clock limit of {limits.wall_s:g} s" if timed_out else f"CPU limit of {limits.cpu_s} s"
        outcome, reason = "timeout", f"the notebook ran past the {limit} and was stopped"
    elif res.done and proc.returncode == 0:
        outcome, reason = "ok", "every cell ran and every check was answered"
        if oom:
            reason += f" ({oom}, and {group_note['oom_kills']} of its processes were stopped)"
    elif not res.started:
        outcome, reason = "crashed", f"the sandbox stopped before running any cell (exit code {proc.returncode})"
    else:
        code = proc.returncode
        how = f"killed by {signal.Signals(code - 128).name}" if 128 < code < 128 + 65 and code - 128 in _SIGNALS \
            else f"exit code {code}"
        where = (f"in cell {cells[len(res.cells)].index}" if len(res.cells) < len(cells)
                 else "while the grader was calling its functions")
        outcome, reason = "crashed", f"the notebook's process died {where} ({how})"
        if oom:
            reason += f": {oom}"
    outputs = _missing(probes, f"no result: {reason}")
    outputs.update(res.probes)
    return finish(outcome, reason, log, outputs, cells=res.cells, results_error=None, **common)
