"""Tiles that spill registers on GPUs older than Hopper, and the untuned launches that avoid them.

The tile lists, and the spill lists that prune them, are chosen on Hopper (sm_90, the survey
``benchmarks/kernel_resources.py``). Before Hopper the kernels run through pointers and their products are
``mma.sync``'s, which hold their operands in registers differently from Hopper's ``wgmma``: compiled for sm_80
(an A100; the sm_86 and sm_89 cards compile the same code, ``benchmarks/kernel_shared_memory.py``) other tiles
spill, among them the tile Hopper runs with autotuning off, for 21 (dtype, kernel, head dim) launches under
triton 3.9 and 24 under 3.6 (the forward's 128 x 64 on 8 warps at D = 80 and 128, dQ's 64 x 64 at every head
dim from 40 to 128, dK/dV's 32 x 64 at D = 40 and 64, ...).

With the autotuner on nothing here applies: it times a spilling tile with the rest, and a few bytes of spill
may still be fastest. With it off (``ATTN_COURSE_AUTOTUNE=0``) one tile runs untimed, so on a GPU of compute
capability below 9.0 (:func:`before_hopper`) ``flash_fwd.default_config`` and ``flash_bwd.default_config`` also
skip the tiles :data:`SPILLS` names: it replaces Hopper's lists for what sm_80 was surveyed for (a padded head dim,
a paged cache: :data:`MEASURED`), and stands beside those of the features it was not (:func:`hopper_proxies`) as
one more list (``_variants.fewest_spills``' ``also``); of the tiles named by fewest lists the launch takes the one
that spills fewest bytes on sm_80 (:func:`least_spilling`: where every tile spills, the lightest).

:data:`SPILLS` holds every tile of the pointer lists that spills compiled for sm_80 under triton 3.9 or 3.6, and
the more bytes of the two (``benchmarks/results/kernel_shared_memory*.json``; ``tests/test_kernels_fit.py``
checks it against both, exactly). It is keyed by dtype (``float16`` for both 16-bit types), part (a kernel; on a
paged cache ``"<kernel> paged"``, whose tiles are named as listed, before ``flash_paged.deeper``) and head dim. A
padded head dim reads the list surveyed for its tile width (:func:`surveyed_dim`: 40, 80 and 160 for 64-, 128-
and 256-wide tiles; a padded 16- or 32-wide one, never surveyed, the width's own). Dropout, softcap, ALiBi and
packed batches were not compiled for sm_80: their launches skip the plain part's tiles (a feature only adds
registers). Untimed: no GPU has run either choice.
"""

from __future__ import annotations

import torch

from attn_course.kernels import _variants

HOPPER = (9, 0)  # compute capability: wgmma products, and the GPUs the tile lists were chosen on
PADDED_SURVEYED = {64: 40, 128: 80, 256: 160}  # tile width -> the padded head dim surveyed in it
# The kernels' Hopper spill lists (flash_fwd.FEATURE_SPILLS, ...) that sm_80's survey measured for itself: no
# feature, a padded head dim, a paged cache. Before Hopper SPILLS stands in for them.
MEASURED = ("PLAIN", "PADDED", "PAGED", "PADDED+PAGED")

