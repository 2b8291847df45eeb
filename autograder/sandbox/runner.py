"""The program that runs *inside* the sandbox: execute the learner's cells, then call their functions on the
grader's inputs and write the outputs back as data. Started as ``python -I runner.py LIMITS_JSON RESULTS_FD``
(and, only for the overhead benchmark that runs it *without* bubblewrap, a third argument: the folder that
stands in for ``/sandbox``; ``"rlimits": false`` in LIMITS_JSON then skips the ``setrlimit`` calls too).

Everything here is untrusted once the first learner cell has run: the learner shares this process and can
patch any of it. That is fine by design: the parent only ever receives *data* (tensors, numbers, strings)
through the results file and judges it itself, so the worst a learner can do is send wrong or garbled data,
which fails. Nothing in this file decides a verdict.

Results file: a sequence of records, each an 8-byte big-endian length followed by that many bytes of
``torch.save`` of a dict (``kind`` is ``"start"``, ``"cell"``, ``"probe"`` or ``"done"``). Records are written
as soon as they are known, so a crash mid-way still tells the parent how far the run got.
"""

import io
import json
import os
import resource
import shutil
import signal
import sys
import time
import traceback

SANDBOX_DIR = "/sandbox"  # where bwrap mounts job.pt and submission/ read-only
MAX_MESSAGE = 2000  # characters of an exception message kept
MAX_DEPTH = 16  # nesting of an output (tuples of tuples...)


class TimeLimitExceeded(BaseException):
    """Raised by the alarm when a cell or a call runs too long (a BaseException: ``except Exception`` in learner
    code does not swallow it)."""

    def _render_traceback_(self):
        """What IPython shows when a cell ends with this (its hook for exceptions that format themselves): the
        cell is over, so the alarm stops first, then the standard library's plain traceback from the cell's
        frame on (not this file's alarm handler). IPython's own formatter imports pygments on first use; on a
        machine a fork bomb has just saturated that can outlast the alarm's 0.2 s repeat, which then interrupted
        it: no traceback at all."""
        disarm()
        tb = self.__traceback__
        tb = tb.tb_next if tb is not None and tb.tb_next is not None else tb  # (not IPython's run_code frame)
        frames = [f for f in traceback.extract_tb(tb) if f.filename != __file__]
        return ["Traceback (most recent call last):\n", *traceback.format_list(frames),
                *traceback.format_exception_only(type(self), self)]


def set_limits(limits: dict) -> None:
    """Hard limits, soft == hard, so that nothing in this process or its children can raise them again."""

    def cap(which, value):
        resource.setrlimit(which, (value, value))

    gpu = os.path.exists("/dev/nvidiactl")
    cap(resource.RLIMIT_DATA if gpu else resource.RLIMIT_AS, limits["memory_bytes"])
    cap(resource.RLIMIT_NPROC, limits["processes"])
    cap(resource.RLIMIT_FSIZE, limits["file_bytes"])
    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_NOFILE, 1024)
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + 2))  # SIGXCPU, then SIGKILL


class CappedText(io.TextIOBase):
    """A stdout/stderr that forwards the first bytes of each part of the run (a cell, the sandbox's report on
    what it left behind, the grading calls: ``new_part`` in :func:`main`) to a file descriptor and drops the
    rest of that part. The budget is per part, not per run, so that one cell's flood (a fork bomb's repeated
    "Exception ignored" reports, a loop of prints) cannot hide what the cells after it print: the parent keeps
    the head and the tail of the whole stream (``run._LogReader``)."""

    def __init__(self, fd: int, budget: list):
        self.fd, self.budget = fd, budget  # budget is shared by stdout and stderr: [bytes left in this part]

    def writable(self):
        return True

    def write(self, text):
        data = str(text).encode("utf-8", "replace")
        if self.budget[0] > 0:
            chunk = data[: self.budget[0]]
            self.budget[0] -= len(chunk)
            try:
                os.write(self.fd, chunk)
                if self.budget[0] <= 0:
                    os.write(self.fd, b"\n[sandbox: output limit reached, the rest of this part is not shown]\n")
            except OSError:
                pass
        return len(text)


