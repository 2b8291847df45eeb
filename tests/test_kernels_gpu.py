"""The CPU test cases again, compiled on a CUDA GPU, plus long sequences (up to T = 16384) that the
interpreter could never run. Skipped, with the reason, where there is no GPU.

Every kernel variant the GPU can run is compiled and checked: ``pointer`` everywhere, and on Hopper the
``tma`` and ``tma+ws`` variants, forced by name (so that a compile error fails the test instead of being
absorbed by the automatic fallback) and through ``auto`` (which must then not have fallen back). The
autotuner is off except in one test: each (variant, dtype, head dim) compiles once, not once per tile shape.
"""

from __future__ import annotations

import re

import pytest
import torch
from test_kernels import CASES, case_id
from test_kernels_alibi import case_id as alibi_case_id
from test_kernels_alibi import (
    check_alibi_cache,
    check_alibi_case,
    check_alibi_varlen,
    check_alibi_with_dropout,
    check_dropout_softcap_and_alibi,
)
from test_kernels_attn_probs import check_s_dmask
from test_kernels_autograd import LSE_CASES, check_compiled_model, check_lse_gradient, lse_case_id
from test_kernels_common import (
    assert_close_by_rule,
    check_far_apart_rows,
    make_qkv,
    max_err,
    reference,
    torch_same_dtype,
)
from test_kernels_common import check_case as check_on_device
from test_kernels_decode import combines  # noqa: F401 (a fixture)
from test_kernels_dropout import case_id as dropout_case_id
from test_kernels_dropout import check_dropout_case, check_dropout_varlen, mask_of, next_seed
from test_kernels_empty import EMPTY, check_empty, launches  # noqa: F401 (launches: a fixture)
from test_kernels_head_dims import case_id as head_dims_case_id
from test_kernels_head_dims import check_padded_cache, check_padded_case, check_padded_varlen
from test_kernels_kvcache import case_id as kvcache_case_id
from test_kernels_kvcache import check_cache_map, check_kvcache_case, make_cache
from test_kernels_packed_grads import check_qkv_gradient_in_place, written  # noqa: F401 (written: a fixture)
from test_kernels_paged import check_paged, make_paged_cache
from test_kernels_random import (
    GPU_LENGTHS,
    GPU_SEEDS,
    cache_draw_id,
    cache_draws,
    cache_scored_draws,
    check_cache_scored,
    check_packed_scored,
    check_width_case,
    fixed_case,
    packed_draw_id,
    packed_draws,
    packed_scored_draws,
    scored_draw_id,
    width_case,
)
from test_kernels_rotary import check_generation_with_rotary
from test_kernels_runtime import check_bfloat16_output_rounds_to_nearest
from test_kernels_softcap import case_id as softcap_case_id
from test_kernels_softcap import (
    check_softcap_cache,
    check_softcap_case,
    check_softcap_varlen,
    check_softcap_with_dropout,
)
from test_kernels_varlen import PADDING_TAILS, check_padding_tail, check_varlen_case, per_sequence
from test_kernels_vmap import check_per_sample_gradients

from attn_course.kernels import _tiles, _variants, flash_attention, flash_attention_varlen, flash_attn_func
from attn_course.kernels._runtime import kernel_module

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: these run the compiled kernels (the CPU tests run the same "
                              "kernels in Triton's interpreter)"),
]
NONE = (-1, -1)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
VARIANTS = ["pointer"] + (["tma", "tma+ws"] if HOPPER and _variants.TensorDescriptor is not None else [])


@pytest.fixture(autouse=True)
def _fixed_tiles(monkeypatch):
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "0")

LARGE = [
    (1, 4, 1, 4096, 4096, 128, True, NONE, torch.float16),
    (1, 2, 2, 8192, 8192, 64, False, (256, 256), torch.bfloat16),
    (1, 2, 1, 16384, 16384, 128, True, NONE, torch.bfloat16),
    (1, 2, 2, 1000, 16384, 64, True, NONE, torch.float16),
    (1, 4, 2, 4096, 4096, 256, True, NONE, torch.bfloat16),
]


