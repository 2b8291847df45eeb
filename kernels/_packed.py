"""Gradients of a packed ``qkv`` (or ``kv``) tensor written in place, as flash-attn writes them.

Models that project q, k and v with one matrix product hand attention one tensor, ``qkv [B, T, 3, H, D]``,
and flash-attn's packed functions take it as it is. Split with ``unbind``, its gradient costs a copy:
autograd's backward of ``unbind`` is ``stack``, so ``dq``, ``dk``, ``dv`` (written by the kernels) and
``dqkv`` (their stack) are all alive at once, twice the gradient's memory, and the stack reads and writes
it all once more.

Here the backward kernels write ``dq``, ``dk`` and ``dv`` straight into one buffer laid out like ``qkv``,
and the split hands that buffer back as ``dqkv``, no stack:

    qkv [B, T, 3, H, D] --split (Split)--> q, k, v: views        (forward)
    dqkv: one buffer like qkv's storage <--its views-- dq, dk, dv  (backward: the kernels write the views)

Two pieces cooperate, and each checks the other rather than trusting it:

* :class:`Split` replaces ``unbind``. Its backward returns the buffer only when the gradients it receives
  are exactly the views of one buffer where q, k and v sit in qkv (same sizes, strides and offsets); any
  other gradient (q also used elsewhere, so autograd summed two gradients into a new tensor; a slice in
  between; a cast) falls back to ``stack``, as ``unbind`` would.
* ``FlashAttentionFunction``'s backward, for a call made inside :func:`packing` (the packed compat
  functions), asks :func:`gradient_views` for views of a fresh buffer shaped like the storage that q, k and
  v share, where the kernels then write.

Eager mode only: under ``torch.compile`` (which plans the stack's memory itself) or ``torch.func`` the
packed functions split with plain ``unbind``.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

_PACKING = contextvars.ContextVar("attn_course_packing", default=False)


@contextlib.contextmanager
def packing():
    """Within it, a differentiable call records that its q, k, v (or k, v) are views of one packed tensor."""
    token = _PACKING.set(True)
    try:
        yield
    finally:
        _PACKING.reset(token)


def active() -> bool:
    """Whether the call being made is inside :func:`packing` (never while ``torch.compile`` traces it)."""
    return not torch.compiler.is_compiling() and _PACKING.get()


def _geometry(view: torch.Tensor, root: torch.Tensor) -> tuple:
    """Where ``view`` sits in ``root``'s storage: ``(sizes, strides, offset from root's start)``."""
    return tuple(view.shape), view.stride(), view.storage_offset() - root.storage_offset()


def _root(x: torch.Tensor) -> torch.Tensor:
    return x if x._base is None else x._base


def into_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """``(dq, dk, dv)`` buffers for the backward kernels to write, each a view of one buffer laid out like the
    packed tensor that the inputs are views of (``dq`` ``None`` when only k and v are packed), or ``None``
    when they are not packed views (the kernels then allocate the gradients)."""
    views = gradient_views(q, k, v)
    if views is None:
        views = gradient_views(k, v)
        views = None if views is None else (None, *views)
    if views is None or views[1].stride() != views[2].stride():  # (dk and dv are written with one set of strides)
        return None
    return views


def gradient_views(*tensors):
    """Views of one fresh buffer, each where its tensor sits in the storage they share (the buffer is shaped
    and strided like their common base), or ``None`` when they are not views that together make up one
    contiguous base (then the kernels allocate their own gradients)."""
    roots = {id(_root(x)) for x in tensors}
    root = _root(tensors[0])
    if len(roots) != 1 or not root.is_contiguous() or root.dtype != tensors[0].dtype:
        return None
    if sum(x.numel() for x in tensors) != root.numel():  # (a base holding more than them: no bigger buffer)
        return None
    buffer = gradient_buffer(root)  # (contiguous, as root)
    return tuple(buffer.as_strided(*_geometry(x, root)) for x in tensors)


def gradient_buffer(root: torch.Tensor) -> torch.Tensor:
    """The uninitialised buffer, like ``root``, that the backward kernels write the packed gradient into."""
    return torch.empty_like(root)


class Split(torch.autograd.Function):
    """``x.unbind(dim)``, whose backward returns the buffer the gradients were written into when they are its
    views at the split's places (see the module docstring), and ``stack`` otherwise."""

    @staticmethod
    def forward(x, dim):
        return x.unbind(dim)  # views, each without the packing dim

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dim = inputs
        root = _root(x)
        ctx.dim, ctx.shape = dim, tuple(x.shape)
        ctx.places = [_geometry(view, root) for view in output]  # each view's place in x's storage
        ctx.place = _geometry(x, root)  # and x's own

    @staticmethod
    def backward(ctx, *grads):
        buffer = None if any(g is None for g in grads) else grads[0]._base
        if buffer is not None and all(g._base is buffer and _geometry(g, buffer) == place
                                      for g, place in zip(grads, ctx.places, strict=True)):
            return buffer.as_strided(*ctx.place), None  # dqkv: the kernels wrote it in place
        like = next((g for g in grads if g is not None), None)
        if like is None:
            return None, None
        full = [torch.zeros(like.shape, dtype=like.dtype, device=like.device) if g is None else g for g in grads]
        return torch.stack(full, dim=ctx.dim), None
