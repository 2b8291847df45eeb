"""Which variant of a kernel runs, and whether its tile shape is autotuned.

The kernels come in variants that compute exactly the same thing and differ only in how tiles travel
from global memory to the chip:

* ``pointer``: every tile is a masked ``tl.load`` through a block of pointers. Runs on any GPU and in the
  interpreter, for any strides and for packed (varlen) batches.
* ``tma``: tiles travel through *tensor descriptors*, which Hopper (compute capability 9.0) turns into
  its bulk tensor copy engine (TMA): one thread issues the copy of a whole tile into shared memory, the
  copy engine computes the addresses, and rows past the end of the tensor arrive as zeros with no mask.
  It needs the head dim contiguous and 16-byte-aligned strides (checked by :func:`tma_unready`). Packed
  (varlen) batches and key/value caches run it too: the copy engine zero-fills only past the tensor's
  end, not past a sequence's (where the next sequence, or a cache's unfilled tail, begins), so the tile
  that overhangs a sequence's end is read through masked pointer loads (``_tiles.overhang``) and a packed
  batch's results are stored through pointers.
* ``tma+ws`` (forward only): the same, and the autotuner may also pick warp-specialised configs
  (``tl.range(..., warp_specialize=True)``: a producer warpgroup issues the copies while consumer
  warpgroups do the matrix products and the softmax), keeping them only where they are faster.

``ATTN_COURSE_KERNEL`` picks: ``auto`` (the default), ``pointer``, ``tma`` or ``tma+ws``. ``auto`` on a
Hopper or datacenter Blackwell GPU (:data:`TMA_AUTO_MAJORS`) with TMA-ready tensors tries ``tma+ws`` (16-bit
inputs only), then ``tma``, then ``pointer``; everywhere else (older GPUs, consumer Blackwell, CPU tensors in the
interpreter, the backward at head dim 256 or of a packed batch, and float32 inputs, whose TMA tiles spill
registers: ``flash_bwd.tma_pays``, ``flash_fwd.tma_pays``) it runs ``pointer``.
Packed batches and caches are never warp-specialised.

Why a chain: the TMA variants are checked on the CPU through the interpreter, which emulates the
descriptors faithfully, but a GPU compiler can still reject a program the interpreter accepts. So under
``auto`` a variant that fails is remembered as broken for that (device, dtype, head dim), a
``RuntimeWarning`` says why, and the next one runs: the caller gets a correct answer, never a Triton
compile error. A variant you *ask for* by name never falls back; its error is yours to see.

``ATTN_COURSE_AUTOTUNE=0`` turns the autotuner off on the GPU: each variant runs its first (default)
tile shape. The GPU tests use it, so that each (dtype, head dim) compiles once instead of once per
candidate tile shape (minutes of compiling for no extra coverage).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
import triton.testing

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # triton < 3.4 has no host-side tensor descriptors
    TensorDescriptor = None

KERNEL_ENV = "ATTN_COURSE_KERNEL"
TMA_MIN_CAPABILITY = (9, 0)  # Hopper: the first GPUs with the bulk tensor copy engine
# The compute capabilities (their major) ``auto`` runs TMA on: those whose products are warpgroup-wide (Hopper's
# wgmma, 9.x; datacenter Blackwell's tcgen05, 10.x). Consumer Blackwell (12.x: RTX 50) has the copy engine too,
# but multiplies with mma.sync, and compiled for sm_120 every warp-specialised tile spills (1.5 KB and more) and,
# at D = 128, every TMA forward and dK/dV tile, where pointers keep tiles that spill nothing
# (benchmarks/results/kernel_shared_memory*.json, "tma_summary"): it runs pointers, as the GPUs before Hopper.
TMA_AUTO_MAJORS = (9, 10)
AUTOTUNE_ENV = "ATTN_COURSE_AUTOTUNE"
CAN_WARP_SPECIALIZE = "warp_specialize" in inspect.signature(tl.range.__init__).parameters


@dataclass(frozen=True)
class Variant:
    name: str
    tma: bool  # tiles through tensor descriptors
    warp_specialize: bool  # the autotuner may also try warp-specialised configs


VARIANTS = {v.name: v for v in (
    Variant("pointer", False, False),
    Variant("tma", True, False),
    Variant("tma+ws", True, CAN_WARP_SPECIALIZE),
)}
AUTO_CHAIN = ("tma+ws", "tma", "pointer") if CAN_WARP_SPECIALIZE else ("tma", "pointer")

_broken: dict[tuple, str] = {}  # (variant, device, dtype, head dim) -> why it failed
_used: dict[tuple, str] = {}  # (device, dtype, head dim) -> the variant that ran last


def requested() -> str:
    """The value of ``ATTN_COURSE_KERNEL`` (``auto`` when unset), checked."""
    name = os.environ.get(KERNEL_ENV, "auto").strip() or "auto"
    if name != "auto" and name not in VARIANTS:
        raise ValueError(f"{KERNEL_ENV}={name!r} is not a kernel variant; use one of auto, {', '.join(VARIANTS)}")
    return name


def autotune_enabled() -> bool:
    """``ATTN_COURSE_AUTOTUNE``: unset or ``1`` -> autotune on the GPU; ``0`` -> each variant's first tiles."""
    value = os.environ.get(AUTOTUNE_ENV, "1").strip()
    if value not in ("0", "1", ""):
        raise ValueError(f"{AUTOTUNE_ENV} must be 0 or 1, got {value!r}")
    return value != "0"


