"""Device, dtype and KV-cache sizing: the only place that knows CPU from CUDA.

* CPU: fp32 (bit-for-bit comparable with the reference implementation, which the
  verifier relies on; bf16 on request), KV budget from ``kv_cache_mb`` (default
  1 GiB), matrix products through oneDNN on weights packed at load time.
* CUDA: bf16 where the GPU supports it, else fp16; the KV budget is a fraction of the
  memory still free *after* the weights are loaded (``torch.cuda.mem_get_info``).

Everything else (model, runner, sampling) is the same code on both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from p2pnode.serving import cpu_attention, onednn
from p2pnode.serving.model import LlamaConfig

__all__ = ["DevicePlan", "plan_device", "select_device"]

_CPU_DEFAULT_KV_MB = 1024


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; or an explicit ``"cpu"``/``"cuda:N"``."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(preference)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {preference!r}: use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch sees no GPU")
    return dev


def default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def kv_bytes_per_token(cfg: LlamaConfig, dtype: torch.dtype) -> int:
    """Bytes of K and V for one position across all layers."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.hd * elem


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """How the runner lays out one engine on one device."""

    device: torch.device
    dtype: torch.dtype
    slots: int
    max_len: int
    block_size: int
    num_blocks: int
    packed_linears: bool = False  # CPU: matmuls through oneDNN on prepacked weights
    attention_kernel: bool = False  # CPU: decode attention through cpu_attention's kernel

    @property
    def kv_budget_tokens(self) -> int:
        return self.num_blocks * self.block_size


def plan_device(
    cfg: LlamaConfig,
    *,
    device: str = "auto",
    dtype: torch.dtype | None = None,
    max_batch: int = 32,
    max_model_len: int | None = None,
    kv_cache_mb: float | None = None,
    block_size: int = 16,
    gpu_memory_fraction: float = 0.85,
    pack_weights: bool | None = None,
    attention_kernel: bool | None = None,
) -> DevicePlan:
    """Choose device, dtype, slots, per-slot length and the KV block budget.

    Call after the weights are on the device: on CUDA the budget is
    ``gpu_memory_fraction`` of the memory still free (or ``kv_cache_mb`` if smaller).
    ``pack_weights`` (CPU; default: wherever oneDNN supports the dtype) keeps a packed
    private copy of every projection for oneDNN, about the size of the weights again
    (the loaded weights themselves are memory-mapped and shared between processes).
    ``attention_kernel`` (CPU; default on) runs decode attention through the C kernel
    of :mod:`~p2pnode.serving.cpu_attention` where it builds (else torch's attention).
    """
    dev = select_device(device)
    dt = dtype or default_dtype(dev)
    per_tok = kv_bytes_per_token(cfg, dt)
    want_len = min(
        max_model_len or min(cfg.max_position_embeddings, 4096), cfg.max_position_embeddings
    )
    want_len = max(block_size, want_len // block_size * block_size)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        budget = int(free * gpu_memory_fraction)
        if kv_cache_mb is not None:
            budget = min(budget, int(kv_cache_mb * 2**20))
        # CUDA memory is not lazily backed: slots * max_len must fit the budget.
        slots = max_batch
        max_len = min(want_len, budget // (slots * per_tok) // block_size * block_size)
        while max_len < min(want_len, 1024) and slots > 1:
            slots //= 2
            max_len = min(want_len, budget // (slots * per_tok) // block_size * block_size)
        if max_len < block_size:
            raise MemoryError("not enough free GPU memory for a KV cache")
    else:
        budget = int((kv_cache_mb if kv_cache_mb is not None else _CPU_DEFAULT_KV_MB) * 2**20)
        slots, max_len = max_batch, want_len
    num_blocks = max(1, budget // (per_tok * block_size))
    packed = dev.type == "cpu" and onednn.available(dt) and pack_weights is not False
    kernel = dev.type == "cpu" and dt in cpu_attention.DTYPES and attention_kernel is not False
    return DevicePlan(dev, dt, slots, max_len, block_size, num_blocks, packed, kernel)
