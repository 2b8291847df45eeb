"""Small ``@triton.jit`` helpers shared by the forward and backward kernels.

Everything about *which* (query, key) pairs may interact lives here, so that the forward pass and the
two backward kernels agree on it by construction:

* ``seq_bounds``: where sequence ``b`` starts in memory and how long it is (fixed-length batch or packed).
* ``allowed``: the mask of a tile. Query ``i`` sits at absolute position ``i + T_k - T_q`` (bottom-right
  alignment) and may see key ``j`` iff ``j < T_k`` and ``pos - left <= j <= pos + right``. Causal is the
  window ``(left, 0)``; an unbounded side is passed as a huge number, so there is no special case.
* ``key_tiles`` / ``query_tiles``: the loop bounds. The keys a block of queries may see split into
  ``[lo, a)`` masked tiles (the window's left edge), ``[a, b)`` *full* tiles where every pair is allowed
  (no mask is built, no ``where`` is paid) and ``[b, hi)`` masked tiles (the causal diagonal, the window's
  right edge, the ragged tail of ``T_k``). Tiles outside ``[lo, hi)`` are never visited: a causal kernel
  does half the work. ``query_tiles`` is the same split seen from a block of keys (for dK, dV).

      causal, T_q = T_k = 8, BLOCK = 2           keys ->  0 1 | 2 3 | 4 5 | 6 7
      query block 4..5:  full [0, 4)  masked [4, 6)        F F   F F   M M   . .

* ``packed_offsets``: where the rows of a block live when a decoding step packs the query heads of one
  GQA group into it (row ``r`` is position ``r // GROUP`` of head ``r % GROUP``); ``key_tiles_between`` is
  ``key_tiles`` for such a block, whose rows span positions ``m_start // GROUP ...`` only.
* ``load_rows`` / ``store_rows``: one tile of rows of a ``[B, H, T, D]`` tensor, either through pointers
  (masked on masked tiles) or through a tensor descriptor (TMA on Hopper, see ``_variants``). A packed
  batch's descriptor is one ``[1, H, total_T, D]`` view (``desc_batch``); the tile that overhangs a
  sequence's end goes through pointers (``overhang``), and so do a packed batch's stores. ``WIDE`` makes
  their offsets within a sequence 64-bit: ``row * stride_t`` passes 2^31 in a long sequence whose rows
  are far apart (flash-attn's ``[B, T, H, D]`` layout puts ``H * D`` elements between rows), and a
  32-bit product wraps around to an address before the tensor. 64-bit offsets cost registers the
  backward kernels do not have to spare at D = 256, so the host asks for them only where some tensor
  needs them (:func:`needs_wide_offsets`); where a sequence starts is always computed in 64 bits.
* ``head_dim_tile`` / ``tile_mask``: a head dim that is not a power of two (80, 96, ...) runs in tiles of the
  next one, ``HEAD_DIM``; the kernels also get the real one, ``D_REAL``, and every pointer load and store
  masks the columns past it (through a descriptor the copy engine zero-fills and clips them itself). Both
  are constexprs: at a power of two the masks are compiled out.
* ``dot`` / ``narrow``: a tile product accumulated in float32, and the cast of a float32 tile to the
  inputs' dtype (for the next product, or to store), each with a workaround for the interpreter's
  bfloat16: its ``tl.dot`` is wrong and its cast truncates, where a GPU rounds to nearest even.
* ``launch_grid`` / ``batch_chunks``: every kernel runs on a grid of ``(blocks, H, B)`` programs, read
  back with ``tl.program_id(0, 1, 2)``: the blocks of one (sequence, head) are neighbours, sharing its keys
  and values in the L2 cache. CUDA allows 2^31 - 1 programs along a grid's x axis but only 65,535 along y
  and z, so a batch of more sequences (thousands of short packed ones, say) is launched in chunks.
"""

import triton
import triton.language as tl


@triton.jit
def seq_bounds(cu_seqlens, b, T, IS_VARLEN: tl.constexpr):
    """``(start, length)`` of sequence ``b``: ``(cu[b], cu[b+1] - cu[b])`` when packed, else ``(0, T)``."""
    if IS_VARLEN:
        start = tl.load(cu_seqlens + b)
        length = tl.load(cu_seqlens + b + 1) - start
    else:
        start = b * 0  # a tensor, like the packed case, so callers can .to(tl.int64) it
        length = T
    return start, length


