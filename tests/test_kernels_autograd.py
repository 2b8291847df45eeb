"""The kernels inside larger programs: gradients through ``lse``, ``torch.compile`` and ``torch.export``,
the custom operators' contracts, and a clear refusal of second derivatives.

The lse gradient is checked against autograd through ``torch.logsumexp`` of the float32 reference scores;
compile against the same kernels run eagerly, with the captured graphs inspected so that a silent fall-back
to eager (a graph break) cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import (
    allowed_mask,
    assert_close_by_rule,
    make_qkv,
    reference,
    torch_same_dtype,
)
from test_kernels_varlen import LENS_K, LENS_Q, packed, per_sequence, with_tail

from attn_course.kernels import flash_attention, flash_attention_varlen
from attn_course.mha import repeat_kv

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def lse_of(q, k, causal, window, dtype):
    """Natural-log logsumexp of the scaled, masked scores with every op in ``dtype``, differentiable; a row
    with no allowed key is the constant ``-inf`` (zero gradient), as in the kernel.
    (``torch.logsumexp`` of an all ``-inf`` row would back-propagate NaN.)"""
    G = q.shape[1] // k.shape[1]
    s = (q.to(dtype) @ repeat_kv(k.to(dtype), G).transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T_q, T_k)
    ok = allowed_mask(q.shape[2], k.shape[2], causal, window, q.device)  # (T_q, T_k)
    alive = ok.any(-1)  # (T_q,) rows with at least one allowed key
    s = s.masked_fill(~ok, float("-inf")).masked_fill(~alive[:, None], 0.0)
    return torch.where(alive, torch.logsumexp(s, dim=-1), float("-inf"))  # (B, H, T_q)


def loss_grads(out_fn, lse_fn, leaves, dout, dlse):
    """``d/d(q, k, v)`` of ``<out, dout> + <lse, dlse>`` (either term left out when its weight is None)."""
    loss = 0.0
    if dout is not None:
        loss = loss + (out_fn(*leaves).float() * dout.float()).sum()
    lse = lse_fn(*leaves)
    finite = torch.isfinite(lse)
    loss = loss + (torch.where(finite, lse, 0.0).float() * dlse).sum()  # dlse is ignored on -inf rows
    return torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)  # (lse ignores v)


LSE_CASES = [  # (B, H, H_kv, T_q, T_k, D, causal, window, dtype, with_out)
    (1, 2, 2, 17, 17, 16, False, (-1, -1), F32, True),
    (1, 4, 1, 33, 47, 32, True, (-1, -1), F32, True),  # MQA, T_q != T_k
    (2, 2, 1, 113, 40, 16, True, (5, -1), F32, True),  # rows with no allowed key (lse = -inf)
    (1, 2, 2, 17, 33, 64, True, (-1, -1), F32, False),  # lse alone reaches the loss: dv must be 0
    (1, 2, 1, 47, 47, 32, True, (-1, -1), F16, True),
    (1, 2, 2, 47, 31, 32, False, (10, 3), BF16, True),
]


def lse_case_id(c):
    return f"T{c[3]}x{c[4]}-D{c[5]}-{str(c[8])[6:]}-out{c[9]}"


@pytest.mark.parametrize("case", LSE_CASES, ids=lse_case_id)
def test_gradient_through_lse_matches_autograd_through_logsumexp(case):
    check_lse_gradient(case)


def check_lse_gradient(case, device="cpu"):
    """The gradients of ``<out, dout> + <lse, dlse>`` (or of ``<lse, dlse>`` alone) on ``case`` against
    autograd through the float32 reference and ``torch.logsumexp``, by the tolerance rule."""
    B, H, H_kv, T_q, T_k, D, causal, window, dtype, with_out = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device=device)
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(B, H, T_q, D, generator=g).to(device, dtype) if with_out else None
    dlse = torch.randn(B, H, T_q, generator=g).to(device)  # float32, like lse

    def kernel_out(q, k, v):
        return flash_attention(q, k, v, causal=causal, window=window)

    def kernel_lse(q, k, v):
        return flash_attention(q, k, v, causal=causal, window=window, return_lse=True)[1]

    def leaves(dt):
        return [x.detach().to(dt).requires_grad_(True) for x in (q, k, v)]

    got = loss_grads(kernel_out, kernel_lse, leaves(dtype), dout, dlse)
    want = loss_grads(lambda q, k, v: reference(q, k, v, causal, window),
                      lambda q, k, v: lse_of(q, k, causal, window, F32), leaves(F32), dout, dlse)
    budget = loss_grads(lambda q, k, v: torch_same_dtype(q, k, v, causal, window),
                        lambda q, k, v: lse_of(q, k, causal, window, dtype), leaves(dtype), dout, dlse)
    for name, gt, w, b in zip(("dq", "dk", "dv"), got, want, budget, strict=True):
        assert_close_by_rule(f"{name} of <out, dout> + <lse, dlse>", gt, w, b, dtype)
    if not with_out:
        assert torch.equal(got[2], torch.zeros_like(got[2])), "lse does not depend on v, so dv must be exactly 0"


def test_lse_gradient_is_not_silently_dropped():
    """Before lse was differentiable, ``out.sum() + lse.sum()`` back-propagated only ``out``'s part: the
    gradients with and without the lse term must differ, by exactly the lse term's own gradient."""
    q, k, v = make_qkv(1, 2, 2, 17, 17, 16, F32, requires_grad=True)
    out, lse = flash_attention(q, k, v, causal=True, return_lse=True)
    assert lse.requires_grad
    both = torch.autograd.grad(out.sum() + lse.sum(), (q, k), retain_graph=True)
    out_only = torch.autograd.grad(out.sum(), (q, k), retain_graph=True)
    lse_only = torch.autograd.grad(lse.sum(), (q, k))
    for b, o, lo in zip(both, out_only, lse_only, strict=True):
        assert (b - o).abs().max() > 1e-3
        torch.testing.assert_close(b, o + lo, atol=1e-5, rtol=1e-5)