def check_case(case):
    """The shared check (test_kernels_common.check_case), compiled on the GPU."""
    check_on_device(case, "cuda")
    assert not kernel_module("flash_fwd", torch.device("cuda")).INTERPRET


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_compiled_matches_reference(case, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case(case)
    dtype, D = case[-1], case[5]
    no_ws = variant.replace("+ws", "")  # no WS backward, and float32 has no wgmma for WS to overlap
    assert _variants.used(("cuda:0", dtype, D, "forward")) == (no_ws if dtype == torch.float32 else variant)
    assert _variants.used(("cuda:0", dtype, D, "backward")) == no_ws


@pytest.mark.parametrize("case", LARGE, ids=case_id)
def test_long_sequences(case):
    check_case(case)
    assert not _variants.broken(), f"a kernel variant failed and auto fell back: {_variants.broken()}"
    torch.cuda.empty_cache()


@pytest.mark.parametrize("D,dtype,forward,backward", [(64, torch.bfloat16, "tma+ws", "tma"),
                                                     (256, torch.bfloat16, "tma+ws", "pointer"),
                                                     (64, torch.float32, "pointer", "pointer"),
                                                     (256, torch.float32, "pointer", "pointer")])
def test_auto_uses_tma_on_hopper_without_falling_back(D, dtype, forward, backward):
    """``auto`` picks the TMA variants on Hopper (warp-specialised where there are tensor cores to overlap),
    except the backward at D = 256, whose TMA dK/dV tiles spill registers, and float32, whose TMA tiles
    spill kilobytes (``tma_pays``): those run the pointer variant."""
    q, k, v = make_qkv(2, 4, 2, 300, 300, D, dtype, device="cuda", requires_grad=True)
    flash_attention(q, k, v, causal=True).sum().backward()
    for part, best in (("forward", forward), ("backward", backward)):
        used = _variants.used(("cuda:0", dtype, D, part))
        assert used == (best if len(VARIANTS) > 1 else "pointer"), (part, used)
    assert not _variants.broken(), f"a kernel variant failed and auto fell back: {_variants.broken()}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_autotuned_launches(variant, monkeypatch):
    """Through the autotuner (and, for TMA, its pre-hook that gives each config's tile to the descriptors)."""
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case((2, 4, 2, 1000, 1000, 128, True, NONE, torch.float16))


def check_each_causal_sequence(out, q, k, v, cu_q, cu_k):
    """Each sequence of a causal packed batch's ``out`` against attention on that sequence alone (GQA
    repeated by the reference), by the tolerance rule."""
    for b in range(cu_q.numel() - 1):
        qb, kb, vb, ob = (per_sequence(x, c, b) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k), (out, cu_q)))
        assert_close_by_rule(f"sequence {b}", ob, reference(qb, kb, vb, causal=True),
                             torch_same_dtype(qb, kb, vb, causal=True), q.dtype)


@pytest.mark.parametrize("variant", ["auto", *VARIANTS[:2]])
def test_compiled_varlen_matches_attention_per_sequence(variant, monkeypatch):
    """Compiled packed batches, in each variant (TMA: one descriptor over the whole packed tensor, the tile
    that overhangs each sequence through pointers); ``auto`` on Hopper: the TMA forward, without falling
    back. Then the NaN check of tests/test_kernels_varlen.py: a NaN sequence reaches no other."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    _variants._broken.clear()
    lens_q, lens_k = [300, 1, 1200], [500, 77, 1200]
    cu_q = torch.tensor([0, 300, 301, 1501], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, 500, 577, 1777], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(lens_q), 8, 64, device="cuda", dtype=torch.float16)
    k, v = (torch.randn(sum(lens_k), 2, 64, device="cuda", dtype=torch.float16) for _ in range(2))
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    check_each_causal_sequence(out, q, k, v, cu_q, cu_k)
    if variant == "auto":
        assert _variants.used(("cuda:0", torch.float16, 64, "forward")) == ("tma" if HOPPER else "pointer")
        assert not _variants.broken(), _variants.broken()
    poisoned = [x.clone() for x in (q, k, v)]
    for x, cu in zip(poisoned, (cu_q, cu_k, cu_k), strict=True):
        x[int(cu[1]):int(cu[2])] = float("nan")
    again = flash_attention_varlen(*poisoned, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    for b in (0, 2):
        sl = slice(int(cu_q[b]), int(cu_q[b + 1]))
        assert torch.equal(again[sl], out[sl]), f"sequence {b} changed when sequence 1 became NaN ({variant})"


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("tail_q,tail_k,causal", PADDING_TAILS)
def test_a_padding_tail_on_the_gpu(tail_q, tail_k, causal, variant, monkeypatch):
    """A static-shape buffer's padding tail, compiled: never read, zeros (the caching allocator hands out
    used memory here, so an unwritten tail would show), the sequences' results unchanged bit for bit."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_padding_tail(tail_q, tail_k, causal, "cuda")


