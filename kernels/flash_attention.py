"""The public API: FlashAttention as a differentiable PyTorch function, shaped like flash-attn's.

    flash_attention(q, k, v, *, causal=False, scale=None, window=(-1, -1), dropout_p=0.0, softcap=0.0,
                    alibi_slopes=None, return_lse=False)
        q [B, H, T_q, D], k and v [B, H_kv, T_k, D]  ->  out [B, H, T_q, D]  (and lse [B, H, T_q])
    flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, ...)
        packed q [total_q, H, D], k and v [total_k, H_kv, D]  ->  out [total_q, H, D]  (and lse [H, total_q])
    flash_attention_kvcache(q, k_cache, v_cache, cache_seqlens=None, k=None, v=None, *, ...)
        q [B, H, T_q, D] against caches [B, H_kv, T_cache, D] filled to cache_seqlens (inference)

flash-attn's own signatures (``flash_attn_func``, ``flash_attn_varlen_func``) are in ``flash_attn_compat``.

``causal`` is aligned bottom-right (query ``i`` sits at position ``T_k - T_q + i``), as in flash-attn
>= 2.1 and :func:`attn_course.causal_mask`. With ``T_q = 3, T_k = 5``::

    keys ->  0 1 2 3 4
    q0       1 1 1 0 0
    q1       1 1 1 1 0
    q2       1 1 1 1 1

``window=(left, right)`` lets query position ``p`` see keys ``p - left ... p + right`` (``-1``: no limit);
``causal=True`` is ``right = 0``. A query with no allowed key returns zeros and ``lse = -inf``; so does
every query when ``T_k = 0``. Empty inputs (``B``, ``H`` or a length 0) are allowed and launch nothing.

Both ``out`` and ``lse`` are differentiable (lse's gradient rides on the same backward kernels), and
``torch.compile`` traces through these functions: the launches are custom operators (``_ops``).

The backward pass is FlashAttention-2's: it saves q, k, v, out and the logsumexp (never a ``[T_q, T_k]``
tensor) and recomputes the probabilities tile by tile. CUDA tensors run compiled kernels; CPU tensors run
the same kernels in Triton's interpreter (correct, but orders of magnitude slower: see ``_runtime``).
"""

from __future__ import annotations

import torch

from attn_course._validate import check_positive_int, check_softcap
from attn_course.masks import check_window

from . import _ops, _packed
from ._checks import (
    block_table_width,
    check_alibi,
    check_block_table,
    check_cache_map,
    check_dropout,
    check_fixed,
    check_kvcache,
    check_num_splits,
    check_scale,
    check_varlen,
    host_cu_seqlens,
    kernel_window,
    refuse_gradients,
)
from ._runtime import kernel_module
from .rotary import check_rotary, positions_of, rotate

SECOND_DERIVATIVE = _ops.SECOND_DERIVATIVE


_AUTOCAST_FROM = (torch.float32, torch.float16, torch.bfloat16)  # what autocast lowers (never float64)


def autocast_inputs(*tensors):
    """Inside ``torch.autocast``, q, k and v in the autocast dtype, as PyTorch's own attention casts them
    (``scaled_dot_product_attention`` is on autocast's lower-precision list): float32 activations then run
    the 16-bit kernels, and mixed dtypes (say, a float32 q after rotary embeddings, a bfloat16 v) agree.
    Outside autocast, or for anything but CPU/CUDA floating tensors, the inputs are returned as given."""
    x = tensors[0]
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda"):
        return tensors
    if not torch.is_autocast_enabled(x.device.type):
        return tensors
    dtype = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in _AUTOCAST_FROM else t for t in tensors)