SPILLS: dict[str, dict[tuple[str, int], dict[tuple[int, int, int, int], int]]] = {
    "float16": {
        ("decode", 16): {(16, 128, 4, 2): 32},
        ("decode", 128): {(16, 128, 4, 2): 8},
        ("decode", 160): {(16, 64, 4, 2): 8},
        ("decode paged", 40): {(16, 64, 4, 3): 88, (16, 64, 4, 4): 88, (16, 128, 4, 2): 3176, (16, 128, 4, 3): 3176},
        ("decode paged", 80): {(16, 64, 4, 4): 8},
        ("decode paged", 160): {(16, 64, 4, 2): 8, (16, 64, 4, 3): 120, (16, 64, 4, 4): 264},
        ("decode paged", 256): {(16, 64, 4, 2): 8, (16, 64, 4, 3): 152, (16, 64, 4, 4): 264},
        ("dkdv", 16): {(64, 64, 8, 3): 32},
        ("dkdv", 32): {(64, 64, 8, 3): 104, (64, 128, 8, 2): 8},
        ("dkdv", 40): {(16, 64, 4, 3): 24, (16, 64, 8, 2): 16, (16, 128, 8, 2): 16, (32, 64, 8, 2): 88,
                       (32, 64, 8, 3): 136, (32, 128, 8, 2): 48, (64, 64, 8, 3): 480, (64, 128, 8, 2): 424},
        ("dkdv", 64): {(16, 64, 4, 3): 8, (32, 64, 8, 2): 56, (32, 64, 8, 3): 72, (32, 128, 8, 2): 40,
                       (64, 64, 8, 3): 360, (64, 128, 8, 2): 160},
        ("dkdv", 80): {(16, 64, 4, 3): 136, (16, 128, 8, 2): 56, (32, 64, 8, 3): 16, (32, 128, 8, 2): 344,
                       (64, 64, 8, 3): 160, (64, 128, 8, 2): 2056},
        ("dkdv", 128): {(16, 64, 4, 3): 128, (16, 128, 8, 2): 48, (32, 64, 8, 3): 8, (32, 128, 8, 2): 360,
                        (64, 64, 8, 3): 152, (64, 128, 8, 2): 2064},
        ("dkdv", 160): {(32, 32, 8, 2): 8},
        ("dq", 32): {(128, 128, 8, 2): 8},
        ("dq", 40): {(64, 64, 4, 3): 16, (64, 128, 8, 3): 624, (128, 128, 8, 2): 704},
        ("dq", 64): {(64, 64, 4, 3): 56, (64, 64, 8, 2): 24, (64, 128, 8, 3): 624, (128, 64, 8, 3): 24,
                     (128, 128, 8, 2): 704},
        ("dq", 80): {(64, 64, 4, 3): 24, (128, 64, 8, 3): 360, (128, 128, 8, 2): 9264},
        ("dq", 128): {(64, 64, 4, 3): 24, (128, 64, 8, 3): 376, (128, 128, 8, 2): 1848},
        ("dq", 160): {(128, 16, 8, 2): 544, (128, 32, 8, 2): 584},
        ("dq", 256): {(128, 16, 8, 2): 544, (128, 32, 8, 2): 432},
        ("forward", 40): {(64, 32, 4, 4): 16, (128, 64, 4, 3): 40, (128, 64, 4, 4): 40},
        ("forward", 80): {(64, 128, 4, 3): 8, (128, 32, 4, 4): 24, (128, 64, 4, 3): 352, (128, 64, 4, 4): 352,
                          (128, 64, 8, 3): 32, (128, 128, 8, 2): 48, (128, 128, 8, 3): 88},
        ("forward", 128): {(128, 32, 4, 4): 24, (128, 64, 4, 3): 352, (128, 64, 4, 4): 352, (128, 64, 8, 3): 24,
                           (128, 128, 8, 2): 48, (128, 128, 8, 3): 88},
        ("forward", 160): {(64, 32, 4, 3): 56, (128, 32, 8, 2): 320},
        ("forward", 256): {(64, 32, 4, 3): 16, (128, 32, 8, 2): 312},
        ("forward paged", 40): {(64, 128, 4, 3): 1344, (128, 64, 4, 3): 112, (128, 64, 4, 4): 112},
        ("forward paged", 64): {(128, 64, 4, 3): 24, (128, 64, 4, 4): 16, (128, 128, 8, 2): 16},
        ("forward paged", 80): {(64, 64, 4, 3): 40, (64, 128, 4, 3): 144, (128, 32, 4, 4): 80, (128, 64, 4, 3): 6416,
                                (128, 64, 4, 4): 6352, (128, 64, 8, 3): 8, (128, 128, 8, 2): 104,
                                (128, 128, 8, 3): 168},
        ("forward paged", 128): {(64, 64, 4, 3): 56, (64, 128, 4, 3): 144, (128, 32, 4, 4): 72,
                                 (128, 64, 4, 3): 6320, (128, 64, 4, 4): 6472, (128, 64, 8, 3): 8,
                                 (128, 128, 8, 2): 104, (128, 128, 8, 3): 176},
        ("forward paged", 160): {(64, 32, 4, 3): 176, (64, 64, 8, 2): 40, (128, 32, 8, 2): 264},
        ("forward paged", 256): {(64, 32, 4, 3): 160, (64, 64, 8, 2): 40, (128, 32, 8, 2): 264},
    },
    "float32": {
        ("decode", 40): {(16, 64, 8, 2): 32},
        ("decode", 64): {(16, 64, 4, 2): 16, (16, 64, 4, 3): 16},
        ("decode", 80): {(16, 64, 8, 2): 16},
        ("decode", 128): {(16, 16, 4, 2): 8},
        ("decode paged", 16): {(16, 64, 4, 3): 8},
        ("decode paged", 32): {(16, 64, 4, 3): 8},
        ("decode paged", 40): {(16, 64, 4, 2): 616, (16, 64, 4, 3): 1080},
        ("decode paged", 80): {(16, 64, 8, 2): 8},
        ("dkdv", 16): {(16, 32, 4, 3): 8},
        ("dkdv", 32): {(16, 32, 4, 2): 8, (16, 32, 4, 3): 16},
        ("dkdv", 40): {(32, 16, 8, 2): 64},
        ("dkdv", 64): {(16, 32, 8, 2): 32, (32, 16, 8, 2): 8},
        ("dkdv", 80): {(16, 16, 8, 2): 16, (16, 64, 8, 2): 64},
        ("dkdv", 128): {(16, 16, 8, 2): 24},
        ("dkdv", 160): {(16, 16, 8, 2): 8},
        ("dq", 80): {(16, 64, 4, 2): 200, (32, 64, 8, 2): 120, (32, 64, 8, 3): 128},
        ("dq", 128): {(16, 64, 4, 2): 200, (32, 64, 8, 2): 112, (32, 64, 8, 3): 120},
        ("dq", 160): {(16, 16, 4, 2): 8},
        ("forward", 16): {(16, 64, 8, 2): 8},
        ("forward", 40): {(16, 64, 8, 2): 8, (32, 16, 4, 2): 8, (32, 32, 4, 2): 8, (32, 64, 8, 2): 8,
                          (64, 16, 8, 2): 16},
        ("forward", 80): {(16, 64, 4, 2): 256},
        ("forward", 128): {(16, 64, 4, 2): 208},
        ("forward paged", 16): {(32, 32, 4, 2): 8},
        ("forward paged", 40): {(16, 64, 4, 2): 472, (32, 32, 4, 2): 120},
        ("forward paged", 64): {(32, 64, 8, 2): 8},
        ("forward paged", 80): {(16, 64, 4, 2): 296},
        ("forward paged", 128): {(16, 64, 4, 2): 288},
    },
}