def test_a_packed_batch_of_decoding_steps_on_the_gpu():
    """Sixteen sequences of one to three new tokens against their own long keys, GQA 32/8 (the groups packed
    into program rows): each against attention on it alone."""
    lens_q = [1 + i % 3 for i in range(16)]
    lens_k = [500 + 317 * i for i in range(16)]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
                  for lens in (lens_q, lens_k))
    q = torch.randn(sum(lens_q), 32, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(sum(lens_k), 8, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    out = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=True)
    check_each_causal_sequence(out, q, k, v, cu_q, cu_k)


def test_cpu_and_gpu_agree():
    """The interpreter and the compiler run the same kernel in one process: their answers agree closely
    (and the interpreted launch leaves Triton able to compile the GPU one, see _runtime._restore)."""
    q, k, v = make_qkv(1, 2, 1, 113, 203, 64, torch.float32)
    try:
        cpu = flash_attention(q, k, v, causal=True)
    except RuntimeError as e:
        if "cannot run with numpy" not in str(e):
            raise
        pytest.skip(f"this machine's interpreter cannot run: {e}")
    gpu = flash_attention(q.cuda(), k.cuda(), v.cuda(), causal=True)
    assert max_err(cpu, gpu.cpu()) < 2e-5


@pytest.mark.parametrize("path", [*VARIANTS, "split"])
def test_a_compiled_bfloat16_output_is_rounded_to_nearest_even(path):
    """The fact the interpreter's bfloat16 rounding is built to match (``_tiles.narrow``), checked on the GPU
    with the same exact case as on the CPU."""
    check_bfloat16_output_rounds_to_nearest(path, "cuda")


@pytest.mark.parametrize("case", [(4097, 16, 16, 8, 8, 16, True, NONE, torch.float16),
                                  (_tiles.CUDA_MAX_GRID_YZ + 2, 1, 1, 4, 5, 16, True, NONE, torch.bfloat16)],
                         ids=["B*H-past-65535", "B-past-65535"])
def test_more_sequences_and_heads_than_a_grid_axis_holds(case):
    """A (blocks, B * H) grid would not launch past 65,535 (sequence, head) pairs; the (blocks, H, B)
    grid does, and a batch of more than 65,535 sequences goes in chunks."""
    check_case(case)
    torch.cuda.empty_cache()


def test_rows_far_apart_use_64_bit_offsets_on_the_gpu():
    check_far_apart_rows("cuda")  # (4 GiB of storage, 17 rows used)
    torch.cuda.empty_cache()


def test_a_half_million_token_sequence_in_flash_attn_layout():
    """flash-attn's [B, T, H, D] puts H * D = 4096 elements between rows: past 2^19 tokens a 32-bit row
    offset wraps around. A sliding window keeps the work linear; the last 200 queries (the rows that
    wrap) are checked against the reference on the keys their window reaches."""
    T, H, D, left = (1 << 19) + 113, 32, 128, 256
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, T, H, D, device="cuda", dtype=torch.float16, generator=g) for _ in range(3))
    out = flash_attn_func(q, k, v, causal=True, window_size=(left, 0))  # (1, T, H, D)
    tail_q, tail_k = slice(T - 200, T), slice(T - 200 - left, T)
    qt, kt, vt = (x[:, s].transpose(1, 2) for x, s in ((q, tail_q), (k, tail_k), (v, tail_k)))  # (1, H, t, D)
    ref = reference(qt, kt, vt, causal=True, window=(left, 0))
    same = torch_same_dtype(qt, kt, vt, causal=True, window=(left, 0))
    assert_close_by_rule("out (last 200 queries)", out[:, tail_q].transpose(1, 2), ref, same, torch.float16)
    del q, k, v, out
    torch.cuda.empty_cache()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (tensors on one, the other current)")
def test_tensors_on_another_gpu_than_the_current_one():
    """Triton launches on the current device; the kernels switch to the tensors' device first."""
    torch.cuda.set_device(0)
    q, k, v = make_qkv(2, 4, 2, 113, 203, 64, torch.float16, device="cuda:1", requires_grad=True)
    out = flash_attention(q, k, v, causal=True)
    out.sum().backward()
    qr, kr, vr = (x.detach().clone().requires_grad_() for x in (q, k, v))
    qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))
    ref, same = reference(qr, kr, vr, causal=True), torch_same_dtype(qs, ks, vs, causal=True)
    ref.sum().backward()
    same.sum().backward()
    assert_close_by_rule("out", out, ref, same, torch.float16)
    for name, x, r, b in (("dq", q, qr, qs), ("dk", k, kr, ks), ("dv", v, vr, vs)):
        assert x.grad.device == torch.device("cuda:1"), name
        assert_close_by_rule(name, x.grad, r.grad, b.grad, torch.float16)
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("case", [*LSE_CASES, (2, 8, 2, 1024, 1024, 128, True, NONE, torch.float16, True)],
                         ids=lse_case_id)
def test_gradient_through_lse_on_the_gpu(case):
    check_lse_gradient(case, "cuda")


def test_torch_compile_with_inductor_on_the_gpu():
    """The whole model through inductor (which generates its own Triton kernels around ours), one graph."""
    check_compiled_model("inductor", "cuda", torch.float32, tol=1e-4)


