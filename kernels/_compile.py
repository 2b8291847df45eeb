"""Compile the kernels for a GPU that is not there: PTX, cubin and resource usage on any machine.

Triton's compiler needs no GPU. Given a target (``GPUTarget("cuda", 90, 32)`` is Hopper) it lowers a
kernel to PTX and assembles it with the ``ptxas`` its wheel ships; ``cuobjdump`` from the same wheel then
reads the registers, spill stack and instructions back out of the cubin. That is how this project checks,
on a CPU, that every kernel variant compiles for Hopper and uses what it is for (tests/test_kernels_compile.py)
and which tile shapes spill registers (benchmarks/kernel_resources.py).

The launches compiled are real ones: :func:`recorded_launches` runs the package's own host wrapper with
the compiled-mode kernel swapped for a recorder, and :func:`compile_launch` binds and specialises the
recorded arguments with Triton's own JIT binder, as a GPU launch would.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from attn_course.kernels import _variants
from attn_course.kernels._checks import kernel_window
from attn_course.kernels._runtime import kernel_module

HOPPER, AMPERE = GPUTarget("cuda", 90, 32), GPUTarget("cuda", 80, 32)
HOPPER_SHARED_MEMORY = 227 * 1024  # what one program may use on an H100 / H200 (sm_90)
CUDA = torch.device("cuda")
CAUSAL = kernel_window((-1, -1), True)


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call (and, when
    ``grids`` is a list, the grid, resolved against the launch's keyword arguments when it is a function)."""

    def __init__(self, fn, calls, grids=None):
        self.fn, self.calls, self.grids = fn, calls, grids

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((self.fn, args, kwargs))
            if self.grids is not None:
                self.grids.append(tuple(grid(kwargs) if callable(grid) else grid))
        return launch


def recorded_launches(module, names, run, grids: list | None = None):
    """The ``(kernel, args, kwargs)`` of every launch ``run()`` makes through ``module``'s ``names``
    (the kernels are put back afterwards); each launch's grid is appended to ``grids`` if given. Nothing
    runs: outputs stay as allocated."""
    calls, saved = [], {name: getattr(module, name) for name in names}
    try:
        for name, fn in saved.items():
            setattr(module, name, _Recorder(fn, calls, grids))
        run()
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
    return calls


def compile_launch(fn, args, kwargs, target=HOPPER):
    """Compile one recorded launch for ``target`` as a GPU launch would: the same binder, the same
    specialisation (an integer equal to 1 becomes a constant, pointers and integers divisible by 16 are
    marked so) and the same options. Returns Triton's compiled kernel (``.asm["ptx"]``, ``["cubin"]``,
    ``.metadata``)."""
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def forward_launches(variant: str, dtype, D: int, *, T: int = 256, config=None, T_q: int | None = None,
                     num_splits: int = 1, seqused_k=None, varlen: bool = False, dropout_p: float = 0.0,
                     softcap: float = 0.0, alibi: bool = False, cache_map=None, page_size: int | None = None):
    """The forward launches the wrapper makes for ``[2, 4, T_q, D]`` queries (``T_q`` defaults to ``T``) and
    2 key/value heads of length ``T``, causal, with ``variant`` forced and the autotuner off (``config``:
    the tile shape, else the default one): the forward kernel, then, with ``num_splits > 1``, the kernel
    that combines the key slices (``flash_split``). ``seqused_k``: per-sequence key counts (a cache).
    ``varlen``: the same tokens as one packed batch of two sequences of unequal lengths (:func:`_packed`).
    ``dropout_p > 0``: with attention dropout (``flash_dropout``); ``softcap > 0``: with logit soft-capping
    (``flash_softcap``); ``alibi``: with ALiBi slopes per (sequence, head) (``flash_alibi``); ``cache_map``:
    each sequence's cache row and first key (int32 ``(rows, starts)``, with ``seqused_k``); ``page_size``: the
    keys and values in a pool of pages of that size instead, the pages of both sequences shuffled
    (``flash_paged``; with ``seqused_k`` a decoding step, with ``varlen`` a packed batch of queries)."""
    fwd = kernel_module("flash_fwd", CUDA)
    q, k, v = (torch.randn(2, h, t, D).to(dtype) for h, t in ((4, T_q or T), (2, T), (2, T)))
    packed = {}
    if varlen:
        cu_q, cu_k, max_q, _ = _packed(q, k)
        packed = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=_packed(q, k)[3])
        q, k, v = (_pack(x) for x in (q, k, v))
    block_table = None
    if page_size is not None:  # (2, 2, T, D) -> a pool (2 * pages_per_seq, 2, page_size, D), pages in any order
        per_seq = -(-(T + 37) // page_size)  # (room for the longer packed sequence too)
        k, v = (torch.zeros(2 * per_seq, 2, page_size, D, dtype=dtype) for _ in range(2))
        block_table = torch.randperm(2 * per_seq).reshape(2, per_seq).to(torch.int32)

    def run():
        fwd.attn_fwd_launch(q, k, v, scale=D ** -0.5, window=CAUSAL, num_splits=num_splits, seqused_k=seqused_k,
                            softcap=softcap, alibi_slopes=_slopes(alibi), cache_map=cache_map,
                            block_table=block_table, **_dropout(dropout_p), **packed)

    combines = []
    with _variants.settings(kernel=variant, autotune=False), _default_config(fwd, config):
        calls = recorded_launches(fwd, ["_attn_fwd"], lambda: combines.extend(
            recorded_launches(fwd.flash_split, ["_combine_splits"], run)))
    return calls + combines


def decoding_launches(variant: str, dtype, D: int, *, config=None, page_size: int | None = None):
    """A decoding step as the survey compiles it (:func:`forward_launches`): one query per sequence against
    caches of 4096 and 100 keys (``seqused_k``), the keys split four ways: the forward kernel, then the combine."""
    used = torch.tensor([4096, 100], dtype=torch.int32)
    return forward_launches(variant, dtype, D, T=4096, T_q=1, num_splits=4, seqused_k=used, config=config,
                            page_size=page_size)


def backward_launches(variant: str, dtype, D: int, *, T: int = 256, config=None, varlen: bool = False,
                      dropout_p: float = 0.0, softcap: float = 0.0, alibi: bool = False):
    """The three backward launches (preprocess, dK/dV, dQ) for the same shapes as :func:`forward_launches`."""
    bwd = kernel_module("flash_bwd", CUDA)
    q, k, v = (torch.randn(2, h, T, D).to(dtype) for h in (4, 2, 2))
    out, dout, lse = torch.randn_like(q), torch.randn_like(q), torch.zeros(2, 4, T)
    packed = {}
    if varlen:
        cu_q, cu_k, max_q, max_k = _packed(q, k)
        packed = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlens=(max_q, max_k))
        q, k, v, out, dout = (_pack(x) for x in (q, k, v, out, dout))
        lse = lse.transpose(0, 1).reshape(4, 2 * T)  # (H, total_T)
    with _variants.settings(kernel=variant, autotune=False), _default_config(bwd, config):
        return recorded_launches(bwd, ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"],
                                 lambda: bwd.attn_bwd_launch(dout, q, k, v, out, lse, scale=D ** -0.5,
                                                             window=CAUSAL, softcap=softcap,
                                                             alibi_slopes=_slopes(alibi), **_dropout(dropout_p),
                                                             **packed))


