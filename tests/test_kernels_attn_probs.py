"""flash-attn's ``return_attn_probs=True`` with dropout (``kernels/attn_probs.py``): the third element holds the
call's probabilities with dropped entries negated. Checked by what it must explain: the call's own output is
those kept probabilities, scaled by ``1 / (1 - p)``, times v; every row of probabilities sums to 1 over its
allowed keys; and the keep mask is the one the call drew (the same seed, and about ``1 - p`` of the scores)."""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import allowed_mask, make_qkv, max_err
from test_kernels_paged import gathered, make_paged_cache
from test_kernels_varlen import packed, per_sequence

from attn_course.kernels import (
    dropout_mask,
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_qkvpacked_func,
    next_dropout_seed,
    swap_seq_and_heads,
)
from attn_course.mha import repeat_kv

P = 0.3


def rebuilt(s_dmask, v, p):
    """The output that ``S_dmask [B, H, R, C]`` says the call computed from v ``[B, H_kv, C, D]``: the kept
    probabilities, scaled by ``1 / (1 - p)``, times v (float32)."""
    kept = torch.where(s_dmask >= 0, s_dmask, 0).float() / (1 - p)  # (B, H, R, C)
    return kept @ repeat_kv(v.float(), s_dmask.shape[1] // v.shape[1])  # (B, H, R, D)


CASES = {  # name: (H, H_kv, T_q, T_k, flash_attn_func kwargs)
    "full": (2, 2, 17, 23, {}),
    "causal-gqa": (4, 2, 23, 17, dict(causal=True)),  # (T_q > T_k: the first rows see no key)
    "window-mqa": (4, 1, 33, 33, dict(window_size=(5, 2), softmax_scale=0.3)),
    "softcap-alibi": (2, 2, 20, 31, dict(causal=True, softcap=2.0,
                                         alibi_slopes=torch.tensor([0.5, 0.125]))),
}


@pytest.mark.parametrize("case", CASES)
def test_s_dmask_explains_the_calls_output(case):
    check_s_dmask(case)


def check_s_dmask(case, device="cpu"):
    """One of :data:`CASES` in float32 through ``flash_attn_func``: ``S_dmask`` rebuilds the output, holds the
    call's keep mask, nothing where keys are masked, rows of probabilities that sum to 1, about ``1 - p``
    of them kept."""
    H, H_kv, T_q, T_k, kwargs = CASES[case]
    kwargs = {name: x.to(device) if isinstance(x, torch.Tensor) else x for name, x in kwargs.items()}
    q, k, v = (swap_seq_and_heads(x) for x in make_qkv(2, H, H_kv, T_q, T_k, 32, torch.float32, seed=4,
                                                       device=device))  # (B, T, H, D)
    seed = next_dropout_seed(q.device)
    out, lse, s_dmask = flash_attn_func(q, k, v, P, return_attn_probs=True, **kwargs)
    assert s_dmask.shape == (2, H, T_q, T_k) and s_dmask.dtype == q.dtype and s_dmask.device == q.device
    assert max_err(swap_seq_and_heads(out), rebuilt(s_dmask, swap_seq_and_heads(v), P)) < 2e-5
    assert torch.equal(s_dmask >= 0, dropout_mask(seed, 2, H, T_q, T_k, P) | (s_dmask == 0)), "not the call's mask"
    window = kwargs.get("window_size", (-1, -1))
    allowed = allowed_mask(T_q, T_k, kwargs.get("causal", False), window, device)  # (T_q, T_k)
    assert (s_dmask[..., ~allowed] == 0).all(), "a masked key has a probability"
    sums = s_dmask.abs().sum(-1)  # (B, H, T_q): 1 where a row sees a key, 0 where it sees none
    assert max_err(sums, allowed.any(-1).float().expand_as(sums)) < 1e-5
    kept = (s_dmask > 0).sum() / (s_dmask != 0).sum()
    assert abs(kept.item() - (1 - P)) < 0.05, f"{kept.item():.3f} of the scores kept, want about {1 - P}"


def test_s_dmask_in_half_precision_explains_the_output():
    q, k, v = (swap_seq_and_heads(x) for x in make_qkv(1, 4, 2, 40, 40, 64, torch.bfloat16, seed=5))
    out, _, s_dmask = flash_attn_func(q, k, v, 0.2, causal=True, return_attn_probs=True)
    assert s_dmask.dtype == torch.bfloat16
    assert max_err(swap_seq_and_heads(out), rebuilt(s_dmask, swap_seq_and_heads(v), 0.2)) < 3e-2


def test_asking_for_the_probabilities_changes_neither_the_output_nor_the_generator():
    q, k, v = (swap_seq_and_heads(x) for x in make_qkv(1, 2, 2, 19, 19, 16, torch.float32, seed=6))
    torch.manual_seed(7)
    plain = flash_attn_func(q, k, v, P, causal=True)
    after_plain = torch.rand(3)
    torch.manual_seed(7)
    out, _, _ = flash_attn_func(q, k, v, P, causal=True, return_attn_probs=True)
    assert torch.equal(out, plain) and torch.equal(torch.rand(3), after_plain)


def test_the_packed_forms_return_the_probabilities_too():
    q, k, v = (swap_seq_and_heads(x) for x in make_qkv(1, 2, 2, 12, 12, 16, torch.float32, seed=8))
    torch.manual_seed(3)
    _, _, want = flash_attn_func(q, k, v, P, causal=True, return_attn_probs=True)
    torch.manual_seed(3)
    _, _, got = flash_attn_qkvpacked_func(torch.stack((q, k, v), dim=2), P, causal=True, return_attn_probs=True)
    torch.manual_seed(3)
    _, _, got_kv = flash_attn_kvpacked_func(q, torch.stack((k, v), dim=2), P, causal=True, return_attn_probs=True)
    assert torch.equal(got, want) and torch.equal(got_kv, want)


def check_varlen_probs(s_dmask, out, v, cu_q, cu_k, lens_q, lens_k, H):
    """Each sequence's corner of ``S_dmask`` explains its rows of ``out``; nothing outside the corners."""
    assert s_dmask.shape == (len(lens_q), H, max(lens_q), max(lens_k))
    for b, (n_q, n_k) in enumerate(zip(lens_q, lens_k, strict=True)):
        corner = s_dmask[b:b + 1, :, :n_q, :n_k]  # (1, H, n_q, n_k)
        want = per_sequence(out, cu_q, b)  # (1, H, n_q, D)
        assert n_q == 0 or max_err(want, rebuilt(corner, per_sequence(v, cu_k, b), P)) < 2e-5, f"sequence {b}"
        outside = s_dmask[b].clone()
        outside[:, :n_q, :n_k] = 0
        assert (outside == 0).all(), f"sequence {b} has probabilities outside its corner"


def test_packed_sequences_each_explain_their_rows():
    lens_q, lens_k, H, H_kv, D = [5, 0, 33, 7], [9, 23, 33, 0], 4, 2, 32
    (q, cu_q), (k, cu_k), (v, _) = (packed(lens, h, D, torch.float32, s) for lens, h, s in (
        (lens_q, H, 0), (lens_k, H_kv, 1), (lens_k, H_kv, 2)))
    out, _, s_dmask = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), P, None, True,
                                             return_attn_probs=True)
    check_varlen_probs(s_dmask, out, v, cu_q, cu_k, lens_q, lens_k, H)
    same = [0, 5, 5, 38, 45]  # (the qkv-packed form: one set of lengths for both)
    qkv, cu = packed([5, 0, 33, 7], 3 * H, D, torch.float32, 3)
    qkv = qkv.reshape(45, 3, H, D)  # (total, 3, H, D)
    out, _, s_dmask = flash_attn_varlen_qkvpacked_func(qkv, cu, 33, P, None, False, return_attn_probs=True)
    assert cu.tolist() == same
    check_varlen_probs(s_dmask, out, qkv[:, 2], cu, cu, lens_q, lens_q, H)