def test_backward_is_bitwise_repeatable():
    """``deterministic=True`` is accepted and changes nothing because the backward never uses atomics (dK, dV
    summed over a GQA group inside one program): two runs give the same bits."""
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 64, torch.bfloat16, device="cuda", requires_grad=True)
    dout = torch.randn(2, 8, 1000, 64, device="cuda", dtype=torch.bfloat16)
    first, second = (torch.autograd.grad(flash_attention(q, k, v, causal=True), (q, k, v), dout) for _ in range(2))
    for name, a, b in zip(("dq", "dk", "dv"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical backward passes"


def test_frozen_keys_and_values_on_the_gpu():
    """Only the dQ kernel runs (its TMA path included); dq against autograd through the reference."""
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 128, torch.float16, device="cuda")
    dout = torch.randn(2, 8, 1000, 128, device="cuda", dtype=torch.float16)
    dq = torch.autograd.grad(flash_attention(q.requires_grad_(), k, v, causal=True), q, dout)[0]
    ql, qs = q.detach().float().requires_grad_(), q.detach().clone().requires_grad_()
    want = torch.autograd.grad(reference(ql, k, v, causal=True), ql, dout.float())[0]
    budget = torch.autograd.grad(torch_same_dtype(qs, k, v, causal=True), qs, dout)[0]
    assert_close_by_rule("dq", dq, want, budget, torch.float16)


def test_autocast_on_the_gpu_runs_the_float16_kernel():
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 64, torch.float32, device="cuda")
    with torch.autocast("cuda"):
        out = flash_attention(q, k, v, causal=True)
    assert out.dtype == torch.float16
    assert torch.equal(out, flash_attention(q.half(), k.half(), v.half(), causal=True))


@pytest.mark.parametrize("shape", EMPTY.values(), ids=EMPTY.keys())
def test_empty_inputs_on_the_gpu_launch_nothing(shape, launches):  # noqa: F811 (the imported fixture)
    """On Hopper, ``auto`` would pick the TMA variant, whose descriptors cannot describe an empty dimension:
    no kernel may be launched, and the results are attention's (zeros, ``lse = -inf``, zero gradients)."""
    check_empty(shape, True, torch.float16, "cuda", launches)


def _captured(warm_up, capture):
    """``(graph, output)``: ``warm_up()`` run on a side stream (compiling, checking cu_seqlens), then
    ``capture()`` recorded into a CUDA graph, as serving code does."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm_up()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = capture()
    return graph, out


def test_cuda_graph_capture_and_replay():
    """Serving records the forward in a CUDA graph, which forbids any wait on the GPU inside the call. A
    replay on new inputs (copied into the captured tensors) must give the eager kernels' bits. Packed
    batches: cu_seqlens checked before the capture are not read again; one first seen during the capture
    gets its shape checked only (its values would need a copy to the host)."""
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 64, torch.float16, device="cuda")

    def fixed():
        return flash_attention(q, k, v, causal=True)

    graph, out = _captured(fixed, fixed)
    for x, new in zip((q, k, v), make_qkv(2, 8, 2, 1000, 1000, 64, torch.float16, device="cuda", seed=1),
                      strict=True):
        x.copy_(new)
    graph.replay()
    assert torch.equal(out, fixed()), "the replayed graph differs from the eager kernel on the new inputs"

    lens_q, lens_k = [300, 1, 700], [500, 64, 700]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
                  for lens in (lens_q, lens_k))
    qp, kp, vp = (torch.randn(sum(lens), h, 128, device="cuda", dtype=torch.bfloat16)
                  for lens, h in ((lens_q, 8), (lens_k, 2), (lens_k, 2)))  # (total_T, H, D)
    unseen_cu_k = cu_k.clone()

    def packed(cu_k):
        return lambda: flash_attention_varlen(qp, kp, vp, cu_q, cu_k, 700, 700, causal=True)

    for cu in (cu_k, unseen_cu_k):
        graph, out = _captured(packed(cu_k), packed(cu))
        qp.normal_()
        graph.replay()
        assert torch.equal(out, packed(cu_k)()), "a replayed packed batch differs from the eager kernel"


@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_a_replayed_packed_graph_takes_new_lengths_and_a_padding_tail(variant, monkeypatch):
    """Serving's pattern: record once on full static buffers, then write each step's lengths into the
    recorded cu_seqlens and replay. Every replay must equal the eager call on the same lengths, bit for bit,
    including steps whose sequences stop short of the buffers: zeros and lse = -inf there (the recorded
    graph fills its buffers first), not an earlier step's rows."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    H, H_kv, D, total = 8, 2, 64, 1024
    q = torch.randn(total, H, D, device="cuda", dtype=torch.float16)  # (total, H, D)
    k, v = (torch.randn(total, H_kv, D, device="cuda", dtype=torch.float16) for _ in range(2))
    cu = torch.tensor([0, 300, 700, total], dtype=torch.int32, device="cuda")

    def step():
        return flash_attention_varlen(q, k, v, cu, cu, 512, 512, causal=True, return_lse=True)

    graph, (out, lse) = _captured(step, step)
    for lengths in ([300, 400, 324], [100, 5, 0], [512, 200, 1], [0, 0, 0]):
        cu.copy_(torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()]))
        graph.replay()
        want, want_lse = step()
        used = sum(lengths)
        assert torch.equal(out, want) and torch.equal(lse, want_lse), f"replay with lengths {lengths} ({variant})"
        assert not out[used:].abs().sum() and torch.isneginf(lse[:, used:]).all(), f"tail after {lengths}"


