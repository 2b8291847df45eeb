"""Trusted-verdict spec of ch6_cost: one entry per autograded test cell of the source notebook."""

GRADED = {
    "test_ch6_flops": {"points": 3.0, "checks": [["layer_flops", "layer_flops"]]},
    "test_ch6_scores": {"points": 2.0, "checks": [["scores_bytes", "scores_bytes"]]},
}
