"""The kernels as two PyTorch operators, so that ``torch.compile`` can trace a model that calls them.

``torch.compile`` cannot trace *into* a Triton launch that picks variants, autotunes and (on the CPU)
runs Triton's interpreter: it fails inside the interpreter's NumPy code. So the launches are registered
as custom operators, opaque to the compiler, each with a *fake* implementation that only says what the
operator returns (shapes, strides, dtypes) without running anything:

    attn_course::flash_forward   (q, k, v, ..., seqused_k=None, num_splits=0, dropout_p=0, dropout_seed=None,
                                  softcap=0, alibi_slopes=None, cache_batch_idx=None, cache_leftpad=None,
                                  block_table=None)
                                 -> out, lse
    attn_course::flash_backward  (dout, dlse, q, k, v, out, lse, ..., dropout_p=0, dropout_seed=None, softcap=0,
                                  alibi_slopes=None) -> dq, dk, dv

With dropout the seed is an argument (a one-element int64 tensor, ``flash_dropout.draw_seed``): the
operators are then pure functions of their inputs, as the compiler assumes, and the caller saves the
seed for the backward pass.

``FlashAttentionFunction`` calls them through :func:`forward` and :func:`backward`. Outside
``torch.compile`` these call the launches directly, skipping the operators' dispatch: it runs in Python
on every call, time that a short GPU kernel would otherwise wait on. Under ``torch.func.vmap`` they go
through the operators, whose batching rules (``_vmap``) merge the vmapped dim into the batch.

The gradient through ``lse``: with ``dlse`` the gradient of the loss with respect to ``lse``,
``d lse_i / d s_ij = P_ij``, so the score gradient ``dS = P * (dP - delta)`` becomes
``P * (dP - (delta - dlse))``: the backward kernels run unchanged on ``delta - dlse``. A row with no
allowed key has ``lse = -inf`` whatever the inputs, a constant, so its ``dlse`` contributes nothing.

Empty inputs launch nothing (:func:`nothing_to_compute`): with no query or no key there is no score to
compute, every row has no allowed key (zeros, ``lse = -inf``) and every gradient is zero. A launch would
fail on them anyway: a tensor descriptor cannot describe an empty dimension.
"""

from __future__ import annotations

import torch

from . import _checks, _vmap
from ._runtime import kernel_module, on_device

SECOND_DERIVATIVE = (
    "flash_attention has no second derivative: its backward is a Triton kernel that autograd cannot "
    "differentiate, and differentiating its gradients (a gradient penalty, a Hessian) would silently leave out "
    "attention's second-order terms. Compute that loss with attn_course.attention, plain PyTorch, which "
    "autograd differentiates as often as you like."
)
_VARLEN = (None, None, 0, 0)  # cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k of a fixed-length call


def forward_buffers(q: torch.Tensor, varlen: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The uninitialised ``out`` and ``lse`` the forward kernel writes, on q's device.

    Fixed length: q ``[B, H, T_q, D]`` -> out ``[B, H, T_q, D]`` contiguous, lse ``[B, H, T_q]`` float32.
    Packed: q ``[total_q, H, D]`` -> out with q's layout, lse ``[H, total_q]`` float32.
    """
    if varlen:
        out = torch.empty_like(q)  # (total_q, H, D), q's strides
        lse = torch.empty(q.shape[1], q.shape[0], device=q.device, dtype=torch.float32)  # (H, total_q)
    else:
        out = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # (B, H, T_q, D), contiguous
        lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)  # (B, H, T_q)
    return out, lse


SEED_RANGE = 2**62  # dropout seeds are drawn in [0, SEED_RANGE): any int64 would do; this keeps them positive


def draw_seed(device: torch.device) -> torch.Tensor:
    """One seed for one call's dropout (``flash_dropout``): an int64 ``[1]`` tensor on ``device``, the next
    draw of PyTorch's generator there (the default CPU generator, or the CUDA one, which CUDA graphs know
    how to replay: each replay draws anew). Plain PyTorch, so ``torch.compile`` traces it into its graph."""
    return torch.randint(0, SEED_RANGE, (1,), dtype=torch.int64, device=device)


def backward_buffers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The uninitialised ``dq, dk, dv`` the backward kernels write: contiguous, shaped like q, k, v."""
    return tuple(torch.empty(x.shape, device=x.device, dtype=x.dtype) for x in (q, k, v))


def define_padding_rows(q: torch.Tensor, zeros=(), minus_inf=()) -> None:
    """A packed batch's buffers, filled first during CUDA graph capture: ``zeros`` with zeros, ``minus_inf``
    (lse) with ``-inf``. The kernels write only the sequences' rows. Outside capture,
    ``flash_attention_varlen`` hands them the rows the sequences use and pads the result itself; during
    capture a replay may bring ``cu_seqlens`` of other lengths, so they get the whole tensors, and the rows
    of a padding tail keep these values."""
    if _checks.capturing(q):
        for x in zeros:
            x.zero_()
        for x in minus_inf:
            x.fill_(float("-inf"))


