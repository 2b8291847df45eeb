"""``torch.func.vmap`` over the kernels: a vmapped dimension is more sequences of the batch.

``vmap(f)`` runs ``f`` once over a batch of inputs, as if each were its own call: per-sample gradients
(``vmap(grad(loss))``, as differential privacy needs), Jacobians (``jacrev``), ensembles of models. A Triton
launch cannot see vmap's batched tensors, so the operators (``_ops``) carry a *batching rule*: given the
batched inputs and which of their dims is the vmapped one, the rule moves that dim to the front and merges it
with the batch dim, launches once on the bigger batch, and splits the result again::

    q [N, B, H, T, D]  (N: vmapped)  ->  q [N*B, H, T, D]  ->  one launch  ->  out [N*B, H, T, D]  ->  [N, B, H, T, D]

An input that is not batched (shared by every sample: the weights of a model under per-sample gradients) is
broadcast to ``N`` copies of itself first (``expand``; the merge copies it). Attention never mixes
sequences, so this is exactly ``N`` separate calls, in one launch.

What a sequence of the merged batch cannot express is refused by name: packed batches (``cu_seqlens``) and
caches (they index sequences by position in the batch), and dropout (vmap's ``randomness`` modes decide
whether samples share random draws, which a seed per launch cannot honour).
"""

from __future__ import annotations

import torch


def wrapped(*tensors) -> bool:
    """Whether any of ``tensors`` is a ``torch.func`` transform's wrapper (a batched tensor under vmap, say):
    then the kernels must be reached through the operators, whose rules unwrap them."""
    return any(isinstance(x, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(x) for x in tensors)


def _merged(x, dim, n: int):
    """``x`` with its vmapped ``dim`` (``None``: not batched, then broadcast to ``n`` copies) merged into its
    first dim: ``[.., N, ..]`` -> ``[N * x.shape[0], ...]``."""
    x = x.expand(n, *x.shape) if dim is None else x.movedim(dim, 0)  # (N, B, ...)
    return x.reshape(n * x.shape[1], *x.shape[2:])  # (N*B, ...)


def _split(x, n: int):
    """``[N*B, ...]`` -> ``[N, B, ...]``: the merged batch back into vmap's dim 0."""
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])


def _merged_slopes(slopes, dim, n: int, B: int):
    """ALiBi slopes for the merged batch: ``[H]`` (every sequence alike) stays; ``[B, H]`` and per-sample
    slopes become ``[N*B, H]``."""
    if slopes is None or (dim is None and slopes.dim() == 1):
        return slopes
    if dim is None:
        return slopes.repeat(n, 1)  # (N*B, H): sample-major, as the merged batch
    slopes = slopes.movedim(dim, 0)  # (N, H) or (N, B, H)
    if slopes.dim() == 2:
        slopes = slopes[:, None].expand(n, B, slopes.shape[1])  # (N, B, H): the sample's slopes for each sequence
    return slopes.reshape(n * B, slopes.shape[-1])  # (N*B, H)


def _dim(in_dims, i: int):
    """The vmapped dim of argument ``i``: ``None`` past the end (the dispatcher drops trailing arguments left at
    their defaults, and ``in_dims`` with them)."""
    return in_dims[i] if i < len(in_dims) else None


def _refuse(what: str) -> None:
    raise ValueError(f"torch.func.vmap over the kernels runs fixed-length attention only (a vmapped dim becomes "
                     f"more sequences of the batch); {what} cannot be vmapped: loop over the samples instead, or "
                     f"pack them into one call")


def forward_rule(info, in_dims, q, k, v, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                 max_seqlen_k, seqused_k=None, num_splits=0, dropout_p=0.0, dropout_seed=None, softcap=0.0,
                 alibi_slopes=None, cache_batch_idx=None, cache_leftpad=None, block_table=None):
    """``attn_course::flash_forward`` on batched inputs: ``((out, lse), (0, 0))``, vmap's dim first."""
    if cu_seqlens_q is not None:
        _refuse("a packed batch (flash_attention_varlen)")
    if any(x is not None for x in (seqused_k, cache_batch_idx, cache_leftpad, block_table)):
        _refuse("a key/value cache (flash_attention_kvcache)")
    if dropout_p:
        _refuse("dropout (dropout_p > 0)")
    n = info.batch_size
    B = q.shape[0] if in_dims[0] is None else q.movedim(in_dims[0], 0).shape[1]  # sequences per sample
    q, k, v = (_merged(x, d, n) for x, d in zip((q, k, v), in_dims[:3], strict=True))  # (N*B, H or H_kv, T, D)
    slopes = _merged_slopes(alibi_slopes, _dim(in_dims, 15), n, B)
    out, lse = torch.ops.attn_course.flash_forward(q, k, v, scale, window_left, window_right, None, None, 0, 0,
                                                   None, num_splits, 0.0, None, softcap, slopes)
    return (_split(out, n), _split(lse, n)), (0, 0)  # (N, B, H, T_q, D), (N, B, H, T_q)


def backward_rule(info, in_dims, dout, dlse, q, k, v, out, lse, scale, window_left, window_right, cu_seqlens_q,
                  cu_seqlens_k, max_seqlen_q, max_seqlen_k, need_dq, need_dkdv, dropout_p=0.0, dropout_seed=None,
                  softcap=0.0, alibi_slopes=None):
    """``attn_course::flash_backward`` on batched inputs: ``((dq, dk, dv), out_dims)``; a gradient not asked
    for stays an unbatched empty tensor."""
    if cu_seqlens_q is not None:
        _refuse("a packed batch (flash_attention_varlen)")
    if dropout_p:
        _refuse("dropout (dropout_p > 0)")
    n = info.batch_size
    B = q.shape[0] if in_dims[2] is None else q.movedim(in_dims[2], 0).shape[1]
    merged = [None if x is None else _merged(x, d, n)
              for x, d in zip((dout, dlse, q, k, v, out, lse), in_dims[:7], strict=True)]  # each (N*B, ...)
    slopes = _merged_slopes(alibi_slopes, _dim(in_dims, 19), n, B)
    grads = torch.ops.attn_course.flash_backward(*merged, scale, window_left, window_right, None, None, 0, 0,
                                                 need_dq, need_dkdv, 0.0, None, softcap, slopes)
    needed = (need_dq, need_dkdv, need_dkdv)
    return (tuple(_split(g, n) if need else g for g, need in zip(grads, needed, strict=True)),
            tuple(0 if need else None for need in needed))
