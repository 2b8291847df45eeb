"""Trusted verdicts for ch4_masks: causal, padding, prefix-LM, packed and sliding-window masks, and
attention that survives fully masked rows.

Written answers (ch4-alignment, ch4-dead-rows) are graded by hand and are not listed here.
"""

GRADED = {
    "ch4-causal-test": {"points": 2.0, "checks": [["causal_mask", "causal_mask"]]},
    "ch4-padding-test": {"points": 2.0, "checks": [["padding_mask", "padding_mask"]]},
    "ch4-prefix-test": {"points": 2.0, "checks": [["prefix_lm_mask", "prefix_lm_mask"]]},
    "ch4-varlen-test": {"points": 2.0, "checks": [["varlen_mask", "varlen_mask"]]},
    "ch4-window-test": {"points": 2.0, "checks": [["sliding_window_mask", "sliding_window_mask"]]},
    "ch4-masked-attention-test": {"points": 3.0, "checks": [["masked_attention", "masked_attention"]]},
}
