"""
Paged key/value caches: each sequence's keys in pages of a shared pool
=====================================================================

In this file you will learn how a decoding kernel reads a *paged* cache, the layout that lets a server
hold many sequences of unknown length without reserving the longest possible cache for each one. You
will learn about:

* the layout (vLLM's PagedAttention, flash-attn's ``block_table``): the cache is a pool of fixed-size
  pages, ``k_cache[num_pages, H_kv, page_size, D]``, and a table ``block_table[B, pages_per_seq]`` lists,
  for each sequence, the pages that hold its positions in order. Position ``j`` of sequence ``b`` is row
  ``j % page_size`` of page ``block_table[b, j // page_size]``. A sequence grows by being handed one more
  free page; sequences that share a prompt can share its pages;
* what the kernel changes: only *where a tile's key rows are*. Each of a tile's ``BLOCK_N`` keys looks
  its page up in the table (``BLOCK_N`` small integer loads, from one row of the table that stays in the
  cache) and the rows are gathered from wherever the pages are. The masks, the online softmax, the split
  of the keys between programs (flash-decoding) and the packing of GQA heads do not notice;
* why the rows go through pointers and not the copy engine: a TMA copy moves a box of *consecutive* rows,
  and a tile's rows may span pages (``page_size`` need not be a multiple of the tile: any size works, 16
  as vLLM likes, or 256 as flash-attn 2 requires). A decoding step is bound by the memory it reads, which
  is the same either way;
* appending: the new keys of a step are written (by PyTorch, before the launch) at their pages and rows,
  so a sequence's last page fills up row by row;
* a packed batch of queries (``flash_attention_varlen``, flash-attn's ``flash_attn_varlen_func``) can
  attend to paged keys too: ``cu_seqlens_k`` then only counts each sequence's keys, which start at
  position 0 of its pages (a prompt's next chunk against the cache of the chunks before it, say).

The offsets are 64-bit: a pool holds ``num_pages * H_kv * page_size * D`` elements, often more than
2^31, and any page may be the last.
"""

import triton
import triton.language as tl

from ._tiles import load_at


@triton.jit
def pages_of(Pages, offs, page_size, T, MASKED: tl.constexpr):
    """``(page, row)`` of each key position ``offs`` (int64): its page in the pool, from the sequence's row
    of the block table ``Pages``, and its row within that page. Positions past ``T`` (on a masked tile)
    look nothing up and get page 0, a row never loaded."""
    slot = offs // page_size
    if MASKED:
        page = tl.load(Pages + slot, mask=offs < T, other=0)
    else:
        page = tl.load(Pages + slot)
    return page.to(tl.int64), (offs - slot * page_size).to(tl.int64)


@triton.jit
def load_paged(ptr, page, row, stride_p, stride_t, stride_d, offs, T,
               HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, MASKED: tl.constexpr, TRANS: tl.constexpr):
    """The key (or value) rows at ``(page, row)`` of one head of the pool (``ptr``: that head's page 0, row 0),
    ``(len(offs), HEAD_DIM)``, or transposed with ``TRANS``; zeros past ``T`` and past ``D_REAL``."""
    rows = page * stride_p + row * stride_t  # (BLOCK,) element offsets, 64-bit
    cols = tl.arange(0, HEAD_DIM).to(tl.int64) * stride_d  # (HEAD_DIM,)
    return load_at(ptr, rows, cols, offs, T, HEAD_DIM, D_REAL, MASKED, TRANS)


def launch_args(block_table, b0: int, b1: int, placeholder) -> tuple:
    """The forward kernel's paging arguments ``(Pages, stride_pb)`` for the launch of sequences ``b0 ... b1 - 1``:
    those rows of the int32 block table; without one (``None``), ``placeholder``, never read."""
    if block_table is None:
        return placeholder, 0
    part = block_table[b0:b1]  # (b1 - b0, pages_per_seq)
    return part, part.stride(0)


# How deep a paged launch pipelines. Triton's pipeliner copies a loop's loads ahead into rings of shared-memory
# buffers, one per iteration in flight: with ``num_stages`` S, a load that feeds a product directly (a plain
# tile's keys and values) gets S - 1 buffers (one more where Hopper's wgmma reads them). Here the rows' addresses
# come from another load (the page numbers): a chain of two loads, between which the pipeliner shares the stages
# out, leaving the rows ceil((S - 2) / 2) buffers. So a tile listed with S = 3 or 4, compiled as it is, single-
# buffers its keys and values on a paged cache where on a plain one it double- or triple-buffers them: the next
# tile's copy cannot start until this one's product has read the buffer. (Read from the compiled code for sm_80
# and sm_90 under triton 3.9 and 3.6 at S = 2 ... 8; tests/test_kernels_compile.py checks it.) A paged launch
# compiles each listed tile with 2 S - 1 stages instead: its rows get the buffers S gives a plain cache's.


def stages(listed: int) -> int:
    """The ``num_stages`` a paged launch compiles a tile listed with ``listed`` stages with (see above)."""
    return 2 * listed - 1


def deeper(c: triton.Config) -> triton.Config:
    """Config ``c`` (a listed tile) as a paged launch runs it: :func:`stages` of its stages, ``c``'s own kept in
    ``.listed_stages`` (what ``_variants.tile_of`` reports, so the tile lists and spill lists still name it)."""
    deep = triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=stages(c.num_stages), pre_hook=c.pre_hook)
    deep.listed_stages = c.num_stages
    return deep


if __name__ == "__main__":
    # A check: a decoding step against a paged cache, and the same step against the same keys laid out in
    # one contiguous cache per sequence, both against attn_course.attention.
    import torch

    from attn_course import attention
    from attn_course.kernels import flash_attention_kvcache

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    B, H, H_kv, D, page_size, lengths = 3, 8, 2, 64, 16, [5, 40, 77]
    per_seq = -(-max(lengths) // page_size) + 1  # pages per sequence, with room for one more token
    pool = torch.randperm(B * per_seq + 4)[:B * per_seq]  # pages handed out in no particular order
    block_table = pool.reshape(B, per_seq).to(device=device, dtype=torch.int32)
    k_cache, v_cache = (torch.randn(B * per_seq + 4, H_kv, page_size, D, device=device) for _ in range(2))
    q = torch.randn(B, H, 1, D, device=device)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    with torch.no_grad():
        out = flash_attention_kvcache(q, k_cache, v_cache, seqlens, block_table=block_table, causal=True)
    worst = 0.0
    for b, n in enumerate(lengths):
        pages = block_table[b].long()  # (pages_per_seq,)
        # (pages, H_kv, page_size, D) -> (H_kv, pages * page_size, D): the sequence's keys in order
        keys, values = (c[pages].transpose(0, 1).reshape(H_kv, -1, D)[:, :n] for c in (k_cache, v_cache))
        keys, values = (x.repeat_interleave(H // H_kv, dim=0) for x in (keys, values))  # (H, n, D) for GQA
        worst = max(worst, (out[b] - attention(q[b], keys, values)).abs().max().item())
    print(f"paged cache, page size {page_size}: max |kernel - attn_course.attention| = {worst:.2e} ({device})")
