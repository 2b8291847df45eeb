"""The TMA (tensor-descriptor) variants of the kernels, and how a variant is chosen.

On the CPU, Triton's interpreter emulates tensor descriptors faithfully (bounds, zero fill, the 16-byte
rules), so the descriptor code paths of the forward and both backward kernels are checked here against
the reference, on ragged shapes where the zero fill matters. Whether Hopper's compiler accepts them is
tests/test_kernels_gpu.py's job.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from test_kernels import CASES, case_id
from test_kernels_common import (
    assert_close_by_rule,
    check_case,
    grads,
    make_qkv,
    max_err,
    reference,
    torch_same_dtype,
)

from attn_course.kernels import _variants, flash_attention, flash_attention_varlen
from attn_course.kernels._checks import kernel_window
from attn_course.kernels._runtime import kernel_module
from attn_course.kernels._tiles import head_dim_tile

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
# ragged lengths, T_q != T_k both ways, GQA and MQA, windows, every dtype, D = 16 ... 256; the warp-specialised
# variant differs only in a loop hint the interpreter ignores, so it gets two of them
TMA_CASES = [(c, "tma") for c in (CASES[i] for i in (1, 2, 3, 4, 7, 8, 10, 11))]
TMA_CASES += [(CASES[i], "tma+ws") for i in (3, 8)]


@pytest.fixture(autouse=True)
def _forget_failures():
    """Each test starts with no variant marked broken (the marks are process-wide by design)."""
    _variants._broken.clear()
    yield
    _variants._broken.clear()


@pytest.mark.parametrize("case,variant", TMA_CASES, ids=lambda x: x if isinstance(x, str) else case_id(x))
def test_tma_variants_match_the_reference(case, variant, monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, variant)
    check_case(case)
    D, dtype = case[5], case[-1]
    key = ("cpu", dtype, D, "forward")
    expected = variant.replace("+ws", "") if dtype == F32 else variant  # float32: no wgmma, no WS
    assert _variants.used(key) == expected, f"the forward ran {_variants.used(key)!r}, not {expected}"
    assert _variants.used(("cpu", dtype, D, "backward")) == variant.replace("+ws", "")  # no WS backward


@pytest.mark.parametrize("blocks", [(16, 64), (64, 16)], ids=lambda b: f"BM{b[0]}BN{b[1]}")
def test_tma_tiles_do_not_change_the_answer(blocks, monkeypatch):
    """Descriptors carry their tile shape: a tile that overhangs the end of the sequence must come back
    zero-filled (loads) and be clipped (stores) whatever its size."""
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    q, k, v = make_qkv(1, 2, 1, 77, 150, 16, F32)
    dout = torch.randn(1, 2, 77, 16, generator=torch.Generator().manual_seed(2))
    fwd, bwd = kernel_module("flash_fwd", q.device), kernel_module("flash_bwd", q.device)
    tiles = {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]}
    win = kernel_window((30, -1), True)
    out, lse = fwd.attn_fwd_launch(q, k, v, scale=0.25, window=win, blocks=tiles)
    ref = lambda q, k, v: reference(q, k, v, True, (30, -1), scale=0.25)  # noqa: E731
    assert max_err(out, ref(q, k, v)) < 2e-5
    dq, dk, dv = bwd.attn_bwd_launch(dout, q, k, v, out, lse, scale=0.25, window=win, blocks=tiles)
    for name, g, w in zip(("dq", "dk", "dv"), (dq, dk, dv), grads(ref, q, k, v, dout), strict=True):
        assert max_err(g, w) < 2e-5, f"{name} with tiles {blocks}: error {max_err(g, w):.2e}"


def test_tma_reads_strided_views_through_their_strides(monkeypatch):
    """flash-attn's [B, T, H, D] layout seen as [B, H, T, D] is a transposed view (time stride H * D):
    descriptors take it as is, no copy."""
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    x = torch.randn(3, 1, 45, 4, 32, generator=torch.Generator().manual_seed(3)).to(F16)  # (qkv, B, T, H, D)
    q, k, v = (t.transpose(1, 2) for t in x)  # (B, H, T, D) views
    assert _variants.tma_unready(q, k, v) is None
    assert_close_by_rule("out", flash_attention(q, k, v, causal=True), reference(q, k, v, causal=True),
                         torch_same_dtype(q, k, v, causal=True), F16)


def test_auto_runs_the_pointer_kernel_on_the_cpu():
    q, k, v = make_qkv(1, 2, 2, 17, 17, 16, F32)
    flash_attention(q, k, v)
    assert _variants.used(("cpu", F32, 16, "forward")) == "pointer"
    assert [v.name for v in _variants.chain(q.device, (q, k, v))] == ["pointer"]


def test_auto_prefers_tma_on_hopper_and_datacenter_blackwell_only(monkeypatch):
    """The choice itself, with the GPU's compute capability faked (the tensors' layout is what matters): TMA on
    9.x and 10.x, pointers before Hopper and on consumer Blackwell (12.x), whose mma.sync products spill registers
    with TMA's tiles (the sm_120 comparison of benchmarks/results/kernel_shared_memory*.json)."""
    q, k, v = make_qkv(1, 2, 2, 17, 17, 64, F16)
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    names = [v.name for v in _variants.chain(cuda, (q, k, v))]
    assert names == list(_variants.AUTO_CHAIN) and names[-1] == "pointer" and names[0].startswith("tma")
    assert [v.name for v in _variants.chain(cuda, (q.float(), k.float(), v.float()))] == \
        ["tma", "pointer"], "float32 has no tensor-core products for warp specialisation to overlap"
    assert [v.name for v in _variants.chain(cuda, (q, k, v), warp_spec=False)] == ["tma", "pointer"]
    assert [v.name for v in _variants.chain(cuda, (q, k, v), warp_spec=False, tma_pays=False)] == \
        ["pointer"], "where TMA's tiles spill (the backward at D = 256), auto runs the pointer kernel"
    packed = tuple(x[0].transpose(0, 1) for x in (q, k, v))  # (T, H, D) views, as a varlen batch passes them
    assert [v.name for v in _variants.chain(cuda, packed, warp_spec=False)] == ["tma", "pointer"], \
        "packed batches run TMA too (not warp-specialised: their overhanging tile has a loop of its own)"
    assert [v.name for v in _variants.chain(cuda, (q[..., ::2], k, v))] == ["pointer"]
    for capability, names in [((10, 0), list(_variants.AUTO_CHAIN)), ((10, 3), list(_variants.AUTO_CHAIN)),
                              ((8, 0), ["pointer"]), ((8, 9), ["pointer"]), ((12, 0), ["pointer"]),
                              ((12, 1), ["pointer"])]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert [v.name for v in _variants.chain(cuda, (q, k, v))] == names, capability
    with _variants.settings(kernel="tma"):
        assert [v.name for v in _variants.chain(cuda, (q, k, v))] == ["tma"], "asked for by name, it runs anywhere"


