"""Which block each program works on, and which addresses it reads: the launch grid and 64-bit offsets.

Two ways a kernel that passes every small test goes wrong at scale:

* **The grid.** CUDA allows 2^31 - 1 programs along a grid's x axis but only 65,535 along y and z. A grid
  of ``(blocks, B * H)`` refuses to launch ("invalid argument") once ``B * H`` passes 65,535: 4,097 packed
  sequences of 32 heads, say. The kernels launch ``(blocks, H, B)`` grids, and a batch of more than 65,535
  sequences in chunks (``_tiles.launch_grid``, ``batch_chunks``). The tests record the launches the host
  wrappers make, without running them, and check each grid against CUDA's limits and against the
  (block, head, sequence) triples it must cover; the chunking runs for real in the interpreter, with the
  limit lowered.
* **The offsets.** ``row * stride`` in 32-bit integers wraps around past 2^31 elements: in flash-attn's
  ``[B, T, H, D]`` layout rows are ``H * D`` apart, so a long sequence gets there. The interpreter computes
  in the same integer widths as the GPU, so rows 2^27 elements apart (in one lazily allocated storage) make
  a 32-bit kernel read before the tensor and crash the process; the kernels switch to 64-bit offsets
  there (``WIDE``), and only there, since they cost registers.

``tests/test_kernels_gpu.py`` runs both on a GPU, where the grid limit is real.
"""

from __future__ import annotations

import sys

import pytest
import torch
import triton
from test_kernels_common import check_case, check_far_apart_rows, far_apart_qkv, reference

from attn_course.kernels import _compile, _tiles, _variants, flash_attention_varlen
from attn_course.kernels._checks import kernel_window
from attn_course.kernels._runtime import kernel_module

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
CAUSAL = kernel_window((-1, -1), True)
LIMIT = _tiles.CUDA_MAX_GRID_YZ


def recorded(B, H, H_kv, T, D, *, varlen: bool, qkv=None):
    """Every launch the forward and backward wrappers make (compiled-mode kernels, recorded, not run), as
    ``(name, grid, kwargs)``; ``qkv`` replaces the zero ``[B, H(_kv), T, D]`` inputs."""
    fwd, bwd = kernel_module("flash_fwd", CUDA), kernel_module("flash_bwd", CUDA)
    shapes = [(B * T, h, D) if varlen else (B, h, T, D) for h in (H, H_kv, H_kv)]
    q, k, v = qkv or (torch.zeros(s, dtype=torch.float16) for s in shapes)
    lse = torch.zeros((H, B * T) if varlen else (B, H, T))
    packed = {}
    if varlen:
        cu = torch.arange(0, B * T + 1, T, dtype=torch.int32)  # (B + 1,) every sequence T tokens
        packed = dict(cu_seqlens_q=cu, cu_seqlens_k=cu)
    calls, grids = [], []
    with _variants.settings(kernel="pointer", autotune=False):
        calls += _compile.recorded_launches(
            fwd, ["_attn_fwd"],
            lambda: fwd.attn_fwd_launch(q, k, v, scale=0.25, window=CAUSAL, max_seqlen_q=T, **packed), grids)
        calls += _compile.recorded_launches(
            bwd, ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"],
            lambda: bwd.attn_bwd_launch(q, q, k, v, q, lse, scale=0.25, window=CAUSAL,
                                        max_seqlens=(T, T) if varlen else None, **packed), grids)
    return [(fn.__name__, grid, kwargs) for (fn, _, kwargs), grid in zip(calls, grids, strict=True)]


