"""`python -m attn_course`: a one-screen smoke test of the installed package (run by `make`)."""

import torch

import attn_course
from attn_course import attention, cost
from attn_course.worked_example import worked_example


def main() -> None:
    q, k, v = worked_example()
    out, weights = attention(q, k, v, causal=True, return_weights=True)
    torch.set_printoptions(precision=3, sci_mode=False)
    print(f"attn_course {attn_course.__version__} (torch {torch.__version__})")
    print("The documents' worked example (T=3, d_k=4, causal):")
    print("weights =", weights, sep="\n")
    print("output =", out, sep="\n")
    print(f"scores tensor for B=4, H=32, T=8192 in bf16: {cost.scores_bytes(4, 32, 8192, 'bf16'):,} bytes")


if __name__ == "__main__":
    main()