def test_tma_unready_names_the_rule_that_fails():
    x = torch.randn(2, 3, 40, 64, dtype=F16)
    assert _variants.tma_unready(x) is None
    assert _variants.tma_unready(x[:, :, :1]) is None, "a length-1 sequence (decoding) is fine"
    assert "head dim is not contiguous" in _variants.tma_unready(x.transpose(-1, -2))
    odd_rows = torch.randn(2, 3, 40, 72, dtype=F16)[..., :64]  # rows of 144 bytes: fine; 70 * 2 = 140 is not
    assert _variants.tma_unready(odd_rows) is None
    assert "multiple of 16 bytes" in _variants.tma_unready(torch.randn(2, 3, 40, 70, dtype=F16)[..., :64])
    assert "multiple of 16 bytes" in _variants.tma_unready(torch.randn(2, 1, 1, 64, dtype=F16).expand(2, 3, 40, 64))
    shifted = torch.randn(1 + 2 * 3 * 40 * 64, dtype=F16)[1:].view(2, 3, 40, 64)
    assert "16-byte aligned" in _variants.tma_unready(shifted)


def test_descriptor_strides_of_size_one_dims_are_made_legal():
    """A dim of size 1 may carry any stride in PyTorch; TMA needs 16-byte strides, so it gets the packed one."""
    x = torch.randn(1, 1, 5, 16, dtype=F16).as_strided((1, 1, 5, 16), (3, 7, 16, 1))
    assert _variants.tma_unready(x) is None
    desc = _variants.descriptor(x, [1, 1, 8, 16])
    assert list(desc.strides) == [80, 80, 16, 1] and list(desc.shape) == [1, 1, 5, 16]