@pytest.mark.parametrize("varlen", [False, True], ids=["fixed", "packed"])
@pytest.mark.parametrize("B", [4097, 2 * LIMIT + 5], ids=["B*H-past-the-limit", "B-past-the-limit"])
def test_every_launch_fits_cuda_grid_limits_and_covers_every_block(B, varlen):
    H, H_kv, T, D = (32, 16, 8, 16) if B < LIMIT else (2, 1, 3, 16)
    launches = recorded(B, H, H_kv, T, D, varlen=varlen)
    chunks = triton.cdiv(B, LIMIT)
    names = ["_attn_fwd"] * chunks + ["_bwd_preprocess"] * chunks + ["_bwd_dkdv"] * chunks + ["_bwd_dq"] * chunks
    assert [name for name, _, _ in launches] == names, f"expected {chunks} launch(es) of each kernel"
    programs = {}
    for name, grid, kwargs in launches:
        x, y, z = (*grid, 1, 1)[:3]
        assert x <= _tiles.CUDA_MAX_GRID_X and y <= LIMIT and z <= LIMIT, (
            f"{name}'s grid {grid} for {B} sequences x {H} heads would not launch on CUDA: at most "
            f"{_tiles.CUDA_MAX_GRID_X} programs along x and {LIMIT} along y and z"
        )
        block = {"_bwd_preprocess": 64, "_bwd_dkdv": kwargs.get("BLOCK_N")}.get(name, kwargs.get("BLOCK_M"))
        rows, heads = T, H_kv if name == "_bwd_dkdv" else H
        if kwargs.get("PACK_GQA"):  # a decoding step (T <= 16) of fixed length: a group's heads share rows
            rows, heads = T * (H // H_kv), H_kv
        assert (x, y) == (triton.cdiv(rows, block), heads), f"{name}: grid {grid}, expected (blocks, heads, B)"
        programs[name] = programs.get(name, 0) + z
    assert programs == dict.fromkeys(names, B), f"every sequence once per kernel: {programs}"


def test_a_batch_past_the_grid_limit_runs_in_chunks(monkeypatch):
    """The chunking for real, in the interpreter: the limit lowered to 2 sequences per launch, so a
    batch of 5 runs as 2 + 2 + 1, fixed-length and packed, forward and backward."""
    kernel_module("flash_fwd", CPU)  # the interpreted kernels' own copy of _tiles (see _runtime)
    monkeypatch.setattr(sys.modules["attn_course.kernels._interpreted._tiles"], "CUDA_MAX_GRID_YZ", 2)
    check_case((5, 2, 1, 19, 23, 16, True, (-1, -1), torch.float32))
    lens_q, lens_k = [3, 17, 1, 9, 12], [5, 17, 4, 9, 20]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], dtype=torch.int32) for x in (lens_q, lens_k))
    q = torch.randn(sum(lens_q), 2, 16, requires_grad=True)
    k, v = (torch.randn(sum(lens_k), 1, 16, requires_grad=True) for _ in range(2))
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    out.backward(torch.ones_like(out))
    for b in range(5):
        sq, sk = slice(int(cu_q[b]), int(cu_q[b + 1])), slice(int(cu_k[b]), int(cu_k[b + 1]))
        qb, kb, vb = (x.detach()[s].transpose(0, 1).unsqueeze(0).requires_grad_()  # (1, H, T_b, D)
                      for x, s in ((q, sq), (k, sk), (v, sk)))
        ref = reference(qb, kb, vb, causal=True)
        ref.backward(torch.ones_like(ref))
        assert torch.allclose(out[sq].transpose(0, 1).unsqueeze(0), ref, atol=2e-5), f"out of sequence {b}"
        for name, got, want in (("dq", q.grad[sq], qb.grad), ("dk", k.grad[sk], kb.grad), ("dv", v.grad[sk], vb.grad)):
            assert torch.allclose(got.transpose(0, 1).unsqueeze(0), want, atol=2e-5), f"{name} of sequence {b}"


def test_launch_grid_names_the_limit():
    with pytest.raises(ValueError, match="does not fit CUDA's limits"):
        _tiles.launch_grid(64, 16, 8, LIMIT + 1)


def test_blocks_heads_and_sequences_are_told_apart():
    """Three query blocks and two key blocks of every one of 4 heads of 3 sequences, GQA: a program that
    mixed up its (block, head, sequence) would read or write another one's rows."""
    check_case((3, 4, 2, 70, 45, 16, True, (-1, -1), torch.float32))


def test_64_bit_offsets_only_where_a_tensor_needs_them():
    """32-bit offsets are the fast path: every launch of an ordinary batch uses them, and the launches on
    rows 2^27 elements apart, or on flash-attn's layout of a 2^20-token sequence with 32 heads of 128,
    switch to 64 bits."""
    ordinary = recorded(2, 4, 2, 203, 64, varlen=False)
    assert not any(kwargs.get("WIDE") for _, _, kwargs in ordinary if "WIDE" in kwargs)
    assert all("WIDE" in kwargs for name, _, kwargs in ordinary if name != "_bwd_preprocess")
    far = tuple(x.detach() for x in far_apart_qkv(17, 16, torch.float16))
    assert all(kwargs["WIDE"] for name, _, kwargs in recorded(1, 1, 1, 17, 16, varlen=False, qkv=far)
               if name != "_bwd_preprocess")
    long = torch.empty(0, dtype=torch.float16).new_empty((1, 1 << 20, 32, 128), device="meta").transpose(1, 2)
    assert _tiles.needs_wide_offsets(2, long)  # (B, H, T, D) view of (B, T, H, D): 2^20 rows 4096 apart
    assert not _tiles.needs_wide_offsets(2, long[:, :, : 1 << 14])


def test_rows_far_apart_use_64_bit_offsets():
    check_far_apart_rows("cpu")