@pytest.mark.parametrize("case", [
    (4, 32, 8, 4096, 1, 1, [4095, 1, 2048, 0], True, NONE, 128, torch.bfloat16),  # decoding, one full cache
    (2, 16, 2, 8192, 4, 4, [100, 8000], True, (1024, 0), 64, torch.float16),  # a 4-token chunk, a window
], ids=kvcache_case_id)
@pytest.mark.parametrize("variant", ["auto", "pointer"])
def test_kvcache_on_the_gpu(case, variant, monkeypatch):
    """Generation against long caches whose unfilled tails are NaN: compiled, each sequence against
    attention on its filled cache alone (``auto`` on Hopper: through TMA but for the overhanging tile)."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_kvcache_case(case, "cuda")


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
def test_generation_with_rotary_on_the_gpu(interleaved):
    """The cache's rotary embeddings on CUDA tensors (tables, positions and cache writes on the GPU)."""
    check_generation_with_rotary(interleaved, 16, "cuda", tol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", [
    (1, 16, 4, 1, 16384, 128, False, NONE, torch.float16),  # a decoding step: 16 programs for the whole GPU
    (2, 8, 2, 3, 9000, 64, True, (2048, 0), torch.bfloat16),  # three speculative tokens, a window
], ids=case_id)
def test_a_short_batch_of_long_rows_splits_its_keys(case, variant, combines, monkeypatch):  # noqa: F811
    """Too few rows to fill the GPU: the rule splits the keys (in every variant: TMA loads any key tile;
    the partials go through pointers), and the forward and the backward after it are right by the rule."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case(case)
    assert combines and min(combines) > 1, f"the rule did not split ({combines})"


@pytest.mark.parametrize("D", [32, 64, 128, 256])
def test_float32_autotunes_over_its_own_tiles(D, monkeypatch):
    """Through the autotuner, float32 is timed on float32's own tiles only (flash_fwd / flash_bwd
    ``FLOAT32_TILES``: the 16-bit ones spill kilobytes in float32), prefill and decoding, and is right."""
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")
    check_case((1, 4, 2, 600, 600, D, True, NONE, torch.float32))
    check_kvcache_case((2, 4, 2, 700, 1, 1, [650, 7], True, NONE, D, torch.float32), "cuda")
    fwd, bwd = kernel_module("flash_fwd", torch.device("cuda")), kernel_module("flash_bwd", torch.device("cuda"))
    allowed = {"_attn_fwd": fwd.FLOAT32_TILES[D] + fwd.FLOAT32_DECODE_TILES[D],
               "_bwd_dkdv": bwd.FLOAT32_TILES["dkdv", D], "_bwd_dq": bwd.FLOAT32_TILES["dq", D]}
    seen = set()
    for name, keys in _variants.tuned_configs().items():
        if name.endswith(f"D={D} float32"):
            for config in keys.values():
                tile = tuple(int(re.search(rf"{f}: (\d+)", config)[1])
                             for f in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
                assert tile in allowed[name.split()[0]], (name, config)
                seen.add(name.split()[0])
    assert seen == set(allowed), f"float32 at D = {D} tuned: {seen}"


def test_an_autotuned_decoding_step_runs_16_row_tiles(monkeypatch):
    """Through the autotuner, a decoding step (T_q = 1) is timed on the 16-row tiles only, and is right."""
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")
    check_kvcache_case((2, 8, 2, 2048, 1, 1, [2000, 7], True, NONE, 128, torch.float16), "cuda")
    picked = _variants.tuned_configs().get("_attn_fwd pointer D=128", {})
    decoding = [config for key, config in picked.items() if key.split()[0] == "1"]  # TUNE_T_Q = 1
    assert decoding and all("BLOCK_M: 16," in config for config in decoding), picked


@pytest.mark.parametrize("paged", [False, True], ids=["cache-rows", "paged"])
def test_a_decoding_step_captured_in_a_cuda_graph(paged):
    """Serving captures one decoding step (write the new key and value into the cache, attend, the keys
    split by the rule) in a CUDA graph and replays it at every step, advancing the cache lengths in place
    in between: the lengths (and a paged cache's block table) are not read on the host during the capture,
    and each replay gives the eager step's bits and leaves the caches as the eager steps do."""
    from attn_course.kernels import flash_attention_kvcache

    B, H, H_kv, D, T_cache, lengths = 2, 8, 2, 128, 4096, [3000, 17]
    g = torch.Generator(device="cuda").manual_seed(0)
    steps = [tuple(torch.randn(B, h, 1, D, device="cuda", dtype=torch.float16, generator=g) for h in (H, H_kv, H_kv))
             for _ in range(4)]

    def fresh():  # (the same caches at each call; pages of 16 rows, room for the 4 steps)
        if paged:
            k_cache, v_cache, table = make_paged_cache(B, H_kv, D, 16, lengths, 4, torch.float16, "cuda")
        else:
            (k_cache, v_cache), table = make_cache(B, H_kv, T_cache, D, lengths, torch.float16, "cuda"), None
        return k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32, device="cuda"), dict(block_table=table)

    k_cache, v_cache, seqlens, pages = fresh()
    eager = []
    for q, k, v in steps:
        eager.append(flash_attention_kvcache(q, k_cache, v_cache, seqlens, k, v, causal=True, **pages))
        seqlens += 1

    k_graph, v_graph, seqlens_graph, pages = fresh()
    q_in, k_in, v_in = (x.clone() for x in steps[0])

    def step():  # (the warm-up writes step 0's key and value; each replay of step 0 writes the same again)
        return flash_attention_kvcache(q_in, k_graph, v_graph, seqlens_graph, k_in, v_in, causal=True, **pages)

    graph, out = _captured(step, step)
    for i, new in enumerate(steps):
        if i:
            seqlens_graph += 1
        for x, value in zip((q_in, k_in, v_in), new, strict=True):
            x.copy_(value)
        graph.replay()
        assert torch.equal(out, eager[i]), f"replayed step {i} differs from the eager step"
    for got, want in ((k_graph, k_cache), (v_graph, v_cache)):
        torch.testing.assert_close(got, want, atol=0, rtol=0, equal_nan=True)


