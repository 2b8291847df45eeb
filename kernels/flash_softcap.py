"""
Logit soft-capping inside the kernels
=====================================

In this file you will learn how a FlashAttention kernel caps its scores smoothly, as Gemma 2 does and as
flash-attn's ``softcap`` argument asks. You will learn about:

* what the cap is: each scaled score ``s = scale * q . k`` becomes ``c * tanh(s / c)`` before the softmax.
  Scores far below ``c`` pass almost unchanged (``tanh(x) ~ x``); no score ever passes ``+-c``, so no
  single key can take the whole softmax however large ``q . k`` grows. With ``c = 50`` a score of 5 stays
  4.98, one of 100 becomes 48.2;
* folding the cap into the scales the kernels already apply. They multiply ``q . k`` by one number,
  ``scale * log2(e)``, to get scores in log2 units for ``exp2`` (``flash_fwd``). With a cap that number
  becomes ``scale / c`` (the argument of tanh) and a second one, ``c * log2(e)``, multiplies the tanh:
  two multiplies and a tanh per score, nothing stored (:func:`kernel_scales`);
* tanh from ``exp2`` (:func:`tanh`; the interpreter has no ``libdevice``): ``tanh(|x|) = (1 - e) / (1 +
  e)`` with ``e = exp(-2|x|)`` is exact far from 0 (``e`` underflows to 0 and gives 1) but near 0 it
  subtracts two numbers close to 1 and keeps only ``~1e-7`` *absolute* accuracy. Times the cap
  that is an error of ``c * 1e-7`` on every score: 0.01 at ``c = 1e5``, where the cap should change
  nothing. So below ``|x| = 0.2`` the kernels take tanh's series to ``x^7`` instead, which is accurate to
  a few ``1e-7`` *relative* there: either way the score is within about ``1e-6`` of ``c tanh(s / c)``
  relative to itself;
* the backward pass. The chain rule adds one factor per score: ``d(c tanh(s / c)) / ds = 1 - tanh^2``.
  The backward kernels recompute ``t = tanh(s / c)`` with the probabilities and multiply ``dS`` by
  ``1 - t^2`` before the two products that use it (``dQ = scale dS K``, ``dK = scale dS^T Q``). ``delta``
  and the logsumexp need no change: the cap is part of the scores, and the logsumexp is of the capped ones.
"""

import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e)


def kernel_scales(scale: float, softcap: float) -> tuple[float, float]:
    """``(qk_scale, cap)``, the kernels' two score multipliers. No cap (``softcap = 0``): ``q . k`` times
    ``scale * log2(e)`` is the score in log2 units, and ``cap`` (``1.0``) is never read. A cap ``c``:
    ``q . k`` times ``scale / c`` is tanh's argument, and ``cap = c * log2(e)`` turns the tanh into the
    score in log2 units."""
    if softcap:
        return scale / softcap, softcap * LOG2E
    return scale * LOG2E, 1.0


@triton.jit
def tanh(x):
    """``tanh(x)`` in float32, to within about ``3e-7`` of itself: ``(1 - e) / (1 + e)`` with ``e = exp(-2|x|)``
    (which never overflows) and x's sign, or near 0, where that loses the digits that matter, the series
    ``x - x^3/3 + 2x^5/15 - 17x^7/315``."""
    e = tl.math.exp2(tl.abs(x) * -2.8853900817779268)  # exp(-2|x|) in (0, 1] (2 log2(e): exp(y) = exp2(y log2 e))
    big = (1.0 - e) / (1.0 + e)  # tanh(|x|)
    x2 = tl.minimum(x * x, 0.04)  # (the series is used below |x| = 0.2 only: clamped, it never overflows)
    small = x * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333 + x2 * -0.05396825396825397)))
    return tl.where(tl.abs(x) < 0.2, small, tl.where(x < 0.0, -big, big))


if __name__ == "__main__":
    # A check: the kernels' output and gradients with a cap, against the reference's.
    import torch

    from attn_course import attention
    from attn_course.kernels import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 113, 64, device=device, requires_grad=True) for _ in range(3))
    q_big = (q * 8).detach().requires_grad_()  # scores of +-20 and more: the cap at 5 bites
    grads = torch.autograd.grad(flash_attention(q_big, k, v, causal=True, softcap=5.0).sum(), (q_big, k, v))
    ref = torch.autograd.grad(attention(q_big, k, v, causal=True, softcap=5.0).sum(), (q_big, k, v))
    out_err = (flash_attention(q_big, k, v, softcap=5.0) - attention(q_big, k, v, softcap=5.0)).abs().max().item()
    print(f"softcap=5: max |kernel - attn_course.attention| = {out_err:.2e} (out), "
          + ", ".join(f"{(g - r).abs().max().item():.2e} (d{n})" for n, g, r in zip("qkv", grads, ref, strict=True))
          + f" ({device})")
