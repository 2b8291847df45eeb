"""Trusted verdicts for ch2_qkv: the Q/K/V projections and the head split/merge.

Written answers (ch2-view-bug, ch2-params) are graded by hand and are not listed here.
"""

GRADED = {
    "ch2-projections-test": {"points": 2.0, "checks": [["qkv_projections", "qkv_projections"]]},
    "ch2-split-test": {"points": 2.0, "checks": [["split_heads", "split_heads"]]},
    "ch2-merge-test": {"points": 2.0, "checks": [["merge_heads", "merge_heads"]]},
}