def test_forcing_tma_on_tensors_that_cannot_use_it_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    q, k, v = make_qkv(1, 2, 2, 17, 17, 32, F16)
    with pytest.raises(ValueError, match="ATTN_COURSE_KERNEL=tma cannot run these tensors: the head dim is not"):
        flash_attention(q, k, v.transpose(-1, -2).contiguous().transpose(-1, -2))
    cu = torch.tensor([0, 5, 17], dtype=torch.int32)
    packed = torch.randn(17, 2, 40, dtype=F16)[..., :32]  # rows of 80 bytes: fine; heads 80 bytes apart: fine
    flash_attention_varlen(packed, packed, packed, cu, cu, 12, 12)
    odd = torch.randn(17, 2, 36, dtype=F16)[..., :32]  # heads 72 bytes apart
    with pytest.raises(ValueError, match="ATTN_COURSE_KERNEL=tma cannot run these tensors: stride 36 of a dim"):
        flash_attention_varlen(odd, packed, packed, cu, cu, 12, 12)


@pytest.mark.parametrize("env,value,message", [
    (_variants.KERNEL_ENV, "fast", "is not a kernel variant; use one of auto, pointer, tma"),
    (_variants.AUTOTUNE_ENV, "yes", "must be 0 or 1"),
])
def test_bad_settings_are_named(env, value, message, monkeypatch):
    monkeypatch.setenv(env, value)
    if env == _variants.AUTOTUNE_ENV:
        with pytest.raises(ValueError, match=message):
            _variants.autotune_enabled()
        return
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16, F32)
    with pytest.raises(ValueError, match=message):
        flash_attention(q, k, v)


def _failing_descriptors(monkeypatch):
    """Make every TMA launch fail the way a GPU compiler would, before anything is written."""
    def refuse(*args, **kwargs):
        raise RuntimeError("PassManager::run failed\n(the rest of a long MLIR dump)")
    monkeypatch.setattr(_variants, "descriptor", refuse)


def test_auto_falls_back_to_the_next_variant_once_and_says_why(monkeypatch):
    _failing_descriptors(monkeypatch)
    monkeypatch.setattr(_variants, "chain", lambda device, tensors, **_: [_variants.VARIANTS["tma"],
                                                                              _variants.VARIANTS["pointer"]])
    q, k, v = make_qkv(1, 2, 1, 40, 33, 16, F32)
    with pytest.warns(RuntimeWarning, match=r"'tma' attention kernel failed .* PassManager::run failed\); "
                                            r"falling back to 'pointer'"):
        out = flash_attention(q, k, v, causal=True)
    assert max_err(out, reference(q, k, v, causal=True)) < 2e-5, "the fallback must still give the right answer"
    key = ("cpu", F32, 16, "forward")
    assert _variants.used(key) == "pointer" and ("tma", *key) in _variants.broken()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # remembered: no second attempt, no second warning
        flash_attention(q, k, v, causal=True)


def test_a_requested_variant_never_falls_back(monkeypatch):
    _failing_descriptors(monkeypatch)
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma")
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16, F32)
    with pytest.raises(RuntimeError, match="PassManager::run failed"):
        flash_attention(q, k, v)
    assert not _variants.broken()


def test_the_last_variant_s_error_is_raised(monkeypatch):
    """A failure that is not the variant's fault (here: every variant fails) reaches the caller."""
    _failing_descriptors(monkeypatch)
    monkeypatch.setattr(_variants, "chain", lambda device, tensors, **_: [_variants.VARIANTS["tma"],
                                                                              _variants.VARIANTS["tma+ws"]])
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16, F32)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="PassManager::run failed"):
        flash_attention(q, k, v)


def test_forced_tma_ws_means_tma_where_there_is_nothing_to_specialise(monkeypatch):
    monkeypatch.setenv(_variants.KERNEL_ENV, "tma+ws")
    q16 = make_qkv(1, 2, 2, 17, 17, 64, F16)
    q32 = tuple(x.float() for x in q16)
    cpu = torch.device("cpu")
    assert [v.name for v in _variants.chain(cpu, q16)] == ["tma+ws"]
    assert [v.name for v in _variants.chain(cpu, q32)] == ["tma"], "float32: no wgmma to overlap"
    assert [v.name for v in _variants.chain(cpu, q16, warp_spec=False)] == ["tma"], "backward"
    assert [v.name for v in _variants.chain(cpu, q16, warp_spec=False, tma_pays=False)] == ["tma"], \
        "a variant asked for by name runs even where auto would not pick it"