PAGED_GPU = [  # (page_size, lengths, dtype, D, num_splits): pages of vLLM's 16 rows to flash-attn 2's 256
    (16, (0, 1000, 16383), torch.bfloat16, 128, 0), (256, (5000, 77, 4096), torch.float16, 64, 0),
    (48, (3, 2047), torch.float32, 128, 3), (16, (700, 9000), torch.float16, 256, 0),
]


@pytest.mark.parametrize("page_size,lengths,dtype,D,num_splits", PAGED_GPU)
def test_a_paged_cache_compiled(page_size, lengths, dtype, D, num_splits):
    """A decoding step with GQA on a paged cache (pages shuffled through the pool, up to 16k keys), then a
    three-token chunk, compiled."""
    check_paged(page_size, 1, 1, lengths=lengths, dtype=dtype, D=D, num_splits=num_splits, device="cuda")
    check_paged(page_size, 3, 3, lengths=lengths, dtype=dtype, D=D, device="cuda")


# Seeded random cases (tests/test_kernels_random.py's generators, other seeds), compiled: every feature at
# once, lengths either side of the compiled tiles' edges (64 and 128 rows) and up to 1000. Last in the file, so
# that a time-boxed run reaches the rest first.
@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case", [fixed_case(s, GPU_LENGTHS) for s in GPU_SEEDS["fixed"]], ids=case_id)
def test_random_fixed_length_cases_compiled(case, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case(case)


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case", [width_case(s) for s in GPU_SEEDS["widths"]], ids=case_id)
def test_random_cases_at_other_head_dims_compiled(case, variant, monkeypatch):
    """Head dims from 1 to 256 other than 16, 32 and 64 (D = 200, 72 and 160 here), compiled."""
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_width_case(case, variant, "cuda")
    assert not kernel_module("flash_fwd", torch.device("cuda")).INTERPRET


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case,tails", packed_draws(GPU_SEEDS["packed"], GPU_LENGTHS), ids=packed_draw_id)
def test_random_packed_cases_compiled(case, tails, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_varlen_case(*case, device="cuda", tails=tails)


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case,splits,recency", cache_draws(GPU_SEEDS["cache"]), ids=cache_draw_id)
def test_random_cache_cases_compiled(case, splits, recency, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_kvcache_case(case, "cuda", num_splits=splits, recency=recency)


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case,tails,softcap,alibi", [
    pytest.param(*d, id=scored_draw_id(d)) for d in packed_scored_draws(GPU_SEEDS["packed_scored"], GPU_LENGTHS)])
def test_random_packed_cases_with_a_softcap_and_alibi_compiled(case, tails, softcap, alibi, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_packed_scored(case, tails, softcap, alibi, "cuda")


@pytest.mark.parametrize("variant", VARIANTS[:2])
@pytest.mark.parametrize("case,splits,softcap,alibi", [
    pytest.param(*d, id=scored_draw_id(d)) for d in cache_scored_draws(GPU_SEEDS["cache_scored"])])
def test_random_cache_cases_with_a_softcap_and_alibi_compiled(case, splits, softcap, alibi, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_cache_scored(case, splits, softcap, alibi, "cuda")


PADDED = [(2, 8, 2, 1000, 1000, 80, True, NONE, torch.float16),  # (Phi-2's head dim)
          (1, 4, 4, 513, 2048, 96, False, (128, 0), torch.bfloat16)]


@pytest.mark.parametrize("case,variant", [(PADDED[0], v) for v in VARIANTS] + [(PADDED[1], "auto")],
                         ids=lambda x: x if isinstance(x, str) else head_dims_case_id(x))
def test_padded_head_dims_compiled(case, variant):
    """Head dims 80 and 96 in tiles of 128, compiled, inputs whose padding columns are NaN (never read):
    every variant on one case, ``auto`` on the other (each compile costs the GPU session's time budget)."""
    check_padded_case(case, "cuda", variant)


@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_a_padded_head_dim_packed_and_cached_on_the_gpu(variant):
    """D = 40 in a packed batch and D = 96 in a long split cache with packed GQA heads, compiled."""
    check_padded_varlen("cuda", variant)
    check_padded_cache(3, "cuda", variant, D=96, dtype=torch.bfloat16, T_cache=4096)


DROPOUT_CASES = [(2, 8, 2, 1000, 1000, 128, True, NONE, torch.float16, 0.1),
                 (1, 4, 4, 513, 777, 64, False, (64, 0), torch.bfloat16, 0.3),
                 (2, 32, 8, 1, 3000, 128, True, NONE, torch.bfloat16, 0.2)]  # (a decoding step: packed GQA rows)


@pytest.mark.parametrize("case,variant", [(DROPOUT_CASES[0], v) for v in VARIANTS]
                         + [(c, "auto") for c in DROPOUT_CASES[1:]],
                         ids=lambda x: x if isinstance(x, str) else dropout_case_id(x))
def test_dropout_compiled(case, variant):
    """Dropout compiled against attention with the call's own mask: every variant (warp-specialised too) on
    one case, ``auto`` on the others."""
    check_dropout_case(case, "cuda", variant)


def test_dropout_on_the_gpu_packed_and_its_mask_as_on_the_cpu():
    """A packed batch with dropout, compiled; and the mask of one seed is the same bit for bit whether the
    compiled kernels or the interpreter draw it (one Philox, two implementations)."""
    check_dropout_varlen("cuda")
    seed = next_seed("cuda")
    assert torch.equal(mask_of(seed, 2, 3, 70, 90, 0.3).cpu(), mask_of(seed.cpu(), 2, 3, 70, 90, 0.3))


def test_a_cuda_graph_replays_dropout_with_a_fresh_mask():
    """The seed is drawn from the CUDA generator inside the captured call, so each replay draws a new one (a
    seed taken in Python would replay one mask for ever); lse, taken before dropout, stays put."""
    q, k, v = make_qkv(1, 4, 2, 256, 256, 64, torch.float16, device="cuda")

    def call():
        return flash_attention(q, k, v, causal=True, dropout_p=0.5, return_lse=True)

    graph, (out, lse) = _captured(call, call)
    graph.replay()
    first, first_lse = out.clone(), lse.clone()
    graph.replay()
    assert not torch.equal(out, first) and torch.equal(lse, first_lse)
    assert torch.isfinite(out).all()


def test_attention_probabilities_with_dropout_on_the_gpu():
    """flash-attn's ``return_attn_probs`` with dropout, after a compiled call; refused, named, under capture."""
    check_s_dmask("softcap-alibi", "cuda")
    q, k, v = (x.transpose(1, 2) for x in make_qkv(1, 2, 2, 64, 64, 64, torch.float16, device="cuda"))
    with pytest.raises(ValueError, match="return_attn_probs with dropout_p > 0 .* CUDA graph"):
        _captured(lambda: flash_attn_func(q, k, v, 0.1), lambda: flash_attn_func(q, k, v, 0.1, return_attn_probs=True))


def test_a_packed_qkv_gradient_written_in_place_on_the_gpu(written):  # noqa: F811 (the imported fixture)
    """``dqkv`` written through views of one buffer (strides of 3 heads' worth), compiled: every variant the
    chain picks for such strides."""
    check_qkv_gradient_in_place(written, "cuda", torch.float16, T=1000, D=64)


def test_per_sample_gradients_on_the_gpu():
    """``torch.func.vmap(grad(...))`` on CUDA tensors: the batching rules' merged launches, compiled."""
    check_per_sample_gradients("cuda")


SOFTCAP_CASES = [(2, 8, 2, 1000, 1000, 128, True, NONE, 5.0, torch.float16),
                 (1, 4, 4, 513, 777, 64, False, (64, 0), 30.0, torch.bfloat16)]


@pytest.mark.parametrize("case,variant", [(SOFTCAP_CASES[0], v) for v in VARIANTS] + [(SOFTCAP_CASES[1], "auto")],
                         ids=lambda x: x if isinstance(x, str) else softcap_case_id(x))
def test_softcap_compiled(case, variant):
    """Logit soft-capping compiled, forward and backward, against the reference with the same cap: every
    variant on one case, ``auto`` on the other."""
    check_softcap_case(case, "cuda", variant)


def test_softcap_on_the_gpu_packed_cached_and_with_dropout():
    check_softcap_varlen("cuda")
    check_softcap_cache(3, "cuda")
    check_softcap_with_dropout("cuda")


ALIBI_CASES = [(2, 8, 2, 1000, 1000, 128, True, NONE, True, torch.float16),
               (1, 4, 4, 513, 777, 64, False, (64, 0), False, torch.bfloat16)]


@pytest.mark.parametrize("case,variant", [(ALIBI_CASES[0], v) for v in VARIANTS] + [(ALIBI_CASES[1], "auto")],
                         ids=lambda x: x if isinstance(x, str) else alibi_case_id(x))
def test_alibi_compiled(case, variant):
    """ALiBi compiled, forward and backward, against attention with the bias as a mask: every variant on one
    case (slopes per sequence and head), ``auto`` on the other."""
    check_alibi_case(case, "cuda", variant)


def test_alibi_on_the_gpu_packed_cached_and_with_dropout():
    check_alibi_varlen("cuda")
    check_alibi_cache(3, "cuda", T_cache=4096)
    check_alibi_with_dropout("cuda")


def tuned_with_all_three(tag: str) -> dict[str, set[tuple]]:
    """Each autotuned kernel of tag ``tag`` ("D=128", "D=64 float32") and the tiles it picked for launches with
    dropout, a softcap and ALiBi all on (``DROPOUT SOFTCAP ALIBI`` in the tuning key)."""
    tuned = {}
    for name, keys in _variants.tuned_configs().items():
        for key, config in keys.items():
            if name.endswith(tag) and key.split()[7:10] == ["True"] * 3:
                tile = tuple(int(re.search(rf"{f}: (\d+)", config)[1])
                             for f in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"))
                tuned.setdefault(name.split()[0], set()).add(tile)
    return tuned


def test_dropout_softcap_and_alibi_at_once_through_the_autotuner(monkeypatch):
    """All three features at D = 128 in float16, through the autotuner: right, and each of its kernels tuned
    only among the tiles its pruning keeps (for dK/dV, where every tile spills under triton 3.6, the one that
    spills least: ``_variants.fewest_spills``)."""

    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")
    check_dropout_softcap_and_alibi("cuda", D=128, dtype=torch.float16)
    fwd, bwd = kernel_module("flash_fwd", torch.device("cuda")), kernel_module("flash_bwd", torch.device("cuda"))
    on, half = dict(DROPOUT=True, SOFTCAP=True, ALIBI=True), {"Q": torch.empty(0, dtype=torch.float16)}
    kept = {"_bwd_dkdv": bwd.prune("dkdv", False, bwd.configs("dkdv", _variants.VARIANTS["tma"], 128), half,
                                   HEAD_DIM=128, IS_VARLEN=False, **on),
            "_bwd_dq": bwd.prune("dq", False, bwd.configs("dq", _variants.VARIANTS["tma"], 128), half,
                                 HEAD_DIM=128, IS_VARLEN=False, **on),
            "_attn_fwd": fwd.prune_for_lengths(fwd.configs(_variants.VARIANTS["tma+ws"], 128), {"TUNE_T_Q": 32},
                                               HEAD_DIM=128, **on)}
    tuned = tuned_with_all_three("D=128")
    assert set(tuned) == set(kept), f"tuned with all three features: {set(tuned)}"
    for kernel, tiles in tuned.items():
        assert tiles <= {_variants.tile_of(c) for c in kept[kernel]}, (kernel, tiles)


def test_float32_with_dropout_softcap_and_alibi_through_the_autotuner_skips_its_spilling_tiles(monkeypatch):
    """The same in float32 at D = 64, through pointers: right, and each kernel tuned only among float32's tiles
    that its pruning keeps with all three features on (``FLOAT32_SPILLS``: in float32 a prefill skips three of
    its six, dQ one of two; dK/dV's one tile spills 24 bytes and is kept, there being no other)."""
    monkeypatch.setenv(_variants.AUTOTUNE_ENV, "1")
    check_dropout_softcap_and_alibi("cuda", D=64, dtype=torch.float32)
    fwd, bwd = kernel_module("flash_fwd", torch.device("cuda")), kernel_module("flash_bwd", torch.device("cuda"))
    pointer, f32 = _variants.VARIANTS["pointer"], {"Q": torch.empty(0, dtype=torch.float32)}
    on = dict(HEAD_DIM=64, D_REAL=64, IEEE=True, IS_VARLEN=False, DROPOUT=True, SOFTCAP=True, ALIBI=True)
    kept = {"_bwd_dkdv": bwd.prune("dkdv", True, bwd.configs("dkdv", pointer, 64, True), f32, **on),
            "_bwd_dq": bwd.prune("dq", True, bwd.configs("dq", pointer, 64, True), f32, **on),
            "_attn_fwd": fwd.prune_for_lengths(fwd.configs(pointer, 64, True), {"TUNE_T_Q": 32}, **on)}
    assert len(kept["_attn_fwd"]) == 3 and len(kept["_bwd_dq"]) == 1
    tuned = tuned_with_all_three("D=64 float32")
    assert set(tuned) == set(kept), f"tuned with all three features in float32: {set(tuned)}"
    for kernel, tiles in tuned.items():
        assert tiles <= {_variants.tile_of(c) for c in kept[kernel]}, (kernel, tiles)


@pytest.mark.parametrize("variant", VARIANTS[:2])
def test_sequences_in_mapped_cache_rows_compiled(variant):
    """``cache_batch_idx`` and ``cache_leftpad``, compiled: a split decoding step and a three-token chunk."""
    check_cache_map(3, "cuda", variant, dtype=torch.bfloat16)
    check_cache_map(0, "cuda", variant, dtype=torch.float16, T_q=3, T_new=3)