def _dropout(p: float) -> dict:
    """The launches' dropout arguments: none at ``p = 0``, else ``p`` and a seed (its value is not compiled in)."""
    return dict(dropout_p=p, dropout_seed=torch.ones(1, dtype=torch.int64)) if p else {}


def _slopes(alibi: bool):
    """ALiBi slopes ``[2, 4]`` (the launches' sequences and query heads) when ``alibi``, else ``None``."""
    return torch.full((2, 4), 0.25) if alibi else None


def _pack(x: torch.Tensor) -> torch.Tensor:
    """``[2, H, T, D]`` -> the packed ``[2 T, H, D]`` of a varlen batch."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])  # (2, T, H, D) -> (2 T, H, D)


def _packed(q: torch.Tensor, k: torch.Tensor):
    """``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)`` cutting :func:`_pack`'s ``2 T`` tokens into
    two sequences of unequal lengths (``T - 37`` and ``T + 37`` for ``T > 37``): ragged tiles in both."""
    def cu(T):
        cut = T - 37 if T > 37 else T
        return torch.tensor([0, cut, 2 * T], dtype=torch.int32), 2 * T - cut
    (cu_q, max_q), (cu_k, max_k) = cu(q.shape[2]), cu(k.shape[2])
    return cu_q, cu_k, max_q, max_k


@contextlib.contextmanager
def _default_config(module, config):
    """``module.default_config`` returns ``config`` inside the block (unchanged when ``config`` is None)."""
    original = module.default_config
    if config is not None:
        module.default_config = lambda *args, **kwargs: config
    try:
        yield
    finally:
        module.default_config = original


_TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def resources(kernel) -> dict:
    """What the cubin uses: registers per thread, spill stack bytes, shared memory, warps (with any
    producer warps added by warp specialisation) and counts of the instructions that matter on Hopper
    (HGMMA: wgmma tensor-core products; HMMA: the older mma.sync; UTMALDG: TMA tile loads; LDGSTS:
    cp.async copies)."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_TOOLS / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_TOOLS / "cuobjdump", "-sass", cubin], capture_output=True, text=True,
                              check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no register count:\n{usage}")
    ops = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("HGMMA", "HMMA", "UTMALDG", "LDGSTS")}
    return {"registers": int(m[1]), "spill_stack_bytes": int(m[2]), "shared_bytes": kernel.metadata.shared,
            "warps": kernel.metadata.num_warps, **ops}
