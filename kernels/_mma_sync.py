"""Tiles that spill registers on GPUs whose products are ``mma.sync``'s, and the untuned launches that avoid them.

The tile lists, and the spill lists that prune them, are chosen on Hopper (sm_90, the survey
``benchmarks/kernel_resources.py``), whose products are ``wgmma``'s. GPUs older than Hopper (sm_80: an A100; the
sm_86 and sm_89 cards compile the same code) and consumer Blackwell (sm_120: RTX 50 series) multiply with
``mma.sync``, which holds its operands in registers differently, and run the ``pointer`` variant (``auto``:
``_variants.may_use_tma``). Compiled for them (``benchmarks/kernel_shared_memory.py``) other tiles spill, among
them the tile Hopper runs with autotuning off: for 20 (dtype, kernel, head dim) launches on sm_80 under triton 3.9
and 23 under 3.6 (the forward's 128 x 64 on 8 warps at D = 80 and 128, dQ's 64 x 64 at every head dim from 40 to
128, dK/dV's 32 x 64 at D = 40 and 64, ...), and more on sm_120.

With the autotuner on nothing here applies: it times a spilling tile with the rest, and a few bytes of spill
may still be fastest. With it off (``ATTN_COURSE_AUTOTUNE=0``) one tile runs untimed, so on such a GPU
(:func:`target`: the surveyed target its code is) ``flash_fwd.default_config`` and ``flash_bwd.default_config``
skip the tiles :data:`SPILLS` names for it: that list replaces Hopper's for what the survey covers (a padded head
dim, a paged cache: :data:`MEASURED`), stands beside Hopper's lists for what it does not (:func:`hopper_proxies`)
as one more list (``_variants.fewest_spills``' ``also``), and of the tiles named by fewest lists the launch takes
the one that spills fewest bytes on its target (:func:`least_spilling`: where every tile spills, the lightest).

:data:`SPILLS` holds, per target, every tile of the pointer lists that spills under triton 3.9 or 3.6, and the
more bytes of the two (``benchmarks/results/kernel_shared_memory*.json``; ``tests/test_kernels_fit.py`` checks it
against both, exactly). It is keyed by dtype (``float16`` for both 16-bit types), part (a kernel; on a paged cache
``"<kernel> paged"``, whose tiles are named as listed, before ``flash_paged.deeper``) and head dim. A padded head
dim reads the list surveyed for its tile width (:func:`surveyed_dim`: 40, 80 and 160 for 64-, 128- and 256-wide
tiles; a padded 16- or 32-wide one, never surveyed, the width's own). Dropout, softcap, ALiBi and packed batches
were not compiled for these targets: their launches skip the plain part's tiles (a feature only adds registers).
Untimed: no GPU has run either choice.
"""

from __future__ import annotations

import torch

from attn_course.kernels import _variants

# compute capability's major -> the target surveyed for it (sm_86 and sm_89 compile as sm_80 does); Hopper (9.x)
# and datacenter Blackwell (10.x) are not mma.sync GPUs
SURVEYED = {8: 80, 12: 120}
PADDED_SURVEYED = {64: 40, 128: 80, 256: 160}  # tile width -> the padded head dim surveyed in it
# The kernels' Hopper spill lists (flash_fwd.FEATURE_SPILLS, ...) that the survey measured for each target itself:
# no feature, a padded head dim, a paged cache. On such a GPU SPILLS stands in for them.
MEASURED = ("PLAIN", "PADDED", "PADDED+POINTER", "PAGED", "PADDED+PAGED")

