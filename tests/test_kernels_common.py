"""Shared helpers for the kernel tests: the references and the tolerance rule (imported by the other
``test_kernels_*`` files; the tests at the bottom check the helpers themselves).

The tolerance rule (from flash-attn's tests, see DESIGN.md): for a low-precision dtype, the kernel's error
against a float32 reference may be at most twice the error of PyTorch's own attention computed in that
dtype, plus a small absolute floor. float32 is compared at 1e-5-ish.
"""

from __future__ import annotations

import pytest
import torch

from attn_course import attention
from attn_course.attention import masked_softmax
from attn_course.masks import causal_mask, sliding_window_mask
from attn_course.mha import repeat_kv


def benchmark_report(tool_name: str, report_name: str, triton_version: str):
    """``(tool, report)``: the survey script ``benchmarks/<tool_name>.py`` (test_bench_harness.benchmark_script) and
    its committed report ``benchmarks/results/<report_name>``, checked to have been compiled by triton
    ``triton_version``."""
    import json

    from test_bench_harness import ROOT, benchmark_script

    report = json.loads((ROOT / "benchmarks" / "results" / report_name).read_text())
    assert report["triton"].startswith(triton_version), f"{report_name} was compiled by {report['triton']}"
    return benchmark_script(tool_name), report


FLOOR = {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}
# float32's own rule: twice torch.testing's float32 tolerances, an absolute 1e-5 (FLOOR) and a relative 1.3e-6
# of each reference element. A float32 sum of n terms of size M rounds by about n * eps * M, so a large gradient
# (|dk| ~ 15 from 97 queries) differs between two correct float32 computations by more than any absolute floor
# fit for values near 1. Where the checker can also run PyTorch's attention in float64 (the truth), twice
# PyTorch's own float32 error may stand in for the relative term, as the 16-bit budget does: scores far from
# zero (ALiBi rows with a logsumexp near -117) lose eps * |score| of every probability in any float32
# computation, the reference's included, and FlashAttention-2 rounds the saved logsumexp on top of that.
F32_RTOL = 2.6e-6


def allowed_mask(T_q, T_k, causal, window, device="cpu"):
    """``[T_q, T_k]`` bools built from attn_course.masks, independent of the kernels' own mask code."""
    m = sliding_window_mask(T_q, T_k, window, device=device)
    return m & causal_mask(T_q, T_k, device=device) if causal else m


def reference(q, k, v, causal=False, window=(-1, -1), scale=None, softcap=0.0, bias=None):
    """attn_course.attention in float32 (k, v repeated for GQA): the answer everything is checked against.
    ``bias``: an additive float32 bias broadcastable to ``[B, H, T_q, T_k]`` (ALiBi's), added to the scores."""
    G = q.shape[1] // k.shape[1]
    mask = allowed_mask(q.shape[2], k.shape[2], causal, window, q.device)
    if bias is not None:  # (an additive mask: the bias where allowed, -inf elsewhere)
        mask = bias.float().masked_fill(~mask, float("-inf"))
    return attention(q.float(), repeat_kv(k.float(), G), repeat_kv(v.float(), G), mask, scale=scale, softcap=softcap)