def test_rows_with_no_key_take_no_gradient_through_lse():
    """Such a row's lse is -inf whatever q, k and v are: a constant. ``(lse ** 2).sum()`` sends it a
    gradient of -inf, which must not turn into 0 * inf = NaN in the rows' probabilities."""
    q, k, v = make_qkv(1, 2, 2, 40, 17, 16, F32, requires_grad=True)
    out, lse = flash_attention(q, k, v, causal=True, return_lse=True)  # T_q > T_k: the first 23 rows see nothing
    empty = torch.isneginf(lse)
    assert empty[..., :23].all() and not empty[..., 23:].any()
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(lse, (q, k), dlse.masked_fill(empty, float("-inf")), retain_graph=True)
    want = torch.autograd.grad(lse, (q, k), dlse.masked_fill(empty, 0.0))
    for name, g, w in zip(("dq", "dk"), got, want, strict=True):
        assert torch.isfinite(g).all(), f"{name}: an infinite dlse on a row with no key leaked in as NaN/inf"
        torch.testing.assert_close(g, w, atol=0, rtol=0)

def test_varlen_gradient_through_lse_per_sequence():
    H, H_kv, D, causal = 4, 2, 32, True
    q, cu_q = packed(LENS_Q, H, D, F32, 0)
    k, cu_k = packed(LENS_K, H_kv, D, F32, 1)
    v, _ = packed(LENS_K, H_kv, D, F32, 2)
    dout, _ = packed(LENS_Q, H, D, F32, 3)
    dlse = torch.randn(H, q.shape[0], generator=torch.Generator().manual_seed(4))  # (H, total_q)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = flash_attention_varlen(*leaves, cu_q, cu_k, max(LENS_Q), max(LENS_K), causal=causal,
                                      return_lse=True)
    dq, dk, dv = torch.autograd.grad((out * dout).sum() + (lse * dlse).sum(), leaves)
    for b in range(len(LENS_Q)):
        ref_leaves = [per_sequence(x, c, b).detach().requires_grad_(True) for x, c in ((q, cu_q), (k, cu_k), (v, cu_k))]
        dlse_b = dlse[:, cu_q[b]:cu_q[b + 1]].unsqueeze(0)  # (1, H, T_b)
        want = loss_grads(lambda q, k, v: reference(q, k, v, causal),
                          lambda q, k, v: lse_of(q, k, causal, (-1, -1), F32),
                          ref_leaves, per_sequence(dout, cu_q, b), dlse_b)
        got = (per_sequence(dq, cu_q, b), per_sequence(dk, cu_k, b), per_sequence(dv, cu_k, b))
        for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
            assert_close_by_rule(f"{name} of sequence {b}", g, w, None, F32)



