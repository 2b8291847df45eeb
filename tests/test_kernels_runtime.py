"""Interpreter vs compiler is chosen per device, inside the package, and leaves the process as it found it."""

from __future__ import annotations

import os

import pytest
import torch
import triton.language as tl
from triton.runtime.jit import JITFunction

from attn_course.kernels import flash_attention
from attn_course.kernels._runtime import is_interpreted, kernel_module, mode_for


def test_cpu_tensors_use_interpreted_kernels_and_restore_the_environment():
    before = os.environ.get("TRITON_INTERPRET")
    q = torch.randn(1, 1, 8, 16)
    flash_attention(q, q, q)
    module = kernel_module("flash_fwd", q.device)
    assert module.INTERPRET and is_interpreted(module._attn_fwd)
    assert module.__name__ == "attn_course.kernels._interpreted.flash_fwd"
    assert os.environ.get("TRITON_INTERPRET") == before, "TRITON_INTERPRET must be restored after loading"
    if before != "1":  # triton's own library goes back to compiled functions after an interpreted launch
        assert isinstance(tl.standard.max, JITFunction)


def test_helpers_are_built_in_the_same_mode_as_their_kernel():
    module = kernel_module("flash_bwd", torch.device("cpu"))
    from attn_course.kernels._interpreted import _tiles

    assert is_interpreted(module._bwd_dkdv) and is_interpreted(_tiles.key_tiles)


def test_unsupported_devices_are_named():
    assert mode_for(torch.device("cpu")) == "interpreted" and mode_for(torch.device("cuda", 0)) == "compiled"
    with pytest.raises(ValueError, match="CUDA tensors .* or CPU tensors"):
        mode_for(torch.device("meta"))


def test_old_triton_interpreter_with_new_numpy_gets_a_clear_error():
    """Triton 3.6's interpreter with numpy >= 2.4 fails deep inside with a numpy TypeError (checked by hand: the
    CPU kernel tests pass on triton 3.6.0 with numpy 2.3.5 and fail this way with numpy 2.4.6). The launch scope
    turns that into an error that names both versions and the fix; other errors pass through unchanged."""
    import numpy

    from attn_course.kernels._runtime import interpreter_scope

    with pytest.raises(RuntimeError, match=rf"numpy {numpy.__version__}.*install numpy<2\.4 or triton>=3\.9"):
        with interpreter_scope():
            raise TypeError("only 0-dimensional arrays can be converted to Python scalars")
    with pytest.raises(ValueError, match="something else"):
        with interpreter_scope():
            raise ValueError("something else")


def test_an_interpreted_launch_leaves_triton_language_as_it_found_it(tmp_path, monkeypatch):
    """Triton's interpreter patches ``triton.language`` for every nested ``@jit`` helper call and never
    undoes those patches; the compiler, later in the same process, then runs interpreter code and fails.
    ``interpreter_scope`` puts everything back, so CPU and GPU launches mix in one process."""
    from attn_course.kernels import _variants
    from attn_course.kernels._compile import compile_launch, forward_launches
    from attn_course.kernels._runtime import _language_objects

    before = [(obj, dict(vars(obj))) for obj in _language_objects()]
    for variant in ("pointer", "tma"):
        monkeypatch.setenv(_variants.KERNEL_ENV, variant)
        q = torch.randn(1, 2, 40, 16, requires_grad=True)
        out = flash_attention(q, q, q, causal=True)
        out.backward(torch.randn_like(out))
    for obj, attrs in before:
        changed = sorted(n for n in set(attrs) | set(vars(obj)) if vars(obj).get(n) is not attrs.get(n))
        assert not changed, f"{getattr(obj, '__name__', obj)} still has interpreter patches: {changed[:8]}"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a cold cache: really compile, not load
    monkeypatch.delenv(_variants.KERNEL_ENV)
    (fn, args, kwargs), = forward_launches("tma", torch.float16, 64)
    assert "cp.async.bulk.tensor" in compile_launch(fn, args, kwargs).asm["ptx"]