def torch_same_dtype(q, k, v, causal=False, window=(-1, -1), scale=None, softcap=0.0, bias=None):
    """PyTorch's attention with every op in the inputs' dtype (no float32 softmax): the error budget."""
    G = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, G), repeat_kv(v, G)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, T_q, T_k) in q's dtype
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.to(s.dtype)
    s = s.masked_fill(~allowed_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    return masked_softmax(s) @ v


def reference_lse(q, k, causal=False, window=(-1, -1), softcap=0.0, bias=None):
    """Natural-log logsumexp of the scaled (and ``softcap``-capped, ``bias``-shifted), masked scores in
    float32 (``-inf`` where nothing is allowed)."""
    G = q.shape[1] // k.shape[1]
    s = (q.float() @ repeat_kv(k.float(), G).transpose(-2, -1)) * q.shape[-1] ** -0.5
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.to(s.dtype)
    s = s.masked_fill(~allowed_mask(q.shape[2], k.shape[2], causal, window, q.device), float("-inf"))
    return torch.logsumexp(s, dim=-1)  # (B, H, T_q)


def max_err(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def assert_close_by_rule(name, got, ref32, same_dtype, dtype, truth=None):
    """16-bit: ``|got - ref32| <= 2 |same_dtype - ref32| + floor`` (the budget: max over elements), or at most
    one step of the dtype at that element (:func:`one_ulp`). float32: ``|got - ref32| <= floor + F32_RTOL
    |ref32|`` element by element or, given ``truth`` (``same_dtype``'s computation in float64), ``<= floor +
    2 |same_dtype - truth|`` (max over elements: PyTorch's own float32 error). The message says which tensor
    failed and by how much."""
    assert torch.isfinite(got.float()).all(), f"{name}: the kernel returned NaN or inf"
    if dtype == torch.float32:
        own = 0.0 if truth is None else 2 * max_err(same_dtype.double(), truth.double())
        diff, ref = (got.float() - ref32.float()).abs(), ref32.float().abs()
        worst = (diff - torch.clamp_min(F32_RTOL * ref, own)).argmax()  # the element furthest past its own bound
        err, size = diff.flatten()[worst].item(), ref.flatten()[worst].item()
        bound = FLOOR[dtype] + max(F32_RTOL * size, own)
        assert err <= bound, (
            f"{name} ({dtype}): error {err:.3e} vs the float32 reference exceeds {bound:.3e} at an element of "
            f"size {size:.3g} ({FLOOR[dtype]:.0e} + the larger of {F32_RTOL:.1e} x its size, twice torch.testing's "
            f"float32 tolerance, and {own:.1e}, twice PyTorch's own float32 error against float64"
            f"{'' if truth is not None else ', not measured here'})")
        return
    budget = 2 * max_err(same_dtype, ref32) + FLOOR[dtype]
    diff = (got.float() - ref32.float()).abs()
    over = diff > torch.maximum(torch.full_like(diff, budget), one_ulp(ref32, dtype))
    err = diff.max().item()
    assert not over.any(), (
        f"{name} ({dtype}): max error {err:.3e} vs the float32 reference exceeds {budget:.3e} "
        f"(2x PyTorch's own {dtype} error + {FLOOR[dtype]:.0e}), and one {dtype} step at the element's size, at "
        f"{int(over.sum())} elements"
    )


def one_ulp(ref: torch.Tensor, dtype) -> torch.Tensor:
    """The spacing of ``dtype``'s numbers at each element of ``ref``: two correct results rounded to ``dtype``
    from slightly different float32 sums may land one step apart (a bfloat16 step at 4 is 0.03125, more
    than its floor), so no 16-bit comparison asks for less."""
    size = ref.float().abs().clamp_min(torch.finfo(dtype).tiny)
    return torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(size)))


def make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device="cpu", requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, T_q, D), (B, H_kv, T_k, D), (B, H_kv, T_k, D))
    return tuple(torch.randn(s, generator=g).to(device=device, dtype=dtype).requires_grad_(requires_grad)
                 for s in shapes)


def far_apart_qkv(T, D, dtype, device="cpu", row_stride=1 << 27):
    """q, k, v ``[1, 1, T, D]`` whose rows lie ``row_stride`` elements apart in one storage, leaves that
    require grad: with ``(T - 1) * row_stride >= 2^31`` a 32-bit row offset wraps around. The storage is
    ``torch.empty``, so only the pages of the ``T`` rows are ever touched (4 GiB of address space at the
    defaults with float16, well under a MiB of memory on the CPU)."""
    store = torch.empty((T - 1) * row_stride + 3 * D, dtype=dtype, device=device)
    rows = store.as_strided((T, 3 * D), (row_stride, 1))  # (T, 3D): q | k | v side by side in each row
    rows.copy_(torch.randn(T, 3 * D, generator=torch.Generator().manual_seed(0)))
    return tuple(store.as_strided((1, 1, T, D), (0, 0, row_stride, 1), i * D).requires_grad_() for i in range(3))


