"""Input checks for the kernels' public functions.

Triton would happily compile a kernel for a head dim of 512 or a float64 tensor and then fail deep in
its compiler (or, worse, read out of bounds). Every check here runs first and raises a ``ValueError``
(``TypeError`` for a non-tensor) that names the argument and says what would work.
"""

from __future__ import annotations

import math
import weakref

import torch

from attn_course._validate import integer_scalar, real_scalar
from attn_course.masks import check_cu_seqlens, check_window

MAX_HEAD_DIM = 256  # any head dim up to this; those not a power of two are padded inside (_tiles.head_dim_tile)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
UNBOUNDED = 1 << 30  # a window side of "-1" (unbounded) becomes this; lengths must stay below it


def _require_tensors(**tensors) -> None:
    """Each a dense (strided) tensor: the kernels address memory through strides."""
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        _require_dense(name, x)


def _require_dense(name: str, x: torch.Tensor) -> None:
    if x.is_nested:
        raise ValueError(f"{name} is a nested tensor; the kernels take dense tensors: pack ragged sequences end "
                         f"to end and use flash_attention_varlen")
    if x.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {x.layout} (call .to_dense())")


def _may_overlap_itself(x: torch.Tensor) -> bool:
    """Could two of ``x``'s elements share memory? Walking the dims from the smallest stride up, each stride
    must step past everything the smaller ones reach. An ``expand()``ed dim (stride 0) never does. (A few
    exotic interleaved layouts that do not overlap are reported too: this errs on the safe side.)"""
    reach = 0  # elements spanned by the dims walked so far, minus one
    for stride, size in sorted((st, n) for st, n in zip(x.stride(), x.shape, strict=True) if n > 1):
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _check_common(q, k, v, layout: str) -> None:
    """dtype, device and head-dim checks shared by the fixed-length and packed entry points."""
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype} (cast them, "
                         f"or run under torch.autocast, which casts all three as it does for PyTorch's attention)")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the kernels support float16, bfloat16 and float32, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the kernels run on CUDA (compiled) or CPU (interpreted) tensors, got {q.device}")
    D, D_k, D_v = q.shape[-1], k.shape[-1], v.shape[-1]
    if not (D == D_k == D_v):
        raise ValueError(f"q, k and v must share the head dim (last dim of {layout}), got {D}, {D_k}, {D_v}")
    check_head_dim(D)


def check_head_dim(D: int) -> None:
    """A head dim the kernels take: 1 to ``MAX_HEAD_DIM``, else a ValueError that says why not."""
    if D < 1:
        raise ValueError(f"head dim {D} is not supported: q, k and v have no columns to take dot products of")
    if D > MAX_HEAD_DIM:
        raise ValueError(
            f"head dim {D} is not supported: the kernels take head dims up to {MAX_HEAD_DIM}, as flash-attn does (a "
            f"tile of queries and its float32 accumulator that wide would not fit in a GPU's registers); compute it "
            f"with attn_course.attention")


def head_dim_argument(text: str) -> int:
    """``argparse`` type for a ``--head-dim`` flag: the benchmarks' and the survey's one check of it, which names
    the range instead of argparse listing 256 choices."""
    import argparse

    try:
        D = int(text)
    except ValueError:
        whole = f"head dim must be a whole number from 1 to {MAX_HEAD_DIM}, got {text!r}"
        raise argparse.ArgumentTypeError(whole) from None
    try:
        check_head_dim(D)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return D


def _check_heads(H: int, H_kv: int) -> None:
    if H == H_kv == 0:  # no heads at all: an empty result, as PyTorch's attention gives
        return
    if H_kv < 1 or H % H_kv != 0:
        raise ValueError(
            f"the number of query heads H={H} must be a multiple of the number of key/value heads H_kv={H_kv} "
            f"(grouped-query attention shares each key/value head among H / H_kv query heads)"
        )


def check_scale(scale, D: int) -> float:
    """``None`` -> ``1 / sqrt(D)``; otherwise a finite real number."""
    if scale is None:
        return 1.0 / math.sqrt(D)
    value = real_scalar(scale)
    if value is None or not math.isfinite(value):
        raise ValueError(f"scale must be a finite number (or None for 1/sqrt(D)), got {scale!r}")
    return value