SPILLS: dict[int, dict[str, dict[tuple[str, int], dict[tuple[int, int, int, int], int]]]] = {
    80: {
        "float16": {
            ("decode", 16): {(16, 128, 4, 2): 32},
            ("decode", 128): {(16, 128, 4, 2): 8},
            ("decode", 160): {(16, 64, 4, 2): 8},
            ("decode paged", 40): {(16, 64, 4, 3): 88, (16, 64, 4, 4): 88, (16, 128, 4, 2): 3176,
                                   (16, 128, 4, 3): 3176},
            ("decode paged", 80): {(16, 64, 4, 4): 8, (16, 64, 8, 3): 8},
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
            ("forward paged", 80): {(64, 64, 4, 3): 40, (64, 128, 4, 3): 144, (128, 32, 4, 4): 80,
                                    (128, 64, 4, 3): 6416, (128, 64, 4, 4): 6352, (128, 64, 8, 3): 8,
                                    (128, 128, 8, 2): 104, (128, 128, 8, 3): 168},
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
    },
    120: {
        "float16": {
            ("decode", 32): {(16, 128, 4, 2): 8},
            ("decode", 40): {(16, 128, 4, 2): 8, (16, 128, 4, 3): 8},
            ("decode", 80): {(16, 128, 4, 3): 8},
            ("decode", 128): {(16, 128, 4, 2): 8},
            ("decode paged", 40): {(16, 128, 4, 2): 440, (16, 128, 4, 3): 440},
            ("decode paged", 64): {(16, 128, 4, 2): 8},
            ("decode paged", 160): {(16, 64, 4, 3): 48, (16, 64, 4, 4): 208},
            ("decode paged", 256): {(16, 64, 4, 3): 64, (16, 64, 4, 4): 216},
            ("dkdv", 16): {(64, 64, 8, 3): 48},
            ("dkdv", 32): {(64, 64, 8, 3): 136, (64, 128, 8, 2): 24},
            ("dkdv", 40): {(16, 64, 4, 3): 40, (16, 64, 8, 2): 16, (16, 128, 8, 2): 24, (32, 64, 8, 2): 64,
                           (32, 64, 8, 3): 64, (32, 128, 8, 2): 88, (64, 64, 8, 3): 352, (64, 128, 8, 2): 408},
            ("dkdv", 64): {(16, 64, 4, 3): 32, (32, 64, 8, 2): 40, (32, 64, 8, 3): 56, (32, 128, 8, 2): 40,
                           (64, 64, 8, 3): 504, (64, 128, 8, 2): 240},
            ("dkdv", 80): {(16, 64, 4, 3): 224, (16, 128, 8, 2): 128, (32, 64, 8, 3): 16, (32, 128, 8, 2): 496,
                           (64, 64, 8, 3): 128, (64, 128, 8, 2): 1880},
            ("dkdv", 128): {(16, 64, 4, 3): 216, (16, 128, 8, 2): 128, (32, 64, 8, 3): 8, (32, 128, 8, 2): 496,
                            (64, 64, 8, 3): 128, (64, 128, 8, 2): 1880},
            ("dkdv", 160): {(32, 32, 8, 2): 24},
            ("dkdv", 256): {(32, 32, 8, 2): 32},
            ("dq", 32): {(64, 128, 8, 3): 56, (128, 128, 8, 2): 48},
            ("dq", 40): {(64, 64, 4, 3): 56, (64, 64, 8, 2): 56, (64, 128, 8, 3): 648, (128, 64, 8, 3): 104,
                         (128, 128, 8, 2): 760},
            ("dq", 64): {(64, 64, 4, 3): 144, (64, 64, 8, 2): 136, (64, 128, 8, 3): 688, (128, 64, 8, 3): 144,
                         (128, 128, 8, 2): 712},
            ("dq", 80): {(64, 64, 4, 3): 200, (64, 128, 8, 3): 80, (128, 16, 8, 3): 24, (128, 32, 8, 3): 80,
                         (128, 64, 8, 3): 560, (128, 128, 8, 2): 1792},
            ("dq", 128): {(64, 64, 4, 3): 200, (64, 128, 8, 3): 80, (128, 16, 8, 3): 32, (128, 32, 8, 3): 80,
                          (128, 64, 8, 3): 560, (128, 128, 8, 2): 1824},
            ("dq", 160): {(128, 16, 8, 2): 456, (128, 32, 8, 2): 672},
            ("dq", 256): {(128, 16, 8, 2): 456, (128, 32, 8, 2): 736},
            ("forward", 16): {(128, 64, 4, 3): 8},
            ("forward", 40): {(64, 128, 4, 3): 224, (128, 32, 4, 4): 80, (128, 64, 4, 3): 344, (128, 64, 4, 4): 344,
                              (128, 128, 8, 2): 136, (128, 128, 8, 3): 136},
            ("forward", 64): {(64, 128, 4, 3): 208, (128, 32, 4, 4): 8, (128, 64, 4, 3): 80, (128, 64, 4, 4): 80,
                              (128, 128, 8, 2): 72, (128, 128, 8, 3): 184},
            ("forward", 80): {(64, 64, 4, 3): 96, (64, 128, 4, 3): 128, (128, 32, 4, 4): 248, (128, 64, 4, 3): 464,
                              (128, 64, 4, 4): 464, (128, 64, 8, 3): 80, (128, 128, 8, 2): 240, (128, 128, 8, 3): 264},
            ("forward", 128): {(64, 64, 4, 3): 96, (64, 128, 4, 3): 136, (128, 32, 4, 4): 248, (128, 64, 4, 3): 464,
                               (128, 64, 4, 4): 464, (128, 64, 8, 3): 80, (128, 128, 8, 2): 240, (128, 128, 8, 3): 256},
            ("forward", 160): {(64, 32, 4, 3): 176, (64, 64, 8, 2): 80, (128, 32, 8, 2): 480},
            ("forward", 256): {(64, 32, 4, 3): 168, (64, 64, 8, 2): 88, (128, 32, 8, 2): 480},
            ("forward paged", 16): {(128, 128, 8, 3): 8},
            ("forward paged", 40): {(64, 64, 4, 3): 72, (64, 128, 4, 3): 368, (128, 32, 4, 4): 112,
                                    (128, 64, 4, 3): 504, (128, 64, 4, 4): 504, (128, 128, 8, 2): 184,
                                    (128, 128, 8, 3): 184},
            ("forward paged", 64): {(64, 128, 4, 3): 88, (128, 64, 4, 3): 80, (128, 64, 4, 4): 80,
                                    (128, 128, 8, 2): 72, (128, 128, 8, 3): 80},
            ("forward paged", 80): {(64, 64, 4, 3): 128, (64, 128, 4, 3): 152, (128, 32, 4, 4): 112,
                                    (128, 64, 4, 3): 504, (128, 64, 4, 4): 608, (128, 64, 8, 3): 80,
                                    (128, 128, 8, 2): 224, (128, 128, 8, 3): 208},
            ("forward paged", 128): {(64, 64, 4, 3): 128, (64, 128, 4, 3): 152, (128, 32, 4, 4): 112,
                                     (128, 64, 4, 3): 520, (128, 64, 4, 4): 632, (128, 64, 8, 3): 80,
                                     (128, 128, 8, 2): 224, (128, 128, 8, 3): 224},
            ("forward paged", 160): {(64, 32, 4, 3): 176, (64, 64, 8, 2): 120, (128, 32, 8, 2): 296},
            ("forward paged", 256): {(64, 32, 4, 3): 136, (64, 64, 8, 2): 112, (128, 32, 8, 2): 296},
        },
        "float32": {
            ("decode", 16): {(16, 64, 4, 2): 8},
            ("decode", 40): {(16, 64, 4, 2): 32, (16, 64, 4, 3): 32, (16, 64, 8, 2): 24},
            ("decode", 80): {(16, 64, 8, 2): 32},
            ("decode", 128): {(16, 64, 8, 2): 32},
            ("decode paged", 16): {(16, 64, 4, 3): 8, (16, 64, 8, 2): 8},
            ("decode paged", 32): {(16, 64, 4, 3): 8, (16, 64, 8, 2): 24},
            ("decode paged", 40): {(16, 64, 4, 2): 768, (16, 64, 4, 3): 1160},
            ("dkdv", 16): {(16, 32, 4, 2): 8, (16, 32, 4, 3): 8, (32, 16, 8, 3): 48},
            ("dkdv", 32): {(16, 32, 4, 2): 32, (16, 32, 4, 3): 8},
            ("dkdv", 40): {(32, 16, 8, 2): 40},
            ("dkdv", 80): {(16, 16, 8, 2): 16},
            ("dkdv", 128): {(16, 16, 8, 2): 16},
            ("dq", 40): {(32, 64, 8, 2): 8},
            ("dq", 64): {(16, 64, 4, 2): 8},
            ("dq", 80): {(32, 64, 8, 2): 8},
            ("dq", 128): {(32, 64, 8, 2): 8},
            ("forward", 32): {(64, 16, 8, 2): 8},
            ("forward", 40): {(16, 64, 8, 2): 24, (32, 32, 4, 2): 48},
            ("forward", 64): {(32, 32, 4, 2): 32},
            ("forward", 80): {(16, 16, 8, 2): 8, (32, 16, 8, 2): 8},
            ("forward", 128): {(16, 16, 8, 2): 8, (32, 16, 8, 2): 8},
            ("forward paged", 16): {(16, 64, 4, 2): 16},
            ("forward paged", 40): {(16, 64, 4, 2): 544, (32, 32, 4, 2): 80},
            ("forward paged", 64): {(32, 32, 4, 2): 56},
        },
    },
}


def target(device: torch.device) -> int | None:
    """The surveyed target (80, 120) whose code ``device`` runs when it is an mma.sync GPU (compute capability 8.x
    or 12.x), else ``None`` (Hopper, datacenter Blackwell, a CPU: nothing is asked of a CPU)."""
    if device.type != "cuda":
        return None
    return SURVEYED.get(torch.cuda.get_device_capability(device)[0])


def surveyed_dim(width: int, constexprs: dict) -> int:
    """The head dim whose list serves a launch in tiles ``width`` columns wide whose constexprs are
    ``constexprs`` (a padded head dim, ``D_REAL < width``, reads the padded dim surveyed in that width)."""
    return PADDED_SURVEYED.get(width, width) if _variants.padded(width, constexprs) else width


def spills(sm: int, part: str, float32: bool, width: int, constexprs: dict) -> dict[tuple[int, int, int, int], int]:
    """The tiles of ``part`` (``"forward"``, ``"decode"``, ``"dkdv"`` or ``"dq"``, with ``" paged"`` on a paged
    cache) that spill on ``sm_<sm>`` for a launch in tiles ``width`` wide with these ``constexprs``, and the bytes
    each spills (the more of the two tritons')."""
    return SPILLS[sm].get("float32" if float32 else "float16", {}).get((part, surveyed_dim(width, constexprs)), {})


def hopper_proxies(table: dict, sm: int | None) -> dict:
    """What a launch on target ``sm`` reads of ``table`` (a kernel's Hopper spill lists, by feature): all of it on
    Hopper (``sm`` None); on an mma.sync GPU those :data:`MEASURED` does not say the survey covers, for what was
    compiled for Hopper alone (dropout, softcap, ALiBi, packed batches), as the best evidence there is of the
    registers each costs."""
    return table if sm is None else {name: lists for name, lists in table.items() if name not in MEASURED}


def least_spilling(items: list, tile, spilled: dict):
    """The first of ``items`` that spills fewest bytes in ``spilled`` (:func:`spills`; ``tile(item)`` is how it
    names one; a tile it does not name spills none): where every tile of a list spills (dK/dV at D = 40, 16-bit,
    on sm_80: 16 to 480 bytes), the lightest rather than the first."""
    return min(items, key=lambda item: spilled.get(tile(item), 0))