def check_far_apart_rows(device="cpu"):
    """Forward and backward on :func:`far_apart_qkv` (17 rows, the last 2^31 elements into the storage),
    causal, float16, against the float32 reference by the tolerance rule."""
    from attn_course.kernels import flash_attention

    q, k, v = far_apart_qkv(17, 16, torch.float16, device=device)
    assert (q.shape[2] - 1) * q.stride(2) >= 2**31
    out = flash_attention(q, k, v, causal=True)
    ref, same = reference(q, k, v, causal=True), torch_same_dtype(q, k, v, causal=True)
    assert_close_by_rule("out", out, ref, same, torch.float16)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=torch.float16)
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout.float())
    budget = torch.autograd.grad(same, (q, k, v), dout)
    for name, g, w, b in zip(("dq", "dk", "dv"), got, want, budget, strict=True):
        assert_close_by_rule(name, g, w, b, torch.float16)


def out_and_grads(fn, inputs, dout, dtype=None):
    """``fn`` on fresh leaf copies of ``inputs`` (cast to ``dtype`` if given): ``(out, (dq, dk, dv))`` of
    ``<out, dout>``."""
    leaves = [x.detach().to(dtype or x.dtype, copy=True).requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, dout.to(out.dtype))


def grads(fn, q, k, v, dout):
    """``(dq, dk, dv)`` of ``<fn(q, k, v), dout>`` by autograd, on fresh leaf copies of the inputs."""
    return out_and_grads(fn, (q, k, v), dout)[1]


def assert_matches_by_rule(label, out, got, inputs, dout, ref_fn, same_fn, dtype, other_grads=None):
    """A kernel's ``out`` and gradients ``got = (dq, dk, dv)`` of ``<out, dout>`` on ``inputs = (q, k, v)``
    against ``ref_fn(q, k, v)`` (float32 leaves: the reference) by the tolerance rule, the budget from
    ``same_fn`` on leaves in the inputs' dtype, or, for each gradient, from ``other_grads`` (another
    algorithm's ``(dq, dk, dv)``) where that one is further from the reference. float32: where ``same_fn``
    computes in its inputs' dtype, it runs on float64 leaves too, the truth that measures PyTorch's own float32
    error (:func:`assert_close_by_rule`). ``label`` prefixes the names in a failure ("of sequence 1")."""
    suffix = f" {label}" if label else ""
    ref_leaves = [x.detach().float().requires_grad_(True) for x in inputs]
    ref = ref_fn(*ref_leaves)
    want = torch.autograd.grad(ref, ref_leaves, dout.float())
    same, budget = out_and_grads(same_fn, inputs, dout)
    truth, true_grads = (None, (None,) * 3) if dtype != torch.float32 else float64_truth(same_fn, inputs, dout)
    if other_grads is not None:
        budget = [max((b, o), key=lambda x, w=w: max_err(x, w)) for b, o, w in zip(budget, other_grads, want,
                                                                                    strict=True)]
    assert_close_by_rule(f"out{suffix}", out, ref, same, dtype, truth)
    for name, g, w, b, t in zip(("dq", "dk", "dv"), got, want, budget, true_grads, strict=True):
        assert_close_by_rule(f"{name}{suffix}", g, w, b, dtype, t)


def float64_truth(same_fn, inputs, dout):
    """``same_fn``'s ``(out, (dq, dk, dv))`` on float64 copies of ``inputs``, or ``(None, (None,) * 3)`` where
    ``same_fn`` casts to a dtype of its own (no truth to measure PyTorch's float32 error by)."""
    out, grads = out_and_grads(same_fn, inputs, dout, torch.float64)
    return (out, grads) if out.dtype == torch.float64 else (None, (None,) * 3)


