"""One control group per sandboxed run: memory, processes and CPU of the *whole* sandbox, not of each process.

The runner's ``setrlimit`` limits (see :mod:`.limits`) are per process: 128 processes of 6 GiB each is within
them, and so is a sandbox that keeps every core busy and starves its neighbour's notebook into a timeout. A
cgroup closes both. Each run gets a fresh group, made by the (root) parent before bubblewrap starts:

    memory   the sandbox's resident memory, all processes together (tmpfs pages it writes included); past it
             the kernel's OOM killer stops a process of the sandbox, never one outside it
    pids     processes and threads, all together
    cpu      a CFS quota of ``cpus`` cores, so ``WORKERS = cores`` sandboxes cannot starve one another

The sandbox enters the group before ``bwrap`` runs (:meth:`SandboxCgroup.wrap` puts a two-line shell in front
that writes its own pid into the group and then ``exec``s bubblewrap), so every process it ever starts is
inside. Afterwards the parent reads what happened (OOM kills, the pids limit hit, peak memory), kills whatever
is left in the group, and removes it.

Both cgroup layouts are handled: v1 (a folder per controller, as on this machine) and v2 (one unified tree).
Where neither can be used (not root, a read-only ``/sys/fs/cgroup``, v2 without the controllers delegated),
:func:`create` says why and the sandbox runs with the per-process limits only; the run's details record which.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "attn-sandbox-"  # every group this module makes is named so (see group_name)
CONTROLLERS = ("memory", "pids", "cpu")
PERIOD_US = 100_000  # the CFS period the quota is a share of
# sh: write our pid into every group file given, then become bubblewrap (same pid, so the whole sandbox is inside)
_ENTER = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"'


class CgroupUnavailable(Exception):
    """Why this machine cannot give the sandbox a cgroup (the message says, for the run's details)."""


@dataclass
class SandboxCgroup:
    """The group(s) of one run. ``kind`` is ``"v1"`` or ``"v2"``; ``dirs`` maps a controller to its folder
    (in v2 all three are the same folder)."""

    kind: str
    dirs: dict[str, Path]
    memory_bytes: int
    removed: bool = field(default=False, repr=False)

    # -- entering --------------------------------------------------------------------------------------
    def procs_files(self) -> list[Path]:
        return sorted({d / "cgroup.procs" for d in self.dirs.values()})

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the group: ``/bin/sh -c <enter> sh N file... argv...``."""
        files = [str(f) for f in self.procs_files()]
        return ["/bin/sh", "-c", _ENTER, "sh", str(len(files)), *files, *argv]

    # -- reading what happened -------------------------------------------------------------------------
    def _read(self, controller: str, name: str) -> str:
        try:
            return (self.dirs[controller] / name).read_text()
        except OSError:
            return ""

    def _counter(self, controller: str, name: str, key: str) -> int:
        for line in self._read(controller, name).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
                return int(parts[1])
        return 0

    def oom_kills(self) -> int:
        """Processes the OOM killer stopped because the sandbox reached its memory limit."""
        if self.kind == "v2":
            return self._counter("memory", "memory.events", "oom_kill")
        return self._counter("memory", "memory.oom_control", "oom_kill")  # kernels >= 4.13

    def pids_limit_hits(self) -> int:
        """How often a fork or thread was refused because the sandbox had as many processes as it may."""
        return self._counter("pids", "pids.events", "max")

    def memory_peak_bytes(self) -> int | None:
        name = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        text = self._read("memory", name).strip()
        return int(text) if text.isdigit() else None

    def cpu_throttled(self) -> int:
        """CFS periods in which the sandbox used up its CPU quota and had to wait."""
        return self._counter("cpu", "cpu.stat", "nr_throttled")

    def report(self) -> dict:
        return {"kind": self.kind, "memory_limit_bytes": self.memory_bytes, "oom_kills": self.oom_kills(),
                "pids_limit_hits": self.pids_limit_hits(), "memory_peak_bytes": self.memory_peak_bytes(),
                "cpu_throttled_periods": self.cpu_throttled()}

    # -- tearing down ----------------------------------------------------------------------------------
    def pids(self) -> list[int]:
        found = set()
        for f in self.procs_files():
            try:
                found |= {int(x) for x in f.read_text().split()}
            except OSError:
                pass
        return sorted(found)

    def kill_all(self, patience_s: float = 5.0) -> None:
        """SIGKILL every process left in the group, until it is empty (or ``patience_s`` runs out)."""
        if self.kind == "v2" and (self.dirs["memory"] / "cgroup.kill").exists():
            try:
                (self.dirs["memory"] / "cgroup.kill").write_text("1")
            except OSError:
                pass
        kill_until_gone(self.pids, patience_s)

    def remove(self) -> None:
        """Kill what is left and delete the group's folders (an empty cgroup folder is removed with rmdir)."""
        if self.removed:
            return
        self.kill_all()
        for d in sorted(set(self.dirs.values())):
            for _ in range(50):  # the last process may take a moment to leave after SIGKILL
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.removed = True


def kill_until_gone(find: Callable[[], list[int]], patience_s: float = 5.0) -> None:
    """SIGKILL the processes ``find()`` lists, again and again, until it lists none or ``patience_s`` is up."""
    deadline = time.monotonic() + patience_s
    while (left := find()) and time.monotonic() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under ``""`` its v2 path (from /proc/self/cgroup)."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            paths[name] = path
    return paths


def _is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def _v1_parent(controller: str) -> Path:
    """Where v1 groups of ``controller`` go: under this process's own group of that controller."""
    return ROOT / controller / _own_paths().get(controller, "/").lstrip("/")


_V2_PARENT = "attn-course-sandboxes"


def _v2_parent() -> Path:
    """Where v2 groups go. A v2 group may only hand controllers to its children while it holds no process
    itself, so the sandboxes live in a folder of their own next to this process's group."""
    return ROOT / Path(_own_paths().get("", "/").lstrip("/")).parent / _V2_PARENT


def _quota_us(cpus: float) -> int:
    return max(1000, int(cpus * PERIOD_US))


def _make_v1(name: str, memory_bytes: int, processes: int, cpus: float) -> SandboxCgroup:
    for c in CONTROLLERS:
        if not (ROOT / c / "cgroup.procs").exists():
            raise CgroupUnavailable(f"cgroup v1 has no {c} controller mounted at {ROOT / c}")
    group = SandboxCgroup("v1", {}, memory_bytes)
    try:
        for c in CONTROLLERS:
            d = _v1_parent(c) / name
            d.mkdir()
            group.dirs[c] = d
        (group.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = group.dirs["memory"] / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # swap counted too, where the kernel accounts for it
            try:
                memsw.write_text(str(memory_bytes))
            except OSError:
                pass
        (group.dirs["pids"] / "pids.max").write_text(str(processes))
        (group.dirs["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group.dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(_quota_us(cpus)))
    except OSError as e:
        group.remove()
        raise CgroupUnavailable(f"cannot set up a cgroup v1 group ({e})") from None
    return group


def _make_v2(name: str, memory_bytes: int, processes: int, cpus: float) -> SandboxCgroup:
    parent = _v2_parent()
    try:
        parent.mkdir(exist_ok=True)
        available = (parent / "cgroup.controllers").read_text().split()
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise CgroupUnavailable(f"cgroup v2 does not delegate {', '.join(missing)} to {parent}")
        (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        d = parent / name
        d.mkdir()
    except OSError as e:
        raise CgroupUnavailable(f"cannot set up a cgroup v2 group under {parent} ({e})") from None
    group = SandboxCgroup("v2", {c: d for c in CONTROLLERS}, memory_bytes)
    try:
        (d / "memory.max").write_text(str(memory_bytes))
        if (d / "memory.swap.max").exists():
            (d / "memory.swap.max").write_text("0")
        (d / "pids.max").write_text(str(processes))
        (d / "cpu.max").write_text(f"{_quota_us(cpus)} {PERIOD_US}")
    except OSError as e:
        group.remove()
        raise CgroupUnavailable(f"cannot set limits on {d} ({e})") from None
    return group


def group_name(tag: str) -> str:
    """``attn-sandbox-<tag>-<pid>``: the pid of the grader process that owns the group, so that a group left
    behind by a grader that was killed (it could not remove it) is recognised and swept by the next one."""
    return f"{PREFIX}{tag}-{os.getpid()}"


def _owner_alive(folder: Path) -> bool:
    pid = folder.name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return True  # not one of ours by name: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> int:
    """Remove the groups of sandboxes whose grader died before it could (killing what is left in them).
    Returns how many were removed."""
    v2 = _is_v2()
    parents = {c: _v2_parent() if v2 else _v1_parent(c) for c in CONTROLLERS}
    stale: dict[str, dict[str, Path]] = {}
    for c, parent in parents.items():
        for d in sorted(parent.glob(f"{PREFIX}*")) if parent.is_dir() else []:
            if d.is_dir() and not _owner_alive(d):
                stale.setdefault(d.name, {})[c] = d
    for dirs in stale.values():
        SandboxCgroup("v2" if v2 else "v1", dirs, 0).remove()
    return len(stale)


def create(name: str, *, memory_bytes: int, processes: int, cpus: float) -> SandboxCgroup:
    """A fresh group ``name`` (see :func:`group_name`) with these limits, or :class:`CgroupUnavailable` saying
    why there is none. Groups that killed graders left behind are swept first."""
    if os.geteuid() != 0:
        raise CgroupUnavailable("the grader is not running as root, so it cannot create cgroups")
    try:
        sweep_stale()
    except OSError:
        pass  # a sweep that cannot read a folder must not stop this run
    if _is_v2():
        return _make_v2(name, memory_bytes, processes, cpus)
    if (ROOT / "memory").is_dir():
        return _make_v1(name, memory_bytes, processes, cpus)
    raise CgroupUnavailable(f"no cgroup hierarchy is mounted at {ROOT}")


def describe() -> str:
    """One line for a run's log: whether sandboxes get a cgroup here, and if not, why not."""
    try:
        create(group_name("probe"), memory_bytes=2**30, processes=16, cpus=1.0).remove()
    except CgroupUnavailable as e:
        return f"no cgroup ({e}): each sandbox process is limited on its own (rlimits), not the sandbox as a whole"
    return f"a cgroup ({'v2' if _is_v2() else 'v1'}) per sandbox holds its memory, processes and CPU as a whole"
