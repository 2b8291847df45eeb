"""The documents' worked example: T=3 tokens, d_k=4, d_v=2, causal attention.

The printed numbers (three decimals for the weights, two for the outputs) are kept here as data, so the
book, the exercises and the tests all check the same thing against the same live computation.
"""

from __future__ import annotations

import torch

#: weights printed in the documents, rows = queries, columns = keys (causal: upper triangle is 0)
PRINTED_WEIGHTS = [[1.0, 0.0, 0.0], [0.378, 0.622, 0.0], [0.360, 0.360, 0.280]]
#: outputs printed in the documents
PRINTED_OUTPUT = [[10.0, 20.0], [22.44, 32.44], [28.4, 38.4]]


def worked_example(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q [3, 4], k [3, 4], v [3, 2])``. With scale ``1/sqrt(4) = 1/2`` the causal scores are::

        query 0:  [1.0,   -,    -  ]   -> weights [1, 0, 0]
        query 1:  [0.0,  0.5,   -  ]   -> softmax([0, 0.5])          = [0.378, 0.622]
        query 2:  [0.25, 0.25, 0.0 ]   -> softmax([0.25, 0.25, 0])   = [0.360, 0.360, 0.280]
    """
    q = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0]], dtype=dtype)
    k = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]], dtype=dtype)
    v = torch.tensor([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]], dtype=dtype)
    return q, k, v
