"""Interpreter vs compiler is chosen per device, inside the package, and leaves the process as it found it."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
import triton.language as tl
from depth_probe import minor_faults_at_depths
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


_THREADS = """
import sys, threading, torch
from attn_course.kernels import flash_attention, flash_attention_varlen
n = 6
start, failures = threading.Barrier(n), []

def work(i):
    g = torch.Generator().manual_seed(i)
    dtype = (torch.float32, torch.float16, torch.bfloat16)[i % 3]
    q, k, v = (torch.randn(1, 2, 9 + i, 16, generator=g).to(dtype).requires_grad_() for _ in range(3))
    start.wait()  # every thread makes its first call at once
    try:
        if i % 2:
            out = flash_attention_varlen(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                                         [0, 4, 9 + i], [0, 5, 9 + i], 9 + i, 9 + i, causal=True)
        else:
            out = flash_attention(q, k, v, causal=True)
        out.float().sum().backward()
        assert torch.isfinite(q.grad.float()).all()
    except Exception as e:
        failures.append(f"thread {i}: {e!r}")

threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("\\n".join(failures) or "ALL OK")
"""


def test_first_calls_from_several_threads_at_once():
    """A fresh process whose threads all make their first call at the same moment: the first builds the
    interpreted kernel modules while the others wait for it, not for a module Python has registered but
    not yet run (they used to get "partially initialized module ... has no attribute 'attn_fwd_launch'");
    the interpreted launches then take turns (see ``_runtime._lock``)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip().endswith("ALL OK"), run.stdout[-3000:] + run.stderr[-3000:]


def test_helpers_are_built_in_the_same_mode_as_their_kernel():
    module = kernel_module("flash_bwd", torch.device("cpu"))
    from attn_course.kernels._interpreted import _tiles

    assert is_interpreted(module._bwd_dkdv) and is_interpreted(_tiles.key_tiles)


def test_unsupported_devices_are_named():
    assert mode_for(torch.device("cpu")) == "interpreted" and mode_for(torch.device("cuda", 0)) == "compiled"
    with pytest.raises(ValueError, match="CUDA tensors .* or CPU tensors"):
        mode_for(torch.device("meta"))


def test_an_interpreted_launch_costs_the_same_at_every_depth_of_its_caller():
    """CPython 3.11+ keeps frames in 16 KiB chunks, mapped and unmapped as calls cross them; a launch whose
    caller sits at the wrong depth had the interpreter's per-operation calls cross a boundary and fault in fresh
    pages millions of times (up to 4x slower: ``_data_stack``). Stepping the caller's depth through more than a
    chunk (160 frames of about 100 bytes) finds such a depth if there is one: without ``call_on_fresh_chunk`` this
    launch faulted thousands of times at a third of the depths (14,075 at worst, under pytest), against a few at
    the others; with it, a few hundred at most. Counted, not timed."""
    from triton.runtime.interpreter import GridExecutor

    from attn_course import _data_stack

    assert _data_stack.call_on_fresh_chunk.__code__.co_nlocals * 8 > 16 * 1024, "its frame must overflow a chunk"
    q, k, v = (torch.randn(1, 1, 33, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    run_grid = GridExecutor.__call__
    flash_attention(q, k, v, causal=True)  # (built and warm)
    assert GridExecutor.__call__ is run_grid, "the launch left Triton's GridExecutor patched"
    depths = range(0, 160, 4)
    faults = minor_faults_at_depths(lambda: flash_attention(q, k, v, causal=True), depths)
    assert max(faults) < 1000, (
        f"an interpreted launch page-faulted {max(faults)} times at caller depth {depths[faults.index(max(faults))]} "
        f"(faults by depth, in steps of {depths.step} frames: {faults}): its hot calls straddle a data-stack chunk "
        f"boundary; is interpreter_scope still running each grid through _data_stack.call_on_fresh_chunk?"
    )


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


# --- the interpreter's bfloat16 casts ---------------------------------------------------------------------

def _cast_rows(X, Y, N: tl.constexpr, OURS: tl.constexpr):
    """Y = X cast to bfloat16: with ``_tiles.narrow`` (``OURS``) or with Triton's own cast. Decorated in
    interpreted mode by ``_interpreted_cast``, which puts the interpreted copy of ``_tiles`` in ``_TILES``."""
    offs = tl.arange(0, N)
    x = tl.load(X + offs)
    if OURS:
        y = _TILES[0].narrow(x, tl.bfloat16, True)
    else:
        y = x.to(tl.bfloat16)
    tl.store(Y + offs, y)


_TILES: list = []  # [the interpreted _tiles module], once _interpreted_cast has loaded it


def _interpreted_cast():
    """``cast(x, ours)``: float32 ``x`` (1-D, power-of-two length) to bfloat16 in Triton's interpreter."""
    import triton

    from attn_course.kernels._runtime import interpreter_scope

    kernel_module("flash_fwd", torch.device("cpu"))
    from attn_course.kernels._interpreted import _tiles

    _TILES[:] = [_tiles]
    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):  # (jit reads it when it decorates)
        kernel = triton.jit(_cast_rows)

    def cast(x: torch.Tensor, ours: bool) -> torch.Tensor:
        y = torch.empty(x.shape, dtype=torch.bfloat16)
        with interpreter_scope():
            kernel[(1,)](x, y, N=x.numel(), OURS=ours)
        return y

    return cast


def bfloat16_edge_values() -> torch.Tensor:
    """float32 values where rounding to bfloat16 is easy to get wrong, then random ones: 1024 in all."""
    bits = torch.tensor([
        0x3F808000, 0x3F818000,  # ties: 1 + 2^-8 goes down to 1 (even), 1 + 3 * 2^-8 up to 1 + 2^-6 (even)
        0x3F808001, 0x3F807FFF,  # just above and just below a tie
        0x3F7FFFFF, 0x3FFFFFFF,  # round up across a power of two: 1 - 2^-24 -> 1, 2 - 2^-23 -> 2
        0x7F7FFFFF, 0x7F7F7FFF,  # float32's largest: past bfloat16's largest, so inf; and just below that
        0x7F800000, 0xFF800000, 0x7FC00000, 0x00000000, 0x80000000,  # inf, -inf, NaN, 0, -0
        0x00000001, 0x00008000, 0x00018000, 0x807FFFFF,  # subnormals, a subnormal tie, the largest one (< 0)
    ], dtype=torch.int64).to(torch.int32)  # (the int64 detour lets the literals above 2^31 wrap)
    crafted = bits.view(torch.float32)
    crafted = torch.cat([crafted, -crafted])
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-30, 30, 1024 - crafted.numel(), base=2.0)
    return torch.cat([crafted, torch.randn(scales.numel(), generator=g) * scales])