def tma_unready(*tensors: torch.Tensor) -> str | None:
    """Why these ``[B, H, T, D]`` tensors cannot go through tensor descriptors, or ``None`` if they can.

    TMA's rules: the last dim contiguous, every other stride a multiple of 16 bytes, the base address
    16-byte aligned. (A dim of size 1 is never stepped along, so its stride does not matter.)
    """
    if TensorDescriptor is None:
        return "this Triton has no tensor descriptors (triton.tools.tensor_descriptor, triton >= 3.4)"
    for x in tensors:
        if x.stride(-1) != 1:
            return f"the head dim is not contiguous (strides {tuple(x.stride())})"
        for size, stride in zip(x.shape[:-1], x.stride()[:-1], strict=True):
            if size > 1 and (stride == 0 or stride * x.element_size() % 16):
                return f"stride {stride} of a dim of size {size} is not a nonzero multiple of 16 bytes " \
                       f"(strides {tuple(x.stride())}, {x.dtype})"
        if x.data_ptr() % 16:
            return "the tensor's first element is not 16-byte aligned (a view with an odd storage offset?)"
    return None


def descriptor(x: torch.Tensor, block: list[int]):
    """A host-side tensor descriptor over the whole of ``x`` with tiles of ``block``."""
    strides = list(x.stride())
    for i in range(x.dim() - 2, -1, -1):  # a dim of size 1 is never stepped: give it the packed stride
        if x.shape[i] == 1:
            strides[i] = strides[i + 1] * x.shape[i + 1]
    return TensorDescriptor(x, list(x.shape), strides, block)


def tile_hook(descriptors: tuple[tuple[str, str], ...]):
    """An autotuner pre-hook: a descriptor's tile shape is part of it, so each config must set it.
    ``descriptors``: (argument name, the block-size argument for its rows), e.g. ``("desc_q", "BLOCK_M")``."""
    def hook(nargs):
        for name, block in descriptors:
            nargs[name].block_shape = [1, 1, nargs[block], nargs["HEAD_DIM"]]
    return hook


_autotuned: dict = {}


def autotuned(kernel, variant: Variant, configs, tag=None, extra_key=(), prune=None):
    """``kernel`` wrapped in Triton's autotuner over the list ``configs()`` returns (which the kernel file builds for
    the variant; called only when the autotuner is built, not on every launch), once per (kernel, variant, tag);
    ``tag`` names what else the configs depend on (the head dim).
    The tuning key is the lengths, head dim, window and variant (:data:`TUNE_KEY`), plus ``extra_key``:
    more of the kernel's arguments that change which tiles win. ``prune(configs, nargs, **kwargs)``, if
    given, narrows the configs for a launch before any is timed (Triton's ``early_config_prune``)."""
    cache_key = (id(kernel), variant.name, tag)
    if cache_key not in _autotuned:
        key = [*TUNE_KEY, *extra_key]
        pruning = None if prune is None else {"early_config_prune": prune}
        _autotuned[cache_key] = triton.autotune(configs=configs(), key=key, prune_configs_by=pruning,
                                                do_bench=_tuning_bench)(kernel)
    return _autotuned[cache_key]


