"""Tile shapes that fit the GPU at hand.

Each tile shape needs its own amount of shared memory per program: the K and V tiles it stages, times the
pipeline's stages, plus whatever the compiler keeps there for the softmax and the matrix products. The tile
lists are chosen on Hopper, which lets one program use 227 KiB; other GPUs offer less (an A100 163 KiB, an A10,
L4, RTX 30 / 40 or RTX 50 card 99 KiB, a T4 64 KiB), and a program that asks for more is refused when its compiled
kernel is loaded, *before* it runs (Triton raises ``OutOfResources``; nothing has been written).

Triton's autotuner already skips a refused config while it times them, but two launches would still fail: the
one config used with autotuning off (``ATTN_COURSE_AUTOTUNE=0``), and an autotuned launch whose pruned list
holds a single config, or none that fits. :func:`first_that_fits` takes the next config of the list instead,
and where none fits it says so in terms of the launch and the GPU rather than as a compiler's complaint.
(``tests/test_kernels_fit.py`` checks the lists against the shared memory of common GPUs, compiled here.)
"""

from __future__ import annotations

import torch
from triton.runtime.errors import OutOfResources


class TilesDoNotFit(RuntimeError):
    """No tile shape offered for a launch fits the GPU's shared memory per block."""


def launch_name(kernel: str, variant: str, D: int, dtype: torch.dtype) -> str:
    """How :class:`TilesDoNotFit` names a launch: ``"the dq kernel (pointer) at head dim 80, bfloat16"``."""
    return f"the {kernel} kernel ({variant}) at head dim {D}, {str(dtype).removeprefix('torch.')}"


def first_that_fits(plans, launch, what, device: torch.device):
    """``launch(*plan)`` for the first of ``plans`` (an iterable, read only as far as needed:
    ``_variants.launch_plans``) whose kernel the GPU can load; a plan refused for want of shared memory, or of
    threads, moves on to the next. ``what`` names the launch for the error raised when every plan is refused
    (:class:`TilesDoNotFit`): a string, or a function that returns one, called only then (a launch that fits
    formats nothing)."""
    refused = []
    for plan in plans:
        try:
            return launch(*plan)
        except OutOfResources as e:  # (raised as the kernel loads: nothing has run)
            refused.append(e)
    what = what() if callable(what) else what
    if not refused:
        raise ValueError(f"{what}: no tile shape to launch (an empty list of plans)")
    least = min(refused, key=lambda e: (e.name != "shared memory", e.required))  # (threads: too many warps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    raise TilesDoNotFit(
        f"{what}: none of the {len(refused)} tile shapes tried fits this GPU ({name}), which allows "
        f"{least.limit} of {least.name} per program; the smallest needs {least.required}. A smaller head dim needs "
        f"less; CPU tensors run the same kernel in Triton's interpreter (slowly)") from refused[-1]
