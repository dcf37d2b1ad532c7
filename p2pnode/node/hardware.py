"""What the box has: GPUs through torch.cuda and NVML where present, else the CPU."""

from __future__ import annotations

import os
import platform

from market.protocol import GpuInfo

__all__ = ["detect_gpus"]


def detect_gpus() -> tuple[GpuInfo, ...]:
    """The GPUs this node can serve on (empty on a CPU-only box).

    NVML (``nvidia-ml-py``) is asked first because it sees every card without
    creating a CUDA context; torch.cuda is the fallback.
    """
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(GpuInfo(name=str(name)[:64], vram_mb=int(mem.total) // 2**20))
            return tuple(gpus)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML absent or no driver: fall through to torch
        pass
    import torch

    if torch.cuda.is_available():
        return tuple(
            GpuInfo(
                name=torch.cuda.get_device_name(i)[:64],
                vram_mb=torch.cuda.get_device_properties(i).total_memory // 2**20,
            )
            for i in range(torch.cuda.device_count())
        )
    return ()


def describe_cpu() -> str:
    """A one-line description of the CPU (shown when there is no GPU)."""
    return f"{platform.processor() or platform.machine()} × {os.cpu_count()} cores"
