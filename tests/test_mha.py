"""MultiHeadAttention against torch.nn.MultiheadAttention and SDPA's GQA."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attn_course import MultiHeadAttention, causal_mask, padding_mask
from attn_course.mha import merge_heads, split_heads


def copy_from_torch(ours: MultiHeadAttention, ref: nn.MultiheadAttention) -> None:
    """Written independently of MultiHeadAttention.load_from_torch: in_proj_weight stacks W_q, W_k, W_v."""
    d = ref.embed_dim
    with torch.no_grad():
        ours.q_proj.weight.copy_(ref.in_proj_weight[:d])
        ours.k_proj.weight.copy_(ref.in_proj_weight[d : 2 * d])
        ours.v_proj.weight.copy_(ref.in_proj_weight[2 * d :])
        ours.o_proj.weight.copy_(ref.out_proj.weight)


@pytest.mark.parametrize("d_model,n_heads", [(64, 8), (40, 5), (48, 1)])
def test_parameter_count_is_4_d_squared(d_model, n_heads):
    assert sum(p.numel() for p in MultiHeadAttention(d_model, n_heads).parameters()) == 4 * d_model**2


def test_matches_torch_multihead_attention_self_cross_masked():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(48, 6, batch_first=True, bias=False)
    ours = MultiHeadAttention(48, 6)
    copy_from_torch(ours, ref)
    x, ctx = torch.randn(3, 11, 48), torch.randn(3, 7, 48)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, context=ctx), ref(x, ctx, ctx, need_weights=False)[0], atol=1e-5, rtol=1e-5)
    # torch's attn_mask uses True = *blocked*, ours True = may attend.
    want = ref(x, x, x, attn_mask=~causal_mask(11), need_weights=False)[0]
    torch.testing.assert_close(ours(x, causal=True), want, atol=1e-5, rtol=1e-5)
    pad = padding_mask([7, 3, 5], 7)  # (3, 1, 1, 7)
    want = ref(x, ctx, ctx, key_padding_mask=~pad[:, 0, 0], need_weights=False)[0]
    torch.testing.assert_close(ours(x, context=ctx, mask=pad), want, atol=1e-5, rtol=1e-5)


def test_load_from_torch_with_bias():
    torch.manual_seed(1)
    ref = nn.MultiheadAttention(32, 4, batch_first=True, bias=True)
    ours = MultiHeadAttention(32, 4, bias=True).load_from_torch(ref)
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_gqa_and_mqa_match_sdpa_enable_gqa(n_kv_heads):
    torch.manual_seed(2)
    mha = MultiHeadAttention(64, 8, n_kv_heads=n_kv_heads)
    assert mha.k_proj.out_features == n_kv_heads * 8
    x = torch.randn(2, 13, 64)
    q = mha.q_proj(x).view(2, 13, 8, 8).transpose(1, 2)  # (B, H, T, d_head)
    k = mha.k_proj(x).view(2, 13, n_kv_heads, 8).transpose(1, 2)  # (B, H_kv, T, d_head)
    v = mha.v_proj(x).view(2, 13, n_kv_heads, 8).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, d_head)
    want = mha.o_proj(y.transpose(1, 2).reshape(2, 13, 64))
    torch.testing.assert_close(mha(x, causal=True), want, atol=1e-5, rtol=1e-5)


def test_split_and_merge_heads_roundtrip_and_layout():
    x = torch.arange(2 * 3 * 12).float().view(2, 3, 12)  # (B, T, d_model)
    h = split_heads(x, 4)  # (B, H, T, d_head)
    assert h.shape == (2, 4, 3, 3)
    assert torch.equal(h[1, 2, 0], x[1, 0, 6:9])  # head 2 of token 0 is dims 6..8 of token 0
    assert torch.equal(merge_heads(h), x)


def test_heads_cannot_talk_without_o_proj_but_gradients_flow_everywhere():
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(1, 5, 16, requires_grad=True)
    mha(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mha.parameters())
