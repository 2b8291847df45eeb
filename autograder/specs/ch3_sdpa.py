"""Trusted verdicts for ch3_sdpa: attention weights, scaled dot-product attention, Var(q . k).

Written answers (ch3-worked, ch3-derive, ch3-saturation) are graded by hand and are not listed here.
"""

GRADED = {
    "ch3-weights-test": {"points": 3.0, "checks": [["attention_weights", "attention_weights"]]},
    "ch3-sdpa-test": {
        "points": 2.0,
        "checks": [["scaled_dot_product_attention", "scaled_dot_product_attention"]],
    },
    "ch3-variance-test": {"points": 2.0, "checks": [["dot_product_variance", "dot_product_variance"]]},
}
