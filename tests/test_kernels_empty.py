"""Empty inputs give what PyTorch's attention and ``attn_course.attention`` give, and launch no kernel.

They come up in real programs: a data-parallel rank whose share of a batch is empty, a model with its heads
pruned away, a decode step against a key/value cache that holds nothing yet (``T_k = 0``), a packed batch in
which some sequences have no tokens. With no query there is nothing to return; with no key every row has no
allowed key, so its output is zeros and its ``lse`` is ``-inf``, as for a fully masked row; and no gradient
flows anywhere. No kernel may run: on a GPU a tensor descriptor cannot even describe an empty dimension.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels_autograd import LaunchSpy
from test_kernels_common import make_qkv, reference, reference_lse
from test_kernels_varlen import per_sequence

from attn_course import attention
from attn_course.kernels import flash_attention, flash_attention_varlen, flash_attn_func
from attn_course.kernels._runtime import kernel_module
from attn_course.mha import repeat_kv

EMPTY = {  # (B, H, H_kv, T_q, T_k)
    "empty-batch": (0, 4, 2, 9, 11),
    "no-heads": (2, 0, 0, 9, 11),
    "no-queries": (2, 4, 2, 0, 11),
    "no-keys": (2, 4, 2, 9, 0),
    "no-keys-mqa": (1, 4, 1, 1, 0),
    "nothing": (2, 4, 1, 0, 0),
}
KERNELS = {"flash_fwd": ("_attn_fwd",), "flash_bwd": ("_bwd_dq", "_bwd_dkdv")}


class Launches(list):
    """The names of the kernels launched while a test runs, once ``spy_on(device)`` is called."""


@pytest.fixture
def launches(monkeypatch):
    log = Launches()

    def spy_on(device):
        for module, names in KERNELS.items():
            mod = kernel_module(module, torch.device(device))
            for name in names:
                monkeypatch.setattr(mod, name, LaunchSpy(name, getattr(mod, name), log))
    log.spy_on = spy_on
    return log


def expected(q, k, v, causal, window=(-1, -1), **changes):
    """``(out, lse)`` from ``attn_course.attention`` in float32, with the score ``changes`` (``softcap=...``,
    ``bias=...``) if any. With no head, query or key there is no score to mask (and the course's masks want
    lengths >= 1), so it runs unmasked (and unchanged)."""
    if min(q.shape[1], q.shape[2], k.shape[2]) > 0:
        return (reference(q, k, v, causal=causal, window=window, **changes),
                reference_lse(q, k, causal=causal, window=window, **changes))
    G = q.shape[1] // k.shape[1] if k.shape[1] else 1
    q, k, v = q.float(), repeat_kv(k.float(), G), repeat_kv(v.float(), G)
    return attention(q, k, v), torch.logsumexp(q @ k.transpose(-2, -1), dim=-1)  # scores (B, H, T_q, 0 or T_k)


def check_empty(shape, causal, dtype, device, launches):
    """Forward and backward of one empty case against the reference, with no kernel launched."""
    launches.spy_on(device)
    B, H, H_kv, T_q, T_k = shape
    q, k, v = make_qkv(B, H, H_kv, T_q, T_k, 32, dtype, device=device, requires_grad=True)
    out, lse = flash_attention(q, k, v, causal=causal, return_lse=True)
    want, want_lse = expected(q, k, v, causal)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    assert lse.shape == (B, H, T_q) and lse.dtype == torch.float32
    assert torch.equal(out.float(), want.to(out.device)), "rows with no allowed key must be zeros"
    assert torch.equal(lse.cpu(), want_lse.cpu()), "rows with no allowed key must have lse = -inf"
    dout = torch.randn(out.shape, dtype=dtype, device=device)
    grads = torch.autograd.grad((out * dout).sum() + lse.exp().sum(), (q, k, v))
    want_grads = torch.autograd.grad((want * dout.float()).sum(), (q, k, v), allow_unused=True,
                                     materialize_grads=True)
    for name, g, w, x in zip("qkv", grads, want_grads, (q, k, v), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, f"d{name}: shape {tuple(g.shape)}, {g.dtype}"
        assert torch.equal(g.float(), w.float()) and not g.any(), f"d{name} must be all zeros"
    assert launches == [], f"an empty input launched {launches}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", EMPTY.values(), ids=EMPTY.keys())
def test_empty_inputs_match_attention_and_launch_nothing(shape, causal, dtype, launches):
    check_empty(shape, causal, dtype, "cpu", launches)


def test_flash_attn_func_with_an_empty_batch():
    q = torch.randn(0, 7, 4, 64, dtype=torch.float16)  # (B, T, H, D) with B = 0
    k = v = torch.randn(0, 5, 2, 64, dtype=torch.float16)
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert out.shape == (0, 7, 4, 64) and lse.shape == (0, 4, 7)


# packed batches: sequence 0 has queries and no keys, 1 keys and no queries, 2 neither, 3 and 4 both
LENS_Q = [5, 0, 0, 7, 1]
LENS_K = [0, 6, 0, 9, 4]


def packed(lens, H, seed):
    x = torch.randn(sum(lens), H, 32, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    return x, torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)  # (total_T, H, D)


@pytest.mark.parametrize("lens_q,lens_k", [(LENS_Q, LENS_K), ([3, 4], [0, 0]), ([0, 0], [2, 5]), ([0], [0])],
                         ids=["some-empty", "no-keys-at-all", "no-queries-at-all", "nothing"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_with_empty_sequences_matches_attention_per_sequence(lens_q, lens_k, causal):
    """Each sequence against attention on it alone, gradients included: an empty neighbour must neither
    shift the others' rows nor take part in their attention."""
    (q, cu_q), (k, cu_k), (v, _) = packed(lens_q, 4, 0), packed(lens_k, 2, 1), packed(lens_k, 2, 2)
    out, lse = flash_attention_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal, return_lse=True)
    assert out.shape == q.shape and lse.shape == (4, q.shape[0])
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad((out * dout).sum(), (q, k, v))
    want = torch.zeros_like(out), torch.zeros_like(lse), *(torch.zeros_like(x) for x in (q, k, v))
    for b in range(len(lens_q)):
        qb, kb, vb = (per_sequence(x, cu, b) for x, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
        ob, lse_b = expected(qb, kb, vb, causal)  # (1, 4, T_q, D), (1, 4, T_q)
        per_sequence(want[0], cu_q, b).copy_(ob.detach())
        want[1][:, cu_q[b]:cu_q[b + 1]] = lse_b[0].detach()
        for w, g in zip(want[2:], torch.autograd.grad((ob * per_sequence(dout, cu_q, b)).sum(), (q, k, v),
                                                      allow_unused=True, materialize_grads=True), strict=True):
            w += g  # sequence b's gradient, zero outside its own rows
    torch.testing.assert_close(out, want[0], atol=2e-5, rtol=0)
    torch.testing.assert_close(lse, want[1], atol=2e-5, rtol=0)
    for name, g, w in zip("qkv", grads, want[2:], strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("shape", [EMPTY["empty-batch"], EMPTY["no-keys"]], ids=["empty-batch", "no-keys"])
def test_custom_operators_agree_with_their_fakes_on_empty_inputs(shape):
    """``torch.compile`` sees empty tensors through the operators' fakes: they must say what the real
    operators return (shapes, strides, dtypes), and the backward operator must accept the empty outputs."""
    ops = torch.ops.attn_course
    q, k, v = make_qkv(*shape, 32, torch.float16)
    fwd_args = (q, k, v, 0.25, 1 << 30, 0, None, None, 0, 0)
    torch.library.opcheck(ops.flash_forward.default, fwd_args)
    out, lse = ops.flash_forward(*fwd_args)
    dout = torch.randn(out.shape).to(out.dtype)
    torch.library.opcheck(ops.flash_backward.default, (dout, None, q, k, v, out, lse, *fwd_args[3:], True, True))