class FlashAttentionFunction(torch.autograd.Function):
    """``out = softmax(scale q k^T + mask) v`` and ``lse``, forward and backward in Triton, both outputs
    differentiable (the gradient through lse costs one subtraction, see ``_ops``). ``varlen`` is ``None`` or
    ``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)``. With ``dropout_p > 0``, ``seed`` is the call's
    dropout seed (``_ops.draw_seed``, drawn by the caller), saved (eight bytes): the backward regenerates the
    same mask from it (``flash_dropout``). ``softcap > 0`` caps the scores smoothly at ``+-softcap``
    (``flash_softcap``); ``alibi_slopes`` adds ALiBi's biases (``flash_alibi``; the slopes are saved,
    ``B * H`` floats at most).

    Written for ``torch.func`` too (a ``forward`` without ``ctx``, and ``setup_context``): under ``vmap``
    PyTorch runs it on batched tensors, which reach the operators' batching rules (``_vmap``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, scale, window, varlen, dropout_p=0.0, softcap=0.0, alibi_slopes=None, seed=None):
        if dropout_p > 0 and seed is None:
            raise ValueError("FlashAttentionFunction with dropout_p > 0 needs the call's seed (a one-element int64 "
                             "tensor, as _ops.draw_seed draws it): the backward pass regenerates the mask from it")
        return _ops.forward(q, k, v, scale, window, varlen, dropout=(dropout_p, seed) if dropout_p > 0 else None,
                            softcap=softcap, alibi_slopes=alibi_slopes)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, scale, window, varlen, dropout_p, softcap, alibi_slopes, seed = (*inputs, 0.0, 0.0, None, None)[:10]
        out, lse = output
        seed = seed if dropout_p > 0 else None
        ctx.save_for_backward(q, k, v, out, lse, *(varlen[:2] if varlen else ()), *(() if seed is None else (seed,)),
                              *(() if alibi_slopes is None else (alibi_slopes,)))
        ctx.scale, ctx.window, ctx.max_seqlens = scale, window, varlen[2:] if varlen else None
        ctx.dropout_p, ctx.softcap = dropout_p if seed is not None else 0.0, softcap  # (0.0 exactly without a seed)
        ctx.alibi = alibi_slopes is not None
        ctx.packed = _packed.active()  # (q, k, v: views of a packed qkv or kv, see _packed)
        ctx.set_materialize_grads(False)  # an output that never reaches the loss gets None, not zeros

    @staticmethod
    def backward(ctx, dout, dlse):
        if dout is None and dlse is None:
            return (None,) * 10
        # then cu_seqlens_q, cu_seqlens_k (packed), the seed (dropout), the slopes (ALiBi)
        q, k, v, out, lse, *rest = ctx.saved_tensors
        alibi_slopes = rest.pop() if ctx.alibi else None
        seed = rest.pop() if ctx.dropout_p else None
        cu_seqlens = rest or [None, None]
        need_q, need_k, need_v = ctx.needs_input_grad[:3]  # frozen inputs: skip their kernel
        args = (dout, dlse, q, k, v, out, lse, ctx.scale, ctx.window, *cu_seqlens, ctx.max_seqlens, need_q,
                need_k or need_v, ctx.dropout_p, seed, ctx.softcap, alibi_slopes)
        if torch.is_grad_enabled():  # a backward that builds a graph (create_graph=True; torch.func.grad always
            dq, dk, dv = _BackwardPass.apply(*args)  # builds one): through a Function whose gradient refuses
        else:  # (a packed qkv or kv: the kernels write its gradient in place, see _packed)
            dq, dk, dv = _backward(*args, into=_packed.into_for(q, k, v) if ctx.packed else None)
        return dq if need_q else None, dk if need_k else None, dv if need_v else None, *(None,) * 7


def _backward(dout, dlse, q, k, v, out, lse, scale, window, cu_seqlens_q, cu_seqlens_k, max_seqlens, need_dq,
              need_dkdv, dropout_p, seed, softcap, alibi_slopes, into=None):
    """``(dq, dk, dv)`` from the backward kernels (one left empty where not needed, see ``_ops``), written into
    ``into`` where it gives a tensor."""
    varlen = None if cu_seqlens_q is None else (cu_seqlens_q, cu_seqlens_k, *max_seqlens)
    return _ops.backward(dout, dlse, q, k, v, out, lse, scale, window, varlen, need_dq=need_dq, need_dkdv=need_dkdv,
                         dropout=None if seed is None else (dropout_p, seed),  # (the same mask)
                         softcap=softcap, alibi_slopes=alibi_slopes, into=into)


class _BackwardPass(torch.autograd.Function):
    """:func:`_backward` as a Function of its own, for a backward pass that builds a graph: its gradients
    come out tied to what they depend on, and differentiating them again (a gradient penalty, a Hessian)
    stops with :data:`SECOND_DERIVATIVE` instead of silently leaving out attention's second-order terms.
    A Function also lets ``torch.func.grad`` run the kernels on its plain tensors, not its wrappers."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        return _backward(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(SECOND_DERIVATIVE)


