"""The kernels compile for Hopper (sm_90) and Ampere (sm_80), on a machine with no GPU at all.

Triton's compiler needs no GPU: given a target it lowers a kernel to PTX and assembles it with the
``ptxas`` its wheel ships. So the CPU suite can prove what the interpreter cannot: that every variant
(``pointer``, ``tma``, ``tma+ws``) of the forward and backward kernels compiles for sm_90, and that the
PTX uses what the variant is for: Hopper's tensor-core instructions (``wgmma``) for 16-bit inputs, the
bulk tensor copy engine (``cp.async.bulk.tensor``) for the TMA variants, and, for warp-specialised
configs, extra producer warps and register reallocation between warpgroups (``setmaxnreg``).

The launches are real: each test calls the package's own host wrapper with the compiled-mode kernel
swapped for a recorder, so the arguments, constexprs and launch options compiled here are exactly the
ones a GPU launch would use. Speed is not measured here (that needs a GPU: ``make bench``).
"""

from __future__ import annotations

import pytest
import torch
import triton
from test_kernels_common import make_qkv
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from attn_course.kernels import _variants
from attn_course.kernels._checks import kernel_window
from attn_course.kernels._runtime import kernel_module

HOPPER, AMPERE = GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)
CUDA = torch.device("cuda")


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((self.fn, args, kwargs))


def recorded_launches(monkeypatch, module, names, run):
    """The (kernel, args, kwargs) of every launch ``run()`` makes through ``module``'s ``names``."""
    calls = []
    for name in names:
        monkeypatch.setattr(module, name, _Recorder(getattr(module, name), calls))
    run()
    return calls


def compile_launch(fn, args, kwargs, target):
    """Compile one recorded launch for ``target`` as a GPU launch would: the same binder, the same
    specialisation (an integer equal to 1 becomes a constant, pointers and integers divisible by 16 are
    marked so) and the same options; returns Triton's compiled kernel (``.asm["ptx"]``, ``["cubin"]``)."""
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


@pytest.fixture
def fixed_tiles(monkeypatch):
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "0")  # the default config, as the wrappers launch it


def forward_launches(monkeypatch, variant, dtype, D, *, T=256):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    fwd = kernel_module("flash_fwd", CUDA)
    q, k, v = make_qkv(2, 4, 2, T, T, D, dtype)
    causal = kernel_window((-1, -1), True)
    return recorded_launches(monkeypatch, fwd, ["_attn_fwd"],
                             lambda: fwd.attn_fwd_launch(q, k, v, scale=D ** -0.5, window=causal))


def backward_launches(monkeypatch, variant, dtype, D, *, T=256):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    bwd = kernel_module("flash_bwd", CUDA)
    q, k, v = make_qkv(2, 4, 2, T, T, D, dtype)
    out, dout = torch.randn_like(q), torch.randn_like(q)
    lse = torch.zeros(2, 4, T)
    return recorded_launches(monkeypatch, bwd, ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"],
                             lambda: bwd.attn_bwd_launch(dout, q, k, v, out, lse, scale=D ** -0.5,
                                                         window=kernel_window((-1, -1), True)))


def check_ptx(fn, kernel, *, tma: bool, tensor_cores: bool, must_fit: bool = True):
    """``must_fit``: a default config must fit in shared memory; an autotuning candidate may not (the
    autotuner skips those)."""
    ptx = kernel.asm["ptx"]
    name = fn.__name__
    assert not must_fit or kernel.metadata.shared <= SHARED_MEMORY, (
        f"{name} needs {kernel.metadata.shared} bytes of shared memory, more than sm_90's {SHARED_MEMORY}: "
        f"its default tiles would fail to launch")
    if tensor_cores:
        assert "wgmma.mma_async" in ptx, f"{name}: no Hopper tensor-core instruction (wgmma) in its PTX"
    copies = ptx.count("cp.async.bulk.tensor")
    if tma:
        assert copies > 0, f"{name}: the TMA variant issues no bulk tensor copy (cp.async.bulk.tensor)"
    else:
        assert copies == 0, f"{name}: the pointer variant should not use tensor descriptors"


