"""The CPU decode-attention kernel: built here, checked against torch, and its fallback."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from p2pnode.serving import Engine, GenerationRequest, LoadedModel, cpu_attention


def _reference(
    q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, slots: list[int], lens: list[int]
) -> torch.Tensor:
    return torch.stack(
        [
            F.scaled_dot_product_attention(q[r].float(), kc[s, :, :n].float(), vc[s, :, :n].float())
            for r, (s, n) in enumerate(zip(slots, lens, strict=True))
        ]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("head_dim", "group"), [(64, 3), (16, 2), (128, 1)])
def test_kernel_equals_torch_attention(dtype: torch.dtype, head_dim: int, group: int) -> None:
    kernel = cpu_attention.load(head_dim, group)
    assert kernel is not None, "the machine that runs the tests has a C compiler"
    gen = torch.Generator().manual_seed(head_dim + group)
    kvh, max_len = 3, 300
    kc = torch.randn(5, kvh, max_len, head_dim, generator=gen).to(dtype)
    vc = torch.randn(5, kvh, max_len, head_dim, generator=gen).to(dtype)
    # uneven lengths, a repeated slot, one position only, the whole slot
    slots, lens = [4, 0, 2, 0, 1], [1, 37, 300, 200, 129]
    # memory past each row's length is garbage: the kernel must never read it
    for s, n in zip(slots, lens, strict=True):
        if s != 0:
            kc[s, :, n:] = float("nan")
            vc[s, :, n:] = float("nan")
    q = torch.randn(len(slots), kvh, group, head_dim, generator=gen).to(dtype)
    got = kernel(q, kc, vc, torch.tensor(slots), torch.tensor(lens))
    assert got.dtype == torch.float32 and got.shape == q.shape
    torch.testing.assert_close(got, _reference(q, kc, vc, slots, lens), rtol=1e-4, atol=1e-5)


def test_kernel_rejects_what_it_was_not_built_for() -> None:
    kernel = cpu_attention.load(16, 2)
    assert kernel is not None
    kc = torch.zeros(2, 1, 8, 16)
    with pytest.raises(ValueError, match="group 2, head dim 16"):
        kernel(torch.zeros(1, 1, 4, 16), kc, kc, torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError):  # fp16 cache: no kernel for it
        kernel(torch.zeros(1, 1, 2, 16), kc.half(), kc.half(), torch.tensor([0]), torch.tensor([1]))


def test_no_compiler_means_torch_attention_and_a_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: Any
) -> None:
    monkeypatch.setattr(cpu_attention, "_loaded", {})
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with caplog.at_level(logging.WARNING, logger="p2pnode.serving.cpu_attention"):
        assert cpu_attention.load(64, 3) is None
    assert "no C compiler" in caplog.text
    monkeypatch.setenv("CC", str(tmp_path / "broken-cc"))
    (tmp_path / "broken-cc").write_text("#!/bin/sh\necho 'cc: fatal error' >&2\nexit 1\n")
    (tmp_path / "broken-cc").chmod(0o755)
    monkeypatch.setattr(cpu_attention, "_loaded", {})
    with caplog.at_level(logging.WARNING, logger="p2pnode.serving.cpu_attention"):
        assert cpu_attention.load(64, 3) is None
    assert "fatal error" in caplog.text
    assert not list((tmp_path / "kernels").glob("*.so"))  # nothing half-built is left


def test_built_library_is_reused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_attention, "_loaded", {})
    assert cpu_attention.load(32, 4) is not None
    built = list((tmp_path / "kernels").glob("decode_attention-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(cpu_attention, "_loaded", {})
    assert cpu_attention.load(32, 4) is not None
    assert built[0].stat().st_mtime_ns == stamp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
async def test_engine_with_and_without_the_kernel_agree(
    smollm: LoadedModel, dtype: torch.dtype
) -> None:
    """The kernel and torch's grouped calls give the same tokens and logprobs, batched."""
    prompts = ["The capital of France is", "1, 2, 3,", "Once upon a time", "def f(x):"]
    outs: dict[bool, list[Any]] = {}
    for kernel in (True, False):
        async with Engine(
            smollm, dtype=dtype, max_batch=4, max_model_len=128, attention_kernel=kernel
        ) as engine:
            assert engine.decode_kernel is kernel
            reqs = [
                GenerationRequest(
                    prompt=p, max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=True
                )
                for p in prompts
            ]
            got: list[Any] = [None] * len(reqs)

            async def one(
                i: int, engine: Engine = engine, reqs: Any = reqs, got: Any = got
            ) -> None:
                got[i] = await engine.complete(reqs[i])

            import trio

            async with trio.open_nursery() as nursery:
                for i in range(len(reqs)):
                    nursery.start_soon(one, i)
            outs[kernel] = got
    # bf16: torch's attention rounds scores to bf16, the kernel keeps them in fp32; bf16
    # runs were measured to differ by up to 0.23 nats from one setup to another.
    tol = 1e-4 if dtype == torch.float32 else 0.25
    for a, b in zip(outs[True], outs[False], strict=True):
        assert a.token_ids == b.token_ids
        diffs = [abs(x.logprob - y.logprob) for x, y in zip(a.logprobs, b.logprobs, strict=True)]
        assert all(math.isfinite(d) for d in diffs) and max(diffs) < tol


def test_kernel_refuses_rows_outside_the_cache() -> None:
    kernel = cpu_attention.load(16, 2)
    assert kernel is not None
    kc = torch.zeros(2, 1, 8, 16)
    q = torch.zeros(1, 1, 2, 16)
    for slots, lens in (([2], [1]), ([-1], [1]), ([0], [9]), ([0], [0])):
        with pytest.raises(ValueError, match="outside a cache of 2 slots x 8 positions"):
            kernel(q, kc, kc, torch.tensor(slots), torch.tensor(lens))
        with pytest.raises(ValueError, match="outside a cache"):
            kernel.bind(slots, lens)(q, kc, kc)
    assert kernel.bind([1], [8])(q, kc, kc).shape == q.shape  # the whole slot is fine


def test_library_name_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache shared by two machines never gives one CPU the other's -march=native build."""
    cc = cpu_attention._compiler()
    assert cc is not None
    here = cpu_attention._library_path(cc, 64, 3)
    assert cpu_attention._library_path(cc, 64, 3) == here
    assert cpu_attention._library_path(cc, 64, 4) != here
    monkeypatch.setattr(cpu_attention, "_cpu_signature", lambda: "fpu sse sse2")
    assert cpu_attention._library_path(cc, 64, 3) != here
