"""The bubblewrap command line: what the sandbox can see, as whom it runs, and what it cannot reach.

Inside the sandbox there is:

* read-only: ``/usr`` (and the ``/bin``, ``/lib``... links into it), the Python installation and its
  site-packages (found from ``sys``), the ``attn_course`` package and the ``kernels`` folder it links to, the
  runner script, the job file (the grader's inputs) and the submitted notebook;
* writable: ``/home/learner`` (the scratch folder, also the working directory and ``$HOME``) and ``/tmp``, both
  size-limited ``tmpfs`` mounts that vanish with the sandbox;
* a fresh ``/proc`` (only the sandbox's own processes) and a minimal ``/dev`` (plus ``/dev/nvidia*`` and a
  read-only ``/sys`` when the GPU is passed through);
* new network (no interfaces but a down loopback), PID, IPC, UTS and cgroup namespaces.

Nothing else of the host exists there: not the repository (solutions, specs, tests, build/ with the gradebook
and the other submissions), not the parent's working folder, not ``/root`` or ``/home``.

As whom: when the parent is root, bubblewrap runs privileged (no user namespace) and ``setpriv`` drops to an
unused uid with no capabilities and ``no_new_privs`` before Python starts. A real non-root uid matters: the
kernel does not apply ``RLIMIT_NPROC`` (the fork-bomb limit) to uid 0, even inside a user namespace. A fresh
uid per run keeps concurrent sandboxes from sharing that process count. When the parent is not root,
bubblewrap makes an unprivileged user namespace instead and forbids nested ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

HOME = "/home/learner"
SANDBOX_DIR = "/sandbox"  # read-only inputs: runner.py, job.pt, submission/<notebook>
UID_RANGE = (200_000, 299_999)  # far above any real account; one is picked per run


class SandboxUnavailable(RuntimeError):
    """A tool the sandbox needs is missing (the message names it and how to install it)."""


def require_tools() -> dict[str, str]:
    """Paths of ``bwrap`` (and ``setpriv`` when root), or raise :class:`SandboxUnavailable` naming what is missing."""
    tools = {"bwrap": shutil.which("bwrap")}
    if os.geteuid() == 0:
        tools["setpriv"] = shutil.which("setpriv")
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        package = {"bwrap": "bubblewrap", "setpriv": "util-linux"}
        hint = " ".join(package[m] for m in missing)
        raise SandboxUnavailable(
            f"cannot sandbox learner code: {', '.join(missing)} not found on PATH. Install it with "
            f"'sudo apt-get install {hint}' (or run 'make setup' as root). Grading without a sandbox is refused."
        )
    return tools


def pick_uid() -> int:
    return UID_RANGE[0] + secrets.randbelow(UID_RANGE[1] - UID_RANGE[0])


def gpu_present() -> bool:
    return Path("/dev/nvidiactl").exists()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def python_paths(repo_root: Path, package_dirs: list[Path]) -> list[Path]:
    """Folders to mount read-only so that the sandbox's Python can import torch, IPython and ``attn_course``.

    The interpreter's prefixes (standard library, virtualenv) and the ``sys.path`` folders inside them
    (site-packages), except ``/usr`` (mounted whole), plus ``package_dirs`` (``attn_course/`` and ``kernels/``).
    Other ``sys.path`` entries are never mounted: under ``python -m`` the current directory is one, and so is
    every ``PYTHONPATH`` folder, and either may be the instructor's course folder with the submissions, the
    gradebook and the secret seed in it. The repository root and its ancestors are never mounted, and of its
    contents only the virtualenv and ``package_dirs`` are.
    """
    repo_root = repo_root.resolve()
    prefixes = [Path(os.path.abspath(p)) for p in (sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix)]
    candidates = list(prefixes)
    candidates += [Path(p) for p in sys.path if p and Path(p).is_dir()
                   and any(_inside(Path(os.path.abspath(p)), prefix) for prefix in prefixes)]
    chosen: list[Path] = []
    for path in candidates:
        path = Path(os.path.abspath(path))
        real = path.resolve()
        if real == Path("/") or _inside(real, Path("/usr")) or _inside(repo_root, real):
            continue  # "/", already mounted, or the repository or a folder that contains it
        if _inside(real, repo_root) and not _inside(real, Path(sys.prefix).resolve()):
            continue  # inside the repository but not the virtualenv: e.g. the repo root put on sys.path
        chosen.append(path)
    chosen += [Path(os.path.abspath(p)) for p in package_dirs]
    # drop folders already covered by another one
    unique = sorted(set(chosen), key=lambda p: len(p.parts))
    return [p for i, p in enumerate(unique) if not any(_inside(p, q) for q in unique[:i])]


def _system_links() -> list[str]:
    """``/bin``, ``/lib``... as the host has them: links into /usr (merged-/usr Debian) or read-only mounts."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        args += ["--ro-bind-try", etc, etc]
    return args


def _mkdirs(paths: list[Path]) -> list[str]:
    """Create every ancestor of the mount points world-traversable (bwrap would make them 0700)."""
    args, made = [], set()
    for path in paths:
        for parent in reversed(path.parents[:-1]):  # skip "/"
            if parent not in made and not _inside(parent, Path("/usr")):
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
    return args


def command(*, python: Path, runner: Path, job: Path, notebook: Path, notebook_name: str, ro_paths: list[Path],
            scratch_bytes: int, gpu: bool, uid: int, runner_args: list[str]) -> list[str]:
    """The full argv: ``bwrap ... [setpriv ...] python -I runner.py <runner_args>``."""
    tools = require_tools()
    as_root = os.geteuid() == 0
    argv = [tools["bwrap"], "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup"]
    if as_root:  # privileged bwrap; setpriv below drops to `uid` with no capabilities
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:  # unprivileged: a user namespace in which the learner is uid 1000 and cannot nest another
        argv += ["--unshare-user", "--disable-userns", "--uid", "1000", "--gid", "1000"]
    argv += ["--die-with-parent", "--new-session"]
    # The size-capped tmpfs mounts come first, so that read-only binds of paths beneath them (a checkout or a
    # virtualenv under /tmp, say) are mounted on top of them instead of being hidden by them.
    for tmp in (HOME, "/tmp"):
        argv += ["--perms", "1777", "--size", str(int(scratch_bytes)), "--tmpfs", tmp]
    argv += _system_links()
    argv += _mkdirs([*ro_paths, Path(HOME), Path(SANDBOX_DIR) / "submission" / "notebook"])
    for path in ro_paths:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind", str(runner), f"{SANDBOX_DIR}/runner.py", "--ro-bind", str(job), f"{SANDBOX_DIR}/job.pt",
             "--ro-bind", str(notebook), f"{SANDBOX_DIR}/submission/{notebook_name}"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    if gpu:
        for dev in sorted(Path("/dev").glob("nvidia*")):
            argv += ["--dev-bind", str(dev), str(dev)]
        argv += ["--ro-bind", "/sys", "/sys"]
    argv += ["--chdir", HOME, "--clearenv"]
    env = {"HOME": HOME, "USER": "learner", "LOGNAME": "learner", "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C.UTF-8", "TMPDIR": "/tmp", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["TRITON_INTERPRET"] = "1"  # @triton.jit kernels run on CPU tensors in the interpreter
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv.append("--")
    if as_root:
        argv += [tools["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--bounding-set=-all",
                 "--inh-caps=-all", "--no-new-privs", "--"]
    argv += [str(python), "-I", "-B", "-X", "faulthandler", f"{SANDBOX_DIR}/runner.py", *runner_args]
    return argv
