"""flash-attn's functions with flash-attn's exact signatures, so that ported code runs unchanged.

    flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False)
        q [B, T_q, H, D], k and v [B, T_k, H_kv, D]  ->  out [B, T_q, H, D]
    flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           ..., return_attn_probs=False, block_table=None)
        q [total_q, H, D], k and v [total_k, H_kv, D]  ->  out [total_q, H, D]

and their packed-input forms, for models that project q, k and v (or k and v) with one matrix product::

    flash_attn_qkvpacked_func(qkv [B, T, 3, H, D], dropout_p=0.0, ...)            -> out [B, T, H, D]
    flash_attn_kvpacked_func(q [B, T_q, H, D], kv [B, T_k, 2, H_kv, D], ...)      -> out [B, T_q, H, D]
    flash_attn_varlen_qkvpacked_func(qkv [total, 3, H, D], cu_seqlens, max_seqlen, ...)
    flash_attn_varlen_kvpacked_func(q [total_q, H, D], kv [total_k, 2, H_kv, D], cu_seqlens_q, ...)

In the packed forms' forward, q, k and v are views into the packed tensor (the kernels read any strides:
no copy). The gradient comes back in the packed layout, as one ``dqkv`` / ``dkv``, which the backward
kernels write in place, as flash-attn's do (``_packed``; under ``torch.compile`` and ``torch.func``,
autograd stacks dq, dk and dv instead).

and its entry point for generation with a key/value cache (inference only)::

    flash_attn_with_kvcache(q [B, T_q, H, D], k_cache, v_cache [B, T_cache, H_kv, D], k=None, v=None,
                            rotary_cos=None, rotary_sin=None, cache_seqlens=None, ..., return_softmax_lse=False)

The argument *order* matters: models call ``flash_attn_func(q, k, v, self.dropout if self.training else
0.0, causal=True)``, and a signature without ``dropout_p`` in fourth place would take that 0.0 as the
softmax scale and attend uniformly, without an error.

``dropout_p`` is attention dropout as flash-attn applies it (``kernels/flash_dropout.py``: a fresh mask per
call from PyTorch's generator, never stored), and ``softcap`` its logit soft-capping, ``softcap * tanh(s /
softcap)`` on every scaled score (``kernels/flash_softcap.py``; ``0.0`` or ``None``: none). The kernels
take ``alibi_slopes`` as flash-attn does too (``kernels/flash_alibi.py``), and the cache its
``cache_batch_idx``, ``cache_leftpad`` and ``block_table`` (a paged cache, ``k_cache [num_pages, page_size,
H_kv, D]``: ``kernels/flash_paged.py``), which ``flash_attn_varlen_func`` takes too (a packed batch of queries
attending to paged keys, for inference): every argument of flash-attn's signatures does what it does there,
but ``return_attn_probs``' third element (below). The cache's rotary embeddings (``rotary_cos``,
``rotary_sin``, ``rotary_interleaved``) are applied as flash-attn applies them, in PyTorch before the launch
(``rotary``). ``num_splits`` splits each row's keys between programs as flash-attn does (``flash_split``:
faster decoding when the batch is too small to fill the GPU; 0 lets the kernel choose). ``deterministic`` is
accepted and changes nothing: the backward pass never uses atomics, so it is always deterministic.
``return_attn_probs=True`` returns ``(out, softmax_lse, S_dmask)`` as flash-attn does: ``S_dmask`` is ``None``
without dropout, and with ``dropout_p > 0`` the call's attention probabilities with the entries dropout zeroed
negated (``S_dmask >= 0`` is the keep mask), ``[B, H, T_q, T_k]`` (packed: ``[B, H, max_seqlen_q,
max_seqlen_k]``, each sequence in its corner). The kernels never form it: it is rebuilt after the call from
the reference attention and the call's seed (``attn_probs``), for tests and small shapes, as flash-attn means
it. Not under CUDA graph capture.
"""

from __future__ import annotations

import contextlib

import torch

from . import _packed, _vmap, attn_probs
from ._checks import check_dropout, check_scale, kernel_window
from .flash_attention import (
    flash_attention,
    flash_attention_kvcache,
    flash_attention_varlen,
    next_dropout_seed,
    swap_seq_and_heads,
)


def _cap(softcap) -> float:
    """flash-attn's ``softcap`` for the kernels: ``None`` (what some callers pass for "off") is ``0.0``."""
    return 0.0 if softcap is None else softcap


