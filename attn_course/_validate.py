"""Input checks shared by every public function.

Each check raises ``ValueError`` (wrong shape or value) or ``TypeError`` (wrong type or dtype) with a
message that names the tensors and shapes at fault, so that a learner sees *what* is wrong instead of a
traceback from deep inside ``torch.matmul``.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def require_tensor(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def require_float(x: torch.Tensor, name: str, what: str = "attention") -> None:
    """Attention is defined on real floating-point numbers; integer tensors are a common slip."""
    require_tensor(x, name)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}, but {what} needs a floating-point tensor "
            f"(float16, bfloat16, float32 or float64); did you forget .float()?"
        )


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Check that q ``[..., T_q, d_k]``, k ``[..., T_k, d_k]`` and v ``[..., T_k, d_v]`` fit together."""
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        require_float(x, name)
        if x.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims [..., T, d], got shape {tuple(x.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head dim d_k (last dim) to take dot products: "
            f"q {tuple(q.shape)} has d_k={q.shape[-1]}, k {tuple(k.shape)} has d_k={k.shape[-1]}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length T_k (one value per key): "
            f"k {tuple(k.shape)} has T_k={k.shape[-2]}, v {tuple(v.shape)} has T_k={v.shape[-2]}"
        )
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the leading (batch/head) dims of q {tuple(q.shape)}, k {tuple(k.shape)} and "
            f"v {tuple(v.shape)} do not broadcast together"
        ) from None


def check_mask(mask, scores_shape: torch.Size) -> None:
    """A mask must be bool (True = may attend) or floating (additive) and broadcast to the scores."""
    require_tensor(mask, "mask")
    if mask.dtype != torch.bool and mask.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"mask has dtype {mask.dtype}; use a bool mask (True = may attend) or an additive float "
            f"mask (0 = attend, -inf = blocked)"
        )
    try:
        out = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        out = None
    if out != scores_shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape "
            f"{tuple(scores_shape)} ([..., T_q, T_k])"
        )


def integer_scalar(x) -> int | None:
    """``int(x)`` for a Python or NumPy integer, ``None`` for anything else (a bool included): ``np.int64(4)``,
    what arithmetic on a NumPy array's lengths gives, is as good a length as ``4``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        return None
    return int(x)


def real_scalar(x) -> float | None:
    """``float(x)`` for a Python or NumPy real number (``np.float32(0.125)``), ``None`` for anything else
    (a bool included)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x)


def check_softcap(softcap) -> float:
    """``softcap``: a finite real number ``>= 0`` (``0``: no cap), as a float."""
    value = real_scalar(softcap)
    if value is None:
        raise TypeError(f"softcap must be a number (0.0 for no cap), got {type(softcap).__name__} {softcap!r}")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"softcap must be a finite number >= 0 (the scores are capped smoothly at +-softcap; 0 "
                         f"turns the cap off), got {softcap!r}")
    return value


def check_positive_int(x, name: str, *, allow_zero: bool = False) -> int:
    n = integer_scalar(x)
    if n is None:
        raise TypeError(f"{name} must be an int, got {type(x).__name__} {x!r}")
    x = n
    if x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{name} must be {bound}, got {x}")
    return x