class LaunchSpy:
    """Stands in for a kernel in its module: ``kernel[grid](...)`` is logged by name, then really launched."""

    def __init__(self, name, kernel, log):
        self.name, self.kernel, self.log = name, kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(self.name)
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("frozen,skipped", [("q", "_bwd_dq"), ("kv", "_bwd_dkdv"), ("k", None), ("", None)],
                         ids=["frozen-q", "frozen-kv", "frozen-k-only", "nothing-frozen"])
def test_frozen_inputs_skip_their_backward_kernel(frozen, skipped, monkeypatch):
    """A tensor that does not require grad gets no gradient and, when its kernel serves nobody else, no
    backward work: frozen k and v skip the dK/dV kernel, a frozen q the dQ kernel. k alone frozen still
    needs the dK/dV kernel for dv. The gradients that are computed match autograd through the reference."""
    from attn_course.kernels._runtime import kernel_module

    bwd = kernel_module("flash_bwd", torch.device("cpu"))
    log = []
    for name in ("_bwd_dkdv", "_bwd_dq"):
        monkeypatch.setattr(bwd, name, LaunchSpy(name, getattr(bwd, name), log))
    q, k, v = make_qkv(1, 4, 2, 33, 47, 32, F32)
    leaves = {name: x.clone().requires_grad_(name not in frozen) for name, x in zip("qkv", (q, k, v), strict=True)}
    out = flash_attention(*leaves.values(), causal=True)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(dout)
    assert sorted(log) == sorted({"_bwd_dkdv", "_bwd_dq"} - {skipped}), f"launched {log}"
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    reference(*ref_leaves, causal=True).backward(dout)
    for (name, x), r in zip(leaves.items(), ref_leaves, strict=True):
        if name in frozen:
            assert x.grad is None, f"d{name}: a frozen input must get no gradient"
        else:
            assert_close_by_rule(f"d{name}", x.grad, r.grad, None, F32)


def test_autocast_casts_the_inputs_as_pytorchs_attention_does():
    """Inside ``torch.autocast`` float32 activations run the bfloat16 kernels and mixed dtypes agree, as
    with ``F.scaled_dot_product_attention``; the gradients reach the float32 leaves through the casts."""
    q, k, v = make_qkv(1, 4, 2, 33, 47, 32, F32, requires_grad=True)
    v16 = v.detach().to(BF16)  # e.g. a bfloat16 v beside a float32 q, k (rotary embeddings in float32)
    with torch.autocast("cpu", dtype=BF16):
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v16, 2))
        mixed = flash_attention(q, k, v16)
        out = flash_attention(q, k, v, causal=True)
    assert sdpa.dtype == mixed.dtype == out.dtype == BF16
    want = flash_attention(*(x.detach().to(BF16) for x in (q, k, v)), causal=True)
    assert torch.equal(out, want), "autocast must run exactly the bfloat16 kernel on the cast inputs"
    assert_close_by_rule("out under autocast", out, reference(q, k, v, causal=True),
                         torch_same_dtype(*(x.to(BF16) for x in (q, k, v)), causal=True), BF16)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(BF16)
    got = torch.autograd.grad(out, (q, k, v), dout)
    low = [x.detach().to(BF16).requires_grad_(True) for x in (q, k, v)]
    expected = torch.autograd.grad(flash_attention(*low, causal=True), low, dout)
    for name, g, e in zip(("dq", "dk", "dv"), got, expected, strict=True):
        assert g.dtype == F32, f"{name} must come back in its leaf's dtype"
        assert torch.equal(g, e.float()), name


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_activation_checkpointing_gives_the_same_gradients(reentrant):
    """``torch.utils.checkpoint`` reruns the forward inside the backward pass (grad mode on, for the
    reentrant flavour): the kernels' backward must neither refuse that as a second derivative nor differ."""
    def block(q, k, v):
        return flash_attention(torch.tanh(q), k, v, causal=True)

    check_checkpointing(block, reentrant)


