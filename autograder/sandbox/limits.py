"""How much a submission may use. One frozen dataclass, checked on construction.

The limits are enforced in layers, each of which alone stops its attack:

* inside the sandbox the runner sets ``setrlimit`` hard limits before any learner code runs (the learner has no
  capability to raise them): address space (memory), processes + threads (fork bomb), the size of any one file
  it writes (a 200 MB file), CPU seconds, open files, no core dumps;
* a cgroup per run (when the grader runs as root, see :mod:`.cgroup`) holds memory and processes of the whole
  sandbox, all its processes together, and its CPU to ``cpus`` cores, so that it cannot starve a neighbour;
* the scratch folder and ``/tmp`` are ``tmpfs`` mounts of a fixed size, so the disk cannot be filled;
* the parent kills the whole sandbox (its process group, and with it the sandbox's PID namespace) when the wall
  clock runs out, and keeps only the head and tail of what the sandbox prints.

Per-cell and per-call limits are softer: an alarm inside the runner that interrupts the cell (recorded as an
error in that cell, execution continues like nbgrader) or the learner's function (recorded as a raised
``TimeLimitExceeded``). Code that blocks the alarm meets the wall clock instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed submission (seconds and bytes).

    ``wall_s``            whole run, sandbox start-up (~1-2 s to import torch) included; then everything is killed
    ``cpu_s``             CPU seconds of the runner process (all its threads); ``SIGXCPU`` then ``SIGKILL``
    ``cell_timeout_s``    one notebook cell; a cell over it gets ``TimeLimitExceeded`` and the next cell runs
    ``call_timeout_s``    one call of the learner's function on one grading case
    ``memory_bytes``      address space of each process (``RLIMIT_AS``; ``RLIMIT_DATA`` on a GPU, whose driver
                          reserves huge address ranges)
    ``processes``         processes and threads of the sandbox user (``RLIMIT_NPROC``): stops a fork bomb
    ``cpus``              CPU cores the whole sandbox may keep busy (a cgroup CPU quota, see :mod:`.cgroup`);
                          the cgroup also holds ``memory_bytes`` and ``processes`` for all processes together
    ``file_bytes``        largest file the sandbox may write (``RLIMIT_FSIZE``), the results file included
    ``scratch_bytes``     size of the writable scratch folder and of ``/tmp`` (each a ``tmpfs``)
    ``log_bytes``         how much of the sandbox's printed output is kept (head and tail); also what each cell
                          may print through Python before the rest of that cell's output is dropped
    ``notebook_bytes``    largest submission accepted; a bigger file is rejected unread
    ``results_bytes``     largest results file the parent will parse
    """

    wall_s: float = 300.0
    cpu_s: int = 300
    cell_timeout_s: float = 60.0
    call_timeout_s: float = 30.0
    memory_bytes: int = 6 * 1024 * MiB
    processes: int = 128
    cpus: float = 1.0
    file_bytes: int = 64 * MiB
    scratch_bytes: int = 256 * MiB
    log_bytes: int = 64 * 1024
    notebook_bytes: int = 20 * MiB
    results_bytes: int = 64 * MiB

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"Limits.{name} must be a number, got {type(value).__name__}")
            if not value > 0:
                raise ValueError(f"Limits.{name} must be positive, got {value}")
        if self.processes < 16:
            raise ValueError(f"Limits.processes={self.processes} is too small: torch alone starts a few threads")
        if self.memory_bytes < 1024 * MiB:
            raise ValueError(f"Limits.memory_bytes={self.memory_bytes} is below 1 GiB: importing torch needs more")

    def for_runner(self) -> dict:
        """The part the in-sandbox runner enforces itself (passed to it as JSON)."""
        return {
            "cpu_s": int(self.cpu_s),
            "cell_timeout_s": float(self.cell_timeout_s),
            "call_timeout_s": float(self.call_timeout_s),
            "memory_bytes": int(self.memory_bytes),
            "processes": int(self.processes),
            "file_bytes": int(self.file_bytes),
            "log_bytes": int(self.log_bytes),
        }
