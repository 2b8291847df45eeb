"""Bad input gets a ValueError (TypeError for a non-tensor) that names the problem, before any Triton
code is compiled or interpreted."""

from __future__ import annotations

import pytest
import torch

from attn_course.kernels import flash_attention, flash_attention_varlen


def qkv(B=1, H=2, H_kv=2, T=5, D=16, dtype=torch.float32):
    return torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H_kv, T, D, dtype=dtype), \
        torch.randn(B, H_kv, T, D, dtype=dtype)


@pytest.mark.parametrize("make,match", [
    (lambda: qkv(D=257), "head dim 257 is not supported: the kernels take head dims up to 256, as flash-attn"),
    (lambda: qkv(D=512), "head dim 512 is not supported.*compute it with attn_course.attention$"),
    (lambda: qkv(dtype=torch.float64), "float16, bfloat16 and float32"),
    (lambda: (qkv()[0], qkv()[1].half(), qkv()[2]), "share a dtype"),
    (lambda: (qkv()[0], qkv()[1].to("meta"), qkv()[2].to("meta")), "one device"),
    (lambda: qkv(H=3, H_kv=2), "multiple of the number of key/value heads"),
    (lambda: (qkv()[0][0], *qkv()[1:]), "must be 4-D"),
    (lambda: (qkv()[0][..., :8], *qkv()[1:]), "share the head dim"),
    (lambda: (qkv()[0], qkv()[1], qkv()[2][:, :, :3]), "same shape"),
    (lambda: (qkv(B=2)[0], *qkv()[1:]), "batch size"),
    (lambda: qkv(D=0), r"head dim 0 is not supported: q, k and v have no columns"),
    (lambda: (qkv()[0].to_sparse(), *qkv()[1:]), r"q must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    (lambda: (qkv()[0], qkv()[1].to_sparse(), qkv()[2]), "k must be a dense .* torch.sparse_coo"),
    (lambda: (torch.nested.nested_tensor([torch.randn(5, 2, 16), torch.randn(3, 2, 16)], layout=torch.jagged),
              *qkv()[1:]), "q is a nested tensor.*pack ragged sequences end to end and use flash_attention_varlen"),
])
def test_bad_tensors(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*make())


def test_numpy_scalars_are_numbers_too():
    """``np.float32`` scales, ``np.int64`` windows, lengths and split counts (what arithmetic on NumPy arrays
    gives) mean what the Python numbers mean; a NumPy bool or a float window is still refused."""
    import numpy as np

    from attn_course.kernels import flash_attention_kvcache, flash_attention_varlen

    q, k, v = qkv()
    assert torch.equal(flash_attention(q, k, v, scale=np.float32(0.25), window=(np.int64(3), np.int32(0))),
                       flash_attention(q, k, v, scale=0.25, window=(3, 0)))
    with torch.no_grad():
        assert torch.equal(flash_attention_kvcache(q, k, v, np.int64(4), num_splits=np.int64(2)),
                           flash_attention_kvcache(q, k, v, 4, num_splits=2))
    packed = [x[0].transpose(0, 1).contiguous() for x in (q, k, v)]  # (T, H, D): one sequence
    T = packed[0].shape[0]
    cu = torch.tensor([0, T], dtype=torch.int32)
    assert torch.equal(flash_attention_varlen(*packed, cu, cu, np.int64(T), np.int64(T)),
                       flash_attention_varlen(*packed, cu, cu, T, T))
    with pytest.raises(TypeError, match="window left must be an int"):
        flash_attention(q, k, v, window=(np.float64(3.0), 0))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        flash_attention(q, k, v, scale=np.True_)


def test_bad_arguments():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="torch.Tensor"):
        flash_attention(q.numpy(), k, v)
    with pytest.raises(ValueError, match="window left must be >= 0"):
        flash_attention(q, k, v, window=(-2, 0))
    with pytest.raises(ValueError, match="scale must be a finite number"):
        flash_attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="causal must be True or False"):
        flash_attention(q, k, v, causal="yes")


def packed():
    return torch.randn(10, 2, 16), torch.randn(12, 1, 16), torch.randn(12, 1, 16)


@pytest.mark.parametrize("cu_q,cu_k,max_q,max_k,match", [
    ([1, 4, 10], [0, 5, 12], 6, 7, "cu_seqlens_q: cu_seqlens must start at 0"),
    ([0, 6, 4, 10], [0, 5, 6, 12], 6, 7, "sorted"),
    ([0, 4, 11], [0, 5, 12], 7, 7, r"cu_seqlens_q ends at token 11 but q holds only 10 packed tokens"),
    ([0, 4, 10], [0, 7, 13], 6, 7, r"cu_seqlens_k ends at token 13 but k holds only 12 packed tokens"),
    ([0, 4, 10], [0, 12], 6, 12, "same number of sequences"),
    ([0, 4, 10], [0, 5, 12], 5, 7, "longest sequence has 6 tokens"),
    ([0, 4, 10], [0, 5, 12], 6, 7.0, "must be an int"),
    ([0, 4, 10], [0, 5, 12], -1, 7, "must be an int >= 0, got -1"),
    (torch.tensor([0.0, 4.0, 10.0]), [0, 5, 12], 6, 7, "integer"),
    (torch.tensor([0, 4, 10], device="meta"), [0, 5, 12], 6, 7,
     r"cu_seqlens_q: cu_seqlens must be on the CPU or a CUDA GPU \(its values are read\), got meta"),
    ([0, 4, 10], torch.tensor([0, 5, 12]).to_sparse(), 6, 7, "cu_seqlens_k: cu_seqlens must be a dense"),
])
def test_bad_cu_seqlens(cu_q, cu_k, max_q, max_k, match):
    q, k, v = packed()
    with pytest.raises(ValueError, match=match):
        flash_attention_varlen(q, k, v, cu_q, cu_k, max_q, max_k)


def test_varlen_wants_packed_3d_tensors():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="must be 3-D \\[total_T, H, D\\]"):
        flash_attention_varlen(q, k, v, [0, 5], [0, 5], 5, 5)

