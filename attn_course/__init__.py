"""attn_course: checked reference implementations of attention, from first principles to FlashAttention.

Everything in the course (the book, the exercises, the Triton kernels in :mod:`attn_course.kernels`)
is checked against :func:`attention`.
"""

from . import check, cost
from .attention import attention
from .flash_reference import flash_attention_reference
from .masks import causal_mask, padding_mask, prefix_lm_mask, sliding_window_mask, varlen_mask
from .mha import MultiHeadAttention
from .online_softmax import online_softmax

__all__ = [
    "attention",
    "causal_mask",
    "padding_mask",
    "prefix_lm_mask",
    "sliding_window_mask",
    "varlen_mask",
    "MultiHeadAttention",
    "online_softmax",
    "flash_attention_reference",
    "cost",
    "check",
]
__version__ = "0.1.0"