CUDA_MAX_GRID_X = 2**31 - 1  # programs along a CUDA grid's x axis
CUDA_MAX_GRID_YZ = 65_535  # ... and along its y and z axes
INT32_MAX = 2**31 - 1


def launch_grid(T: int, block: int, H: int, B: int, splits: int = 1) -> tuple[int, int, int]:
    """``(blocks, heads, sequences)``: ``program_id(0)`` is the block of ``block`` rows (``T``: the longest
    sequence), ``program_id(1)`` the head, ``program_id(2)`` the sequence. With ``splits > 1`` (split-K),
    ``program_id(0)`` is ``block * splits + slice``."""
    grid = (triton.cdiv(T, block) * splits, H, B)
    if grid[0] > CUDA_MAX_GRID_X or H > CUDA_MAX_GRID_YZ or B > CUDA_MAX_GRID_YZ:
        raise ValueError(f"a grid of {grid} programs (blocks, heads, sequences) does not fit CUDA's limits "
                         f"({CUDA_MAX_GRID_X}, {CUDA_MAX_GRID_YZ}, {CUDA_MAX_GRID_YZ})")
    return grid


def batch_chunks(B: int) -> list[tuple[int, int]]:
    """``[(b0, b1), ...]``: the batch in runs of at most ``CUDA_MAX_GRID_YZ`` sequences, one launch each."""
    step = CUDA_MAX_GRID_YZ
    return [(b0, min(b0 + step, B)) for b0 in range(0, B, step)]


def batch_part(b0: int, b1: int, tensors, cu_seqlens=None):
    """``(tensors, cu_seqlens)`` for the sequences ``b0 ... b1 - 1`` of one launch: a fixed-length batch
    is sliced along dim 0 (views, same strides) and gets placeholders for the unused ``cu_seqlens``; packed
    tensors stay whole and their sequences are named by a slice of each ``cu_seqlens`` (absolute offsets)."""
    if cu_seqlens is None:
        part = tuple(x[b0:b1] for x in tensors)  # (b1 - b0, ...)
        return part, (part[0], part[0])
    return tuple(tensors), tuple(cu[b0:b1 + 1] for cu in cu_seqlens)


def needs_wide_offsets(time_dim: int, *tensors) -> bool:
    """Whether a row and column offset within one sequence of any of ``tensors`` (time along ``time_dim``)
    may pass ``INT32_MAX`` elements: rows up to the time dim's size, plus a tile's overhang (masked rows
    still get an address), columns up to the tile's width (:func:`head_dim_tile`)."""
    return any((x.shape[time_dim] + 256) * x.stride(time_dim) + head_dim_tile(x.shape[-1]) * x.stride(-1) > INT32_MAX
               for x in tensors)


@triton.jit
def dot(a, b, INTERP_BF16: tl.constexpr, IEEE: tl.constexpr):
    """``a @ b`` accumulated in float32.

    ``INTERP_BF16`` (bfloat16 inputs in the interpreter): compute in float32, which works around the
    interpreter's wrong bfloat16 ``tl.dot`` (triton issue #11584). ``IEEE``: full float32 products instead
    of TF32 (for float32 inputs: TF32 keeps only 10 mantissa bits and would miss the float32 tolerance).
    """
    if INTERP_BF16:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif IEEE:
        c = tl.dot(a, b, input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def narrow(x, dtype: tl.constexpr, INTERP_BF16: tl.constexpr):
    """``x`` (float32) cast to ``dtype``, rounded to the nearest (ties to even) as a GPU's cast rounds.

    ``INTERP_BF16`` (bfloat16 kernels in the interpreter): the interpreter's float32 -> bfloat16 cast drops
    the low 16 bits instead, rounding toward zero: twice a GPU's error, every value pulled towards zero,
    and in sums of many rounded terms (dK and dV over every query) the errors add up rather than cancel.
    So the rounding is done here on the bits: add half of the dropped part's unit, less one, plus the
    lowest kept bit (so that a tie goes to the even neighbour), then drop the low half. A NaN keeps the
    plain cast (the add could carry its payload into the sign); infinities and overflow come out right.
    """
    y = x.to(dtype)
    if INTERP_BF16:
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits += 0x7FFF + ((bits >> 16) & 1)
            y = tl.where(x == x, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), y)
    return y