def check_checkpointing(block, reentrant: bool, rng_seed: int | None = None):
    """The gradients of ``block(q, k, v).square().sum()`` through ``torch.utils.checkpoint`` equal, bit for bit,
    those without it (``rng_seed``: ``torch.manual_seed`` before each run, for a block that draws random
    numbers)."""
    from torch.utils.checkpoint import checkpoint

    q, k, v = make_qkv(1, 4, 2, 33, 47, 32, F32, seed=5)

    def grads_of(run):
        if rng_seed is not None:
            torch.manual_seed(rng_seed)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        run(*leaves).square().sum().backward()
        return [x.grad for x in leaves]

    plain = grads_of(block)
    checkpointed = grads_of(lambda *xs: checkpoint(block, *xs, use_reentrant=reentrant))
    for name, a, b in zip(("dq", "dk", "dv"), checkpointed, plain, strict=True):
        assert torch.equal(a, b), name

def test_mixed_dtypes_outside_autocast_are_still_refused():
    q, k, v = make_qkv(1, 2, 2, 5, 5, 16, F32)
    with pytest.raises(ValueError, match="must share a dtype.*torch.autocast"):
        flash_attention(q, k, v.to(BF16))
    with torch.autocast("cpu", enabled=False), pytest.raises(ValueError, match="must share a dtype"):
        flash_attention(q, k, v.to(BF16))

# ---- torch.compile --------------------------------------------------------------------------------------