ARMED = [False]


def on_alarm(signum, frame):
    if ARMED[0]:
        raise TimeLimitExceeded("time limit exceeded")


def arm(seconds: float) -> None:
    """Interrupt after ``seconds``, then every 0.2 s until disarmed: a first interrupt can land where Python
    ignores exceptions (an at-fork hook, a ``__del__``) and must not be the only one."""
    ARMED[0] = True
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.2)


def disarm() -> None:
    ARMED[0] = False  # first: from here on a pending alarm is harmless
    signal.setitimer(signal.ITIMER_REAL, 0)


def processes() -> dict:
    """``{pid: parent pid}`` of every process ``/proc`` shows (inside the sandbox's PID namespace: the
    sandbox's processes only)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ", and comm may hold spaces or ")"
        table[int(name)] = int(fields[1])  # fields: state, parent pid, ...
    return table


def descendants(table: dict, root: int) -> list:
    """Every process below ``root`` in ``table`` (children, their children, ...)."""
    children: dict = {}
    for pid, parent in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap() -> None:
    """Collect every child of ours that has exited (a zombie holds a slot of the ``processes`` limit)."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def stop_stragglers(sandboxed: bool, patience_s: float = 10.0) -> int:
    """Kill every other process of the sandbox (a cell's background children, a fork bomb's spawn) and wait
    until they are gone, so that the next cell starts with the whole CPU quota and every process slot; return
    how many there were (0 for a well-behaved cell).

    Sending SIGKILL is not enough: a killed process keeps running while the kernel tears down its memory, and
    an unreaped child stays a zombie, holding a process slot, until we collect it. So we signal, reap and
    look again, until nothing is left or ``patience_s`` has passed (the wall clock still bounds the run).

    In the sandbox (``sandboxed``) the targets are every process of its PID namespace but bubblewrap's init
    (PID 1, which reaps what was orphaned) and this one, reached by ``kill(-1)``: what this uid may signal
    there, and nothing else. Without bubblewrap (the overhead benchmark) ``kill(-1)`` would reach every
    process of the uid, so only our own descendants are signalled (orphans come back to us: :func:`main`
    makes this process their subreaper)."""
    me, found = os.getpid(), 0
    deadline = time.monotonic() + patience_s
    while True:
        reap()
        table = processes()
        left = [p for p in table if p not in (1, me)] if sandboxed else descendants(table, me)
        found = max(found, len(left))
        if not left or time.monotonic() > deadline:
            return found
        if sandboxed:
            try:
                os.kill(-1, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        else:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        time.sleep(0.002)


def become_subreaper() -> None:
    """Make orphaned descendants ours (``PR_SET_CHILD_SUBREAPER``), so that :func:`stop_stragglers` finds a
    double-forked process when there is no PID namespace to hold it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # 36 = PR_SET_CHILD_SUBREAPER (Linux >= 3.4)
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def report_stragglers(sandboxed: bool) -> None:
    found = stop_stragglers(sandboxed)
    if found:
        print(f"[sandbox: stopped {found} process{'es' if found != 1 else ''} this cell left behind]", flush=True)


def describe(exc: BaseException, limit_s: float) -> list:
    if isinstance(exc, TimeLimitExceeded):
        return ["TimeLimitExceeded", f"took longer than the {limit_s:g} s limit"]
    try:
        message = str(exc)
    except BaseException:  # a learner's exception whose __str__ raises
        message = "<unprintable message>"
    return [type(exc).__name__[:200], message[:MAX_MESSAGE]]


def plain(value, torch, depth=0):
    """``value`` as plain data that ``torch.load(weights_only=True)`` accepts, or TypeError."""
    if depth > MAX_DEPTH:
        raise TypeError("the output is nested too deeply")
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone().as_subclass(torch.Tensor)
    if type(value) in (tuple, list):
        items = [plain(v, torch, depth + 1) for v in value]
        return tuple(items) if type(value) is tuple else items
    if type(value) is dict and all(type(k) in (str, int) for k in value):
        return {k: plain(v, torch, depth + 1) for k, v in value.items()}
    import numpy

    if isinstance(value, numpy.ndarray):
        return torch.from_numpy(numpy.array(value, copy=True))
    if isinstance(value, numpy.generic):
        return value.item()
    raise TypeError(f"returned an object of type {type(value).__name__}, which is not plain data "
                    "(expected tensors, numbers or tuples of them)")


def main() -> None:
    if os.geteuid() == 0:  # learner code never runs as root (and root's kill(-1) reaches further than a uid's)
        sys.exit("runner.py refuses to run as root: start it through autograder.sandbox (which drops to a spare uid)")
    limits, results_fd = json.loads(sys.argv[1]), int(sys.argv[2])
    sandboxed = len(sys.argv) <= 3
    inputs = SANDBOX_DIR if sandboxed else sys.argv[3]
    if not sandboxed:
        become_subreaper()
    if limits.get("rlimits", True):
        set_limits(limits)
    budget = [limits["log_bytes"]]
    sys.stdout, sys.stderr = CappedText(1, budget), CappedText(2, budget)

    def new_part():  # a cell, the sandbox's report after it, the grading calls: each prints within its own budget
        budget[0] = limits["log_bytes"]

    import torch

    def record(kind, **data):
        buf = io.BytesIO()
        torch.save({"kind": kind, **data}, buf)
        payload = buf.getvalue()
        os.write(results_fd, len(payload).to_bytes(8, "big") + payload)

    job = torch.load(os.path.join(inputs, "job.pt"), weights_only=True)
    checks = {}
    if job["probes"]:
        from attn_course.check import CHECKS

        # keep our own handles on the checkers' `call` before learner code runs (not a defence: see the docstring)
        checks = {p["check"]: CHECKS[p["check"]].call for p in job["probes"]}
    shutil.copy(os.path.join(inputs, "submission", job["notebook_name"]), job["notebook_name"])

    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    # plain tracebacks (file, line, source line, exception), as Python prints them: IPython's default mode
    # re-reads every frame's source through stack_data, which can outlast the cell's time limit on a busy
    # machine with memory nearly exhausted (a memory bomb's MemoryError), leaving the log full of the
    # formatter's own interrupted frames instead of the learner's error
    config.InteractiveShell.xmode = "Plain"
    shell = InteractiveShell.instance(config=config)
    signal.signal(signal.SIGALRM, on_alarm)
    record("start", n_cells=len(job["cells"]))

    for index, source in job["cells"]:
        new_part()
        print(f"\n----- cell {index} -----", flush=True)
        began, error = time.monotonic(), None
        try:
            arm(limits["cell_timeout_s"])
            result = shell.run_cell(source, store_history=False, silent=False)
            disarm()
            exc = result.error_before_exec or result.error_in_exec
            error = describe(exc, limits["cell_timeout_s"]) if exc is not None else None
        except BaseException as exc:  # the alarm fired outside the learner's frame, or IPython itself failed
            disarm()
            error = describe(exc, limits["cell_timeout_s"])
        new_part()
        report_stragglers(sandboxed)
        sys.last_type = sys.last_value = sys.last_traceback = None  # let a failed cell's frames (and memory) go
        record("cell", index=index, error=error, seconds=round(time.monotonic() - began, 3))

    new_part()
    print("\n----- grading calls -----", flush=True)
    for probe in job["probes"]:
        fn = shell.user_ns.get(probe["target"])
        outputs = []
        for case in probe["cases"]:
            if fn is None:
                outputs.append({"raised": ["NameError", f"the notebook does not define {probe['target']!r} "
                                           "(did a cell above fail, or was it renamed?)"]})
                continue
            try:
                arm(limits["call_timeout_s"])
                out = checks[probe["check"]](fn, case)
                disarm()
                outputs.append({"ok": plain(out, torch)})
            except BaseException as exc:
                disarm()
                outputs.append({"raised": describe(exc, limits["call_timeout_s"])})
        record("probe", id=probe["id"], outputs=outputs)

    new_part()
    report_stragglers(sandboxed)
    record("done")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: learner atexit hooks and threads get no say


if __name__ == "__main__":
    main()