@triton.jit
def allowed(offs_m, offs_n, T_q, T_k, window_left, window_right):
    """``[BLOCK_M, BLOCK_N]`` bools: query ``offs_m[i]`` may see key ``offs_n[j]`` (and both exist)."""
    pos = offs_m[:, None] + (T_k - T_q)  # (BLOCK_M, 1) absolute positions, bottom-right aligned
    keys = offs_n[None, :]  # (1, BLOCK_N)
    ok = (keys < T_k) & (offs_m[:, None] < T_q)
    return ok & (keys >= pos - window_left) & (keys <= pos + window_right)


@triton.jit
def key_tiles(m_start, T_q, T_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For queries ``[m_start, m_start + BLOCK_M)``: key bounds ``lo <= a <= b <= hi`` (multiples of
    ``BLOCK_N`` except ``hi``) with ``[a, b)`` the tiles that need no mask."""
    m_last = tl.minimum(m_start + BLOCK_M, T_q) - 1  # the last real query of the block
    return key_tiles_between(m_start, m_last, T_q, T_k, window_left, window_right, BLOCK_N)


@triton.jit
def key_tiles_between(m_start, m_last, T_q, T_k, window_left, window_right, BLOCK_N: tl.constexpr):
    """:func:`key_tiles` for a block whose queries sit at positions ``m_start ... m_last`` (a block of packed
    GQA rows holds several heads of each position, see :func:`packed_offsets`)."""
    off = T_k - T_q
    lo = tl.maximum(m_start + off - window_left, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    hi = tl.minimum(m_last + off + window_right + 1, T_k)
    # full tiles: every real query sees every key: left edge of the *last* query, right edge of the *first*
    full_lo = tl.maximum(m_last + off - window_left, lo)
    full_lo = ((full_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N
    full_hi = tl.maximum(tl.minimum(m_start + off + window_right + 1, T_k), 0)
    full_hi = (full_hi // BLOCK_N) * BLOCK_N
    a = tl.minimum(full_lo, hi)
    b = tl.minimum(tl.maximum(full_hi, a), hi)
    return lo, a, b, hi


@triton.jit
def key_slice(lo, a, b, hi, split, num_splits, BLOCK_N: tl.constexpr):
    """:func:`key_tiles`' bounds cut down to slice ``split`` of ``num_splits`` (split-K decoding, see
    ``flash_split``): the visible tiles ``[lo, hi)`` are dealt out in runs of ``ceil(tiles / num_splits)``
    and each bound is clamped into this slice's run ``[s0, s1)``. ``s0`` is a whole number of tiles past
    ``lo``, so full tiles stay full; a slice past the last tile gets ``[hi, hi)``: nothing to walk."""
    tiles = tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N)
    per = tl.cdiv(tiles, num_splits)
    s0 = lo + split * per * BLOCK_N
    s1 = tl.minimum(s0 + per * BLOCK_N, hi)
    s0 = tl.minimum(s0, s1)
    lo = tl.minimum(tl.maximum(lo, s0), s1)
    a = tl.minimum(tl.maximum(a, s0), s1)
    b = tl.minimum(tl.maximum(b, s0), s1)
    hi = tl.minimum(tl.maximum(hi, s0), s1)
    return lo, a, b, hi


@triton.jit
def query_tiles(n_start, T_q, T_k, window_left, window_right, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """For keys ``[n_start, n_start + BLOCK_N)``: query bounds ``lo <= a <= b <= hi`` (multiples of
    ``BLOCK_M`` except ``hi``) with ``[a, b)`` the tiles that need no mask. Key ``j`` is seen by the
    queries at absolute positions ``j - right ... j + left``."""
    off = T_k - T_q
    n_last = tl.minimum(n_start + BLOCK_N, T_k) - 1  # the last real key of the block
    lo = tl.maximum(n_start - window_right - off, 0)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.minimum(n_last + window_left - off + 1, T_q)
    full_lo = tl.maximum(n_last - window_right - off, lo)
    full_lo = ((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M
    full_hi = tl.maximum(tl.minimum(n_start + window_left - off + 1, T_q), 0)
    full_hi = (full_hi // BLOCK_M) * BLOCK_M
    a = tl.minimum(full_lo, hi)
    b = tl.minimum(tl.maximum(full_hi, a), hi)
    return lo, a, b, hi


@triton.jit
def desc_batch(b, IS_VARLEN: tl.constexpr):
    """Sequence ``b``'s coordinate along a descriptor's batch dim: a packed batch is described as one
    ``[1, H, total_T, D]`` view (see ``_variants.described``), its sequences told apart by their rows."""
    tb = b
    if IS_VARLEN:
        tb = b * 0
    return tb


@triton.jit
def overhang(T, lo, hi, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    """Where, in the tiles ``[lo, hi)`` of a loop over rows (``hi <= T``), the one tile that overhangs the
    sequence's end starts, when ``SPLIT``; ``hi`` (no such tile) otherwise.

    The copy engine zero-fills a tile only past the *tensor's* end. Past a packed sequence's end are the
    next sequence's rows, past a cache's filled part its unfilled tail: real memory, possibly NaN, and a
    masked score is a zero probability but ``0 * NaN`` is NaN. So with ``SPLIT`` (TMA on a packed batch or
    a cache) the kernels walk ``[lo, tail)`` through the descriptors and the overhanging tile ``[tail, hi)``
    through masked pointer loads, which read zeros there. (A trial that zeroed those rows of every masked
    descriptor tile in registers instead, taking the tile out of shared memory and back, spilled 520 bytes
    in dK/dV at D = 128 on sm_90, tile 32 x 64, against 48 this way.)"""
    tail = hi
    if SPLIT:
        tail = tl.maximum(tl.minimum((T // BLOCK) * BLOCK, hi), lo)
    return tail


@triton.jit
def load_rows(
    ptr,  # this (sequence, head)'s row 0 (pointer variant)
    desc,  # a descriptor over the whole [B, H, T, D] tensor with (1, 1, BLOCK, HEAD_DIM) tiles (TMA variant)
    b, h, row0,  # which sequence (its descriptor coordinate: see desc_batch) and head, first row of the tile
    first,  # TMA: the sequence's row 0 along the descriptor's time dim (a packed batch; else 0)
    stride_t, stride_d, T,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr,  # (see head_dim_tile)
    MASKED: tl.constexpr,  # rows past T may be in the tile (pointer variant; see overhang for TMA)
    TMA: tl.constexpr,
    TRANS: tl.constexpr,  # return (HEAD_DIM, BLOCK) instead of (BLOCK, HEAD_DIM)
    WIDE: tl.constexpr,  # 64-bit offsets (see the module docstring)
):
    """Rows ``row0 ... row0 + BLOCK`` of one (sequence, head): zeros past ``T`` through pointers; through a
    descriptor, zeros past the tensor's end only (see :func:`overhang`). Columns past ``D_REAL`` are zeros
    either way (the copy engine fills them, being past the tensor's last dim)."""
    if TMA:
        x = desc.load([b, h, first + row0, 0]).reshape(BLOCK, HEAD_DIM)  # (1, 1, BLOCK, D) -> (BLOCK, D)
        if TRANS:
            x = tl.trans(x)  # (D, BLOCK)
    else:
        offs = row0 + tl.arange(0, BLOCK)
        rows, cols = offsets(offs, stride_t, stride_d, HEAD_DIM, WIDE)  # (BLOCK,), (HEAD_DIM,)
        x = load_at(ptr, rows, cols, offs, T, HEAD_DIM, D_REAL, MASKED, TRANS)
    return x


@triton.jit
def load_at(ptr, rows, cols, offs, T, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, MASKED: tl.constexpr,
            TRANS: tl.constexpr):
    """The rows at element offsets ``rows`` (one per row, wherever it lives: consecutive rows of a sequence,
    or rows gathered from a paged cache's pages, see ``flash_paged``) and the columns at ``cols``; rows whose
    index ``offs`` is past ``T`` and columns past ``D_REAL`` are zeros. ``(BLOCK, HEAD_DIM)``, or its
    transpose when ``TRANS``."""
    if TRANS:
        ptrs = ptr + rows[None, :] + cols[:, None]  # (HEAD_DIM, BLOCK)
        row_ok = offs[None, :] < T
    else:
        ptrs = ptr + rows[:, None] + cols[None, :]  # (BLOCK, HEAD_DIM)
        row_ok = offs[:, None] < T
    if D_REAL < HEAD_DIM:  # a padded head dim (a constexpr test: a power of two compiles as if it were not here)
        col_ok = tl.arange(0, HEAD_DIM) < D_REAL  # (HEAD_DIM,)
        col_ok = col_ok[:, None] if TRANS else col_ok[None, :]
        x = tl.load(ptrs, mask=(row_ok & col_ok) if MASKED else col_ok, other=0.0)
    elif MASKED:
        x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:  # full tile: every row exists, no bounds check
        x = tl.load(ptrs)
    return x


@triton.jit
def store_rows(ptr, desc, b, h, row0, x, stride_t, stride_d, T,
               BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr, TMA: tl.constexpr,
               WIDE: tl.constexpr):
    """Store ``x`` (BLOCK, HEAD_DIM) as rows ``row0 ...`` of one (sequence, head), dropping rows past ``T``
    and columns past ``D_REAL``."""
    if TMA:  # the copy engine clips rows past the tensor's end, and columns past its last dim
        desc.store([b, h, row0, 0], x.reshape(1, 1, BLOCK, HEAD_DIM))
    else:
        offs = row0 + tl.arange(0, BLOCK)
        rows, cols = offsets(offs, stride_t, stride_d, HEAD_DIM, WIDE)
        tl.store(ptr + rows[:, None] + cols[None, :], x, mask=tile_mask(offs, T, HEAD_DIM, D_REAL))


@triton.jit
def tile_mask(offs, T, HEAD_DIM: tl.constexpr, D_REAL: tl.constexpr):
    """``[len(offs), HEAD_DIM]`` bools: row ``offs[i]`` exists (``< T``) and column ``d`` is a real one
    (``< D_REAL``), for the masked loads and stores of whole rows outside :func:`load_rows`."""
    row_ok = offs[:, None] < T
    if D_REAL < HEAD_DIM:
        row_ok = row_ok & (tl.arange(0, HEAD_DIM)[None, :] < D_REAL)
    return row_ok


def head_dim_tile(D: int) -> int:
    """The width of the kernels' tiles along the head dim for a head dim of ``D``: ``D`` itself when it is a
    power of two of at least 16, else the next one (``tl.arange`` spans powers of two, and ``tl.dot`` wants
    at least 16 along the dim it sums over). The kernels get both, as ``HEAD_DIM`` and ``D_REAL``, and
    treat the columns in between as zeros: loaded as zeros, never stored. Zero columns of q and k add
    nothing to a score and zero columns of v give zero output columns, so the result is the same; the
    cost is the padding's share of the products (D = 80 runs the products of D = 128) and none of the
    memory traffic (the loads are masked, no padded copy exists)."""
    return max(16, triton.next_power_of_2(D))


@triton.jit
def packed_offsets(offs_m, GROUP, stride_t, stride_h):
    """Element offsets (64-bit) of packed GQA rows: row ``r`` of a block is query position ``r // GROUP``
    of the group's head ``r % GROUP``, so the heads sharing one key/value head share one tile of rows."""
    r = offs_m.to(tl.int64)
    return (r // GROUP) * stride_t + (r % GROUP) * stride_h


@triton.jit
def offsets(offs, stride_t, stride_d, HEAD_DIM: tl.constexpr, WIDE: tl.constexpr):
    """Element offsets of the rows ``offs`` and of the ``HEAD_DIM`` columns, in 64 bits when ``WIDE``."""
    offs_d = tl.arange(0, HEAD_DIM)
    if WIDE:
        rows = offs.to(tl.int64) * stride_t
        cols = offs_d.to(tl.int64) * stride_d
    else:
        rows = offs * stride_t
        cols = offs_d * stride_d
    return rows, cols