def _buffers(q, k, v, into=None):
    """:func:`backward_buffers`, except where ``into`` (``None``, or ``(dq, dk, dv)`` with ``None`` entries)
    gives the tensor to write: views of one packed gradient (``_packed``)."""
    fresh = backward_buffers(q, k, v)
    return fresh if into is None else tuple(f if g is None else g for f, g in zip(fresh, into, strict=True))


def drop_unneeded(grads, need_dq: bool, need_dkdv: bool):
    """``(dq, dk, dv)`` with each gradient whose kernel was skipped replaced by an empty ``(0,)`` tensor
    (an operator must return tensors, and its fake must say which)."""
    needed = (need_dq, need_dkdv, need_dkdv)
    return tuple(g if need else g.new_empty(0) for g, need in zip(grads, needed, strict=True))


def nothing_to_compute(q: torch.Tensor, k: torch.Tensor) -> bool:
    """No (query, key) pair at all: an empty batch, no heads, ``T_q = 0`` or ``T_k = 0`` (packed: no tokens)."""
    return q.numel() == 0 or k.numel() == 0


# ---- the launches ---------------------------------------------------------------------------------------

def _launch_forward(q, k, v, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                    max_seqlen_k, seqused_k=None, num_splits=0, dropout_p=0.0, dropout_seed=None, softcap=0.0,
                    alibi_slopes=None, cache_batch_idx=None, cache_leftpad=None, block_table=None):
    if nothing_to_compute(q, k):  # every row has no allowed key
        out, lse = forward_buffers(q, cu_seqlens_q is not None)
        return out.zero_(), lse.fill_(float("-inf"))
    with on_device(q.device):
        fwd = kernel_module("flash_fwd", q.device)
        dropout = dict(dropout_p=dropout_p, dropout_seed=dropout_seed, softcap=softcap,
                       alibi_slopes=alibi_slopes)  # (and the other score changes)
        if cu_seqlens_q is None:
            cache_map = None if cache_batch_idx is None else (cache_batch_idx, cache_leftpad)
            return fwd.attn_fwd_launch(q, k, v, scale=scale, window=(window_left, window_right), seqused_k=seqused_k,
                                       num_splits=num_splits, cache_map=cache_map, block_table=block_table,
                                       **dropout)
        return fwd.attn_fwd_launch(q, k, v, scale=scale, window=(window_left, window_right),
                                   cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                   max_seqlen_k=max_seqlen_k, block_table=block_table, **dropout)


def _launch_backward(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k,
                     max_seqlen_q, max_seqlen_k, need_dq, need_dkdv, dropout_p=0.0, dropout_seed=None, softcap=0.0,
                     alibi_slopes=None, into=None):
    if nothing_to_compute(q, k):  # no score depends on any input
        return drop_unneeded(tuple(g.zero_() for g in _buffers(q, k, v, into)), need_dq, need_dkdv)
    with on_device(q.device):
        bwd = kernel_module("flash_bwd", q.device)
        if dout is None:  # only lse reached the loss
            dout = torch.zeros_like(out)
        varlen = {} if cu_seqlens_q is None else dict(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                                                      max_seqlens=(max_seqlen_q, max_seqlen_k))
        grads = bwd.attn_bwd_launch(dout, q, k, v, out, lse, scale=scale, window=(window_left, window_right),
                                    dlse=dlse, need_dq=need_dq, need_dkdv=need_dkdv, dropout_p=dropout_p,
                                    dropout_seed=dropout_seed, softcap=softcap, alibi_slopes=alibi_slopes,
                                    buffers=_buffers(q, k, v, into), **varlen)
        return drop_unneeded(grads, need_dq, need_dkdv)


# ---- the operators ----------------------------------------------------------------------------------------

# Spelled out rather than inferred from the annotations, which older torch releases read differently.
_FORWARD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, float scale, int window_left, int window_right, "
                   "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
                   "Tensor? seqused_k=None, int num_splits=0, float dropout_p=0.0, Tensor? dropout_seed=None, "
                   "float softcap=0.0, Tensor? alibi_slopes=None, Tensor? cache_batch_idx=None, "
                   "Tensor? cache_leftpad=None, Tensor? block_table=None) -> (Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor? dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, float scale, "
                    "int window_left, int window_right, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, "
                    "int max_seqlen_q, int max_seqlen_k, bool need_dq, bool need_dkdv, float dropout_p=0.0, "
                    "Tensor? dropout_seed=None, float softcap=0.0, Tensor? alibi_slopes=None) "
                    "-> (Tensor, Tensor, Tensor)")