def tuned_configs() -> dict[str, dict[str, str]]:
    """What the autotuner has picked in this process, for the benchmark's record: for each autotuned kernel
    (``"<kernel> <variant> D=<head dim>"``), each tuning key it has seen (the values of :data:`TUNE_KEY`,
    then the arguments' dtypes) -> the winning tile shape."""
    picked = {}
    for (_, variant, tag), tuner in _autotuned.items():
        name = f"{tuner.base_fn.__name__} {variant} D={tag}"
        picked[name] = {" ".join(map(str, key)): str(config) for key, config in tuner.cache.items()}
    return {name: keys for name, keys in picked.items() if keys}


def _tuning_bench(kernel_call, quantiles):
    """The autotuner's timer: shorter than Triton's default (25 ms warm-up, 100 ms of runs) per config,
    which is plenty to rank tile shapes and keeps a first call at a new length quick."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=25, quantiles=quantiles)


# Lengths enter the key rounded up to a power of two: the best tile shape at 1000 tokens is the best at 1024,
# and a key on the exact lengths would retune (every config timed, about a second) at each new length, i.e.
# at nearly every step of a training run on packed batches of varying longest sequence.
TUNE_KEY = ["TUNE_T_Q", "TUNE_T_K", "HEAD_DIM", "window_left", "window_right", "IS_VARLEN", "TMA", "DROPOUT",
            "SOFTCAP", "ALIBI"]


def tuning_lengths(*lengths: int) -> tuple[int, ...]:
    """Each length rounded up to a power of two (0 stays 0): what the autotuner keys on."""
    return tuple(triton.next_power_of_2(T) if T > 0 else 0 for T in lengths)


def config(bm: int, bn: int, warps: int, stages: int, hook=None, **meta) -> triton.Config:
    """One tile shape: ``BLOCK_M`` queries by ``BLOCK_N`` keys, ``warps`` warps, ``stages`` pipeline stages."""
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, **meta}, num_warps=warps, num_stages=stages, pre_hook=hook)


def tile_of(c: triton.Config) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, warps, stages)``: what :func:`config` was given (for a paged launch's config, compiled
    deeper, the tile as listed: ``flash_paged.deeper``)."""
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, getattr(c, "listed_stages", c.num_stages)


def padded(width: int, constexprs: dict) -> bool:
    """Whether a launch in tiles ``width`` columns wide runs a padded head dim (``D_REAL < width``: its last
    columns masked on every pointer load and store, which costs registers of their own); a launch that names
    no ``D_REAL`` means the tiles' own width."""
    return constexprs.get("D_REAL", width) < width


def float32_width(D: int) -> int:
    """The width float32's tile lists (``flash_fwd.FLOAT32_TILES``, ``flash_bwd.FLOAT32_TILES``) are keyed by for
    tiles ``D`` columns wide: 32 (which also serves 16), 64, 128 or 256. (Narrower is not always lighter: in 16- and
    32-wide tiles dK/dV's 64-wide 16 x 32 on 8 warps spills 24 bytes under triton 3.6.)"""
    return 32 if D <= 32 else 64 if D <= 64 else 128 if D <= 128 else 256


def float32_spills_key(kernel: str, width: int, constexprs: dict) -> tuple[str, int, bool]:
    """How float32's spill lists (``flash_fwd.FLOAT32_SPILLS``, ``flash_bwd.FLOAT32_SPILLS``) name a launch of
    ``kernel`` ("forward", "decode", "dkdv" or "dq") in tiles ``width`` columns wide: the kernel, the width its tile
    lists are keyed by (:func:`float32_width`) and whether the head dim is padded to it (:func:`padded`; surveyed at
    40, 80 and 160, whose lists serve every padded head dim of that width)."""
    return kernel, float32_width(width), padded(width, constexprs)


FEATURE_FLAGS = ("DROPOUT", "SOFTCAP", "ALIBI")  # (the order the spill lists' combined names use: "DROPOUT+ALIBI")


def fewest_float32_spills(items: list, tile, table: dict, kernel: str, width: int, constexprs: dict,
                          also=()) -> list:
    """:func:`fewest_spills` for a float32 launch of ``kernel`` in tiles ``width`` columns wide, whose constexprs are
    ``constexprs``, over float32's lists ``table`` (``flash_fwd.FLOAT32_SPILLS``, ``flash_bwd.FLOAT32_SPILLS``): the
    list of exactly the launch's combination of features (each one and each combination is surveyed in float32, and
    a tile may spill with one feature alone yet not beside another; with none, ``PLAIN``), and those of a packed
    batch (``IS_VARLEN``) and of a paged cache (``PAGED``) when the launch is one, at :func:`float32_spills_key`;
    ``also`` as for :func:`fewest_spills`."""
    names = {"+".join(f for f in FEATURE_FLAGS if constexprs.get(f)) or "PLAIN"} | \
        {name for name in ("IS_VARLEN", "PAGED") if constexprs.get(name)}
    lists = {name: by_key for name, by_key in table.items() if name in names}
    on = {flag: True for name in lists for flag in name.split("+")}  # (every list chosen applies: PLAIN too)
    return fewest_spills(items, tile, lists, float32_spills_key(kernel, width, constexprs), also, **on)


