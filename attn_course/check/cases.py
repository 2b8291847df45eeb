"""Small helpers for building check cases: seeded random tensors and masks, and readable labels.

Cases are tiny but awkward (``T_q != T_k``, head dims that are not powers of two, lengths such as 5, 7
and 13), because square, power-of-two shapes hide mistakes: ``q @ k`` runs when ``T_k == d_k``, and a
top-left causal mask equals a bottom-right one when ``T_q == T_k``.
"""

from __future__ import annotations

import torch


def randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """A float32 tensor of unit-normal entries times ``scale``, drawn from ``gen``."""
    return torch.randn(*shape, generator=gen) * scale


def random_mask(gen: torch.Generator, T_q: int, T_k: int, p_keep: float = 0.6, dead_rows=()) -> torch.Tensor:
    """A bool ``[T_q, T_k]`` mask (True = may attend). Every row allows at least one key, except the rows
    listed in ``dead_rows``, which allow none (attention must return zeros there)."""
    mask = torch.rand(T_q, T_k, generator=gen) < p_keep  # (T_q, T_k)
    first = torch.randint(0, T_k, (T_q,), generator=gen)  # one sure key per row
    mask[torch.arange(T_q), first] = True
    for r in dead_rows:
        mask[r] = False
    return mask


def label(**fields) -> str:
    """``label(T_q=5, T_k=7)`` -> ``"T_q=5, T_k=7"``: says which case failed."""
    return ", ".join(f"{k}={v}" for k, v in fields.items())