def before_hopper(device: torch.device) -> bool:
    """Whether ``device`` is a GPU older than Hopper (compute capability below 9.0); a CPU is not one."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) < HOPPER


def surveyed_dim(width: int, constexprs: dict) -> int:
    """The head dim whose sm_80 list serves a launch in tiles ``width`` columns wide whose constexprs are
    ``constexprs`` (a padded head dim, ``D_REAL < width``, reads the padded dim surveyed in that width)."""
    return PADDED_SURVEYED.get(width, width) if _variants.padded(width, constexprs) else width


def spills(part: str, float32: bool, width: int, constexprs: dict) -> dict[tuple[int, int, int, int], int]:
    """The tiles of ``part`` (``"forward"``, ``"decode"``, ``"dkdv"`` or ``"dq"``, with ``" paged"`` on a paged
    cache) that spill on sm_80 for a launch in tiles ``width`` wide with these ``constexprs``, and the bytes each
    spills (the more of the two tritons')."""
    return SPILLS["float32" if float32 else "float16"].get((part, surveyed_dim(width, constexprs)), {})


def hopper_proxies(table: dict) -> dict:
    """``table`` (a kernel's Hopper spill lists, by feature) less those :data:`MEASURED` says sm_80 was surveyed
    for: what a launch before Hopper still reads of it, for what was compiled for Hopper alone (dropout, softcap,
    ALiBi, packed batches), as the best evidence there is of the registers each costs."""
    return {name: lists for name, lists in table.items() if name not in MEASURED}


def least_spilling(items: list, tile, spilled: dict):
    """The first of ``items`` that spills fewest bytes in ``spilled`` (:func:`spills`; ``tile(item)`` is how it
    names one; a tile it does not name spills none): where every tile of a list spills before Hopper (dK/dV at
    D = 40, 16-bit, from 16 to 312 bytes), the lightest rather than the first."""
    return min(items, key=lambda item: spilled.get(tile(item), 0))