def _function(q, k, v, scale, window, varlen, dropout_p, softcap, alibi_slopes):
    """``FlashAttentionFunction`` applied, with a fresh dropout seed drawn first when ``dropout_p > 0``."""
    seed = _ops.draw_seed(q.device) if dropout_p > 0 else None
    return FlashAttentionFunction.apply(q, k, v, scale, window, varlen, dropout_p, softcap, alibi_slopes, seed)


def flash_attention(q, k, v, *, causal: bool = False, scale: float | None = None, window=(-1, -1),
                    dropout_p: float = 0.0, softcap: float = 0.0, alibi_slopes=None, return_lse: bool = False):
    """FlashAttention on ``[B, H, T, D]`` tensors, differentiable in q, k and v.

    Args:
        q: queries ``[B, H, T_q, D]``; any D from 1 to 256 (one that is not a power of two runs in tiles of the
            next, its extra columns masked: ``_tiles.head_dim_tile``); float16, bfloat16 or float32; any strides.
        k, v: keys and values ``[B, H_kv, T_k, D]`` with ``H % H_kv == 0`` (GQA; ``H_kv = 1`` is MQA).
        causal: bottom-right aligned causal mask (see the module docstring).
        scale: multiplies ``q k^T``; defaults to ``1 / sqrt(D)``.
        window: flash-attn's ``window_size=(left, right)``; ``-1`` = unbounded.
        dropout_p: attention dropout for training: each attention weight is zeroed with this probability and
            the rest scaled by ``1 / (1 - dropout_p)``, with a fresh mask at every call (drawn from PyTorch's
            generator, so ``torch.manual_seed`` repeats it) that is never stored: the backward pass
            regenerates it (``kernels/flash_dropout.py``). Pass ``0.0`` at evaluation. ``lse`` is not
            affected (the softmax is taken before dropout).
        softcap: if positive, each scaled score ``s`` becomes ``softcap * tanh(s / softcap)`` before the masks
            and the softmax (Gemma 2's logit soft-capping; flash-attn's ``softcap``), in the forward and the
            backward passes (``kernels/flash_softcap.py``); ``0.0`` (the default): no cap. ``lse`` is that of
            the capped scores.
        alibi_slopes: ALiBi's slopes, float32 ``[H]`` or ``[B, H]`` (flash-attn's ``alibi_slopes``), or ``None``:
            ``-slope * |i + T_k - T_q - j|`` is added to the score of query ``i`` and key ``j`` (after the
            cap), computed in the kernels, never stored (``kernels/flash_alibi.py``). The slopes get no gradient.
        return_lse: also return ``lse [B, H, T_q]`` (float32, natural log; ``-inf`` where no key is allowed),
            differentiable like ``out``.

    Returns:
        ``out [B, H, T_q, D]`` in q's dtype (inside ``torch.autocast``, its dtype: see
        :func:`autocast_inputs`), or ``(out, lse)``.
    """
    q, k, v = autocast_inputs(q, k, v)
    check_fixed(q, k, v)
    scale = check_scale(scale, q.shape[-1])
    alibi_slopes = check_alibi(alibi_slopes, q.shape[0], q.shape[1], q.device)
    out, lse = _function(q, k, v, scale, kernel_window(window, causal), None, check_dropout(dropout_p),
                         check_softcap(softcap), alibi_slopes)
    return (out, lse) if return_lse else out


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, *,
                           causal: bool = False, scale: float | None = None, window=(-1, -1),
                           dropout_p: float = 0.0, softcap: float = 0.0, alibi_slopes=None,
                           block_table=None, return_lse: bool = False):
    """FlashAttention on sequences packed end to end (flash-attn's ``flash_attn_varlen_func``).

    Args:
        q: ``[total_q, H, D]``, sequence ``b`` at rows ``cu_seqlens_q[b] : cu_seqlens_q[b + 1]``.
        k, v: ``[total_k, H_kv, D]``, sequence ``b`` at rows ``cu_seqlens_k[b] : cu_seqlens_k[b + 1]``.
        cu_seqlens_q, cu_seqlens_k: ``[0, l1, l1 + l2, ...]``, one entry more than there are sequences.
        max_seqlen_q, max_seqlen_k: the longest sequence lengths (at least; they size the grid).
        causal, scale, window, dropout_p, softcap, alibi_slopes: as :func:`flash_attention`, per sequence
            (bottom-right within each; ``alibi_slopes`` ``[B, H]`` has a row per sequence; sequence ``b``'s
            dropout mask is ``dropout_mask(seed, B, H, max_seqlen_q, max_seqlen_k, p)[b]``'s top-left corner,
            see ``flash_dropout``).
        block_table: int ``[B, pages_per_seq]``, or ``None``: k and v are then a pool of pages ``[num_pages,
            H_kv, page_size, D]`` and sequence ``b``'s key ``j`` is row ``j % page_size`` of page
            ``block_table[b, j // page_size]``, for ``j < cu_seqlens_k[b + 1] - cu_seqlens_k[b]`` (flash-attn's
            ``block_table``: a prompt's chunk attending to a paged cache, as in
            :func:`flash_attention_kvcache`). Inference only: no gradient.

    Returns:
        ``out [total_q, H, D]``, or ``(out, lse [H, total_q])`` with ``return_lse``. Sequences never see
        each other.

    The sequences may end before the tensors do (``cu_seqlens_q[-1] < total_q``, or the same for keys): a
    padding tail, as a static-shape buffer for ``torch.compile`` or CUDA graphs has. The tail is never
    read; its rows of ``out`` are zeros, of ``lse`` ``-inf``, and its gradients zeros (flash-attn leaves
    them uninitialised). That costs one copy of ``out``. Under CUDA graph capture the kernels get the whole
    tensors, since a replay may bring ``cu_seqlens`` of other lengths, and write into buffers filled with
    zeros (and ``-inf``) first: a memset instead of the copy.
    """
    paged = block_table is not None
    if paged:
        refuse_gradients((q, k, v), "flash_attention_varlen with a block_table (keys and values in pages) is for "
                         "inference and has no gradient, as in flash-attn; call it under torch.no_grad(), or "
                         "train on packed k, v")
    q, k, v = autocast_inputs(q, k, v)
    cu_q, cu_k, max_seqlen_q, max_seqlen_k, used_q, used_k = check_varlen(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, paged)  # (lengths, rows used: Python ints)
    scale = check_scale(scale, q.shape[-1])
    dropout_p, softcap = check_dropout(dropout_p), check_softcap(softcap)
    alibi_slopes = check_alibi(alibi_slopes, cu_q.numel() - 1, q.shape[1], q.device)
    varlen = (cu_q, cu_k, max_seqlen_q, max_seqlen_k)
    tail_q = 0 if used_q is None else q.shape[0] - used_q
    if tail_q or (used_k is not None and used_k < k.shape[0]):  # a padding tail: the kernels see the rows used
        q, k, v = q[:used_q], k[:used_k], v[:used_k]  # (used_q, H, D), (used_k, H_kv, D): views
    if paged:  # (the sequences' key counts, read on the host: None during capture)
        lengths = host_cu_seqlens(cu_seqlens_k)
        block_table = check_block_table(block_table, None if lengths is None else lengths.diff(), 0, cu_q.numel() - 1,
                                        *k.shape[::2], q.device)
        seed = _ops.draw_seed(q.device) if dropout_p > 0 else None
        out, lse = _ops.forward(q, k, v, scale, kernel_window(window, causal), varlen,
                                dropout=None if seed is None else (dropout_p, seed), softcap=softcap,
                                alibi_slopes=alibi_slopes, block_table=block_table)
    else:
        out, lse = _function(q, k, v, scale, kernel_window(window, causal), varlen, dropout_p, softcap,
                             alibi_slopes)
    if tail_q:  # autograd gives the tail zero gradients (through the slices above)
        out = torch.cat([out, out.new_zeros(tail_q, *out.shape[1:])])  # (total_q, H, D)
        lse = torch.cat([lse, lse.new_full((lse.shape[0], tail_q), float("-inf"))], dim=1)  # (H, total_q)
    return (out, lse) if return_lse else out


