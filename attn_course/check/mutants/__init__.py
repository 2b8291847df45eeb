"""The catalogue of classic mistakes, each written as a wrong implementation ("mutant").

A checker runs its mutants on the same case as the learner's function; when the learner's output equals
a mutant's, the checker names the mistake. Import the catalogue by topic:

    attention  scaling, softmax axis, K transpose, where and how the mask goes in (ch1, ch3, ch4)
    masks      causal alignment and off-by-ones, padding, prefix-LM, varlen, sliding window (ch4)
    heads      projections, splitting and merging heads, multi-head and grouped-query attention (ch2, ch5)
    cost       FLOP and byte counting (ch5, ch6)
    flash      online softmax, the tiled forward and the Triton kernel (ch7)
"""

from ..base import Mutant

__all__ = ["Mutant"]
