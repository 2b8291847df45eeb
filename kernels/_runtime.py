"""Which Triton runs a kernel: the compiler (CUDA tensors) or the interpreter (CPU tensors).

Triton decides at *decoration* time: ``@triton.jit`` returns a compiled ``JITFunction`` unless the
environment variable ``TRITON_INTERPRET=1`` is set at that moment, in which case it returns an
``InterpretedFunction`` that runs the kernel body as NumPy code, one program at a time, on the CPU.
Setting the variable after the kernel module was imported does nothing, and setting it globally would
also turn every *other* Triton kernel in the process (say, ``torch.compile``'s) into interpreted code.

So we never import the kernel modules the ordinary way. :func:`kernel_module` loads each kernel file
twice, on demand, into two private sub-packages that share the folder ``kernels/``:

    attn_course.kernels._compiled.flash_fwd      decorated with TRITON_INTERPRET unset  -> GPU
    attn_course.kernels._interpreted.flash_fwd   decorated with TRITON_INTERPRET=1      -> CPU

restoring the variable afterwards. Relative imports inside a kernel file resolve within its own copy,
so helper ``@triton.jit`` functions are built in the same mode as the kernel that calls them.

Triton's *own* ``@jit`` library (``tl.max``, ``tl.sum``, ``tl.zeros``, ...) was decorated once, when
``triton`` was imported, normally in compiled mode. The interpreter cannot call compiled functions, so
each interpreted launch runs inside :func:`interpreter_scope`, which swaps those functions for
interpreted twins (and sets ``TRITON_INTERPRET=1``) for the duration of the launch only.

The cost of the interpreter: it executes every program of the grid in Python over NumPy arrays, so it
is orders of magnitude slower than the GPU (a ``[1, 8, 1024, 128]`` fp16 forward takes ~20 s on one
CPU core, against well under a millisecond on an H100). It is meant for learning and for tests on
small shapes, not for speed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import types
from pathlib import Path

import torch
import triton
import triton.language as tl  # Triton's own @jit library is built now, in the process's mode

from attn_course._data_stack import call_on_fresh_chunk

try:  # imported lazily by triton's launcher on first use; importing it mid-launch would trip an assert
    import triton.experimental.gluon  # noqa: F401
except ImportError:  # older triton
    pass

_HERE = Path(__file__).resolve().parent
_PACKAGE = __name__.rsplit(".", 1)[0]  # "attn_course.kernels"
_MODES = {"compiled": "0", "interpreted": "1"}
# One lock for everything that sets TRITON_INTERPRET or patches triton.language: building a kernel module
# and running an interpreted launch (so interpreted launches from several threads take turns). Reentrant, so
# that a launch may build a module it has not needed before.
_lock = threading.RLock()
_built: dict[str, types.ModuleType] = {}  # full module name -> the module, once its import has *finished*


def mode_for(device: torch.device) -> str:
    """``"interpreted"`` for CPU tensors, ``"compiled"`` for CUDA tensors; anything else is an error."""
    if device.type == "cpu":
        return "interpreted"
    if device.type == "cuda":
        return "compiled"
    raise ValueError(
        f"the Triton kernels run on CUDA tensors (compiled) or CPU tensors (interpreted), got device {device}"
    )


def _subpackage(mode: str) -> str:
    """Create (once) the empty package ``attn_course.kernels._<mode>`` whose path is this folder."""
    name = f"{_PACKAGE}._{mode}"
    if name not in sys.modules:
        pkg = types.ModuleType(name, f"the kernel modules of {_PACKAGE}, built in {mode} mode")
        pkg.__path__ = [str(_HERE)]
        pkg.__package__ = name
        sys.modules[name] = pkg
    return name


def kernel_module(name: str, device: torch.device) -> types.ModuleType:
    """The kernel module ``name`` (e.g. ``"flash_fwd"``) built for tensors on ``device``."""
    mode = mode_for(device)
    if mode == "compiled" and _library_is_interpreted():
        raise RuntimeError(
            "TRITON_INTERPRET=1 was set when triton was imported, so Triton's own library runs only in the "
            "interpreter and CUDA kernels cannot be compiled in this process; unset it (attn_course.kernels "
            "picks the interpreter for CPU tensors by itself)"
        )
    full = f"{_PACKAGE}._{mode}.{name}"
    # (not sys.modules: an import puts the module there *before* running it, and another thread would get a
    # module half built, with no kernels in it yet)
    if full in _built:
        return _built[full]
    with _lock:  # (taken by the first call only: later ones return above)
        if full in _built:
            return _built[full]
        _subpackage(mode)
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = _MODES[mode]
        try:
            module = importlib.import_module(full)
        finally:
            if before is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = before
        if module.INTERPRET != (mode == "interpreted"):
            raise RuntimeError(
                f"{full} was meant to be built in {mode} mode but Triton built it the other way; is "
                f"triton.knobs.runtime.interpret forced in this process? Leave it unset: {_PACKAGE} picks the "
                f"mode from the tensors' device."
            )
        _built[full] = module
    return module


def on_device(device: torch.device):
    """Launch on ``device``: Triton launches on the *current* CUDA device, whatever device the tensors are
    on, so tensors on ``cuda:1`` with ``cuda:0`` current would be read from the wrong GPU (an illegal
    address). A no-op for CPU tensors."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def is_interpreted(fn) -> bool:
    """True when ``fn`` (a decorated kernel) runs in Triton's interpreter."""
    return type(fn).__name__ == "InterpretedFunction"


