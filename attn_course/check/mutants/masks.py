"""Classic mistakes in building masks (bool, True = may attend), each a wrong implementation.

Most are about positions: query ``i`` of ``T_q`` sits at absolute position ``i + T_k - T_q`` (bottom-right
alignment), and off-by-ones move the diagonal. With ``T_q = 2, T_k = 4``::

    right (bottom-right)   top-left          diagonal excluded     inverted
    1 1 1 0                1 0 0 0           1 1 0 0               0 0 0 1
    1 1 1 1                1 1 0 0           1 1 1 0               0 0 0 0
"""

from __future__ import annotations

import torch

from ..base import Mutant


def _pos(T_q: int, T_k: int, aligned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions ``[T_q, 1]`` (bottom-right aligned unless ``aligned=False``) and key positions ``[1, T_k]``."""
    i = torch.arange(T_q).unsqueeze(1) + ((T_k - T_q) if aligned else 0)  # (T_q, 1)
    return i, torch.arange(T_k).unsqueeze(0)  # (1, T_k)


# --- causal_mask(T_q, T_k) ------------------------------------------------------------------------


def causal_top_left(T_q, T_k):
    return torch.ones(T_q, T_k).tril().bool()  # PyTorch's is_causal: query i sees keys 0..i


def causal_diagonal_excluded(T_q, T_k):
    i, j = _pos(T_q, T_k)
    return j < i  # a token cannot see itself


def causal_one_too_far(T_q, T_k):
    i, j = _pos(T_q, T_k)
    return j <= i + 1  # sees the next token too


def causal_inverted(T_q, T_k):
    i, j = _pos(T_q, T_k)
    return j > i  # True where attention is blocked


def causal_additive(T_q, T_k):
    i, j = _pos(T_q, T_k)
    return torch.zeros(T_q, T_k).masked_fill(j > i, float("-inf"))  # the additive form, not a bool mask


def causal_float(T_q, T_k):
    i, j = _pos(T_q, T_k)
    return (j <= i).float()  # right pattern, wrong dtype


CAUSAL = (
    Mutant(
        "top_left_alignment",
        "Your causal mask is aligned top-left (query i sees keys 0..i), like PyTorch's is_causal; the course "
        "aligns it bottom-right, so that the last query sees every key (one-token decoding with a KV cache).",
        "query i sits at absolute position i + (T_k - T_q): allow key j iff j <= i + T_k - T_q.",
        causal_top_left,
    ),
    Mutant(
        "diagonal_excluded",
        "Your causal mask is off by one: no token may attend to itself (the diagonal is False).",
        "use <= rather than <: query i may see key j iff j <= i + T_k - T_q.",
        causal_diagonal_excluded,
    ),
    Mutant(
        "diagonal_one_too_far",
        "Your causal mask is off by one: each query also sees the next token (torch.tril(..., diagonal=1)?).",
        "query i may see key j iff j <= i + T_k - T_q; tril's diagonal argument for that is T_k - T_q.",
        causal_one_too_far,
    ),
    Mutant(
        "mask_inverted",
        "Your mask is True exactly where attention must be blocked: it is inverted (an upper triangle).",
        "in the course (and PyTorch) a bool mask's True means 'may attend'.",
        causal_inverted,
    ),
    Mutant(
        "additive_instead_of_bool",
        "You returned an additive float mask (0 / -inf); this exercise asks for a bool mask.",
        "return the comparison itself (a bool tensor, True = may attend).",
        causal_additive,
    ),
    Mutant(
        "float_instead_of_bool",
        "Your mask has the right pattern but is not a bool tensor: it holds numbers 0 and 1.",
        "return a bool tensor: keep the comparison's result, or call .bool().",
        causal_float,
    ),
)


# --- sliding_window_mask(T_q, T_k, window) ------------------------------------------------------------


def _window(T_q, T_k, left, right, *, aligned=True, strict=False) -> torch.Tensor:
    i, j = _pos(T_q, T_k, aligned)
    ok = torch.ones(T_q, T_k, dtype=torch.bool)
    lo, hi = (j > i - left, j < i + right) if strict else (j >= i - left, j <= i + right)
    if left >= 0:
        ok &= lo
    if right >= 0:
        ok &= hi
    return ok


def window_top_left(T_q, T_k, window):
    return _window(T_q, T_k, *window, aligned=False)


def window_sides_swapped(T_q, T_k, window):
    return _window(T_q, T_k, window[1], window[0])


def window_strict(T_q, T_k, window):
    return _window(T_q, T_k, *window, strict=True)


def window_minus_one_literal(T_q, T_k, window):
    i, j = _pos(T_q, T_k)
    left, right = window
    return (j >= i - left) & (j <= i + right)  # -1 taken as a number, not as "unbounded"


def window_inverted(T_q, T_k, window):
    return ~_window(T_q, T_k, *window)


SLIDING_WINDOW = (
    Mutant(
        "top_left_alignment",
        "Your window is aligned top-left; with T_q != T_k the course aligns it bottom-right (query i sits at "
        "absolute position i + T_k - T_q).",
        "compute positions as i + (T_k - T_q) before comparing with the key index j.",
        window_top_left,
    ),
    Mutant(
        "window_sides_swapped",
        "Your window looks right where it should look left: you swapped window=(left, right).",
        "query i may see key j iff i - left <= j <= i + right.",
        window_sides_swapped,
    ),
    Mutant(
        "window_off_by_one",
        "Your window is one key too narrow on each bounded side: strict < instead of <=.",
        "the bounds are inclusive: i - left <= j <= i + right.",
        window_strict,
    ),
    Mutant(
        "minus_one_not_unbounded",
        "A side given as -1 should be unbounded, but your mask treats -1 as a number.",
        "only apply a side's bound when it is >= 0 (flash-attn's window_size convention).",
        window_minus_one_literal,
    ),
    Mutant(
        "mask_inverted",
        "Your mask is True exactly outside the window: it is inverted.",
        "a bool mask's True means 'may attend'.",
        window_inverted,
    ),
)


# --- padding_mask(lengths, T) ---------------------------------------------------------------------


def _valid(lengths, T, *, inclusive=False) -> torch.Tensor:
    j = torch.arange(T).unsqueeze(0)  # (1, T)
    n = torch.tensor(lengths).unsqueeze(1)  # (B, 1)
    return j <= n if inclusive else j < n  # (B, T)


def padding_no_broadcast_dims(lengths, T):
    return _valid(lengths, T)  # (B, T): does not broadcast against scores [B, H, T_q, T_k]


def padding_query_axis(lengths, T):
    return _valid(lengths, T)[:, None, :, None]  # (B, 1, T, 1): masks queries, not keys


def padding_inverted(lengths, T):
    return ~_valid(lengths, T)[:, None, None, :]


def padding_off_by_one(lengths, T):
    return _valid(lengths, T, inclusive=True)[:, None, None, :]


PADDING = (
    Mutant(
        "missing_broadcast_dims",
        "Your mask is [B, T]: it has the right pattern but will not broadcast against scores [B, H, T_q, T_k] "
        "(it would line the batch up with the queries).",
        "add the head and query dims: mask[:, None, None, :] has shape [B, 1, 1, T].",
        padding_no_broadcast_dims,
    ),
    Mutant(
        "padding_on_query_axis",
        "Your mask is [B, 1, T, 1]: it hides padded queries, but padding is about keys (no real token may "
        "attend to a padded key).",
        "put T last: shape [B, 1, 1, T].",
        padding_query_axis,
    ),
    Mutant(
        "mask_inverted",
        "Your mask is True on the padding and False on the real tokens: it is inverted.",
        "True = may attend: the first lengths[b] keys are True.",
        padding_inverted,
    ),
    Mutant(
        "padding_off_by_one",
        "Your mask lets each sequence see one padded key too many (j <= length instead of j < length).",
        "positions 0 .. length-1 are real: j < length.",
        padding_off_by_one,
    ),
)


# --- prefix_lm_mask(T, prefix_len) ----------------------------------------------------------------


def prefix_plain_causal(T, prefix_len):
    return torch.ones(T, T).tril().bool()


def prefix_rows_instead_of_columns(T, prefix_len):
    m = torch.ones(T, T).tril().bool()
    m[:prefix_len, :] = True  # the prefix's queries see everything, including the future
    return m


def prefix_off_by_one(T, prefix_len):
    m = torch.ones(T, T).tril().bool()
    m[:, : prefix_len + 1] = True
    return m


def prefix_inverted(T, prefix_len):
    m = torch.ones(T, T).tril().bool()
    m[:, :prefix_len] = True
    return ~m


PREFIX_LM = (
    Mutant(
        "prefix_ignored",
        "Your mask is plain causal: the prefix is not bidirectional.",
        "every query may also see the first prefix_len keys: causal | (j < prefix_len).",
        prefix_plain_causal,
    ),
    Mutant(
        "prefix_rows_instead_of_columns",
        "Your prefix tokens see the whole sequence, future included: you opened the prefix's rows (queries) "
        "instead of its columns (keys).",
        "the prefix is a set of keys everyone may see: mask[:, :prefix_len] = True.",
        prefix_rows_instead_of_columns,
    ),
    Mutant(
        "prefix_off_by_one",
        "Your prefix is one token too long.",
        "the prefix is keys 0 .. prefix_len-1: j < prefix_len.",
        prefix_off_by_one,
    ),
    Mutant(
        "mask_inverted",
        "Your mask is True exactly where attention must be blocked: it is inverted.",
        "a bool mask's True means 'may attend'.",
        prefix_inverted,
    ),
)


# --- varlen_mask(cu_seqlens) ------------------------------------------------------------------------


def _seq_ids(cu: list[int], right: bool = True) -> torch.Tensor:
    pos = torch.arange(cu[-1])  # (N,)
    return torch.searchsorted(torch.tensor(cu[1:]), pos, right=right)  # (N,) which sequence each token is in


def varlen_no_boundaries(cu_seqlens):
    return torch.ones(cu_seqlens[-1], cu_seqlens[-1], dtype=torch.bool)


def varlen_boundary_off_by_one(cu_seqlens):
    s = _seq_ids(list(cu_seqlens), right=False)  # the first token of each sequence joins the previous one
    return s.unsqueeze(1) == s.unsqueeze(0)


def varlen_inverted(cu_seqlens):
    s = _seq_ids(list(cu_seqlens))
    return s.unsqueeze(1) != s.unsqueeze(0)


VARLEN = (
    Mutant(
        "boundaries_ignored",
        "Every token sees every other token: the packed sequences leak into each other.",
        "token a may see token b only when both lie in the same [cu[s], cu[s+1]) range.",
        varlen_no_boundaries,
    ),
    Mutant(
        "boundary_off_by_one",
        "The first token of each sequence is grouped with the previous sequence: an off-by-one at cu_seqlens.",
        "sequence s holds the tokens cu[s] <= t < cu[s+1] (start inclusive, end exclusive).",
        varlen_boundary_off_by_one,
    ),
    Mutant(
        "mask_inverted",
        "Tokens see exactly the other sequences and not their own: the mask is inverted.",
        "a bool mask's True means 'may attend'.",
        varlen_inverted,
    ),
)
