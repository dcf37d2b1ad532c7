"""Decode attention on the CPU through a small C kernel, built once per model shape.

Why: a decode row's attention is a few query heads against one sequence's cached
keys and values. Torch has no call for "each row over its own prefix", so the
fallback (:class:`~p2pnode.serving.model.DecodeGroup`) packs rows into padded
``scaled_dot_product_attention`` calls. Each call still does one tiny matrix product
per (row, KV head), and these are mostly call overhead: on mixed32 (2-core AMD EPYC,
bf16) attention took about as long as every projection of the step together. The
kernel in ``kernels/decode_attention.c`` reads each row's keys and values exactly
once, in one call per layer, with no mask and no padding, and measured about 3x
faster than the padded calls for 32 rows of 100-400 positions.

How: the C source is compiled with the system compiler (``$CC``, else ``cc``) with
``HEAD_DIM`` and ``GROUP`` fixed to the model's shape, then loaded with ``ctypes``
(no torch headers, about a second to build). The library goes to
``$HEARTH_CACHE_DIR/kernels/``, named by a hash of the source, the flags, the compiler,
the CPU's feature flags and the shape, so it is built once per machine. If there is
no compiler, the build fails, or the result disagrees with
``scaled_dot_product_attention`` on a random probe, :func:`load` returns None and the
engine keeps the padded calls.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from p2pnode.serving.loader import cache_dir

__all__ = ["DTYPES", "DecodeAttention", "load"]

DTYPES = (torch.float32, torch.bfloat16)  # cache dtypes the kernel reads

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels") / "decode_attention.c"
# -ffast-math at compile time only: it lets the exp loop use libmvec's vector expf and
# the reductions be reordered; linked without it, so no crtfastmath changes the
# process's denormal handling.
_COMPILE = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-std=c11"]
_LINK = ["-shared", "-fopenmp"]
_BUILD_TIMEOUT_S = 120
_lock = threading.Lock()
_loaded: dict[tuple[int, int], DecodeAttention | None] = {}

_P = ctypes.c_void_p
_I = ctypes.c_int64


class DecodeAttention:
    """``out[r] = attention of q[r] over cache[slots[r], :, :lens[r]]`` for every row."""

    def __init__(self, lib: ctypes.CDLL, head_dim: int, group: int) -> None:
        self.head_dim, self.group = head_dim, group
        self._fns = {
            torch.float32: lib.hearth_decode_attention_f32,
            torch.bfloat16: lib.hearth_decode_attention_bf16,
        }
        for fn in self._fns.values():
            fn.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, _I, ctypes.c_float, ctypes.c_int]
            fn.restype = ctypes.c_int

    def __call__(
        self,
        q: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        slots: torch.Tensor,
        lens: torch.Tensor,
    ) -> torch.Tensor:
        """``q`` ``[R, KVH, g, hd]``; ``kc``/``vc`` ``[slots, KVH, max_len, hd]`` → fp32 like q.

        ``slots``/``lens`` are ``[R]`` integers: row ``r`` attends over positions
        ``0 .. lens[r]`` of slot ``slots[r]``, which must all have been written.
        """
        return self.bind(slots.tolist(), lens.tolist())(q, kc, vc)

    def bind(
        self, slots: Sequence[int], lens: Sequence[int]
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The call for one step's rows, ``(q, kc, vc) -> out``, as the model makes it."""
        s = torch.tensor(slots, dtype=torch.int64)
        n = torch.tensor(lens, dtype=torch.int64)
        rows_at = (s, n, (min(slots), max(slots), min(lens), max(lens)) if slots else None)
        return lambda q, kc, vc: self._run(q, kc, vc, rows_at)

    def _run(
        self,
        q: torch.Tensor,
        kc: torch.Tensor,
        vc: torch.Tensor,
        rows_at: tuple[torch.Tensor, torch.Tensor, tuple[int, int, int, int] | None],
    ) -> torch.Tensor:
        slots, lens, bounds = rows_at  # [R] slot, [R] length; their extremes (None: no rows)
        rows, kvh, g, hd = q.shape
        fn = self._fns.get(kc.dtype)
        fits = (
            fn is not None
            and (g, hd) == (self.group, self.head_dim)
            and kc.device.type == "cpu"
            and kc.shape == vc.shape
            and kc.dtype == vc.dtype
            and kc.dim() == 4
            and (kc.shape[1], kc.shape[3]) == (kvh, hd)
            and kc.is_contiguous()
            and vc.is_contiguous()
            and slots.shape == lens.shape == (rows,)
        )
        if not fits:
            raise ValueError(
                f"decode attention: q {tuple(q.shape)}, cache {tuple(kc.shape)} {kc.dtype}"
                f" do not fit a kernel built for group {self.group}, head dim {self.head_dim}"
            )
        out = torch.empty(q.shape, dtype=torch.float32)
        if bounds is None:
            return out
        lo_slot, hi_slot, lo_len, hi_len = bounds
        if lo_slot < 0 or hi_slot >= kc.shape[0] or lo_len < 1 or hi_len > kc.shape[2]:
            raise ValueError(
                f"decode attention: slots {lo_slot}..{hi_slot}, lengths {lo_len}..{hi_len}"
                f" outside a cache of {kc.shape[0]} slots x {kc.shape[2]} positions"
            )
        qf = q.to(torch.float32).contiguous()
        assert fn is not None
        rc = fn(
            qf.data_ptr(),
            kc.data_ptr(),
            vc.data_ptr(),
            slots.data_ptr(),
            lens.data_ptr(),
            out.data_ptr(),
            rows,
            kvh,
            kc.shape[2],
            hd**-0.5,
            torch.get_num_threads(),
        )
        if rc != 0:
            raise MemoryError("decode attention: a thread could not allocate its scores")
        return out


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's feature flags where Linux lists them.

    Part of the library's name, so a cache directory shared between machines (a network
    home) never hands one CPU a library built with instructions it lacks.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[-1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _library_path(cc: str, head_dim: int, group: int) -> Path:
    version = subprocess.run(
        [cc, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    key = hashlib.sha256()
    for part in (
        _SOURCE.read_bytes(),
        " ".join(_COMPILE + _LINK).encode(),
        version.encode(),
        platform.machine().encode(),
        _cpu_signature().encode(),
        f"{head_dim}/{group}".encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / "kernels" / f"decode_attention-{key.hexdigest()[:16]}.so"


def _build(cc: str, target: Path, head_dim: int, group: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        obj, lib = Path(tmp) / "k.o", Path(tmp) / "k.so"
        defs = [f"-DHEAD_DIM={head_dim}", f"-DGROUP={group}"]
        for cmd in (
            [cc, *_COMPILE, *defs, "-c", str(_SOURCE), "-o", str(obj)],
            [cc, *_LINK, str(obj), "-o", str(lib), "-lm"],
        ):
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-800:]}")
        os.replace(lib, target)  # atomic: another process may be building the same


def _agrees(kernel: DecodeAttention) -> bool:
    """The kernel against torch's attention on random rows of uneven lengths."""
    gen = torch.Generator().manual_seed(0)
    kvh, hd, g, max_len = 2, kernel.head_dim, kernel.group, 48
    for dtype in (torch.float32, torch.bfloat16):
        kc = torch.randn(3, kvh, max_len, hd, generator=gen).to(dtype)
        vc = torch.randn(3, kvh, max_len, hd, generator=gen).to(dtype)
        q = torch.randn(4, kvh, g, hd, generator=gen).to(dtype)
        slots, lens = torch.tensor([2, 0, 1, 0]), torch.tensor([48, 1, 17, 30])
        got = kernel(q, kc, vc, slots, lens)
        for r in range(4):
            s, n = int(slots[r]), int(lens[r])
            want = F.scaled_dot_product_attention(
                q[r].float(), kc[s, :, :n].float(), vc[s, :, :n].float()
            )
            if not torch.allclose(got[r], want, rtol=1e-4, atol=1e-5):
                return False
    return True


def load(head_dim: int, group: int) -> DecodeAttention | None:
    """The kernel for this shape, built if needed; None if it cannot be had here."""
    key = (head_dim, group)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        kernel: DecodeAttention | None = None
        try:
            cc = _compiler()
            if cc is None:
                raise RuntimeError("no C compiler (set CC, or install cc)")
            path = _library_path(cc, head_dim, group)
            if not path.exists():
                _build(cc, path, head_dim, group)
            kernel = DecodeAttention(ctypes.CDLL(str(path)), head_dim, group)
            if not _agrees(kernel):
                raise RuntimeError("the built kernel disagrees with torch's attention")
        except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
            logger.warning("CPU decode-attention kernel unavailable, using torch's: %s", e)
            kernel = None
        _loaded[key] = kernel
        return kernel
