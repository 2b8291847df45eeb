"""Rotary position embeddings in generation against a key/value cache (``kernels/rotary.py``), checked
against a rotation written independently, with complex numbers, and against attention over the whole
sequence with every token rotated at its absolute position."""

from __future__ import annotations

import pytest
import torch
from test_kernels_common import make_qkv, max_err, reference
from test_kernels_kvcache import make_cache

from attn_course.kernels import flash_attention_kvcache, flash_attn_with_kvcache, swap_seq_and_heads
from attn_course.kernels.rotary import positions_of, rotate

F32 = torch.float32


def rope_tables(positions: int, rotary_dim: int, base: float = 10000.0, dtype=F32):
    """``cos, sin [positions, rotary_dim / 2]`` of the usual RoPE frequencies ``base^(-2j / rotary_dim)``."""
    freqs = base ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)  # (R/2,)
    angles = torch.arange(positions, dtype=torch.float64)[:, None] * freqs  # (positions, R/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotated_by_complex_numbers(x, cos, sin, positions, interleaved):
    """The rotation as complex multiplication, in float64: each pair of dims is one complex number, turned
    by ``cos + i sin`` of its token's position."""
    R = 2 * cos.shape[1]
    turn = torch.complex(cos.double(), sin.double())[positions].unsqueeze(1)  # (B, 1, T, R/2)
    pairs = x[..., :R].double()  # (B, H, T, R)
    if interleaved:
        z = torch.view_as_complex(pairs.reshape(*pairs.shape[:-1], R // 2, 2).contiguous())  # (B, H, T, R/2)
        turned = torch.view_as_real(z * turn).flatten(-2)  # (B, H, T, R)
    else:
        z = torch.complex(pairs[..., :R // 2], pairs[..., R // 2:])  # (B, H, T, R/2)
        turned = torch.cat(((z * turn).real, (z * turn).imag), dim=-1)  # (B, H, T, R)
    return torch.cat((turned, x[..., R:].double()), dim=-1)  # (B, H, T, D)


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
@pytest.mark.parametrize("dtype,R", [(F32, 32), (F32, 16), (torch.float16, 32), (torch.bfloat16, 16)])
def test_rotate_matches_complex_multiplication(interleaved, dtype, R):
    """Full and partial rotary dims (the dims past R untouched), each dtype rounded once from float32."""
    x = torch.randn(2, 3, 5, 32).to(dtype)  # (B, H, T, D)
    cos, sin = rope_tables(40, R)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 20, 39, 3, 3]])  # (B, T)
    got = rotate(x, cos, sin, positions, interleaved)
    want = rotated_by_complex_numbers(x, cos, sin, positions, interleaved)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.equal(got[..., R:], x[..., R:]), "the dims past the rotary dim must pass through"
    tol = 1e-6 if dtype == F32 else 2 ** -7 if dtype == torch.bfloat16 else 2 ** -10
    assert max_err(got.double(), want) <= tol * want.abs().max(), f"{max_err(got.double(), want):.2e}"


def test_scores_depend_on_relative_positions_only():
    """RoPE's point: moving a query and a key by the same number of positions leaves their score as it was;
    moving only one of them changes it."""
    q, k = torch.randn(1, 2, 4, 64, dtype=torch.float64), torch.randn(1, 2, 4, 64, dtype=torch.float64)
    cos, sin = rope_tables(100, 64, dtype=torch.float64)
    qpos, kpos = torch.tensor([[3, 9, 9, 20]]), torch.tensor([[0, 4, 9, 2]])

    def scores(shift_q, shift_k):
        rq = rotate(q, cos, sin, qpos + shift_q, interleaved=False)
        rk = rotate(k, cos, sin, kpos + shift_k, interleaved=False)
        return rq @ rk.transpose(-2, -1)  # (1, 2, 4, 4)

    assert max_err(scores(0, 0), scores(57, 57)) < 1e-10
    assert max_err(scores(0, 0), scores(1, 0)) > 1e-2


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
@pytest.mark.parametrize("R", [32, 16])
def test_generation_with_rotary_matches_attention_over_the_rotated_sequence(interleaved, R):
    check_generation_with_rotary(interleaved, R, "cpu", tol=2e-5)


def check_generation_with_rotary(interleaved, R, device, tol):
    """A 6-token prompt and then 4 tokens one at a time, each call given the unrotated q, k and the tables:
    each step must give causal attention over the final sequence with every query and key rotated at its
    absolute position (the cache holds rotated keys, and each step rotates only its own)."""
    B, H, H_kv, D, T = 2, 4, 2, 32, 10
    q, k, v = make_qkv(B, H, H_kv, T, T, D, F32, seed=8, device=device)
    cos, sin = (x.to(device) for x in rope_tables(16, R))
    at = torch.arange(T, device=device).expand(B, T)  # (B, T): every token's absolute position
    rq, rk = (rotated_by_complex_numbers(x, cos, sin, at, interleaved).float() for x in (q, k))
    full = reference(rq, rk, v, causal=True)  # (B, H, T, D)
    k_cache, v_cache = (torch.zeros(B, H_kv, 16, D, device=device) for _ in range(2))
    seqlens = torch.zeros(B, dtype=torch.int32, device=device)
    for start, end in [(0, 6)] + [(t, t + 1) for t in range(6, T)]:
        out = flash_attention_kvcache(q[:, :, start:end], k_cache, v_cache, seqlens, k[:, :, start:end],
                                      v[:, :, start:end], causal=True, rotary_cos=cos, rotary_sin=sin,
                                      rotary_interleaved=interleaved)
        assert max_err(out, full[:, :, start:end]) < tol, f"tokens {start}..{end - 1}"
        seqlens += end - start
    assert max_err(k_cache[:, :, :T], rk) < 1e-5, "the cache must hold the keys rotated at their positions"


@pytest.mark.parametrize("interleaved", [True, False], ids=["gptj", "neox"])
def test_left_padded_prompts_generate_as_if_they_started_at_position_0(interleaved):
    """A batch of prompts of 7 and 3 tokens, left-padded to end together (``cache_leftpad = [0, 4]``, the
    padding NaN), their keys rotated at the cache row's positions (flash-attn's convention), then 4 tokens
    generated one at a time with rotary tables: each step must give causal attention over the sequence's own
    tokens rotated at positions ``0, 1, ...`` (RoPE depends on distances only)."""
    B, H, H_kv, D, R, T_cache, steps = 2, 4, 2, 32, 16, 16, 4
    starts, prompt = [0, 4], 7  # sequence 1 holds 3 prompt tokens, at positions 4, 5, 6 of its row
    cos, sin = rope_tables(T_cache, R)
    q, k, v = make_qkv(B, H, H_kv, prompt + steps, prompt + steps, D, F32, seed=11)  # (B, H, 11, D) etc.
    physical = torch.arange(prompt).expand(B, prompt)  # (B, 7): the prompts' positions in their rows
    k_cache, v_cache = (torch.full((B, H_kv, T_cache, D), float("nan")) for _ in range(2))
    k_cache[:, :, :prompt] = rotated_by_complex_numbers(k[:, :, :prompt], cos, sin, physical, interleaved).float()
    v_cache[:, :, :prompt] = v[:, :, :prompt]
    for b, first in enumerate(starts):
        k_cache[b, :, :first] = v_cache[b, :, :first] = float("nan")  # (the padding: never read)
    leftpad, seqlens = torch.tensor(starts, dtype=torch.int32), torch.full((B,), prompt, dtype=torch.int32)
    for t in range(prompt, prompt + steps):
        with torch.no_grad():
            out = flash_attention_kvcache(q[:, :, t:t + 1], k_cache, v_cache, seqlens, k[:, :, t:t + 1],
                                          v[:, :, t:t + 1], causal=True, rotary_cos=cos, rotary_sin=sin,
                                          rotary_interleaved=interleaved, cache_leftpad=leftpad)
        seqlens += 1
        for b, first in enumerate(starts):
            own = torch.arange(t + 1 - first)[None]  # (1, n): the sequence's tokens counted from its first
            rq, rk = (rotated_by_complex_numbers(x[b:b + 1, :, first:t + 1], cos, sin, own, interleaved).float()
                      for x in (q, k))  # (1, H, n, D), (1, H_kv, n, D)
            want = reference(rq, rk, v[b:b + 1, :, first:t + 1], causal=True)[:, :, -1:]  # the newest token's row
            assert max_err(out[b:b + 1], want) < 2e-5, f"sequence {b}, token {t}"


@pytest.mark.parametrize("leftpad", [None, [3, 1]], ids=["from0", "leftpad"])
@pytest.mark.parametrize("causal,window", [(True, (-1, -1)), (False, (3, 2)), (False, (-1, -1))],
                         ids=["causal", "window", "full"])
def test_flash_attn_with_kvcache_rotates_where_flash_attn_does(causal, window, leftpad):
    """flash-attn's rule in its layout: new keys at ``cache_seqlens[b] + j``; queries at ``cache_seqlens[b] + i``
    when causal or windowed, else every query at ``cache_seqlens[b]``; with ``cache_leftpad`` the same
    positions of the cache row (not counted from the first key). The call must give the same bits as
    rotating by hand (with the same function) and calling without the tables, and write the same cache."""
    lengths = [9, 2]
    leftpad = None if leftpad is None else torch.tensor(leftpad, dtype=torch.int32)
    k_cache, v_cache = make_cache(2, 2, 24, 32, lengths, torch.float16)  # (B, H_kv, T, D)
    q, k, v = make_qkv(2, 4, 2, 3, 3, 32, torch.float16, seed=5)  # three new tokens per sequence
    cos, sin = rope_tables(30, 16)
    distinct = causal or window != (-1, -1)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    by_hand_q = rotate(q, cos, sin, positions_of(seqlens, 3, distinct), False)
    by_hand_k = rotate(k, cos, sin, positions_of(seqlens, 3, True), False)
    if not distinct:
        assert torch.equal(positions_of(seqlens, 3, False), torch.tensor([[9, 9, 9], [2, 2, 2]]))
    caches = [(k_cache.clone(), v_cache.clone()) for _ in range(2)]
    want = flash_attention_kvcache(by_hand_q, *caches[0], seqlens, by_hand_k, v, causal=causal, window=window,
                                   cache_leftpad=leftpad)
    bthd = [swap_seq_and_heads(x) for x in (q, *caches[1], k, v)]  # (B, T, H, D) views
    got = flash_attn_with_kvcache(*bthd[:3], *bthd[3:], rotary_cos=cos, rotary_sin=sin, cache_seqlens=seqlens,
                                  causal=causal, window_size=window, rotary_interleaved=False, cache_leftpad=leftpad)
    assert torch.equal(swap_seq_and_heads(got), want)
    for ours, theirs in zip(caches[0], caches[1], strict=True):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0, equal_nan=True)