def feature_spills(table: dict, key, **features) -> list:
    """The tiles ``table`` lists at ``key`` (a head dim, or ``(kernel, head dim)``) for the features switched on
    in ``features``: ``table`` maps a feature's constexpr (``DROPOUT``, ``SOFTCAP``, ``ALIBI``), or a
    combination of them (``DROPOUT+SOFTCAP``: both on), to the tiles that spill with it, and ``features`` is a
    launch's constexprs (others are ignored), as the autotuner's pruning step gets them. With several features
    on, every list they name (each one's, each pair's and, with all three, the triple's), a tile once per list."""
    return [t for name, by_key in table.items() if all(features.get(part) for part in name.split("+"))
            for t in by_key.get(key, [])]


def fewest_spills(items: list, tile, table: dict, key, also=(), **features) -> list:
    """Of ``items`` (configs or tiles; ``tile(item)`` is how ``table`` names one), those named by the fewest
    of :func:`feature_spills`' lists: every item that spills with none of the launch's features where there
    is one, as the pruning steps want. Where every candidate spills with some combination (dK/dV at D = 128
    with dropout, a softcap and ALiBi all on, under triton 3.6), those spilling in the fewest surveyed
    combinations, which there is also the smallest spill (tests/test_kernels_compile.py checks that against
    the surveys), rather than none or all of them. ``also``: one more list, in ``tile``'s terms (the tiles that
    spill on an mma.sync GPU, on such a GPU: ``_mma_sync``)."""
    named = feature_spills(table, key, **features) + list(also)
    counts = [named.count(tile(item)) for item in items]
    return [item for item, count in zip(items, counts, strict=True) if count == min(counts, default=0)]


# Compile options every GPU launch names (:func:`launch_plans`' plans, the backward's preprocess, the split keys'
# combine) rather than leave to Triton's defaults: fused multiply-adds on, what the surveys compiled and every triton
# so far has defaulted to. Triton 3.9 warns that 3.10 turns that default off, which would change the kernels' code,
# speed and rounding with the installed triton. The interpreter ignores them.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def launch_plans(interpreted: bool, *, interpreter_meta: dict, default, offered):
    """The ways to run one launch, in the order to try them, each ``(tiles, meta, tune)``: the block sizes to build
    descriptors with, the launch's extra keyword arguments, and whether to go through the autotuner (whose pre-hook
    then resets the descriptors' tiles). In the interpreter, its blocks alone. On the GPU, the autotuner, or with
    autotuning off ``default()`` (the config used then; called only then); then each config of ``offered()`` on its
    own, in order (what the autotuner would time first, then the rest of its list; called only when reached). A GPU
    with less shared memory per block than Hopper's may not fit the first: ``_fit.first_that_fits`` takes the
    next."""
    if interpreted:
        yield interpreter_meta, interpreter_meta, False
        return
    tried = []
    if autotune_enabled():
        yield {"BLOCK_M": 64, "BLOCK_N": 64}, dict(COMPILE_OPTIONS), True
    else:
        chosen = default()
        tried.append(chosen.all_kwargs())
        yield fixed_plan(chosen)
    for c in offered():
        if c.all_kwargs() not in tried:
            tried.append(c.all_kwargs())
            yield fixed_plan(c)


def pruned_first(configs: list, pruned: list) -> list:
    """``offered()`` of :func:`launch_plans`: ``pruned`` (what the autotuner would time of ``configs``), then the
    rest of ``configs`` in order (the tiles the pruning skips: better to spill registers than not to run)."""
    return pruned + [c for c in configs if c not in pruned]


def fixed_plan(c: triton.Config) -> tuple[dict, dict, bool]:
    """``(tiles, meta, tune)`` of :func:`launch_plans` for one config, run as it is (no autotuner)."""
    return c.kwargs, dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, **COMPILE_OPTIONS), False