@torch.library.custom_op("attn_course::flash_forward", mutates_args=(), schema=_FORWARD_SCHEMA)
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window_left: int,
                window_right: int, cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                max_seqlen_q: int, max_seqlen_k: int, seqused_k: torch.Tensor | None = None,
                num_splits: int = 0, dropout_p: float = 0.0, dropout_seed: torch.Tensor | None = None,
                softcap: float = 0.0, alibi_slopes: torch.Tensor | None = None,
                cache_batch_idx: torch.Tensor | None = None,
                cache_leftpad: torch.Tensor | None = None,
                block_table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_forward(q, k, v, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, seqused_k, num_splits, dropout_p, dropout_seed, softcap, alibi_slopes,
                           cache_batch_idx, cache_leftpad, block_table)


@_forward_op.register_fake
def _(q, k, v, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
      seqused_k=None, num_splits=0, dropout_p=0.0, dropout_seed=None, softcap=0.0, alibi_slopes=None,
      cache_batch_idx=None, cache_leftpad=None, block_table=None):
    return forward_buffers(q, cu_seqlens_q is not None)


@torch.library.custom_op("attn_course::flash_backward", mutates_args=(), schema=_BACKWARD_SCHEMA)
def _backward_op(dout: torch.Tensor | None, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                 v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, scale: float, window_left: int,
                 window_right: int, cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
                 max_seqlen_q: int, max_seqlen_k: int, need_dq: bool, need_dkdv: bool, dropout_p: float = 0.0,
                 dropout_seed: torch.Tensor | None = None,
                 softcap: float = 0.0,
                 alibi_slopes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _launch_backward(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, cu_seqlens_q,
                            cu_seqlens_k, max_seqlen_q, max_seqlen_k, need_dq, need_dkdv, dropout_p, dropout_seed,
                            softcap, alibi_slopes)


@_backward_op.register_fake
def _(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
      max_seqlen_k, need_dq, need_dkdv, dropout_p=0.0, dropout_seed=None, softcap=0.0, alibi_slopes=None):
    return drop_unneeded(backward_buffers(q, k, v), need_dq, need_dkdv)


_forward_op.register_vmap(_vmap.forward_rule)
_backward_op.register_vmap(_vmap.backward_rule)


def _through_operators(*tensors) -> bool:
    """Reach the launches through the operators (under ``torch.compile``, or on a ``torch.func`` transform's
    tensors) rather than directly."""
    return torch.compiler.is_compiling() or _vmap.wrapped(*tensors)


def forward(q, k, v, scale: float, window: tuple[int, int], varlen=None, seqused_k=None, num_splits: int = 0,
            dropout=None, softcap: float = 0.0, alibi_slopes=None, cache_map=None, block_table=None):
    """``(out, lse)``; ``varlen`` is ``None`` or ``(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)``;
    ``seqused_k`` (fixed length only) is ``None`` or the int32 ``[B]`` keys each sequence uses;
    ``num_splits`` (fixed length only): key slices per row, ``0`` to let the kernel choose (``flash_split``);
    ``dropout``: ``None`` or ``(dropout_p, seed)`` (``flash_dropout``); ``softcap``: ``0`` or the cap
    (``flash_softcap``); ``alibi_slopes``: ``None`` or float32 ``[H]`` / ``[B, H]`` (``flash_alibi``);
    ``cache_map``: ``None`` or int32 ``(cache_batch_idx, cache_leftpad)`` (with ``seqused_k``: each sequence's
    row of the cache and its first key); ``block_table``: ``None`` or int32 ``[B, pages_per_seq]`` (with
    ``seqused_k`` or ``varlen``: k and v are a pool of pages, see ``flash_paged``)."""
    args = (q, k, v, scale, *window, *(varlen or _VARLEN), seqused_k, num_splits, *(dropout or (0.0, None)),
            softcap, alibi_slopes, *(cache_map or (None, None)), block_table)
    return torch.ops.attn_course.flash_forward(*args) if _through_operators(q, k, v) else _launch_forward(*args)


def backward(dout, dlse, q, k, v, out, lse, scale: float, window: tuple[int, int], varlen=None, need_dq=True,
             need_dkdv=True, dropout=None, softcap: float = 0.0, alibi_slopes=None, into=None):
    """``(dq, dk, dv)`` of a loss whose gradients are ``dout`` for out and ``dlse`` for lse (either may be
    ``None``: that output did not reach the loss); a gradient not needed comes back empty, its kernel skipped
    (see :func:`drop_unneeded`). ``into``: ``None``, or tensors (``None`` entries allowed) for the launch to
    write the gradients into, in eager mode (``_packed``)."""
    args = (dout, dlse, q, k, v, out, lse, scale, *window, *(varlen or _VARLEN), need_dq, need_dkdv,
            *(dropout or (0.0, None)), softcap, alibi_slopes)
    if _through_operators(dout, dlse, q, k, v, out, lse):
        return torch.ops.attn_course.flash_backward(*args)
    return _launch_backward(*args, into=into)