def _library_is_interpreted() -> bool:
    return is_interpreted(tl.standard.max)


_twins: dict = {}

# Triton 3.6's interpreter turns scalar kernel arguments into 1-element arrays and calls int() on them, which
# numpy >= 2.4 refuses; triton 3.9's interpreter is fine with numpy 2.4 (and 3.6's with numpy 2.3).
_NUMPY_SCALAR_ERROR = "only 0-dimensional arrays can be converted to Python scalars"


def _numpy_too_new() -> str:
    import numpy

    return (f"Triton {triton.__version__}'s interpreter cannot run with numpy {numpy.__version__}: it converts "
            f"1-element arrays with int(), which numpy >= 2.4 no longer allows. To run the kernels on CPU tensors, "
            f"install numpy<2.4 or triton>=3.9 (the CPU environment pins triton 3.9.0 with numpy 2.4); CUDA tensors "
            f"run compiled and are not affected.")


def _language_objects():
    """The modules and classes of ``triton.language`` whose attributes the interpreter patches."""
    core = tl.core
    return [obj for obj in (tl, core, tl.math, core.tensor, core.dtype, getattr(core, "tensor_descriptor_base", None),
                            getattr(core, "condition", None)) if obj is not None]


def _snapshot():
    return [(obj, dict(vars(obj))) for obj in _language_objects()]


def _restore(snapshot) -> None:
    """Put back every attribute of ``snapshot``'s objects: the interpreter patches ``triton.language`` for
    each launch and for each nested ``@jit`` helper call, and never undoes the helpers' patches (seen in
    triton 3.6 and 3.9), which leaves the compiler, later in the same process, calling interpreter code
    ("'block_argument' object has no attribute 'dtype'")."""
    for obj, before in snapshot:
        now = vars(obj)
        for name in [n for n in now if n not in before]:
            delattr(obj, name)
        for name, value in before.items():
            if now.get(name, _MISSING) is not value:
                setattr(obj, name, value)


_MISSING = object()


@contextlib.contextmanager
def interpreter_scope():
    """Run an interpreted launch: ``TRITON_INTERPRET=1`` and interpreted twins of Triton's ``@jit``
    library functions, both undone on exit, and ``triton.language`` exactly as it was before (see
    :func:`_restore`). Swaps nothing when triton itself was imported in interpreter mode. Each grid the
    interpreter runs meanwhile starts from a data-stack chunk of its own (:mod:`attn_course._data_stack`:
    otherwise the same launch runs up to four times slower at some depths of its caller than at others)."""
    from triton.runtime.interpreter import GridExecutor, InterpretedFunction
    from triton.runtime.jit import JITFunction

    with _lock:
        snapshot = _snapshot()
        swapped = []
        for module in (tl, tl.standard, tl.random):  # (tl.rand calls the random module's own helpers)
            for name, fn in list(vars(module).items()):
                if isinstance(fn, JITFunction):
                    if fn not in _twins:
                        _twins[fn] = InterpretedFunction(fn.fn)
                    swapped.append((module, name, fn))
                    setattr(module, name, _twins[fn])
        before = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        run_grid = GridExecutor.__call__

        def run_grid_on_fresh_chunk(executor, *args, **kwargs):
            return call_on_fresh_chunk(run_grid, executor, *args, **kwargs)

        GridExecutor.__call__ = run_grid_on_fresh_chunk
        try:
            yield
        except Exception as e:
            if _NUMPY_SCALAR_ERROR in str(e):
                raise RuntimeError(_numpy_too_new()) from e
            raise
        finally:
            GridExecutor.__call__ = run_grid
            _restore(snapshot)
            for module, name, fn in swapped:
                setattr(module, name, fn)
            if before is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = before