def descriptors(tensors, blocks, D: int, variant: Variant):
    """Descriptors for ``tensors`` with tiles of ``blocks`` rows, or the tensors themselves as placeholders
    for the pointer variant (which never reads them). Packed ``[total_T, H, D]`` tensors are described
    through :func:`described`."""
    if not variant.tma:
        return list(tensors)
    return [descriptor(described(x), [1, 1, rows, D]) for x, rows in zip(tensors, blocks, strict=True)]


def described(x: torch.Tensor) -> torch.Tensor:
    """What a descriptor is built over: a ``[B, H, T, D]`` tensor as it is; a packed (varlen) ``[total_T, H, D]``
    one as the ``[1, H, total_T, D]`` view of the same memory (no copy). Sequence ``b`` is then rows
    ``cu_seqlens[b] ...`` of batch 0 (a tile that overhangs it would read the next sequence's rows: see
    ``_tiles.overhang``)."""
    return x.transpose(0, 1).unsqueeze(0) if x.dim() == 3 else x  # (total_T, H, D) -> (1, H, total_T, D)


def may_use_tma(device: torch.device) -> bool:
    """Whether a launch on ``device`` may pick a TMA variant: one is asked for by name, or ``auto`` on a GPU
    whose compute capability's major is one of :data:`TMA_AUTO_MAJORS` (Hopper, datacenter Blackwell)."""
    name = requested()
    if name != "auto":
        return VARIANTS[name].tma
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in TMA_AUTO_MAJORS


@contextlib.contextmanager
def settings(*, kernel: str | None = None, autotune: bool | None = None):
    """``ATTN_COURSE_KERNEL`` / ``ATTN_COURSE_AUTOTUNE`` set for the ``with`` block (``None``: left as it
    is), put back afterwards. The kernels read both at every launch."""
    wanted = {KERNEL_ENV: kernel, AUTOTUNE_ENV: None if autotune is None else str(int(autotune))}
    wanted = {key: value for key, value in wanted.items() if value is not None}
    before = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def chain(device: torch.device, tensors, *, warp_spec: bool = True, tma_pays: bool = True) -> list[Variant]:
    """The variants to try, in order, for one launch (see the module docstring). ``warp_spec``: whether
    the kernel has warp-specialised configs (the backward kernels do not: ``tma+ws`` means ``tma`` there).
    ``tma_pays``: whether the TMA variant is worth trying under ``auto`` for this launch (the backward at
    head dim 256 is not: its TMA dK/dV tiles spill registers); a TMA variant asked for by name still runs."""
    name = requested()
    # warp specialisation overlaps copies with tensor-core products; float32 (IEEE, no wgmma) has none,
    # and a kernel without warp-specialised configs has nothing to pick: there "tma+ws" means "tma"
    ws_pays = warp_spec and tensors[0].dtype != torch.float32
    if name == "tma+ws" and not ws_pays:
        name = "tma"
    if name != "auto":
        variant = VARIANTS[name]
        if variant.tma:
            why = tma_unready(*tensors)
            if why is not None:
                raise ValueError(f"{KERNEL_ENV}={name} cannot run these tensors: {why}; unset it to let the "
                                 f"kernels choose")
        return [variant]
    if not tma_pays or not may_use_tma(device) or tma_unready(*tensors) is not None:
        return [VARIANTS["pointer"]]
    return [VARIANTS[n] for n in AUTO_CHAIN if ws_pays or not VARIANTS[n].warp_specialize]


def run(variants: list[Variant], key: tuple, launch):
    """``launch(variant)`` for the first variant of ``variants`` not known to be broken for ``key``;
    under ``auto`` a failure marks it broken, warns, and moves on (the last one's error is raised)."""
    live = [v for v in variants if (v.name, *key) not in _broken] or variants[-1:]
    for i, variant in enumerate(live):
        try:
            result = launch(variant)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            if i == len(live) - 1:
                raise
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            _broken[(variant.name, *key)] = reason
            warnings.warn(f"the {variant.name!r} attention kernel failed for {key} and is now skipped for it "
                          f"({reason}); falling back to {live[i + 1].name!r}", RuntimeWarning, stacklevel=3)
            continue
        _used[key] = variant.name
        return result
    raise AssertionError("unreachable: the last variant either returns or raises")


def used(key: tuple) -> str | None:
    """The variant that ran last for ``key`` (for benchmarks to report), or ``None``."""
    return _used.get(key)


def broken() -> dict[tuple, str]:
    """The variants that failed under ``auto``, and why (a copy)."""
    return dict(_broken)
