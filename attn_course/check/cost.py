"""Checks for the cost model (chapters 5 and 6): exact integer answers, with the usual slips named.

    "kv_cache_bytes"(batch, seq_len, n_layers, n_kv_heads, d_head, bytes_per_element) -> int
    "layer_flops"(T, d_model)                                                      -> int
    "scores_bytes"(B, H, T, bytes_per_element)                                     -> int
"""

from __future__ import annotations

import math

from .base import ReferenceCheck
from .cases import label
from .mutants import cost as wrong
from .protocol import register


class CountCheck(ReferenceCheck):
    """Fixed, realistic cases; values chosen so that every catalogued slip gives a different number."""

    rows: tuple[tuple, ...] = ()
    hidden_rows: tuple[tuple, ...] = ()

    def build_cases(self, gen, hidden):
        rows = self.rows + (self.hidden_rows if hidden else ())
        return [dict(zip(self.args, r, strict=True), label=label(**dict(zip(self.args, r, strict=True)))) for r in rows]


@register
class KVCacheBytes(CountCheck):
    name = "kv_cache_bytes"
    expects = "fn(batch, seq_len, n_layers, n_kv_heads, d_head, bytes_per_element) -> int, bytes of K and V"
    args = ("batch", "seq_len", "n_layers", "n_kv_heads", "d_head", "bytes_per_element")
    mutants = wrong.KV_CACHE_BYTES
    rows = ((3, 4096, 32, 8, 128, 4), (1, 8192, 80, 8, 128, 2), (5, 1000, 7, 1, 96, 1))
    hidden_rows = ((7, 13, 3, 5, 40, 1), (16, 2048, 12, 12, 64, 4))

    def reference(self, case):
        return 2 * math.prod(case[a] for a in self.args)  # K and V, for every factor in the signature


@register
class LayerFlops(CountCheck):
    name = "layer_flops"
    expects = "fn(T, d_model) -> int, FLOPs of one attention layer: 2 x (4 T d^2 + 2 T^2 d)"
    args = ("T", "d_model")
    mutants = wrong.LAYER_FLOPS
    rows = ((1024, 768), (8192, 4096), (100, 13))
    hidden_rows = ((1, 12288), (32768, 5120))

    def reference(self, case):
        T, d = case["T"], case["d_model"]
        return 2 * (4 * T * d * d + 2 * T * T * d)


@register
class ScoresBytes(CountCheck):
    name = "scores_bytes"
    expects = "fn(B, H, T, bytes_per_element) -> int, bytes of the [B, H, T, T] score matrix"
    args = ("B", "H", "T", "bytes_per_element")
    mutants = wrong.SCORES_BYTES
    rows = ((4, 32, 8192, 2), (1, 12, 1024, 4), (3, 5, 77, 2))
    hidden_rows = ((8, 96, 2048, 2), (2, 7, 13, 1))

    def reference(self, case):
        return case["B"] * case["H"] * case["T"] ** 2 * case["bytes_per_element"]