CASES = [(torch.float16, 64), (torch.bfloat16, 128), (torch.float32, 128)]  # float32 x 128: the most memory
# (ptxas takes 25-30 s per variant on the backward's float32 IEEE products at D = 64 or 128; both were
# checked by hand to compile and fit; the suite compiles float32 at D = 16)
BACKWARD_CASES = CASES[:2] + [(torch.float32, 16)]
SHARED_MEMORY = 227 * 1024  # what one program may use on an H100 / H200 (sm_90)


@pytest.mark.usefixtures("fixed_tiles")
@pytest.mark.parametrize("dtype,D", CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("variant", list(_variants.VARIANTS))
def test_forward_compiles_for_hopper(variant, dtype, D, monkeypatch):
    (fn, args, kwargs), = forward_launches(monkeypatch, variant, dtype, D)
    kernel = compile_launch(fn, args, kwargs, HOPPER)
    check_ptx(fn, kernel, tma=_variants.VARIANTS[variant].tma, tensor_cores=dtype != torch.float32)


@pytest.mark.usefixtures("fixed_tiles")
@pytest.mark.parametrize("dtype,D", BACKWARD_CASES, ids=lambda x: str(x).replace("torch.", ""))
@pytest.mark.parametrize("variant", ["pointer", "tma"])
def test_backward_compiles_for_hopper(variant, dtype, D, monkeypatch):
    launches = backward_launches(monkeypatch, variant, dtype, D)
    assert [fn.__name__ for fn, _, _ in launches] == ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"]
    for fn, args, kwargs in launches:
        kernel = compile_launch(fn, args, kwargs, HOPPER)
        if fn.__name__ != "_bwd_preprocess":  # a row-wise dot product: no matrix multiply, no tiles
            check_ptx(fn, kernel, tma=variant == "tma", tensor_cores=dtype != torch.float32)


@pytest.mark.parametrize("tile", kernel_module("flash_fwd", CUDA).WS_TILES, ids=str)
@pytest.mark.parametrize("dtype,D", [(torch.float16, 64), (torch.bfloat16, 128)], ids=str)
def test_every_warp_specialised_config_compiles_and_specialises(tile, dtype, D, monkeypatch):
    """The autotuner would skip a config that fails to compile only for want of resources; any other
    compile error aborts the tuning, so every warp-specialised config offered must compile. Each must also
    really be specialised: more warps than asked for (the producer) and ``setmaxnreg``. (float32 compiles
    too but is not specialised, having no wgmma to overlap: ``auto`` never offers it ``tma+ws``.)"""
    fwd = kernel_module("flash_fwd", CUDA)
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "0")
    monkeypatch.setattr(fwd, "default_config", lambda variant, D, itemsize: _variants.config(*tile, WARP_SPEC=True))
    (fn, args, kwargs), = forward_launches(monkeypatch, "tma+ws", dtype, D)
    kernel = compile_launch(fn, args, dict(kwargs), HOPPER)
    check_ptx(fn, kernel, tma=True, tensor_cores=True, must_fit=tile == fwd.WS_TILES[0])
    assert kernel.metadata.num_warps > tile[2], f"{tile}: no producer warps were added (not specialised)"
    assert "setmaxnreg" in kernel.asm["ptx"], f"{tile}: no register reallocation between warpgroups"


@pytest.mark.usefixtures("fixed_tiles")
def test_pointer_kernels_compile_for_ampere(monkeypatch):
    """Pre-Hopper GPUs run the pointer variant (``auto`` never picks TMA there): sm_80, mma.sync."""
    launches = forward_launches(monkeypatch, "pointer", torch.bfloat16, 64)
    launches += backward_launches(monkeypatch, "pointer", torch.bfloat16, 64)
    for fn, args, kwargs in launches:
        ptx = compile_launch(fn, args, kwargs, AMPERE).asm["ptx"]
        if fn.__name__ != "_bwd_preprocess":
            assert "mma.sync" in ptx and "wgmma" not in ptx, f"{fn.__name__}: expected Ampere's mma.sync"