@pytest.mark.parametrize("D,dtype,forward,backward", [(128, F16, True, True), (256, F16, True, False),
                                                     (160, BF16, True, False), (64, F32, False, False),
                                                     (128, F32, False, False), (256, F32, False, False)])
def test_each_kernel_tells_auto_whether_tma_pays(D, dtype, forward, backward, monkeypatch):
    """At D = 256 the backward's TMA dK/dV tiles spill registers on sm_90 (the survey), so the backward
    asks the chain for the pointer kernel there (D = 160 is padded to 256-wide tiles); the forward's 16-bit
    TMA tiles fit at every head dim. float32's TMA tiles all spill, in both directions, so float32 asks for
    pointers everywhere."""
    seen = []
    real = _variants.chain

    def spy(device, tensors, **kwargs):
        seen.append((kwargs.get("warp_spec", True), kwargs.get("tma_pays", True)))
        return real(device, tensors, **kwargs)

    monkeypatch.setattr(_variants, "chain", spy)
    q, k, v = make_qkv(1, 1, 1, 5, 5, D, dtype, requires_grad=True)
    flash_attention(q, k, v).sum().backward()
    assert seen == [(True, forward), (False, backward)], seen


def _tuning_keys(T_q: int, T_k: int):
    """The autotuner's key of each tuned launch (forward, dK/dV, dQ) for ``[1, 2, T_q, 64]`` queries."""
    from attn_course.kernels import _compile

    cuda = torch.device("cuda")
    fwd, bwd = kernel_module("flash_fwd", cuda), kernel_module("flash_bwd", cuda)
    q, k, v = make_qkv(1, 2, 1, T_q, T_k, 64, F16)
    lse = torch.zeros(1, 2, T_q)
    with _variants.settings(kernel="pointer", autotune=False):
        calls = _compile.recorded_launches(fwd, ["_attn_fwd"], lambda: fwd.attn_fwd_launch(
            q, k, v, scale=0.125, window=kernel_window((-1, -1), True)))
        calls += _compile.recorded_launches(
            bwd, ["_bwd_preprocess", "_bwd_dkdv", "_bwd_dq"],
            lambda: bwd.attn_bwd_launch(q, q, k, v, q, lse, scale=0.125, window=kernel_window((-1, -1), True)))
    keys = []
    # (the preprocess kernel is not tuned; Triton's autotuner keys on TUNE_KEY's names, silently skipping
    # any that are not arguments of the kernel)
    for fn, args, kwargs in (c for c in calls if c[0].__name__ != "_bwd_preprocess"):
        missing = [name for name in _variants.TUNE_KEY if name not in fn.arg_names]
        assert not missing, f"{fn.__name__}: the autotuner's key names {missing}, which are not kernel arguments"
        bound = dict(zip(fn.arg_names, args, strict=False)) | kwargs  # (the launch leaves constexprs out of args)
        keys.append(tuple(bound[name] for name in _variants.TUNE_KEY))
    return keys


def test_the_autotuner_keys_on_lengths_rounded_to_a_power_of_two():
    """A new length in the same power-of-two bucket reuses the tuned tile shape (a key on exact lengths
    would retune, timing every config, at nearly every step of training on varying lengths); the next
    bucket tunes again."""
    assert _tuning_keys(1000, 777) == _tuning_keys(1024, 1000) != _tuning_keys(1025, 1000)
    assert _tuning_keys(1000, 777) != _tuning_keys(1000, 1025)


def test_an_autotuner_builds_its_configs_once_not_on_every_launch(monkeypatch):
    """``_variants.autotuned`` is called on every autotuned launch: it builds the configs (tens of microseconds of
    host work per launch) only when it builds the autotuner, and returns that one autotuner after."""
    monkeypatch.setattr(_variants, "_autotuned", {})
    fwd, tma, built = kernel_module("flash_fwd", torch.device("cuda")), _variants.VARIANTS["tma"], []

    def configs():
        built.append(1)
        return fwd.configs(tma, 64)

    first = _variants.autotuned(fwd._attn_fwd, tma, configs, tag=64)
    assert _variants.autotuned(fwd._attn_fwd, tma, configs, tag=64) is first and built == [1]
    assert len(first.configs) == len(fwd.configs(tma, 64))


