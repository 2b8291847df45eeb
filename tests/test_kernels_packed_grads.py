"""The packed forms' gradients written in place (``kernels/_packed.py``): ``dqkv`` (``dkv``) must be the very
buffer the backward kernels wrote (no stack, no second copy of the gradient), and equal, bit for bit, the
stack of dq, dk, dv from q, k, v given apart; wherever the in-place path cannot hold (a padding tail, a
cast under autocast, ``torch.compile``, a graph-building backward), the gradient must still be right."""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import make_qkv
from test_kernels_varlen import LENS_K, LENS_Q, packed

from attn_course.kernels import (
    _ops,
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)


@pytest.fixture
def written(monkeypatch):
    """The ``into`` buffers of every backward launch, in order (``None`` where the kernels allocated their own)."""
    seen = []
    launch = _ops._launch_backward

    def spy(*args, into=None, **kwargs):
        seen.append(into)
        return launch(*args, into=into, **kwargs)

    monkeypatch.setattr(_ops, "_launch_backward", spy)
    return seen


def assert_written_in_place(grad, into, which=0):
    """``grad`` is (a view at the start of) the buffer whose views the kernels were handed."""
    assert into is not None and into[which] is not None, "the kernels were not handed the packed gradient"
    buffer = into[which]._base
    assert grad.data_ptr() == buffer.data_ptr() and grad.untyped_storage().nbytes() == buffer.untyped_storage(
    ).nbytes(), "the packed gradient is not the buffer the kernels wrote (stacked or copied after them)"


def separate_grads(fn, tensors, dout):
    """Gradients of ``fn(*tensors)`` through fresh leaves, each given apart (no packing)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    return torch.autograd.grad(fn(*leaves), leaves, dout)


def test_qkv_gradient_is_the_buffer_the_kernels_wrote(written):
    check_qkv_gradient_in_place(written)


def check_qkv_gradient_in_place(written, device="cpu", dtype=torch.float32, T=33, D=32):
    """``flash_attn_qkvpacked_func``'s ``dqkv``: the buffer the kernels wrote, and equal to the stack of the
    separate inputs' gradients (bit for bit on the CPU; on a GPU the strided buffer may run another variant,
    so by a 16-bit tolerance)."""
    qkv = torch.randn(2, T, 3, 4, D, generator=torch.Generator().manual_seed(0)).to(device, dtype).requires_grad_()
    out = flash_attn_qkvpacked_func(qkv, 0.0, None, True, (8, -1))
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    assert_written_in_place(dqkv, written[-1])
    want = torch.stack(separate_grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=(8, -1)),
                                      qkv.unbind(2), dout), dim=2)
    if device == "cpu":
        assert torch.equal(dqkv, want)
    else:
        torch.testing.assert_close(dqkv, want, atol=1e-2, rtol=1e-2)


def test_a_fused_projections_view_gets_its_gradient_in_place(written):
    """The usual model: ``qkv = (x @ W).view(B, T, 3, H, D)``; the buffer is laid out like the projection's
    output, and W's gradient equals the one through separate q, k, v."""
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 17, 24, generator=g), torch.randn(24, 3 * 2 * 16, generator=g, requires_grad=True)

    def loss(split):
        qkv = (x @ w).view(2, 17, 3, 2, 16)  # (B, T, 3, H, D): a view of (B, T, 3 * H * D)
        return split(qkv).square().sum()

    (got,) = torch.autograd.grad(loss(lambda qkv: flash_attn_qkvpacked_func(qkv, causal=True)), w)
    assert written[-1] is not None and written[-1][0]._base.shape == (2, 17, 96)
    (want,) = torch.autograd.grad(loss(lambda qkv: flash_attn_func(*qkv.unbind(2), causal=True)), w)
    assert torch.equal(got, want)