def check_dropout(dropout_p) -> float:
    """``dropout_p``: the probability of dropping each attention weight, a real number in ``[0, 1]``."""
    value = real_scalar(dropout_p)
    if value is None:
        raise TypeError(f"dropout_p must be a number in [0, 1] (0.0 at evaluation), got {type(dropout_p).__name__} "
                        f"{dropout_p!r}")
    if not 0.0 <= value <= 1.0:  # (NaN too)
        raise ValueError(f"dropout_p must be a probability in [0, 1], got {dropout_p!r}")
    return value


def check_alibi(alibi_slopes, B: int, H: int, device: torch.device):
    """flash-attn's ``alibi_slopes``: ``None``, or float32 slopes ``[H]`` (every sequence alike) or ``[B, H]``
    on q's device. They get no gradient, so slopes that require one are refused rather than left untrained."""
    if alibi_slopes is None:
        return None
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor of float32 slopes, [H] or [B, H], got "
                        f"{type(alibi_slopes).__name__}")
    _require_dense("alibi_slopes", alibi_slopes)
    if tuple(alibi_slopes.shape) not in ((H,), (B, H)):
        raise ValueError(f"alibi_slopes must be [H] or [B, H] = [{H}] or [{B}, {H}], got shape "
                         f"{tuple(alibi_slopes.shape)}")
    if alibi_slopes.dtype != torch.float32:
        raise ValueError(f"alibi_slopes must be float32, as flash-attn's, got {alibi_slopes.dtype} (use .float())")
    if alibi_slopes.device != device:
        raise ValueError(f"alibi_slopes must be on q's device ({device}), got {alibi_slopes.device}")
    if alibi_slopes.requires_grad and torch.is_grad_enabled():
        raise ValueError("alibi_slopes requires grad, but the kernels give it no gradient (nor does flash-attn): "
                         "pass alibi_slopes.detach(), or learn the slopes with attn_course.attention and the bias "
                         "as an additive mask")
    return alibi_slopes


def refuse_gradients(tensors, refusal: str) -> None:
    """A ``ValueError`` saying ``refusal`` when autograd would want a gradient through any of ``tensors``
    (``None`` entries skipped): for the inference-only calls, which have no backward."""
    if torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors):
        raise ValueError(refusal)


def check_num_splits(num_splits) -> int:
    """flash-attn's ``num_splits``: an int >= 0 (``0``: the kernel chooses; ``n``: each row's keys in ``n``
    slices, see ``flash_split``)."""
    n = integer_scalar(num_splits)
    if n is None or n < 0:
        raise ValueError(f"num_splits must be an int >= 0 (0: let the kernel choose; n: split each row's keys "
                         f"into n slices), got {num_splits!r}")
    return n


def kernel_window(window, causal: bool) -> tuple[int, int]:
    """flash-attn's ``window_size=(left, right)`` (``-1`` = unbounded) plus ``causal`` -> the kernel's
    ``(left, right)``: causal caps the right side at 0; unbounded sides become :data:`UNBOUNDED`, and so do
    sides of :data:`UNBOUNDED` or more, which reach every key of a sequence shorter than that just the same.
    (Passed as they are, a side near 2^31 would overflow the kernels' 32-bit bound arithmetic, ``position
    - left``, and silently drop every key.)"""
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    left, right = check_window(window)
    if causal:
        right = 0
    return (UNBOUNDED if left < 0 else min(left, UNBOUNDED)), (UNBOUNDED if right < 0 else min(right, UNBOUNDED))


def check_fixed(q, k, v, same_batch: bool = True) -> None:
    """q ``[B, H, T_q, D]``, k and v ``[B, H_kv, T_k, D]``. Empty ``B``, ``H``, ``T_q`` or ``T_k`` are
    allowed (an empty batch on one rank, a sequence with no cached keys yet): see ``_ops.nothing_to_compute``.
    ``same_batch=False``: k and v may hold another number of sequences (a cache indexed by ``cache_batch_idx``)."""
    _require_tensors(q=q, k=k, v=v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D [B, H, T, D] (batch, heads, time, head dim), got shape {tuple(x.shape)}; "
                f"for flash-attn's [B, T, H, D] layout use flash_attn_func, for packed [total_T, H, D] "
                f"sequences use flash_attention_varlen"
            )
    _check_common(q, k, v, "[B, H, T, D]")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, H_kv, T_k, D], got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if same_batch and q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size B, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    _check_heads(q.shape[1], k.shape[1])
    if max(q.shape[2], k.shape[2]) >= UNBOUNDED:
        raise ValueError(f"sequences must be shorter than {UNBOUNDED} tokens")


