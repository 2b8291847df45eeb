"""Trusted-verdict spec of ch5_multihead: one entry per autograded test cell of the source notebook."""

GRADED = {
    "test_ch5_mha": {"points": 4.0, "checks": [["multi_head_attention", "MultiHeadSelfAttention"]]},
    "test_ch5_gqa": {"points": 3.0, "checks": [["grouped_query_attention", "grouped_query_attention"]]},
    "test_ch5_kv": {"points": 2.0, "checks": [["kv_cache_bytes", "kv_cache_bytes"]]},
}
