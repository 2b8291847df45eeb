"""The cost of attention: FLOPs, bytes, KV-cache sizes and arithmetic intensity.

Conventions. A *multiply-add* (MAC) is one multiplication and one addition; the documents count
attention's work in multiply-adds (projections ``4 T d^2``, attention ``2 T^2 d`` per layer). Hardware
is rated in FLOP/s, where a multiply-add counts as **2 FLOPs**. Functions named ``*_macs`` return
multiply-adds, ``*_flops`` return FLOPs (= 2 x MACs); benchmarks use FLOPs.
"""

from __future__ import annotations

import torch

from ._validate import check_positive_int

_DTYPE_NAMES = {
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp64": torch.float64, "float64": torch.float64,
    "fp8": torch.float8_e4m3fn, "float8": torch.float8_e4m3fn,
}


def bytes_per_element(dtype) -> int:
    """Bytes per element of a torch dtype or a name such as ``"bf16"``."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype name {dtype!r}; use one of {sorted(_DTYPE_NAMES)}")
        dtype = _DTYPE_NAMES[dtype.lower()]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or a name like 'bf16', got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def _ints(**named) -> None:
    for name, value in named.items():
        check_positive_int(value, name)


def scores_bytes(B: int, H: int, T: int, dtype="bf16") -> int:
    """Bytes of the naive ``[B, H, T, T]`` score matrix. B=4, H=32, T=8192 in bf16: 17,179,869,184."""
    _ints(B=B, H=H, T=T)
    return B * H * T * T * bytes_per_element(dtype)


def projection_macs(T: int, d_model: int) -> int:
    """Multiply-adds of the Q, K, V and output projections of one layer: ``4 T d^2``."""
    _ints(T=T, d_model=d_model)
    return 4 * T * d_model**2


def attention_macs(T: int, d_model: int) -> int:
    """Multiply-adds of ``Q K^T`` and ``P V`` over all heads of one layer: ``2 T^2 d``."""
    _ints(T=T, d_model=d_model)
    return 2 * T**2 * d_model


def layer_macs(T: int, d_model: int) -> int:
    """Multiply-adds of one attention layer: ``4 T d^2 + 2 T^2 d``."""
    return projection_macs(T, d_model) + attention_macs(T, d_model)


def layer_flops(T: int, d_model: int) -> int:
    """FLOPs of one attention layer (2 per multiply-add)."""
    return 2 * layer_macs(T, d_model)


def crossover_T(d_model: int) -> int:
    """The length at which the attention term ``2 T^2 d`` equals the projections ``4 T d^2``: ``T = 2 d``."""
    _ints(d_model=d_model)
    return 2 * d_model


def attention_flops(B: int, H: int, T_q: int, T_k: int, D: int, *, causal: bool = False,
                    backward: bool = False) -> float:
    """Benchmark FLOPs of the attention core: ``4 B H T_q T_k D`` forward (two matmuls, 2 FLOPs per
    multiply-add), halved for causal; forward + backward is 3.5x the forward (the backward does 5
    matmuls to the forward's 2: 2.5x)."""
    _ints(B=B, H=H, T_q=T_q, T_k=T_k, D=D)
    f = 4 * B * H * T_q * T_k * D
    f = f / 2 if causal else f
    return 3.5 * f if backward else f


def kv_cache_bytes(batch: int, seq_len: int, n_layers: int, n_kv_heads: int, d_head: int,
                   dtype="bf16") -> int:
    """Bytes of the KV cache: keys and values (x2) for every layer, kv head, position and dim.
    MHA has ``n_kv_heads = n_heads``, GQA fewer, MQA one."""
    _ints(batch=batch, seq_len=seq_len, n_layers=n_layers, n_kv_heads=n_kv_heads, d_head=d_head)
    return 2 * batch * seq_len * n_layers * n_kv_heads * d_head * bytes_per_element(dtype)


def naive_attention_io_bytes(T: int, D: int, dtype="fp16", *, B: int = 1, H: int = 1) -> int:
    """Bytes a naive (three-kernel) attention moves to and from main memory: read Q, K; write S;
    read S, write P (softmax); read P, V; write O. That is ``4 T D + 3 T^2`` elements."""
    _ints(T=T, D=D, B=B, H=H)
    return B * H * (4 * T * D + 3 * T * T) * bytes_per_element(dtype)


def flash_attention_io_bytes(T: int, D: int, dtype="fp16", *, B: int = 1, H: int = 1, block_q: int = 128) -> int:
    """Bytes a FlashAttention forward moves: Q read and O written once; K and V read once per block of
    ``block_q`` queries. That is ``2 T D + 2 T D * ceil(T / block_q)`` elements; no ``T^2`` term."""
    _ints(T=T, D=D, B=B, H=H, block_q=block_q)
    n_q_blocks = -(-T // block_q)
    return B * H * (2 * T * D + 2 * T * D * n_q_blocks) * bytes_per_element(dtype)


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOPs per byte moved. Above the machine's balance point (peak FLOP/s / bandwidth) a kernel is
    compute-bound; below it, memory-bound."""
    if bytes_moved <= 0:
        raise ValueError(f"bytes_moved must be > 0, got {bytes_moved}")
    return flops / bytes_moved


# Published shapes of real models (d_k = d_model / n_heads). PaLM uses multi-query attention.
MODEL_SHAPES = {
    "GPT-2 small": dict(d_model=768, n_heads=12, n_kv_heads=12, n_layers=12),
    "GPT-2 XL": dict(d_model=1600, n_heads=25, n_kv_heads=25, n_layers=48),
    "GPT-3 175B": dict(d_model=12288, n_heads=96, n_kv_heads=96, n_layers=96),
    "Llama 2 7B": dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32),
    "Llama 2 70B": dict(d_model=8192, n_heads=64, n_kv_heads=8, n_layers=80),
    "Mistral 7B": dict(d_model=4096, n_heads=32, n_kv_heads=8, n_layers=32),
    "PaLM 540B": dict(d_model=18432, n_heads=48, n_kv_heads=1, n_layers=118),
}


def model_kv_cache_bytes(name: str, seq_len: int, batch: int = 1, dtype="bf16") -> int:
    """KV-cache bytes of one of :data:`MODEL_SHAPES` at ``seq_len`` tokens."""
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODEL_SHAPES)}")
    s = MODEL_SHAPES[name]
    return kv_cache_bytes(batch, seq_len, s["n_layers"], s["n_kv_heads"], s["d_model"] // s["n_heads"], dtype)