def _probs_seed(return_attn_probs: bool, dropout_p, q):
    """The seed the coming call will draw, when it must return its probabilities (``return_attn_probs`` with
    dropout), else ``None``. Read before the call, without drawing it (``next_dropout_seed``)."""
    if not return_attn_probs or check_dropout(dropout_p) == 0.0 or not isinstance(q, torch.Tensor):
        return None  # (a q that is not a tensor: the call names the problem)
    if q.is_cuda and torch.cuda.is_current_stream_capturing():
        raise ValueError("return_attn_probs with dropout_p > 0 builds the [T_q, T_k] probabilities after the call, "
                         "which a CUDA graph cannot replay: call it outside the capture (it is meant for tests)")
    return next_dropout_seed(q.device)


def _results(res, return_attn_probs: bool, probs=None):
    """flash-attn's return value: ``out``, or ``(out, softmax_lse, S_dmask)`` with ``return_attn_probs``
    (``S_dmask``: ``probs()``, or ``None`` without dropout)."""
    out, lse = res
    if not return_attn_probs:
        return out
    with torch.no_grad():
        return out, lse, None if probs is None else probs()


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_func``: q ``[B, T_q, H, D]``, k, v ``[B, T_k, H_kv, D]`` -> out
    ``[B, T_q, H, D]``; with ``return_attn_probs``, ``(out, softmax_lse [B, H, T_q], S_dmask)`` (``S_dmask``:
    ``None`` without dropout, else ``[B, H, T_q, T_k]``, see the module docstring).
    Differentiable in q, k, v (and through softmax_lse). See the module docstring for what is refused."""
    q, k, v = (swap_seq_and_heads(x, name) for x, name in ((q, "q"), (k, "k"), (v, "v")))  # (B, H, T, D)
    seed = _probs_seed(return_attn_probs, dropout_p, q)
    out, lse = flash_attention(q, k, v, causal=causal, scale=softmax_scale, window=window_size, dropout_p=dropout_p,
                               softcap=_cap(softcap), alibi_slopes=alibi_slopes, return_lse=True)
    probs = None if seed is None else lambda: attn_probs.fixed(  # (the call has checked every argument)
        q.to(out.dtype), k, seed, check_dropout(dropout_p), scale=check_scale(softmax_scale, q.shape[-1]),
        window=kernel_window(window_size, causal), softcap=_cap(softcap), alibi_slopes=alibi_slopes)
    return _results((swap_seq_and_heads(out), lse), return_attn_probs, probs)  # out (B, T_q, H, D)


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                           softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None):
    """flash-attn's ``flash_attn_varlen_func``: packed q ``[total_q, H, D]``, k, v ``[total_k, H_kv, D]`` (with
    ``block_table``, pools of pages ``[num_pages, page_size, H_kv, D]``: inference only) -> out ``[total_q, H, D]``;
    with ``return_attn_probs``, ``(out, softmax_lse [H, total_q], S_dmask)`` (``S_dmask``: ``None`` without
    dropout, else ``[B, H, max_seqlen_q, max_seqlen_k]``)."""
    if block_table is not None:  # (num_pages, page_size, H_kv, D) -> ours, (num_pages, H_kv, page_size, D): views
        k, v = swap_seq_and_heads(k, "k"), swap_seq_and_heads(v, "v")
    seed = _probs_seed(return_attn_probs, dropout_p, q)
    res = flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
                                 scale=softmax_scale, window=window_size, dropout_p=dropout_p, softcap=_cap(softcap),
                                 alibi_slopes=alibi_slopes, block_table=block_table, return_lse=True)
    probs = None if seed is None else lambda: attn_probs.varlen(  # (the call has checked every argument)
        q.to(res[0].dtype), k, cu_seqlens_q.cpu(), cu_seqlens_k.cpu(), int(max_seqlen_q), int(max_seqlen_k), seed,
        check_dropout(dropout_p), scale=check_scale(softmax_scale, q.shape[-1]),
        window=kernel_window(window_size, causal), softcap=_cap(softcap), alibi_slopes=alibi_slopes,
        block_table=block_table)
    return _results(res, return_attn_probs, probs)


def _unpack(x: torch.Tensor, dim: int, n: int, what: str, layout: str):
    """The ``n`` views of ``x`` along its packing dim ``dim`` (size ``n``): q, k, v or k, v, no copy. In eager
    mode, a ``_packed.Split``, whose gradient the backward kernels write in place (see ``_packed``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor [{layout}], got {type(x).__name__}")
    if x.dim() != len(layout.split(",")) or x.shape[dim] != n:
        raise ValueError(f"{what} must be [{layout}] (dim {dim} of size {n}), got {tuple(x.shape)}")
    if _in_place_gradient(x):
        return _packed.Split.apply(x, dim)  # n views, each without the packing dim
    return x.unbind(dim)


def _in_place_gradient(x: torch.Tensor) -> bool:
    """Whether ``x``'s gradient can be written in place: a graph is being recorded for it, in eager mode."""
    return (x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not _vmap.wrapped(x))


def _packed_call(packed: torch.Tensor, fn, *args):
    """``fn(*args)``, inside ``_packed.packing()`` when ``packed``'s gradient is written in place."""
    with _packed.packing() if _in_place_gradient(packed) else contextlib.nullcontext():
        return fn(*args)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_qkvpacked_func``: ``qkv [B, T, 3, H, D]`` -> out ``[B, T, H, D]``."""
    q, k, v = _unpack(qkv, 2, 3, "qkv", "B, T, 3, H, D")  # each (B, T, H, D)
    return _packed_call(qkv, flash_attn_func, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                        alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_kvpacked_func``: q ``[B, T_q, H, D]``, ``kv [B, T_k, 2, H_kv, D]`` -> out
    ``[B, T_q, H, D]``."""
    k, v = _unpack(kv, 2, 2, "kv", "B, T_k, 2, H_kv, D")  # each (B, T_k, H_kv, D)
    return _packed_call(kv, flash_attn_func, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap,
                        alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """flash-attn's ``flash_attn_varlen_qkvpacked_func``: ``qkv [total, 3, H, D]`` -> out ``[total, H, D]``."""
    q, k, v = _unpack(qkv, 1, 3, "qkv", "total, 3, H, D")  # each (total, H, D)
    return _packed_call(qkv, flash_attn_varlen_func, q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                        dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                        return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """flash-attn's ``flash_attn_varlen_kvpacked_func``: q ``[total_q, H, D]``, ``kv [total_k, 2, H_kv, D]``
    -> out ``[total_q, H, D]``."""
    k, v = _unpack(kv, 1, 2, "kv", "total_k, 2, H_kv, D")  # each (total_k, H_kv, D)
    return _packed_call(kv, flash_attn_varlen_func, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes,
                        deterministic, return_attn_probs)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None,
                            cache_seqlens=None, cache_batch_idx=None, cache_leftpad=None, block_table=None,
                            softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0, return_softmax_lse=False):
    """flash-attn's ``flash_attn_with_kvcache``: q ``[B, T_q, H, D]`` against ``k_cache``, ``v_cache``
    ``[B, T_cache, H_kv, D]`` (with ``block_table``, a pool of pages ``[num_pages, page_size, H_kv, D]``) filled to
    ``cache_seqlens``; new ``k``, ``v`` ``[B, T_new, H_kv, D]`` are written into the caches in place first. Returns
    out ``[B, T_q, H, D]``, or ``(out, softmax_lse [B, H, T_q])``. See
    :func:`attn_course.kernels.flash_attention_kvcache`; what is refused is in the module docstring."""
    new = [None if x is None else swap_seq_and_heads(x, name)
           for x, name in ((k, "k"), (v, "v"))]  # (B, H_kv, T_new, D) views
    q, k_cache, v_cache = (swap_seq_and_heads(x, name) for x, name in ((q, "q"), (k_cache, "k_cache"),
                                                                       (v_cache, "v_cache")))  # (B, H, T, D) views
    res = flash_attention_kvcache(q, k_cache, v_cache, cache_seqlens, *new, causal=causal, scale=softmax_scale,
                                  window=window_size, softcap=_cap(softcap), alibi_slopes=alibi_slopes,
                                  num_splits=num_splits,
                                  rotary_cos=rotary_cos, rotary_sin=rotary_sin, rotary_interleaved=rotary_interleaved,
                                  cache_batch_idx=cache_batch_idx, cache_leftpad=cache_leftpad,
                                  block_table=block_table, return_lse=True)
    out = swap_seq_and_heads(res[0])  # (B, T_q, H, D)
    return (out, res[1]) if return_softmax_lse else out