def test_the_tile_shapes_the_autotuner_picked_are_reported(monkeypatch):
    """The benchmark records what won, per kernel, variant, head dim and tuning key (the tiles are the first
    thing to look at when a shape is slow). The interpreter never autotunes, so a pick is planted where
    Triton's autotuner keeps its picks (``Autotuner.cache``, in triton 3.6 and 3.9 alike)."""
    monkeypatch.setattr(_variants, "_autotuned", {})
    fwd = kernel_module("flash_fwd", torch.device("cuda"))
    tma = _variants.VARIANTS["tma"]
    configs = fwd.configs(tma, 64)
    tuner = _variants.autotuned(fwd._attn_fwd, tma, lambda: configs, tag=64)
    _variants.autotuned(fwd._attn_fwd, _variants.VARIANTS["pointer"],
                        lambda: fwd.configs(_variants.VARIANTS["pointer"], 64), tag=64)  # not run yet: left out
    assert _variants.tuned_configs() == {}
    tuner.cache[(1024, 4096, 64, "torch.float16")] = configs[-1]
    picked = _variants.tuned_configs()
    assert picked == {"_attn_fwd tma D=64": {"1024 4096 64 torch.float16": str(configs[-1])}}
    assert f"BLOCK_M: {configs[-1].kwargs['BLOCK_M']}" in str(configs[-1])


class _Offered(Exception):
    """Raised by the autotuner spy below once it has seen what a launch offers."""


@pytest.mark.parametrize("D", [16, 64, 80, 256])
@pytest.mark.parametrize("dtype", [F16, F32])
def test_a_float32_launch_offers_the_autotuner_float32_s_own_tiles(dtype, D, monkeypatch):
    """A launch through the autotuner (planted here: the interpreter never tunes) offers float32 inputs
    float32's own tiles (``flash_fwd.FLOAT32_TILES`` and ``FLOAT32_DECODE_TILES``, ``flash_bwd.FLOAT32_TILES``,
    by the tiles' width) under an autotuner of their own (its tag names float32), and 16-bit inputs the 16-bit
    lists; float32's 16-bit counterparts spill kilobytes on sm_90 (tests/test_kernels_compile.py)."""
    fwd, bwd = kernel_module("flash_fwd", torch.device("cpu")), kernel_module("flash_bwd", torch.device("cpu"))
    offered = {}

    def spy(kernel, variant, configs, tag=None, **_):
        offered[kernel.__name__] = ([_variants.tile_of(c) for c in configs()], tag)
        raise _Offered

    q, k, v = make_qkv(1, 2, 1, 20, 20, D, dtype)
    out, lse = flash_attention(q, k, v, return_lse=True)
    monkeypatch.setattr(_variants, "launch_plans", lambda interpreted, *, interpreter_meta, default, offered:
                        [(interpreter_meta, {}, True)])
    monkeypatch.setattr(_variants, "autotuned", spy)
    window = kernel_window((-1, -1), False)
    with pytest.raises(_Offered):
        fwd.attn_fwd_launch(q, k, v, scale=D ** -0.5, window=window)
    for need_dq in (False, True):  # (dK/dV first, then, with dK/dV already seen, dQ: each raises when offered)
        with pytest.raises(_Offered):
            bwd.attn_bwd_launch(out, q, k, v, out, lse, scale=D ** -0.5, window=window, need_dkdv=not need_dq,
                                need_dq=need_dq)
    width = head_dim_tile(D)
    pointer = _variants.VARIANTS["pointer"]
    if dtype == F32:
        key = _variants.float32_width(width)
        decoding = [t for t in fwd.FLOAT32_DECODE_TILES[key] if t not in fwd.FLOAT32_TILES[key]]  # (once each)
        want = {"_attn_fwd": fwd.FLOAT32_TILES[key] + decoding,
                "_bwd_dkdv": bwd.FLOAT32_TILES["dkdv", key], "_bwd_dq": bwd.FLOAT32_TILES["dq", key]}
        assert {tag for _, tag in offered.values()} == {f"{D} float32"}
    else:
        want = {"_attn_fwd": [_variants.tile_of(c) for c in fwd.configs(pointer, width)],
                "_bwd_dkdv": [_variants.tile_of(c) for c in bwd.configs("dkdv", pointer, width)],
                "_bwd_dq": [_variants.tile_of(c) for c in bwd.configs("dq", pointer, width)]}
        assert {tag for _, tag in offered.values()} == {D}
    assert {name: tiles for name, (tiles, _) in offered.items()} == want