def fa2_grads(q, k, v, keep, p, causal, window, dout, softcap=0.0, bias=None):
    """FlashAttention-2's ``(dq, dk, dv)``, computed by PyTorch in float32 with the one rounding its algorithm
    makes: ``delta = rowsum(dO * O)`` from the output as stored, in the inputs' dtype (then ``dS = P (dP -
    delta)``; GQA's key/value gradients summed over each group). ``keep=None``: no dropout; ``softcap`` and
    ``bias`` change the scores as in the reference."""
    B, H, H_kv = q.shape[0], q.shape[1], k.shape[1]
    G, dtype, scale = H // H_kv, q.dtype, q.shape[-1] ** -0.5
    q, k, v, dout = q.float(), repeat_kv(k.float(), G), repeat_kv(v.float(), G), dout.float()  # (B, H, T, D)
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, T_q, T_k)
    capped = torch.tanh(s / softcap) if softcap else None  # (the cap's derivative is 1 - tanh^2)
    s = s if capped is None else softcap * capped
    s = s if bias is None else s + bias.float()
    probs = masked_softmax(s.masked_fill(~allowed_mask(q.shape[2], k.shape[2], causal, window), float("-inf")))
    drop = torch.ones_like(probs) if keep is None else keep.float() / (1 - p)
    out = (probs * drop) @ v  # (B, H, T_q, D), then stored in the inputs' dtype
    delta = (dout * out.to(dtype).float()).sum(-1, keepdim=True)  # (B, H, T_q, 1)
    ds = probs * ((dout @ v.transpose(-2, -1)) * drop - delta)  # (B, H, T_q, T_k)
    ds = ds if capped is None else ds * (1 - capped * capped)
    dk = (ds.transpose(-2, -1) @ q * scale).view(B, H_kv, G, -1, q.shape[-1]).sum(2)  # (B, H_kv, T_k, D)
    dv = ((probs * drop).transpose(-2, -1) @ dout).view(B, H_kv, G, -1, q.shape[-1]).sum(2)
    return ds @ k * scale, dk, dv


def check_changed_scores(q, k, v, causal, window, dtype, variant=None, softcap=0.0, alibi_slopes=None, bias=None):
    """``flash_attention`` with a softcap and/or ALiBi slopes on ``(q, k, v)`` against the float32 reference
    with the same cap and ``bias`` (the slopes' bias, built by the test from its definition) as an additive
    mask: out and gradients by the tolerance rule, lse within 1e-4 (``-inf`` exactly where the reference's
    is). ``variant``: the kernel variant to force (``None``: as set)."""
    from attn_course.kernels import _variants, flash_attention

    B, H, T_q, D = q.shape
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(q.device, dtype)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    with _variants.settings(kernel=variant):
        out, lse = flash_attention(*leaves, causal=causal, window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                   return_lse=True)
        got = torch.autograd.grad(out, leaves, dout)
    assert out.shape == q.shape and out.dtype == dtype
    fa2 = None if dtype == torch.float32 else fa2_grads(q, k, v, None, 0.0, causal, window, dout, softcap, bias)
    assert_matches_by_rule("", out, got, (q, k, v), dout,
                           lambda q, k, v: reference(q, k, v, causal, window, softcap=softcap, bias=bias),
                           lambda q, k, v: torch_same_dtype(q, k, v, causal, window, softcap=softcap, bias=bias),
                           dtype, fa2)  # (FlashAttention-2's own error: see check_varlen_case)
    want_lse = reference_lse(q, k, causal, window, softcap=softcap, bias=bias)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    finite = torch.isfinite(want_lse)
    assert max_err(lse[finite], want_lse[finite]) < 1e-4, "lse must be the logsumexp of the changed scores"