def check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, paged: bool = False):
    """Packed q ``[total_q, H, D]``, k and v ``[total_k, H_kv, D]`` (``paged``: pools of pages ``[num_pages,
    H_kv, page_size, D]``, whose positions :func:`check_block_table` checks); returns
    ``(cu_q, cu_k, max_q, max_k, used_q, used_k)``: int32 contiguous ``cu_seqlens`` on q's device (the
    caller's own tensors when they already are), the longest lengths as Python ints (NumPy integers are
    accepted), and the rows the sequences use, ``cu_seqlens[-1]`` (``None`` when its values cannot be read
    now, or during CUDA graph capture). The sequences may stop short of the tensors' end (a padding tail,
    as static-shape buffers have). See :func:`host_cu_seqlens` for what checking the *values* of
    ``cu_seqlens`` that live on a GPU costs, and when it is skipped."""
    _require_tensors(q=q, k=k, v=v)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if paged and name != "q" and x.dim() != 4:
            raise ValueError(f"{name} must be 4-D [num_pages, H_kv, page_size, D] with a block_table (a pool of "
                             f"pages), got shape {tuple(x.shape)}")
        if x.dim() != 3 and not (paged and name != "q"):
            raise ValueError(
                f"{name} must be 3-D [total_T, H, D] (packed sequences, end to end), got shape {tuple(x.shape)}"
            )
    _check_common(q, k, v, "[total_T, H, D]")
    if k.shape != v.shape:
        layout = "[num_pages, H_kv, page_size, D]" if paged else "[total_k, H_kv, D]"
        raise ValueError(f"k and v must have the same shape {layout}, got {tuple(k.shape)} and {tuple(v.shape)}")
    _check_heads(q.shape[1], k.shape[1])
    cus, maxes, used = [], [], []
    for name, cu, x, max_len in (("cu_seqlens_q", cu_seqlens_q, q, max_seqlen_q),
                                 ("cu_seqlens_k", cu_seqlens_k, k, max_seqlen_k)):
        n = integer_scalar(max_len)
        if n is None or n < 0:
            raise ValueError(f"max_seqlen for {name} must be an int >= 0, got {max_len!r}")
        max_len = n
        maxes.append(max_len)
        if max_len >= UNBOUNDED:
            raise ValueError(f"sequences must be shorter than {UNBOUNDED} tokens")
        try:
            host = host_cu_seqlens(cu)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}: {e}") from None
        # (during CUDA graph capture the rows used stay unknown: a replay may bring cu_seqlens of another length)
        used.append(None if host is None or capturing(q) else int(host[-1]))
        if host is not None:  # the values are known: check them against the tensors (pages: check_block_table)
            if used[-1] > x.shape[0] and not (paged and x is k):
                raise ValueError(f"{name} ends at token {used[-1]} but {name[-1]} holds only {x.shape[0]} packed "
                                 f"tokens: {host.tolist()}")
            longest = int((host[1:] - host[:-1]).max())
            if max_len < longest:
                raise ValueError(f"max_seqlen for {name} is {max_len} but its longest sequence has {longest} "
                                 f"tokens")
        cus.append(cu if isinstance(cu, torch.Tensor) and cu.device == q.device else host)
    if paged:
        used[1] = None  # (a pool's pages are not a padding tail)
    if cus[0].numel() != cus[1].numel():
        raise ValueError(
            f"cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
            f"{cus[0].numel() - 1} and {cus[1].numel() - 1}"
        )
    return (*(cu.to(device=q.device, dtype=torch.int32).contiguous() for cu in cus), *maxes, *used)


_host_copies: dict[tuple, tuple[int, torch.Tensor]] = {}  # (id(x), what) -> (x's version, checked host copy)
SYNC_TO_READ = ("cuda",)  # device types whose values cost a synchronisation to read: read once per version


def host_cu_seqlens(cu) -> torch.Tensor | None:
    """``cu_seqlens`` checked (1-D integers from 0, non-decreasing) and on the host, or ``None`` when its
    values cannot be read now (see :func:`host_checked`)."""
    return host_checked(cu, check_cu_seqlens, _integer_vector("cu_seqlens [0, l1, l1+l2, ...]", 2), "cu_seqlens",
                        "cu_seqlens")