def _step(**kw):
    q, k, v = make_qkv(2, 4, 2, 2, 1, 16, F32)
    cos, sin = rope_tables(8, 16)
    args = dict(q=q, k_cache=torch.zeros(2, 2, 8, 16), v_cache=torch.zeros(2, 2, 8, 16),
                cache_seqlens=torch.tensor([3, 7]), k=k, v=v, rotary_cos=cos, rotary_sin=sin, causal=True)
    return {**args, **kw}


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(k=None, v=None), ValueError, "rotate the new keys as they are written.*pass the new k and v"),
    (dict(rotary_sin=None), TypeError, r"rotary_sin must be a torch.Tensor \[seqlen_ro, rotary_dim / 2\]"),
    (dict(rotary_sin=torch.zeros(8, 4)), ValueError, r"one shape, got \(8, 8\) and \(8, 4\)"),
    (dict(rotary_cos=torch.zeros(8, 9), rotary_sin=torch.zeros(8, 9)), ValueError, "between 2 and the head dim 16"),
    (dict(rotary_cos=torch.zeros(8), rotary_sin=torch.zeros(8)), ValueError, "2-D floating tensor"),
    (dict(rotary_cos=torch.zeros(8, 8, dtype=torch.int64), rotary_sin=torch.zeros(8, 8, dtype=torch.int64)),
     ValueError, "2-D floating tensor"),
    (dict(rotary_cos=torch.zeros(7, 8), rotary_sin=torch.zeros(7, 8)), ValueError,
     "rotary_cos has 7 positions, but the cache holds 8.*at least 9"),
    (dict(rotary_cos=torch.zeros(8, 8, device="meta"), rotary_sin=torch.zeros(8, 8, device="meta")), ValueError,
     "rotary_cos must be on q's device"),
    (dict(rotary_interleaved=1), TypeError, "rotary_interleaved must be True or False"),
])
def test_bad_rotary_arguments_are_named(kwargs, error, match):
    """(The 7-row case: the cache's 8 positions, and the second query of the sequence filled to 7 would sit at
    position 8 when causal.)"""
    with pytest.raises(error, match=match), torch.no_grad():
        flash_attention_kvcache(**_step(**kwargs))