def test_interpreted_bfloat16_casts_round_to_nearest_even_as_a_gpu_does():
    """A GPU's float32 -> bfloat16 cast rounds to nearest, ties to even (as torch's does). The interpreter's
    drops the low 16 bits (triton 3.6 and 3.9): on the CPU a bfloat16 kernel had twice a GPU's rounding
    error, all of it towards zero, and dK / dV summed over every query drifted past the tolerance rule
    (a random packed case in test_kernels_random found it). ``_tiles.narrow`` rounds on the bits instead;
    it must agree with torch bit for bit, NaN included."""
    cast = _interpreted_cast()
    x = bfloat16_edge_values()
    want = x.to(torch.bfloat16)
    ours = cast(x, True)
    nan = torch.isnan(x)
    assert torch.isnan(ours[nan]).all()
    wrong = (ours.view(torch.int16) != want.view(torch.int16)) & ~nan
    assert not wrong.any(), (f"narrow() rounds {x[wrong][:4].tolist()} to {ours[wrong][:4].tolist()}, "
                             f"torch to {want[wrong][:4].tolist()}")
    # why: Triton's own cast keeps the top half of each normal float32 as it is (and garbles some subnormals)
    theirs = cast(x, False)
    if torch.equal(theirs.view(torch.int16)[~nan], want.view(torch.int16)[~nan]):
        pytest.fail("this triton's interpreter rounds float32 -> bfloat16 correctly now: _tiles.narrow's "
                    "bit rounding can go (keep this test's first half)")
    normal = x.abs() >= torch.finfo(torch.float32).tiny
    truncated = (x.view(torch.int32) >> 16).to(torch.int16)  # (1024,) the top half of each float32, as is
    assert torch.equal(theirs.view(torch.int16)[normal], truncated[normal]), "the interpreter's cast changed"


def check_bfloat16_output_rounds_to_nearest(path: str, device="cpu"):
    """With q = 0 every query weighs its two keys equally, so out is ``(v_0 + v_1) / 2`` exactly in float32
    and the bfloat16 out must be that rounded once, to nearest even (the last cast of the forward, through
    a tile store with ``path`` a kernel variant, or through the split combine with ``path="split"``)."""
    from attn_course.kernels import _variants, flash_attention_kvcache

    g = torch.Generator().manual_seed(0)
    q = torch.zeros(1, 2, 3, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 2, 2, 64, generator=g).to(torch.bfloat16)
    v = (torch.randn(1, 2, 2, 64, generator=g) * torch.logspace(-3, 3, 64, base=2.0)).to(torch.bfloat16)
    mean = (v[:, :, 0].float() + v[:, :, 1].float()) / 2  # (1, 2, 64) exact in float32
    want = mean.to(torch.bfloat16)[:, :, None].expand(q.shape)  # (1, 2, 3, 64), rounded to nearest even
    q, k, v = (x.to(device) for x in (q, k, v))
    with _variants.settings(kernel="pointer" if path == "split" else path), torch.no_grad():
        out = flash_attention_kvcache(q, k, v, num_splits=2) if path == "split" else flash_attention(q, k, v)
    wrong = out.cpu().view(torch.int16) != want.view(torch.int16)
    assert not wrong.any(), (f"{path} on {device}: {wrong.sum().item()} of {wrong.numel()} bfloat16 outputs are "
                             f"not rounded to nearest")


@pytest.mark.parametrize("path", ["pointer", "tma", "split"])
def test_a_bfloat16_kernel_rounds_its_output_as_a_gpu_does(path):
    """On a GPU a bfloat16 output is rounded to nearest even (``test_kernels_gpu`` runs this check compiled),
    so on the CPU too. Triton's own interpreted cast would miss a third of these values (it truncates, see
    above)."""
    check_bfloat16_output_rounds_to_nearest(path)