def host_checked(x, check, check_shape, tag, name):
    """``check(x)`` on the host (``x`` checked and as a CPU tensor), or ``None`` when ``x``'s values cannot be
    read now; ``check_shape(x)`` checks what can be seen without reading them. ``tag`` names the check
    (with whatever its verdict depends on besides ``x``); ``name`` is ``x``'s, for error messages.

    Reading a GPU tensor's values waits for everything queued on the GPU (a synchronisation), so a GPU
    tensor is read once per *version*: a model passes the same ``cu_seqlens`` (or cache lengths) to every
    layer, and only the first layer's call pays; writing into it in place makes a new version, checked
    again. (A tensor made under ``torch.inference_mode`` has no version counter: it is checked at every
    call.) Writes that bypass the version counter (through a NumPy view, DLPack, another kernel) go unseen
    there. A CPU tensor costs no synchronisation, so it is checked at every call, and such writes are
    caught (unchecked, a NumPy view's broken lengths had the interpreter write out of bounds).
    During CUDA graph capture, where a copy to the host is not allowed, a tensor not checked before gets
    its shape and dtype checked only: its values are ``None`` here, and the kernels trust them, as
    flash-attn always does.
    """
    if not isinstance(x, torch.Tensor) or torch.compiler.is_compiling():
        return check(x).to("cpu")
    _require_dense(name, x)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA GPU (its values are read), got {x.device}")
    key, version = (id(x), tag), None if x.is_inference() or x.device.type not in SYNC_TO_READ else x._version
    hit = _host_copies.get(key)
    if hit is not None and version is not None and hit[0] == version:
        return hit[1]
    if capturing(x):
        check_shape(x)
        return None  # (the values stay on the GPU)
    host = check(x.detach().to("cpu", copy=True))  # (a copy: the cache must not keep x alive)
    if version is not None:
        if hit is None:  # forget the copy when the tensor goes (before its id can be reused)
            weakref.finalize(x, _host_copies.pop, key, None)
        _host_copies[key] = (version, host)
    return host


def capturing(x: torch.Tensor) -> bool:
    """Is ``x``'s GPU stream being recorded into a CUDA graph (where nothing may wait on the GPU, and what
    is recorded is replayed later on whatever values the tensors then hold)?"""
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _is_integer_vector(x: torch.Tensor) -> bool:
    """1-D with an integer dtype (seen without reading the values)."""
    return x.dim() == 1 and not x.dtype.is_floating_point and x.dtype != torch.bool


def _integer_vector(what: str, min_len: int):
    """A shape-and-dtype check: ``x`` is a 1-D integer tensor of at least ``min_len`` entries."""
    def check_shape(x):
        if not _is_integer_vector(x) or x.numel() < min_len:
            raise ValueError(f"{what} must be a 1-D integer tensor with at least {min_len} entries, got {x.dtype} "
                             f"of shape {tuple(x.shape)}")
    return check_shape