@pytest.mark.parametrize("dtype", [F16, F32], ids=["float16", "float32"])
def test_a_paged_launch_tunes_its_tiles_compiled_deeper_under_an_autotuner_of_its_own(dtype, monkeypatch):
    """On a paged cache the autotuner is offered the same tiles, each with ``flash_paged.deeper``'s stages
    (``2 S - 1``), under an autotuner tagged ``paged`` (a plain launch's keeps its own configs)."""
    from test_kernels_paged import make_paged_cache

    fwd, D = kernel_module("flash_fwd", torch.device("cpu")), 64
    offered = []

    def spy(kernel, variant, configs, tag=None, **_):
        offered.append((configs(), tag))
        raise _Offered

    monkeypatch.setattr(_variants, "launch_plans", lambda interpreted, *, interpreter_meta, default, offered:
                        [(interpreter_meta, {}, True)])
    monkeypatch.setattr(_variants, "autotuned", spy)
    k_pool, v_pool, block_table = make_paged_cache(2, 1, D, 16, [5, 30], 0, dtype)
    q = make_qkv(2, 2, 1, 1, 1, D, dtype)[0]
    with pytest.raises(_Offered):
        fwd.attn_fwd_launch(q, k_pool, v_pool, scale=D ** -0.5, window=kernel_window((-1, -1), False),
                            seqused_k=torch.tensor([5, 30], dtype=torch.int32), block_table=block_table)
    (configs, tag), = offered
    plain = fwd.configs(_variants.VARIANTS["pointer"], D, dtype == F32)
    assert tag == (f"{D} float32 paged" if dtype == F32 else f"{D} paged")
    assert [_variants.tile_of(c) for c in configs] == [_variants.tile_of(c) for c in plain]
    assert [c.num_stages for c in configs] == [2 * c.num_stages - 1 for c in plain]


def test_float32_launches_ignore_the_16_bit_spill_lists(monkeypatch):
    """The features' and padding's spill lists (``FEATURE_SPILLS``) are 16-bit surveys: a float32 launch
    (``IEEE``) keeps the same tiles whatever they name, even a float32 tile it keeps planted in them, while a
    16-bit launch skips what they name."""
    fwd, bwd = kernel_module("flash_fwd", torch.device("cpu")), kernel_module("flash_bwd", torch.device("cpu"))
    pointer = _variants.VARIANTS["pointer"]
    on = dict(HEAD_DIM=128, D_REAL=80, DROPOUT=True, SOFTCAP=True, ALIBI=True)

    def kept():
        prefill = fwd.prune_for_lengths(fwd.configs(pointer, 128, True), {"TUNE_T_Q": 4096}, **on, IEEE=True)
        dq = bwd.prune("dq", True, bwd.configs("dq", pointer, 128, True), {"Q": torch.empty(0, dtype=F32)}, **on,
                       IS_VARLEN=False, IEEE=True)
        return [_variants.tile_of(c) for c in prefill], [_variants.tile_of(c) for c in dq]

    before = kept()
    planted, planted_dq = before[0][0], before[1][0]
    monkeypatch.setitem(fwd.FEATURE_SPILLS["DROPOUT"], 128, [*fwd.FEATURE_SPILLS["DROPOUT"][128], (*planted, False)])
    monkeypatch.setitem(bwd.FEATURE_SPILLS["DROPOUT"], ("dq", 128), [*bwd.FEATURE_SPILLS["DROPOUT"]["dq", 128],
                                                                    planted_dq])
    assert kept() == before
    # (the same lists do prune a 16-bit launch)
    half = fwd.prune_for_lengths(fwd.configs(pointer, 128), {"TUNE_T_Q": 4096}, **on, IEEE=False)
    assert not {_variants.tile_of(c) for c in half} & {t[:4] for t in fwd.FEATURE_SPILLS["DROPOUT"][128]}