def captured(graphs):
    """A torch.compile backend that runs AOTAutograd (as inductor does) and keeps the text of the forward
    and backward graphs it traces, to show the kernels ran as operators inside them."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def keep(name):
        def compiler(gm, example_inputs):
            graphs.setdefault(name, []).append(str(gm.graph))
            return make_boxed_func(gm.forward)
        return compiler

    return aot_autograd(fw_compiler=keep("forward"), bw_compiler=keep("backward"))


def test_torch_compile_traces_the_kernels_as_operators_in_one_graph():
    """``fullgraph=True``: a graph break (or a failure inside Triton's interpreter, which is what tracing
    into the launch gave) is an error. The compiled forward and backward match the eager kernels."""
    graphs = {}
    check_compiled_model(captured(graphs), "cpu", F32)
    assert any("attn_course.flash_forward" in g for g in graphs["forward"]), graphs["forward"]
    assert any("attn_course.flash_backward" in g for g in graphs["backward"]), graphs["backward"]


def assert_compiled_matches_eager(model, q, k, v, backend="aot_eager", tol=1e-6, seed=None):
    """``model(q, k, v)`` (a scalar loss) compiled whole (``fullgraph``) with ``backend``: the loss and its
    gradients must match the same model run eagerly. ``seed``: ``torch.manual_seed`` before each run (a
    model that draws random numbers, such as dropout's seed)."""
    def run(fn):
        if seed is not None:
            torch.manual_seed(seed)
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
        loss = fn(*leaves)
        return (loss, *torch.autograd.grad(loss, leaves))

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for name, c, e in zip(("loss", "dq", "dk", "dv"), run(compiled), run(model), strict=True):
        torch.testing.assert_close(c, e, atol=tol, rtol=tol, msg=lambda m, name=name: f"compiled {name}: {m}")


def check_compiled_model(backend, device, dtype, tol=1e-5):
    """A small model around ``flash_attention`` (its loss uses out and lse), compiled whole with
    ``backend``: loss and gradients must match the same model run eagerly."""
    q, k, v = make_qkv(2, 4, 2, 33, 47, 32, dtype, device=device, seed=3)

    def model(q, k, v):
        out, lse = flash_attention(torch.tanh(q), k, v, causal=True, window=(20, -1), return_lse=True)
        return (out * out).sum() + lse.exp().sum()  # (B, H, T_q, D), (B, H, T_q)

    assert_compiled_matches_eager(model, q, k, v, backend, tol)


def test_torch_compile_with_frozen_keys_and_values():
    """needs_input_grad reaches the backward operator under compile too: dq only, equal to eager."""
    q, k, v = make_qkv(1, 4, 2, 33, 47, 32, F32, seed=4)

    def dq_of(fn):
        leaf = q.clone().requires_grad_(True)
        return torch.autograd.grad(fn(leaf, k, v).square().sum(), leaf)[0]

    def model(q, k, v):
        return flash_attention(q, k, v, causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(dq_of(compiled), dq_of(model), atol=1e-6, rtol=1e-6)

@pytest.mark.parametrize("tail", [0, 5], ids=["packed", "padding-tail"])
def test_torch_compile_runs_the_varlen_api(tail):
    """Packed sequences compile too (their checks read cu_seqlens, so the graph may break around them),
    also when they stop short of the tensors' end (a padding tail: the rows used come from the check)."""
    q, cu_q = packed(LENS_Q, 2, 16, F32, 0)
    k, cu_k = packed(LENS_K, 2, 16, F32, 1)
    v, _ = packed(LENS_K, 2, 16, F32, 2)
    q, k, v = (with_tail(x, tail, 1.0) for x in (q, k, v))

    def model(q, k, v):
        return flash_attention_varlen(q, k, v, cu_q, cu_k, max(LENS_Q), max(LENS_K), causal=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), model(q, k, v), atol=0, rtol=0)



def test_torch_export_keeps_the_operator_and_a_dynamic_length():
    """``torch.export`` (for serving) records the forward operator itself; exported with a symbolic length,
    the program then runs a length it never saw, with the eager kernels' result bit for bit."""

    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return flash_attention(q, k, v, causal=True)

    T = torch.export.Dim("T", min=2, max=4096)
    q, k, v = make_qkv(1, 2, 1, 17, 17, 16, F32)
    program = torch.export.export(Attend(), (q, k, v), dynamic_shapes=({2: T}, {2: T}, {2: T}))
    assert "attn_course.flash_forward" in str(program.graph)
    q, k, v = make_qkv(1, 2, 1, 33, 33, 16, F32, seed=1)
    torch.testing.assert_close(program.module()(q, k, v), Attend()(q, k, v), atol=0, rtol=0)

@pytest.mark.parametrize("varlen", [False, True], ids=["fixed", "varlen"])
def test_custom_operators_pass_torch_opcheck(varlen):
    """PyTorch's own checker of custom operators: the schema is honest (no mutation, no aliasing), the
    fake implementation gives the real outputs' shapes, strides and dtypes, and AOTAutograd can trace it.
    The packed q is a transposed view, so out (allocated like q) has non-standard strides to agree on."""
    ops = torch.ops.attn_course
    if varlen:
        q, cu_q = packed(LENS_Q, 2, 16, F16, 0)
        q = q.transpose(0, 1).contiguous().transpose(0, 1)  # (total_q, H, D) with head-major strides
        k, cu_k = packed(LENS_K, 1, 16, F16, 1)
        v, _ = packed(LENS_K, 1, 16, F16, 2)
        tail = (cu_q, cu_k, max(LENS_Q), max(LENS_K))
    else:
        q, k, v = make_qkv(1, 2, 1, 17, 23, 16, F16)
        tail = (None, None, 0, 0)
    fwd_args = (q, k, v, 0.25, 7, 0, *tail)
    torch.library.opcheck(ops.flash_forward.default, fwd_args)
    out, lse = ops.flash_forward(*fwd_args)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    for grads, needs in (((dout, None), (True, True)), ((None, torch.randn_like(lse)), (True, True)),
                         ((dout, torch.randn_like(lse)), (True, False)), ((dout, None), (False, True))):
        torch.library.opcheck(ops.flash_backward.default, (*grads, q, k, v, out, lse, 0.25, 7, 0, *tail, *needs))


def check_operators_with(q, k, v, dropout_p=0.0, seed=None, softcap=0.0, alibi_slopes=None):
    """``opcheck`` of both operators on a fixed-length call with the given score changes (their trailing
    arguments, in the schemas' order)."""
    ops = torch.ops.attn_course
    extra = (dropout_p, seed, softcap, alibi_slopes)
    fwd_args = (q, k, v, 0.25, 7, 0, None, None, 0, 0, None, 0, *extra)
    torch.library.opcheck(ops.flash_forward.default, fwd_args)
    out, lse = ops.flash_forward(*fwd_args)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    torch.library.opcheck(ops.flash_backward.default, (dout, None, q, k, v, out, lse, 0.25, 7, 0, None, None, 0, 0,
                                                       True, True, *extra))


def test_the_backward_operator_reads_out_and_lse_broadcast_over_the_batch():
    """``out`` and ``lse`` broadcast over the batch (stride 0, as ``torch.func.vmap`` hands over a sample's
    saved tensors): the same gradients as from contiguous copies (delta, written with lse's strides, once
    landed every sequence on sequence 0)."""
    ops = torch.ops.attn_course
    q, k, v = make_qkv(1, 2, 2, 9, 9, 16, F32)
    out, lse = ops.flash_forward(q, k, v, 0.25, 7, 0, None, None, 0, 0)
    broadcast = [x.expand(3, *x.shape[1:]) for x in (q, k, v, out, lse)]  # (3, ...) with batch stride 0
    dout = torch.randn(3, 2, 9, 16, generator=torch.Generator().manual_seed(2))
    tail = (0.25, 7, 0, None, None, 0, 0, True, True)
    got = ops.flash_backward(dout, None, *broadcast, *tail)
    want = ops.flash_backward(dout, None, *(x.contiguous() for x in broadcast), *tail)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert torch.equal(g, w), name


def test_a_second_derivative_is_refused_with_a_reason():
    """Differentiating the gradients (a gradient penalty) would silently miss attention's second-order terms:
    it must raise instead. A backward that only builds a graph (``create_graph=True`` for some other part of
    the model) gives the same first derivative as without it."""
    q, k, v = make_qkv(1, 2, 2, 17, 17, 16, F32, requires_grad=True)
    out = flash_attention(q, k, v)
    dq, dk = torch.autograd.grad(out.pow(2).sum(), (q, k), create_graph=True)
    plain_dq, plain_dk = torch.autograd.grad(flash_attention(q, k, v).pow(2).sum(), (q, k))
    assert torch.equal(dq, plain_dq) and torch.equal(dk, plain_dk)
    assert dq.requires_grad, "the gradients must be tied to the graph, so that differentiating them is caught"
    with pytest.raises(RuntimeError, match="no second derivative.*attn_course.attention"):
        (dq.square().sum() + dk.sum()).backward()
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(dk.sum(), v)
    # the first derivative on its own is still fine after the refusal
    (dq,) = torch.autograd.grad(flash_attention(q, k, v).pow(2).sum(), q)
    assert torch.isfinite(dq).all()