def flash_attention_kvcache(q, k_cache, v_cache, cache_seqlens=None, k=None, v=None, *, causal: bool = False,
                            scale: float | None = None, window=(-1, -1), softcap: float = 0.0, alibi_slopes=None,
                            num_splits: int = 0,
                            rotary_cos=None, rotary_sin=None, rotary_interleaved: bool = True,
                            cache_batch_idx=None, cache_leftpad=None, block_table=None, return_lse: bool = False):
    """Attention against a key/value cache, for generation (flash-attn's ``flash_attn_with_kvcache``, in
    this package's ``[B, H, T, D]`` layout). Inference only: no gradient.

    Args:
        q: the new queries ``[B, H, T_q, D]`` (``T_q = 1`` for one decoding step, more for a prompt chunk or
            speculative tokens).
        k_cache, v_cache: ``[B, H_kv, T_cache, D]``, preallocated; sequence ``b`` holds its keys and values
            in positions ``0 ... cache_seqlens[b] - 1`` (the rest is never read).
        cache_seqlens: an int (the same for every sequence), ``B`` ints in a tensor, or ``None`` for a full
            cache.
        k, v: new keys and values ``[B, H_kv, T_new, D]``, or ``None``. They are first written *into the
            cache*, in place, at positions ``cache_seqlens[b] ...``, then attended to with the rest.
        causal, scale, window, softcap, alibi_slopes, return_lse: as :func:`flash_attention`, with the queries
            aligned to the end of each sequence's filled cache (bottom-right: the last query is the newest token).
        num_splits: split each row's keys into this many slices, walked by separate programs and combined
            exactly (flash-decoding, ``kernels/flash_split.py``): a decoding step has too few rows to fill a
            GPU otherwise. ``0`` (the default) lets the kernel choose: no split on the CPU or when the rows
            already fill the GPU; ``1`` never splits.
        rotary_cos, rotary_sin: ``[seqlen_ro, rotary_dim / 2]`` tables of a rotary position embedding, or
            ``None``. The new keys are rotated to their positions before they are written into the cache,
            and the queries too (at the same positions when causal or windowed, else all at
            ``cache_seqlens``), as flash-attn does; ``rotary_interleaved`` picks GPT-J's pairing of dims
            (``True``, flash-attn's default) or GPT-NeoX's. See ``kernels/rotary.py``.
        cache_batch_idx: int ``[B]``, the cache row of each sequence (``None``: row ``b``), as flash-attn's:
            the caches may then hold more rows than q has sequences (a pool of slots, each sequence in one);
            new keys and values go into those rows, which must then be distinct.
        cache_leftpad: int ``[B]``, where each sequence's keys start in its row (``None``: 0), as
            flash-attn's: keys ``cache_leftpad[b] ... cache_seqlens[b] + T_new - 1``, positions counted from
            there (a batch of prompts padded on the left, say). Rotary positions stay the row's own, as in
            flash-attn: the first key sits at position ``cache_leftpad[b]``, the new keys at
            ``cache_seqlens[b] + j``. A rotary score depends only on how far apart a query and a key are, so
            that attends exactly as positions counted from the first key would.
        block_table: int ``[B, pages_per_seq]``, or ``None``: a *paged* cache (flash-attn's ``block_table``, vLLM's
            PagedAttention). k_cache and v_cache are then a pool of pages ``[num_pages, H_kv, page_size, D]``
            (any ``page_size``), and sequence ``b``'s position ``j`` is row ``j % page_size`` of page
            ``block_table[b, j // page_size]``; it holds at most ``pages_per_seq * page_size`` positions. The
            kernel looks each key's page up as it goes (``kernels/flash_paged.py``); new keys and values are
            written into the pages of their positions, which no other sequence may use. Not with
            ``cache_batch_idx`` or ``cache_leftpad`` (flash-attn takes neither with it).

    Returns:
        ``out [B, H, T_q, D]``, or ``(out, lse [B, H, T_q])``.

    Sequence ``b`` sees ``cache_seqlens[b] + T_new`` keys: the kernel is told each sequence's length and
    reads no further, so the caches' unused tails cost nothing and may hold anything. ``cache_seqlens`` is
    left as it is: advancing it is the caller's job.
    """
    refuse_gradients((q, k_cache, v_cache, k, v), "flash_attention_kvcache is for inference and has no gradient "
                     "(as flash-attn's flash_attn_with_kvcache); call it under torch.no_grad(), or train with "
                     "flash_attention")
    q, k, v = autocast_inputs(q, k, v)  # (the caches are never cast: they are written in place)
    mapped = cache_batch_idx is not None or cache_leftpad is not None
    paged = block_table is not None
    if paged and mapped:
        raise ValueError("block_table with cache_batch_idx or cache_leftpad is not implemented (flash-attn takes "
                         "neither with a paged cache): a sequence's pages already say where its keys are")
    T_cache = block_table_width(block_table, q.shape[0]) * k_cache.shape[2] if paged else None
    # (B,) int32 before appending; the cache's rows: check_cache_map (a paged cache: check_block_table)
    lengths, host_lengths = check_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, same_batch=False, T_cache=T_cache)
    T_cache, T_new = T_cache or k_cache.shape[2], 0 if k is None else k.shape[2]
    if paged:
        block_table = check_block_table(block_table, host_lengths, T_new, q.shape[0], *k_cache.shape[::2], q.device)
    else:
        rows, starts = check_cache_map(cache_batch_idx, cache_leftpad, host_lengths, q.shape[0], k_cache.shape[0],
                                       T_cache, T_new > 0, q.device)
    num_splits = check_num_splits(num_splits)
    scale, softcap = check_scale(scale, q.shape[-1]), check_softcap(softcap)
    alibi_slopes = check_alibi(alibi_slopes, q.shape[0], q.shape[1], q.device)
    kernel_side = kernel_window(window, causal)
    if rotary_cos is not None or rotary_sin is not None:
        q, k = _rotated(q, k, lengths, rotary_cos, rotary_sin, rotary_interleaved, T_cache=T_cache,
                        distinct_q=causal or check_window(window) != (-1, -1))
    if T_new:
        positions = lengths[:, None] + torch.arange(T_new, device=k.device)  # (B, T_new); lengths on k's device
        if paged:  # each position's page, and its row in the page
            cache_rows = block_table.gather(1, positions // k_cache.shape[2]).long()  # (B, T_new)
            positions = positions % k_cache.shape[2]
        else:
            cache_rows = rows.to(device=k.device, dtype=torch.long)[:, None]  # (B, 1): each sequence's row
        # indexing rows x all heads x (B, T_new) selects (B, T_new, H_kv, D): k as (B, T_new, H_kv, D)
        k_cache[cache_rows, :, positions] = k.transpose(1, 2)
        v_cache[cache_rows, :, positions] = v.transpose(1, 2)
        lengths = lengths + T_new
    out, lse = _ops.forward(q, k_cache, v_cache, scale, kernel_side, None, lengths, num_splits, softcap=softcap,
                            alibi_slopes=alibi_slopes, cache_map=(rows, starts) if mapped else None,
                            block_table=block_table)
    return (out, lse) if return_lse else out


def _rotated(q, k, lengths, cos, sin, interleaved, *, T_cache: int, distinct_q: bool):
    """``(q, k)`` rotated to their positions after caches filled to ``lengths`` (see ``rotary``)."""
    if not isinstance(interleaved, bool):
        raise TypeError(f"rotary_interleaved must be True or False, got {interleaved!r}")
    check_rotary(cos, sin, q, T_cache, 0 if k is None else k.shape[2], distinct_q)
    q = rotate(q, cos, sin, positions_of(lengths, q.shape[2], distinct_q), interleaved)  # (B, H, T_q, D)
    k = rotate(k, cos, sin, positions_of(lengths, k.shape[2], True), interleaved)  # (B, H_kv, T_new, D)
    return q, k


def next_dropout_seed(device) -> torch.Tensor:
    """The seed that the next call with ``dropout_p > 0`` on ``device`` will draw, without drawing it (PyTorch's
    generator is left as it was): pass it to :func:`dropout_mask` to see that call's mask. ::

        seed = next_dropout_seed(q.device)
        out = flash_attention(q, k, v, dropout_p=0.1)
        keep = dropout_mask(seed, *q.shape[:3], k.shape[2], 0.1)  # (B, H, T_q, T_k) bools
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _ops.draw_seed(device)


def dropout_mask(seed: torch.Tensor, B: int, H: int, R: int, C: int, dropout_p: float) -> torch.Tensor:
    """The keep mask, bool ``[B, H, R, C]`` on ``seed``'s device, of a call with dropout rate ``dropout_p``
    that drew ``seed`` (:func:`next_dropout_seed`): ``R, C = T_q, T_k`` for :func:`flash_attention`; for
    :func:`flash_attention_varlen` ``R, C = max_seqlen_q, max_seqlen_k``, sequence ``b`` using the corner
    ``[b, :, :len_q, :len_k]``. The kernels never store it: they regenerate it (``kernels/flash_dropout.py``)."""
    if not isinstance(seed, torch.Tensor) or seed.dtype != torch.int64 or seed.numel() != 1:
        raise TypeError(f"seed must be a one-element int64 tensor (from next_dropout_seed), got {seed!r}")
    B, H, R, C = (check_positive_int(n, name, allow_zero=True) for n, name in ((B, "B"), (H, "H"), (R, "R"), (C, "C")))
    return kernel_module("flash_dropout", seed.device).dropout_mask(seed.reshape(1), B, H, R, C,
                                                                    check_dropout(dropout_p))


def swap_seq_and_heads(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """flash-attn's layout ``[B, T, H, D]`` <-> ours ``[B, H, T, D]`` (its own inverse); ``name`` is ``x``'s,
    for the error message.

    A view, no copy: the kernels read any strides, so the transposed tensor costs nothing.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a 4-D torch.Tensor [B, T, H, D], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D] (flash-attn's layout; ours is [B, H, T, D]), "
                         f"got shape {tuple(x.shape)}")
    return x.transpose(1, 2)  # (B, T, H, D) <-> (B, H, T, D)