def test_kv_gradient_in_place_with_grouped_heads(written):
    q, k, v = (x.transpose(1, 2) for x in make_qkv(2, 4, 2, 17, 29, 32, torch.float32, seed=3))  # (B, T, H, D)
    q = q.clone().requires_grad_(True)
    kv = torch.stack((k, v), dim=2).requires_grad_(True)  # (B, T_k, 2, H_kv, D)
    out = flash_attn_kvpacked_func(q, kv, softmax_scale=0.2, causal=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    dq, dkv = torch.autograd.grad(out, (q, kv), dout)
    assert written[-1][0] is None, "q is not packed: its gradient is the kernels' own"
    assert_written_in_place(dkv, written[-1], which=1)
    want = separate_grads(lambda q, k, v: flash_attn_func(q, k, v, softmax_scale=0.2, causal=True), (q, k, v), dout)
    assert torch.equal(dq, want[0]) and torch.equal(dkv, torch.stack(want[1:], dim=2))


def test_varlen_packed_gradients_in_place(written):
    qkv, cu = packed(LENS_Q, 12, 32, torch.float32, 0)
    qkv = qkv.view(-1, 3, 4, 32).requires_grad_(True)  # (total, 3, H, D)
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, max(LENS_Q), causal=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    assert_written_in_place(dqkv, written[-1])
    args = (cu, cu, max(LENS_Q), max(LENS_Q))
    want = separate_grads(lambda q, k, v: flash_attn_varlen_func(q, k, v, *args, causal=True), qkv.unbind(1), dout)
    assert torch.equal(dqkv, torch.stack(want, dim=1))

    q, cu_q = packed(LENS_Q, 4, 32, torch.float32, 1)
    kv, cu_k = packed(LENS_K, 4, 32, torch.float32, 2)
    kv = kv.view(-1, 2, 2, 32).requires_grad_(True)  # (total_k, 2, H_kv, D)
    out = flash_attn_varlen_kvpacked_func(q, kv, cu_q, cu_k, max(LENS_Q), max(LENS_K), 0.0, 0.3)
    (dkv,) = torch.autograd.grad(out, kv, dout)
    assert_written_in_place(dkv, written[-1], which=1)
    args = (cu_q, cu_k, max(LENS_Q), max(LENS_K), 0.0, 0.3)
    want = separate_grads(lambda k, v: flash_attn_varlen_func(q, k, v, *args), kv.unbind(1), dout)
    assert torch.equal(dkv, torch.stack(want, dim=1))


def test_where_the_gradient_cannot_be_written_in_place_it_is_still_right(written):
    """A padding tail (the kernels see the rows used only: autograd pads their gradient, a copy), a cast
    under autocast (q, k, v are no longer views of qkv), ``torch.compile`` (plain ``unbind``) and a backward
    that builds a graph: each gives the separate inputs' gradient."""
    qkv, cu = packed(LENS_Q, 12, 16, torch.float32, 3)
    qkv = torch.cat([qkv.view(-1, 3, 4, 16), torch.zeros(5, 3, 4, 16)]).requires_grad_(True)  # a tail of 5 rows
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, max(LENS_Q))
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    (dqkv,) = torch.autograd.grad(out, qkv, dout)
    want = separate_grads(lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, max(LENS_Q), max(LENS_Q)),
                          qkv.unbind(1), dout)
    assert torch.equal(dqkv, torch.stack(want, dim=1)) and (dqkv[-5:] == 0).all()

    dense = torch.randn(1, 9, 3, 2, 16, generator=torch.Generator().manual_seed(7), requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flash_attn_qkvpacked_func(dense, causal=True)
    (got,) = torch.autograd.grad(out.float().square().sum(), dense)
    assert written[-1] is None, "after a cast the inputs are copies: the kernels allocate their own gradients"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = separate_grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True).float().square().sum(),
                              dense.unbind(2), None)
    assert torch.equal(got, torch.stack(want, dim=2))

    torch._dynamo.reset()
    compiled = torch.compile(lambda x: flash_attn_qkvpacked_func(x, causal=True).square().sum(), backend="aot_eager",
                             fullgraph=True)
    (got,) = torch.autograd.grad(compiled(dense), dense)
    (eager,) = torch.autograd.grad(flash_attn_qkvpacked_func(dense, causal=True).square().sum(), dense)
    torch.testing.assert_close(got, eager, atol=1e-6, rtol=1e-6)

    (graphed,) = torch.autograd.grad(flash_attn_qkvpacked_func(dense, causal=True).square().sum(), dense,
                                     create_graph=True)
    assert torch.equal(graphed, eager)


def test_a_qkv_cut_from_a_bigger_tensor_is_not_given_a_bigger_buffer(written):
    """``big[:, :, :3]``: q, k, v share ``big``'s storage but do not make up all of it; a buffer like ``big``
    would waste memory, so the kernels write their own gradients, and the gradient is still right."""
    big = torch.randn(1, 9, 4, 2, 16, generator=torch.Generator().manual_seed(8), requires_grad=True)
    (got,) = torch.autograd.grad(flash_attn_qkvpacked_func(big[:, :, :3], causal=True).square().sum(), big)
    assert written[-1] is None
    want = separate_grads(lambda q, k, v: flash_attn_func(q, k, v, causal=True).square().sum(),
                          big[:, :, :3].unbind(2), None)
    assert torch.equal(got[:, :, :3], torch.stack(want, dim=2)) and (got[:, :, 3] == 0).all()
