"""Checks for chapter 1: attention as a (hard, then soft) dictionary lookup, and softmax temperature.

    "hard_lookup"(query [d], keys [n, d], values [n, dv])  -> values[argmax(keys @ query)]   [dv]
    "soft_lookup"(query [d], keys [n, d], values [n, dv])  -> softmax(keys @ query) @ values  [dv]
    "softmax_temperature"(x [..., n], temperature: float)  -> softmax(x / temperature, dim=-1)
"""

from __future__ import annotations

import torch

from .base import ReferenceCheck
from .cases import label, randn
from .mutants import lookup as wrong
from .protocol import register


def lookup_case(gen, d: int, n: int, dv: int, margin: float = 0.1) -> dict:
    """query ``[d]``, keys ``[n, d]``, values ``[n, dv]``, with a clear best match (top-2 gap >= margin),
    so that a hard lookup has one right answer whatever the rounding."""
    while True:
        query, keys, values = randn(gen, d), randn(gen, n, d), randn(gen, n, dv)
        top = (keys @ query).topk(min(2, n)).values  # (2,)
        if n == 1 or top[0] - top[1] >= margin:
            return dict(query=query, keys=keys, values=values, label=label(d=d, n=n, dv=dv))


class LookupCheck(ReferenceCheck):
    args = ("query", "keys", "values")

    def build_cases(self, gen, hidden):
        shapes = [(5, 7, 3), (13, 4, 6), (3, 13, 5)] + ([(1, 5, 2), (40, 1, 7), (11, 9, 11)] if hidden else [])
        return [lookup_case(gen, *s) for s in shapes]


@register
class HardLookup(LookupCheck):
    name = "hard_lookup"
    expects = "fn(query [d], keys [n, d], values [n, dv]) -> values[argmax(keys @ query)], shape [dv]"
    mutants = wrong.HARD_LOOKUP

    def reference(self, case):
        return case["values"][torch.argmax(case["keys"] @ case["query"])]


@register
class SoftLookup(LookupCheck):
    name = "soft_lookup"
    expects = "fn(query [d], keys [n, d], values [n, dv]) -> softmax(keys @ query) @ values, shape [dv]"
    mutants = wrong.SOFT_LOOKUP

    def build_cases(self, gen, hidden):
        big = lookup_case(gen, 5, 7, 3)
        big["keys"] = big["keys"] * 60  # scores in the hundreds: exp() overflows float32 without the max trick
        big["label"] += ", large scores (exp overflows without subtracting the max)"
        return super().build_cases(gen, hidden) + [big]

    def reference(self, case):
        return torch.softmax(case["keys"] @ case["query"], dim=-1) @ case["values"]


@register
class SoftmaxTemperature(ReferenceCheck):
    name = "softmax_temperature"
    expects = "fn(x [..., n], temperature) -> softmax(x / temperature, dim=-1)"
    args = ("x", "temperature")
    mutants = wrong.SOFTMAX_TEMPERATURE

    def build_cases(self, gen, hidden):
        rows = [((7,), 0.5, 1.0), ((3, 5), 2.0, 1.0), ((2, 3, 13), 0.7, 1.0), ((4, 13), 0.5, 50.0)]
        rows += [((1, 7), 3.0, 1.0), ((5, 5), 0.1, 10.0), ((2, 11), 1.5, 80.0)] if hidden else []
        return [
            dict(x=randn(gen, *shape, scale=s), temperature=t,
                 label=label(shape=shape, temperature=t) + (", large logits" if s > 1 else ""))
            for shape, t, s in rows
        ]  # fmt: skip

    def reference(self, case):
        return torch.softmax(case["x"].double() / case["temperature"], dim=-1).float()
