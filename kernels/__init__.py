"""Triton FlashAttention kernels, forward and backward, for CUDA GPUs and (interpreted) CPUs.

Import as ``attn_course.kernels`` (never as a top-level ``kernels``: that name belongs to another package)::

    from attn_course.kernels import flash_attention, flash_attention_varlen, flash_attn_func

Files, in reading order:

* ``flash_fwd.py``: the forward kernel, written like a Triton tutorial;
* ``flash_bwd.py``: the backward kernels (FlashAttention-2: recompute P from the saved logsumexp);
* ``flash_dropout.py``: attention dropout whose mask is regenerated from a seed, never stored;
* ``flash_softcap.py``: logit soft-capping, ``c * tanh(s / c)`` on every score, forward and backward;
* ``flash_alibi.py``: ALiBi's position biases, ``-slope * |i - j|``, computed per score, never stored;
* ``flash_paged.py``: keys and values in a pool of pages, each key's page looked up in a table (paged caches);
* ``flash_split.py``: a row's keys split between programs and combined exactly (flash-decoding: a
  decoding step has too few rows to fill a GPU otherwise), and the rule that picks how many slices;
* ``_tiles.py``: masks, loop bounds and tile loads shared by both (full vs masked tiles; pointers vs TMA);
* ``flash_attention.py``: the ``torch.autograd.Function`` and the public functions;
* ``flash_attn_compat.py``: flash-attn's ``flash_attn_func`` / ``flash_attn_varlen_func`` and their packed
  (qkv, kv) forms, with flash-attn's signatures;
* ``rotary.py``: rotary position embeddings for generation against a cache, as flash-attn applies them;
* ``attn_probs.py``: the probabilities and dropout pattern of a call, for flash-attn's ``return_attn_probs``;
* ``_ops.py``: the launches as PyTorch custom operators, for ``torch.compile``; the gradient through lse;
* ``_packed.py``: the packed forms' gradient (``dqkv``) written in place by the backward kernels;
* ``_vmap.py``: the operators' batching rules, for ``torch.func.vmap`` (a vmapped dim is more sequences);
* ``_variants.py``: which variant runs (``pointer``, ``tma``, ``tma+ws``) and whether tiles are autotuned;
* ``_mma_sync.py``: the tiles that spill on GPUs before Hopper and on RTX 50s, which an untuned launch skips;
* ``_checks.py``: input checks; ``_runtime.py``: compiled vs interpreted kernels, chosen per device;
* ``_compile.py``: compiling a launch for a GPU target on a machine without one (tests, resource survey).

CPU tensors run in Triton's interpreter, picked automatically and without touching the rest of the
process: expect seconds for shapes a GPU does in microseconds.
"""

from .flash_attention import (
    FlashAttentionFunction,
    dropout_mask,
    flash_attention,
    flash_attention_kvcache,
    flash_attention_varlen,
    next_dropout_seed,
    swap_seq_and_heads,
)
from .flash_attn_compat import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)

__all__ = [
    "FlashAttentionFunction",
    "dropout_mask",
    "flash_attention",
    "flash_attention_kvcache",
    "flash_attention_varlen",
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "next_dropout_seed",
    "swap_seq_and_heads",
]