@pytest.mark.parametrize("kernel", ["forward", "decode", "dkdv", "dq"])
def test_float32_launches_skip_float32_s_spill_lists_for_their_features_and_padding_alone(kernel, monkeypatch):
    """``FLOAT32_SPILLS`` (flash_fwd's for the prefill and decoding tiles, flash_bwd's for dK/dV and dQ) is keyed by
    the feature (``SOFTCAP`` here) and by ``(kernel, width, padded)``: a tile planted at 128-wide unpadded softcap
    is skipped by a float32 softcap launch at D = 128, by the autotuner and by the autotuner-off default, and kept
    by one without the softcap, by one at D = 80 (padded to the same width: lists of its own) and by a 16-bit one."""
    fwd, bwd = kernel_module("flash_fwd", torch.device("cpu")), kernel_module("flash_bwd", torch.device("cpu"))
    pointer = _variants.VARIANTS["pointer"]
    module = bwd if kernel in ("dkdv", "dq") else fwd
    if module is bwd:
        tiles = bwd.FLOAT32_TILES[kernel, 128]

        def kept(dtype=F32, **flags):
            launch = dict(HEAD_DIM=128, IS_VARLEN=False, IEEE=dtype == F32, **flags)
            space = bwd.configs(kernel, pointer, 128, dtype == F32)
            return [_variants.tile_of(c) for c in bwd.prune(kernel, True, space, {"Q": torch.empty(0, dtype=dtype)},
                                                            **launch)]

        def default(**flags):
            return _variants.tile_of(bwd.default_config(kernel, 128, 4, IS_VARLEN=False, **flags))
    else:
        decoding = kernel == "decode"
        tiles = (fwd.FLOAT32_DECODE_TILES if decoding else fwd.FLOAT32_TILES)[128]

        def kept(dtype=F32, **flags):
            space = fwd.configs(pointer, 128, dtype == F32)
            return [_variants.tile_of(c) for c in fwd.prune_for_lengths(space, {"TUNE_T_Q": 1 if decoding else 4096},
                                                                        HEAD_DIM=128, IEEE=dtype == F32, **flags)]

        def default(**flags):
            return _variants.tile_of(fwd.default_config(pointer, 128, 4, 1 if decoding else 4096, **flags))
    planted, planted16 = tiles[0], kept(F16, SOFTCAP=True, D_REAL=128)[0]  # (and a 16-bit tile the launch keeps)
    monkeypatch.setattr(module, "FLOAT32_SPILLS", {"SOFTCAP": {(kernel, 128, False): [planted, planted16]}})
    left = [t for t in tiles if t not in (planted, planted16)]
    capped = kept(SOFTCAP=True, D_REAL=128)
    assert planted not in capped and set(capped) == set(left)
    assert default(SOFTCAP=True, D_REAL=128) == left[0]
    assert set(kept(SOFTCAP=False, D_REAL=128)) == set(tiles) and default(SOFTCAP=False, D_REAL=128) == planted
    assert set(kept(SOFTCAP=True, D_REAL=80)) == set(tiles) and default(SOFTCAP=True, D_REAL=80) == planted
    assert planted16 in kept(F16, SOFTCAP=True, D_REAL=128), "a 16-bit launch read float32's lists"


def test_pruning_by_features_skips_every_list_they_name_and_keeps_the_least_named_when_all_spill():
    """``_variants.fewest_spills`` on a made-up survey table: each feature's list, each combination's list
    only when all its parts are on; tiles named by no list kept; where every tile is named, those named by
    the fewest lists; a launch with no feature keeps everything."""
    table = {"DROPOUT": {64: ["a", "b"]}, "SOFTCAP": {64: ["b"]}, "DROPOUT+SOFTCAP": {64: ["c"]},
             "ALIBI": {128: ["a"]}}
    tiles = ["a", "b", "c", "d"]
    assert _variants.fewest_spills(tiles, str, table, 64) == tiles
    assert _variants.fewest_spills(tiles, str, table, 64, DROPOUT=True) == ["c", "d"]
    assert _variants.fewest_spills(tiles, str, table, 64, SOFTCAP=True, ALIBI=False) == ["a", "c", "d"]
    assert _variants.fewest_spills(tiles, str, table, 64, DROPOUT=True, SOFTCAP=True) == ["d"]
    assert _variants.fewest_spills(tiles, str, table, 128, ALIBI=True) == ["b", "c", "d"]
    # every tile spills: "a" (dropout), "b" (dropout and softcap), "c" (the pair): the least named are kept
    assert _variants.fewest_spills(["a", "b", "c"], str, table, 64, DROPOUT=True, SOFTCAP=True) == ["a", "c"]
    assert _variants.fewest_spills([("a", 1)], lambda t: t[0], table, 64, DROPOUT=True) == [("a", 1)]
