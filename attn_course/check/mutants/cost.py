"""Classic slips when counting bytes and FLOPs (chapters 5 and 6): a forgotten factor, a forgotten term.

    KV cache      2 (K and V) x batch (b) x seq_len (t) x n_layers x n_kv_heads x d_head x bytes_per_element
    layer FLOPs   2 FLOPs per multiply-add x (4 T d^2 projections + 2 T^2 d attention)
    scores bytes  B x H x T x T x bytes_per_element
"""

from __future__ import annotations

from ..base import Mutant

KV_CACHE_BYTES = (
    Mutant("missing_factor_2", "Your answer is exactly half: you counted the keys but not the values (or vice versa).",
           "the cache holds K and V: multiply by 2.",
           lambda b, t, n_layers, n_kv_heads, d_head, bpe: b * t * n_layers * n_kv_heads * d_head * bpe),
    Mutant("missing_layers", "Your answer is n_layers times too small: every layer keeps its own cache.",
           "multiply by n_layers.",
           lambda b, t, n_layers, n_kv_heads, d_head, bpe: 2 * b * t * n_kv_heads * d_head * bpe),
    Mutant("missing_batch", "Your answer is batch times too small: every sequence in the batch has its own cache.",
           "multiply by batch.",
           lambda b, t, n_layers, n_kv_heads, d_head, bpe: 2 * t * n_layers * n_kv_heads * d_head * bpe),
    Mutant("bits_not_bytes", "Your answer is 8 times too large: that is bits, not bytes.",
           "bytes_per_element already counts bytes; do not multiply by 8.",
           lambda b, t, n_layers, n_kv_heads, d_head, bpe: 16 * b * t * n_layers * n_kv_heads * d_head * bpe),
    Mutant("missing_bytes_per_element", "Your answer counts elements, not bytes.",
           "multiply by bytes_per_element.",
           lambda b, t, n_layers, n_kv_heads, d_head, bpe: 2 * b * t * n_layers * n_kv_heads * d_head),
)  # fmt: skip

LAYER_FLOPS = (
    Mutant("macs_not_flops", "Your answer is exactly half: you counted multiply-adds, not FLOPs.",
           "one multiply-add is 2 FLOPs: FLOPs = 2 x (4 T d^2 + 2 T^2 d).",
           lambda T, d: 4 * T * d * d + 2 * T * T * d),
    Mutant("projections_only", "You counted the four projections (4 T d^2) but not the attention itself (2 T^2 d).",
           "add the Q K^T and P V matmuls: 2 T^2 d multiply-adds.", lambda T, d: 2 * 4 * T * d * d),
    Mutant("attention_only", "You counted Q K^T and P V (2 T^2 d) but not the four projections (4 T d^2).",
           "add the Q, K, V and output projections: 4 T d^2 multiply-adds.", lambda T, d: 2 * 2 * T * T * d),
    Mutant("one_attention_matmul", "You counted only one of the two T^2 d matmuls (Q K^T, but not P V).",
           "both Q K^T and P V cost T^2 d multiply-adds each.", lambda T, d: 2 * (4 * T * d * d + T * T * d)),
    Mutant("forgot_output_projection", "You counted three projections (Q, K, V) and forgot W_O.",
           "there are four d x d projections: 4 T d^2.", lambda T, d: 2 * (3 * T * d * d + 2 * T * T * d)),
)  # fmt: skip

SCORES_BYTES = (
    Mutant("elements_not_bytes", "You counted elements, not bytes.", "multiply by bytes_per_element.",
           lambda B, H, T, bpe: B * H * T * T),
    Mutant("bits_not_bytes", "Your answer is 8 times too large: that is bits, not bytes.",
           "bytes_per_element already counts bytes.", lambda B, H, T, bpe: 8 * B * H * T * T * bpe),
    Mutant("T_not_squared", "Your answer grows like T, but the score matrix is T x T per head.",
           "use T * T (every query against every key).", lambda B, H, T, bpe: B * H * T * bpe),
    Mutant("missing_heads", "Your answer is H times too small: every head has its own score matrix.",
           "multiply by H.", lambda B, H, T, bpe: B * T * T * bpe),
    Mutant("missing_batch", "Your answer is B times too small: every batch element has its own scores.",
           "multiply by B.", lambda B, H, T, bpe: H * T * T * bpe),
)  # fmt: skip