def test_paged_keys_give_the_probabilities_of_the_same_keys_packed():
    lens_q, lens_k, H, H_kv, D, page = [3, 6], [11, 20], 4, 2, 16, 8
    k_pool, v_pool, table = make_paged_cache(2, H_kv, D, page, lens_k, 0, torch.float32)  # ours: (pages, H_kv, P, D)
    q, cu_q = packed(lens_q, H, D, torch.float32, 4)
    cu_k = torch.tensor([0, 11, 31], dtype=torch.int32)
    k, v = (torch.cat([seq[:, :n] for seq, n in zip(gathered(pool, table), lens_k, strict=True)], 1).transpose(0, 1)
            for pool in (k_pool, v_pool))  # (31, H_kv, D) each: the sequences' keys (values), packed
    args = (cu_q, cu_k, max(lens_q), max(lens_k), P, None, True)
    with torch.no_grad():
        torch.manual_seed(9)
        out, _, got = flash_attn_varlen_func(q, *(swap_seq_and_heads(p) for p in (k_pool, v_pool)), *args,
                                             return_attn_probs=True, block_table=table)
        torch.manual_seed(9)
        _, _, want = flash_attn_varlen_func(q, k, v, *args, return_attn_probs=True)
    assert max_err(got, want) < 1e-6
    check_varlen_probs(got, out, v, cu_q, cu_k, lens_q, lens_k, H)
