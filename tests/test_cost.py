"""The cost model against the documents' numbers and against tensors and FLOPs counted by PyTorch."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from attn_course import attention, cost


def test_documents_scores_tensor_is_17_gb():
    assert cost.scores_bytes(4, 32, 8192, "bf16") == 17_179_869_184
    assert cost.scores_bytes(4, 32, 8192, torch.bfloat16) == 17_179_869_184
    # it is literally the size of that tensor (checked on a small case we can allocate)
    assert cost.scores_bytes(2, 3, 50, "fp32") == torch.empty(2, 3, 50, 50).nbytes


def test_ten_thousand_tokens_is_a_hundred_million_scores():
    assert cost.scores_bytes(1, 1, 10_000, "fp32") // 4 == 100_000_000


def test_per_layer_macs_and_flops():
    T, d = 2048, 4096
    assert cost.projection_macs(T, d) == 4 * T * d * d
    assert cost.attention_macs(T, d) == 2 * T * T * d
    assert cost.layer_flops(T, d) == 2 * (4 * T * d * d + 2 * T * T * d)
    assert cost.crossover_T(d) == 2 * d
    assert cost.attention_macs(cost.crossover_T(d), d) == cost.projection_macs(cost.crossover_T(d), d)


def test_attention_flops_match_pytorchs_flop_counter():
    B, H, T_q, T_k, D = 2, 3, 40, 56, 16
    q, k, v = torch.randn(B, H, T_q, D), torch.randn(B, H, T_k, D), torch.randn(B, H, T_k, D)
    with FlopCounterMode(display=False) as counter:
        attention(q, k, v)
    assert counter.get_total_flops() == cost.attention_flops(B, H, T_q, T_k, D)
    assert cost.attention_flops(B, H, T_q, T_k, D, causal=True) == cost.attention_flops(B, H, T_q, T_k, D) / 2
    assert cost.attention_flops(1, 1, 8, 8, 8, backward=True) == 3.5 * cost.attention_flops(1, 1, 8, 8, 8)


def test_layer_macs_match_flop_counter_of_a_real_layer():
    from attn_course import MultiHeadAttention

    T, d = 32, 64
    mha = MultiHeadAttention(d, 4)
    with FlopCounterMode(display=False) as counter:
        mha(torch.randn(1, T, d))
    assert counter.get_total_flops() == cost.layer_flops(T, d)


def test_kv_cache_bytes_equal_the_cache_tensors():
    batch, T, layers, kv_heads, d_head = 2, 10, 3, 4, 8
    cache = [(torch.empty(batch, kv_heads, T, d_head, dtype=torch.float16),) * 2 for _ in range(layers)]
    assert cost.kv_cache_bytes(batch, T, layers, kv_heads, d_head, "fp16") == sum(
        k.nbytes + v.nbytes for k, v in cache)


def test_gqa_and_mqa_shrink_the_cache_by_the_group_factor():
    mha = cost.kv_cache_bytes(1, 4096, 32, 32, 128)
    assert cost.kv_cache_bytes(1, 4096, 32, 8, 128) * 4 == mha
    assert cost.kv_cache_bytes(1, 4096, 32, 1, 128) * 32 == mha
    # Llama 2 7B (MHA) at 4096 tokens in bf16: 2 GiB
    assert cost.model_kv_cache_bytes("Llama 2 7B", 4096) == 2 * 2**30


def test_io_bytes_and_arithmetic_intensity():
    T, D = 4096, 64
    naive, flash = cost.naive_attention_io_bytes(T, D), cost.flash_attention_io_bytes(T, D, block_q=128)
    assert naive == (4 * T * D + 3 * T * T) * 2
    assert flash == (2 * T * D + 2 * T * D * 32) * 2
    assert naive / flash > 2  # the T^2 term shrinks by 3 * block_q / (2 D)
    f = cost.attention_flops(1, 1, T, T, D)
    assert cost.arithmetic_intensity(f, flash) > cost.arithmetic_intensity(f, naive)


def test_bad_dtype_name():
    import pytest

    with pytest.raises(ValueError, match="unknown dtype name 'bf17'"):
        cost.scores_bytes(1, 1, 4, "bf17")