def _check_writable(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """The caches take the new keys and values in place: every position needs memory of its own, and the
    two caches must not be one (a cache read without appending may be shared or ``expand()``ed freely)."""
    for name, x in (("k_cache", k_cache), ("v_cache", v_cache)):
        if _may_overlap_itself(x):
            raise ValueError(
                f"{name} has positions that share memory (shape {tuple(x.shape)}, strides {x.stride()}: an "
                f"expand()ed tensor?): appending the new keys and values in place would write one sequence's "
                f"or head's rows over another's. Give it memory of its own ({name}.clone()), or append nothing"
            )
    if k_cache.data_ptr() == v_cache.data_ptr() and k_cache.stride() == v_cache.stride():
        raise ValueError("k_cache and v_cache are the same memory: appending would write the new values over the "
                         "new keys. Give each cache its own tensor")


def check_kvcache(q, k_cache, v_cache, cache_seqlens, k, v, same_batch: bool = True, T_cache: int | None = None):
    """q ``[B, H, T_q, D]``, a cache ``k_cache``, ``v_cache`` ``[B, H_kv, T_cache, D]`` (any number of rows
    when not ``same_batch``: a cache indexed by ``cache_batch_idx``, or a pool of pages), new ``k``, ``v``
    ``[B, H_kv, T_new, D]`` (both or neither) and ``cache_seqlens`` (an int, ``B`` ints, or ``None`` for a full
    cache). ``T_cache``: the positions a sequence can hold, if not the cache's third dim (a paged cache's
    pages per sequence times their size). Returns the int32 cache lengths ``[B]`` on q's device, and on the
    host (``None`` where they cannot be read now)."""
    check_fixed(q, k_cache, v_cache, same_batch)
    B, (_, H_kv, T_rows, D) = q.shape[0], k_cache.shape
    T_cache = T_rows if T_cache is None else T_cache
    if (k is None) != (v is None):
        raise ValueError("give both k and v (new keys and values to append to the cache), or neither")
    T_new = 0
    if k is not None:
        _require_tensors(k=k, v=v)
        if k.dim() != 4 or k.shape != v.shape or (k.shape[0], k.shape[1], k.shape[3]) != (B, H_kv, D):
            raise ValueError(f"k and v must be [B, H_kv, T_new, D] = [{B}, {H_kv}, T_new, {D}] like the cache, got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        if k.dtype != k_cache.dtype or v.dtype != v_cache.dtype or k.device != k_cache.device:
            raise ValueError(f"k and v must have the cache's dtype and device ({k_cache.dtype}, {k_cache.device}), "
                             f"got {k.dtype}, {k.device}")
        if cache_seqlens is None:
            raise ValueError("appending k and v needs cache_seqlens: where each sequence's cache ends")
        T_new = k.shape[2]
        if T_new:
            _check_writable(k_cache, v_cache)
    if cache_seqlens is None:
        return torch.full((B,), T_cache, dtype=torch.int32, device=q.device), torch.full((B,), T_cache)
    def check_lengths(x):
        check_shape(x)
        if (x < 0).any() or (x + T_new > T_cache).any():
            raise ValueError(f"cache_seqlens must hold B = {B} lengths in [0, {T_cache - T_new}] (the cache holds "
                             f"{T_cache} positions, {T_new} new ones are appended), got {x.tolist()}")
        return x

    def check_shape(x):
        if not _is_integer_vector(x) or x.numel() != B:
            raise ValueError(f"cache_seqlens must be an int or a 1-D integer tensor of B = {B} lengths, got "
                             f"{x.dtype} of shape {tuple(x.shape)}")

    n = integer_scalar(cache_seqlens)
    if n is not None:
        check_lengths(torch.tensor([n]).expand(B))
        return torch.full((B,), n, dtype=torch.int32, device=q.device), torch.full((B,), n)
    if not isinstance(cache_seqlens, torch.Tensor):
        raise TypeError(f"cache_seqlens must be an int or a tensor of B ints, got {type(cache_seqlens).__name__}")
    host = host_checked(cache_seqlens, check_lengths, check_shape, ("cache_seqlens", B, T_cache, T_new),
                        "cache_seqlens")
    return cache_seqlens.to(device=q.device, dtype=torch.int32).contiguous(), host


def block_table_width(block_table, B: int) -> int:
    """The pages per sequence of flash-attn's ``block_table``, an integer ``[B, pages_per_seq]`` tensor (seen
    without reading its values)."""
    if not isinstance(block_table, torch.Tensor):
        raise TypeError(f"block_table must be a tensor [B, pages_per_seq] of page numbers, got "
                        f"{type(block_table).__name__}")
    _require_dense("block_table", block_table)
    if (block_table.dim() != 2 or block_table.shape[0] != B or block_table.shape[1] == 0
            or block_table.dtype.is_floating_point or block_table.dtype.is_complex or block_table.dtype == torch.bool):
        raise ValueError(f"block_table must be a 2-D integer tensor [B, pages_per_seq] with B = {B} (a row of page "
                         f"numbers per sequence, at least one), got {block_table.dtype} of shape "
                         f"{tuple(block_table.shape)}")
    return block_table.shape[1]


def check_block_table(block_table, lengths, T_new: int, B: int, num_pages: int, page_size: int, device):
    """flash-attn's ``block_table`` (sequence ``b``'s pages of a pool of ``num_pages`` pages of ``page_size``
    positions, in order) as an int32 tensor on ``device``. The pages a sequence uses, its first
    ``ceil((lengths[b] + T_new) / page_size)``, must be pages of the pool; a page that gets new keys must be
    used by no other sequence, nor twice by its own (the write would change keys that another position
    reads; sharing a prompt's full pages is fine). ``lengths``: the cache lengths before appending, read on
    the host, or ``None`` (the values are then trusted, as flash-attn trusts them)."""
    width = block_table_width(block_table, B)

    def check_shape(x):
        block_table_width(x, B)

    def check_pages(x):
        if lengths is None:
            return x
        if (lengths + T_new > width * page_size).any():
            raise ValueError(f"block_table holds {width} pages of {page_size} positions per sequence, "
                             f"{width * page_size} in all, but the sequences need {(lengths + T_new).tolist()}")
        slot = torch.arange(width)[None, :]  # (1, pages_per_seq)
        used = slot < (lengths[:, None] + T_new + page_size - 1) // page_size  # (B, pages_per_seq)
        outside = used & ((x < 0) | (x >= num_pages))
        if outside.any():
            b, j = (int(i) for i in outside.nonzero()[0])
            raise ValueError(f"block_table must hold pages of the pool, in [0, {num_pages - 1}], wherever a "
                             f"sequence has keys: sequence {b}'s page {j} is {int(x[b, j])} (it holds positions "
                             f"{j * page_size} ... {(j + 1) * page_size - 1}, and the sequence has "
                             f"{int(lengths[b]) + T_new})")
        if T_new:
            counts = torch.bincount(x[used].long(), minlength=num_pages)  # (num_pages,) uses of each page
            written = used & (slot >= (lengths // page_size)[:, None])  # (B, pages_per_seq) the pages appended to
            shared = written & (counts[x.long().clamp(0, num_pages - 1)] > 1)
            if shared.any():
                b, j = (int(i) for i in shared.nonzero()[0])
                raise ValueError(f"block_table: page {int(x[b, j])} gets sequence {b}'s new keys but is also used "
                                 f"by another sequence (or twice by the same one); appending would overwrite keys "
                                 f"that another position reads: give each sequence its own page to write into")
        return x

    host_checked(block_table, check_pages, check_shape,
                 ("block_table", B, num_pages, page_size, T_new, None if lengths is None else tuple(lengths.tolist())),
                 "block_table")
    return block_table.to(device=device, dtype=torch.int32).contiguous()


def check_cache_map(cache_batch_idx, cache_leftpad, lengths, B: int, B_cache: int, T_cache: int, appending: bool,
                    device):
    """flash-attn's ``cache_batch_idx`` (the cache's row of each of the ``B`` sequences, ``None``: row ``b``)
    and ``cache_leftpad`` (where each sequence's keys start in its row, ``None``: 0), as int32 ``[B]`` tensors
    on ``device``. The rows must exist, and be distinct when new keys are appended (two sequences would write
    one row); a sequence's first key is at most its cache length (``lengths``, read on the host, or ``None``)."""
    def shape_of(name):
        def check_shape(x):
            if not _is_integer_vector(x) or x.numel() != B:
                raise ValueError(f"{name} must be a 1-D integer tensor of B = {B} entries, got {x.dtype} of shape "
                                 f"{tuple(x.shape)}")
        return check_shape

    def check_rows(x):
        shape_of("cache_batch_idx")(x)
        if ((x < 0) | (x >= B_cache)).any():
            raise ValueError(f"cache_batch_idx must hold rows of the cache, in [0, {B_cache - 1}], got {x.tolist()}")
        if appending and x.unique().numel() != B:
            raise ValueError(f"cache_batch_idx must not repeat a row when k and v are appended (two sequences "
                             f"would write the same cache row), got {x.tolist()}")
        return x

    def check_starts(x):
        shape_of("cache_leftpad")(x)
        if ((x < 0) | (x > T_cache)).any():
            raise ValueError(f"cache_leftpad must hold first positions in [0, {T_cache}], got {x.tolist()}")
        return x

    rows, starts = torch.arange(B, dtype=torch.int32, device=device), torch.zeros(B, dtype=torch.int32, device=device)
    if cache_batch_idx is not None:
        if not isinstance(cache_batch_idx, torch.Tensor):
            raise TypeError(f"cache_batch_idx must be a tensor of B = {B} ints, got {type(cache_batch_idx).__name__}")
        host_checked(cache_batch_idx, check_rows, shape_of("cache_batch_idx"), ("cache_batch_idx", B, B_cache,
                                                                                  appending), "cache_batch_idx")
        rows = cache_batch_idx.to(device=device, dtype=torch.int32).contiguous()
    elif B != B_cache:
        raise ValueError(f"q has B = {B} sequences and the cache {B_cache} rows: pass cache_batch_idx to say which "
                         f"row each sequence uses")
    if cache_leftpad is not None:
        if not isinstance(cache_leftpad, torch.Tensor):
            raise TypeError(f"cache_leftpad must be a tensor of B = {B} ints, got {type(cache_leftpad).__name__}")
        host = host_checked(cache_leftpad, check_starts, shape_of("cache_leftpad"), ("cache_leftpad", B, T_cache),
                            "cache_leftpad")
        if host is not None and lengths is not None and (host > lengths).any():
            raise ValueError(f"cache_leftpad must not pass cache_seqlens (keys run from cache_leftpad[b] to "
                             f"cache_seqlens[b]), got {host.tolist()} and {lengths.tolist()}")
        starts = cache_leftpad.to(device=device, dtype=torch.int32).contiguous()
    return rows, starts