def check_case(case, device="cpu"):
    """The kernel's ``out`` and ``(dq, dk, dv)`` on ``case = (B, H, H_kv, T_q, T_k, D, causal, window,
    dtype)`` against the float32 reference, by the tolerance rule, with shapes and dtypes checked."""
    from attn_course.kernels import flash_attention

    B, H, H_kv, T_q, T_k, D, causal, window, dtype = case
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, D, dtype, device=device)
    dout = torch.randn(B, H, T_q, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)

    def kernel(q, k, v):
        return flash_attention(q, k, v, causal=causal, window=window)

    def ref32(q, k, v):
        return reference(q, k, v, causal, window)

    def same(q, k, v):
        return torch_same_dtype(q, k, v, causal, window)

    out = kernel(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    truth, true_grads = (None, (None,) * 3) if dtype != torch.float32 else float64_truth(same, (q, k, v), dout)
    assert_close_by_rule("out", out, ref32(q, k, v), same(q, k, v), dtype, truth)

    got = grads(kernel, q, k, v, dout)
    want = grads(ref32, q, k, v, dout)
    budget = grads(same, q, k, v, dout)
    for name, g, w, b, t, x in zip(("dq", "dk", "dv"), got, want, budget, true_grads, (q, k, v), strict=True):
        assert g.shape == x.shape and g.dtype == dtype, f"{name} has shape {g.shape} {g.dtype}, expected {x.shape}"
        assert_close_by_rule(name, g, w, b, dtype, t)


def _poisoned(make_buffers):
    def make(*args, **kwargs):
        return tuple(x.fill_(float("nan")) for x in make_buffers(*args, **kwargs))
    return make


def poison_kernel_outputs(monkeypatch) -> None:
    """Make the kernels' output buffers NaN-filled instead of uninitialised, for the rest of the test, in the
    kernel modules of every device this machine has (see ``conftest._poison_kernel_outputs``)."""
    from attn_course.kernels import _ops, _packed
    from attn_course.kernels._runtime import kernel_module

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        monkeypatch.setattr(kernel_module("flash_fwd", device), "forward_buffers", _poisoned(_ops.forward_buffers))
        monkeypatch.setattr(kernel_module("flash_bwd", device), "backward_buffers",
                            _poisoned(_ops.backward_buffers))
        split = kernel_module("flash_fwd", device).flash_split  # the key slices' partial results
        monkeypatch.setattr(split, "split_buffers", _poisoned(split.split_buffers))
    monkeypatch.setattr(_packed, "gradient_buffer", lambda root: torch.full_like(root, float("nan")))


def test_reference_agrees_with_plain_softmax_on_a_full_mask():
    q, k, v = make_qkv(1, 2, 1, 5, 7, 16, torch.float32)
    expected = torch.softmax(q @ k.repeat(1, 2, 1, 1).transpose(-2, -1) / 4.0, dim=-1) @ v.repeat(1, 2, 1, 1)
    assert max_err(reference(q, k, v), expected) < 1e-6


def test_rule_rejects_a_wrong_answer():
    q, k, v = make_qkv(1, 1, 1, 9, 9, 16, torch.float16)
    ref = reference(q, k, v)
    wrong = ref + 0.05
    try:
        assert_close_by_rule("out", wrong, ref, torch_same_dtype(q, k, v), torch.float16)
    except AssertionError:
        return
    raise AssertionError("the tolerance rule accepted an output that is off by 0.05 everywhere")


def test_16_bit_results_may_differ_by_one_step_of_their_dtype_and_no_more():
    """A bfloat16 gradient of size ~4 one step (0.03125) from the rounded reference passes even where
    PyTorch's own error was small; two steps fail, and so does one step at an element of size ~1 (0.0078)
    when that exceeds the budget."""
    ref = torch.tensor([4.15625, 1.0, -0.5], dtype=torch.bfloat16)
    small = ref.clone()
    assert one_ulp(ref, torch.bfloat16).tolist() == [0.03125, 0.0078125, 0.00390625]
    assert_close_by_rule("dv", ref + torch.tensor([0.03125, 0, 0], dtype=torch.bfloat16), ref, small, torch.bfloat16)
    with pytest.raises(AssertionError, match="at 1 elements"):
        assert_close_by_rule("dv", ref + torch.tensor([0.0625, 0, 0], dtype=torch.bfloat16), ref, small,
                             torch.bfloat16)
    assert_close_by_rule("dv", ref + torch.tensor([0, 0.0078125, 0], dtype=torch.bfloat16), ref, small,
                         torch.bfloat16)  # (one step there is within the floor, 8e-3, anyway)
    with pytest.raises(AssertionError):
        assert_close_by_rule("dv", ref + torch.tensor([0, 0.0234375, 0], dtype=torch.bfloat16), ref, small,
                             torch.bfloat16)


def test_the_float32_rule_scales_with_each_element_and_no_further():
    """float32: an error of 2e-5 + 2.6e-6 x |element| passes, element by element, and a little more fails; a
    large element's allowance does not carry over to a small one elsewhere in the tensor."""
    ref = torch.tensor([0.5, -15.0, 3.0])
    allowed = FLOOR[torch.float32] + F32_RTOL * ref.abs()
    assert_close_by_rule("dk", ref + 0.99 * allowed * ref.sign(), ref, ref, torch.float32)
    for i in range(3):
        off = ref.clone()
        off[i] += 1.02 * allowed[i] * ref[i].sign()
        with pytest.raises(AssertionError, match=f"at an element of size {ref[i].abs().item():.3g}"):
            assert_close_by_rule("dk", off, ref, ref, torch.float32)
    off = ref + torch.tensor([3e-5, 0.0, 0.0])  # within the big element's allowance, not within the small one's
    with pytest.raises(AssertionError, match="dk .*exceeds"):
        assert_close_by_rule("dk", off, ref, ref, torch.float32)



def test_the_float32_rule_takes_twice_pytorchs_own_float32_error_where_float64_measures_it():
    """Given the truth in float64, an element may be off by floor + twice PyTorch's own float32 error (its max
    over the tensor) where that is more than the relative term, and by a little more fails; without the truth,
    or with a truth PyTorch's float32 matches, the relative rule alone decides."""
    ref = torch.tensor([0.5, -2.0, 3.0])
    own = 1e-5  # PyTorch's float32 result is off by this at one element, as with scores near -117
    same, truth = ref.clone(), ref.double()
    same[1] += own
    near = ref + torch.tensor([0.0, 0.0, 0.98 * (FLOOR[torch.float32] + 2 * own)])
    assert_close_by_rule("dv", near, ref, same, torch.float32, truth)
    far = ref + torch.tensor([0.0, 0.0, 1.02 * (FLOOR[torch.float32] + 2 * own)])
    with pytest.raises(AssertionError, match=r"2\.0e-05, twice PyTorch's own float32 error against float64\)"):
        assert_close_by_rule("dv", far, ref, same, torch.float32, truth)
    with pytest.raises(AssertionError, match="not measured here"):
        assert_close_by_rule("dv", near, ref, same, torch.float32)
    with pytest.raises(AssertionError, match="dv .*exceeds"):
        assert_close_by_rule("dv", near, ref, ref, torch.float32, truth)


def test_kernel_outputs_start_as_nan_in_the_kernel_tests():
    """The conftest fixture is on here: a buffer the kernels would write starts as NaN, not as recycled memory."""
    from attn_course.kernels._runtime import kernel_module

    q = torch.randn(1, 2, 5, 16)
    out, lse = kernel_module("flash_fwd", q.device).forward_buffers(q, False)
    grads = kernel_module("flash_bwd", q.device).backward_buffers(q, q, q)
    parts = kernel_module("flash_fwd", q.device).flash_split.split_buffers(q, 3)
    assert all(x.isnan().all() for x in (out, lse, *grads, *parts))
