"""
ALiBi: attention with linear biases, computed per score
=======================================================

In this file you will learn how a FlashAttention kernel adds ALiBi's position biases without ever forming
the ``[T_q, T_k]`` bias matrix. You will learn about:

* what ALiBi is (Press et al., 2022; BLOOM and MPT use it instead of position embeddings): every score
  gets ``-m_h * |i - j|``, a penalty that grows linearly with the distance between query position ``i``
  and key position ``j``, steeper in some heads than in others (one slope ``m_h`` per head, usually
  ``2^(-8 (h + 1) / H)``). A head with a steep slope looks only at its neighbours; a shallow one sees far;
* where the positions come from: the kernels' bottom-right alignment (query ``i`` sits at ``i + T_k -
  T_q``), so the bias is ``-m_h * |i + T_k - T_q - j|``, flash-attn's ``alibi_slopes`` exactly; the same
  positions decide the causal and window masks (``_tiles.allowed``);
* computing it, not storing it: two integer ops, a convert and a multiply per score, from the row and
  column indices the kernels already have. The slopes (``B * H`` floats at most) are the only memory read,
  once per program. In log2 units, like the scores: the kernels multiply the slope by ``log2(e)``;
* the backward pass: the bias does not depend on q or k, so ``dS`` is unchanged; the backward kernels only
  add it again when they recompute the probabilities from the saved logsumexp (which includes it). The
  slopes get no gradient (flash-attn gives none either): a caller whose slopes require grad is told so;
* a decoding step that packs a GQA group's query heads into one program's rows (``flash_fwd``'s
  ``PACK_GQA``): each row is a different head, so each row loads its own slope.
"""

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)  # log2(e): the kernels' scores are in log2 units


@triton.jit
def slopes_of(Alibi, stride_ab, stride_ah, b, heads):
    """The slopes of sequence ``b`` and ``heads`` (a head, or one per row), in log2 units."""
    return tl.load(Alibi + b.to(tl.int64) * stride_ab + heads * stride_ah) * LOG2E


@triton.jit
def bias(slopes, q_pos, k_pos, T_q, T_k):
    """``-slope * |q_pos + T_k - T_q - k_pos|`` in float32, broadcast over whatever shapes ``slopes``,
    ``q_pos`` and ``k_pos`` come in (a tile, or its transpose)."""
    return -slopes * tl.abs(q_pos + (T_k - T_q) - k_pos).to(tl.float32)


def launch_args(alibi_slopes, b0: int, b1: int, placeholder) -> tuple:
    """The kernels' ALiBi arguments ``(Alibi, stride_ab, stride_ah)`` for the launch of sequences ``b0 ...
    b1 - 1``: slopes ``[H]`` (every sequence alike: batch stride 0) or ``[B, H]`` (those rows). Without ALiBi
    (``None``) ``placeholder`` stands in, never read."""
    if alibi_slopes is None:
        return placeholder, 0, 0
    if alibi_slopes.dim() == 1:
        return alibi_slopes, 0, alibi_slopes.stride(0)
    part = alibi_slopes[b0:b1]  # (b1 - b0, H)
    return part, part.stride(0), part.stride(1)


if __name__ == "__main__":
    # A check: the kernels' output and gradients with ALiBi, against attention with the bias as a mask.
    import torch

    from attn_course import attention
    from attn_course.kernels import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    B, H, T = 2, 4, 113
    q, k, v = (torch.randn(B, H, T, 64, device=device, requires_grad=True) for _ in range(3))
    slopes = 2.0 ** (-8.0 * torch.arange(1, H + 1, device=device) / H)  # (H,) ALiBi's usual slopes
    pos = torch.arange(T, device=device)
    mask = -slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()  # (H, T, T) the bias, in full
    mask = mask.masked_fill(pos[None, :] > pos[:, None], float("-inf"))  # causal
    out = flash_attention(q, k, v, causal=True, alibi_slopes=slopes)
    ref = attention(q, k, v, mask)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    want = torch.autograd.grad(ref.sum(), (q, k, v))
    print(f"ALiBi: max |kernel - attn_course.attention with the bias as a mask| = "
          f"{(out - ref).abs().max().item():.2e} (out), "
          + ", ".join(f"{(g - w).abs().max().item():.2e} (d{n})" for n, g, w in zip("qkv", grads, want, strict=True))
          + f" ({device})")
