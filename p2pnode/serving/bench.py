"""``hearth bench serving``: the "mixed32" workload on the engine and its baselines.

Workload: ``n`` requests (default 32) from a fixed seed, prompt lengths 16–256 random
token ids, output lengths 16–128, all submitted at once, greedy with ``ignore_eos`` so
every run produces exactly the same number of tokens. Figures:

* engine: output tokens/s, time to first token (submit → first token) p50/p95,
  inter-token latency p50/p95, peak RSS of the process;
* baselines in the same run, on the same weights: Hugging Face ``transformers``
  ``generate`` one request at a time, and in left-padded static batches of 8;
* optionally vLLM's CPU engine (``--vs-vllm PYTHON``) in a subprocess.

``--repeat N`` runs the engine (and vLLM, alternating with it) N times and reports
the median run of each, with every run's tokens/s alongside: on a shared machine one
run of either can be off by 20%.

Tokens/s counts requested output tokens only (padding and over-generation in the
static batches are not counted).
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market.stats import percentile

__all__ = ["DTYPES", "Workload", "make_workload", "run_benchmark"]

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: list[list[int]]
    outputs: list[int]

    @property
    def output_tokens(self) -> int:
        return sum(self.outputs)


def make_workload(n: int = 32, seed: int = 1234, vocab: int = 49152) -> Workload:
    """The mixed workload: prompt 16–256 random ids (no specials), output 16–128."""
    rng = random.Random(seed)
    prompts, outputs = [], []
    for _ in range(n):
        p = rng.randint(16, 256)
        prompts.append([rng.randrange(100, vocab) for _ in range(p)])
        outputs.append(rng.randint(16, 128))
    return Workload(prompts, outputs)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(
    model: Any, wl: Workload, *, max_batch: int = 32, **engine_kw: Any
) -> dict[str, Any]:
    """Run the workload through :class:`Engine`; return throughput and latency figures."""
    import trio

    from p2pnode.serving.api import GenerationRequest
    from p2pnode.serving.engine import Engine

    ttft: list[float] = []
    itl: list[float] = []
    produced = [0] * len(wl.prompts)
    out: dict[str, Any] = {}

    async def main() -> None:
        async with Engine(model, max_batch=max_batch, **engine_kw) as engine:
            # warm-up: one short request (allocator, kernels)
            await engine.complete(
                GenerationRequest(prompt_token_ids=[100] * 8, max_tokens=2, temperature=0)
            )
            t0 = time.perf_counter()

            async def one(i: int) -> None:
                req = GenerationRequest(
                    prompt_token_ids=wl.prompts[i],
                    max_tokens=wl.outputs[i],
                    temperature=0.0,
                    ignore_eos=True,
                )
                last = t0
                async for chunk in engine.generate(req):
                    now = time.perf_counter()
                    for _ in chunk.token_ids:
                        (ttft if produced[i] == 0 else itl).append((now - last) * 1e3)
                        produced[i] += 1
                        last = now

            async with trio.open_nursery() as nursery:
                for i in range(len(wl.prompts)):
                    nursery.start_soon(one, i)
            out["wall_s"] = time.perf_counter() - t0
            out["steps"] = engine.stats.steps
            out["preemptions"] = engine.stats.preemptions
            assert engine.plan is not None
            out["dtype"] = str(engine.plan.dtype).removeprefix("torch.")
            out["device"] = str(engine.plan.device)
            out["decode_attention"] = "kernel" if engine.decode_kernel else "torch"

    trio.run(main)
    assert produced == wl.outputs, "engine produced a different number of tokens"
    out["tokens_per_s"] = wl.output_tokens / out["wall_s"]
    out["ttft_ms"] = {"p50": percentile(ttft, 0.5), "p95": percentile(ttft, 0.95)}
    out["itl_ms"] = {"p50": percentile(itl, 0.5), "p95": percentile(itl, 0.95)}
    return out


def run_transformers(hf_dir: Path, wl: Workload, batch: int, dtype: str = "float32") -> float:
    """tokens/s of ``transformers`` ``generate`` in static batches of ``batch`` (1 = sequential)."""
    import torch
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=getattr(torch, dtype)).eval()
    pad = 0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in range(0, len(wl.prompts), batch):
            prompts = wl.prompts[b : b + batch]
            new = max(wl.outputs[b : b + batch])
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
    return wl.output_tokens / (time.perf_counter() - t0)


_VLLM_SCRIPT = r"""
import json, sys, time


def main():
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    spec = json.load(open(sys.argv[1]))
    llm = LLM(
        model=spec["model"],
        dtype=spec["dtype"],
        max_model_len=1024,
        enforce_eager=True,
        kv_cache_memory_bytes=2**30,  # the same 1 GiB KV budget as the engine's default
    )
    params = [
        SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0)
        for n in spec["outputs"]
    ]
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    llm.generate(prompts[:1], params[:1])
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params)
    wall = time.perf_counter() - t0
    n = sum(len(o.outputs[0].token_ids) for o in outs)
    print("HEARTH_VLLM " + json.dumps({"tokens_per_s": n / wall, "tokens": n}))


if __name__ == "__main__":  # vLLM starts its engine core with multiprocessing's spawn
    main()
"""


def run_vllm(python: str, hf_dir: Path, wl: Workload, dtype: str = "float32") -> float:
    """tokens/s of vLLM (its own venv, given by its interpreter) on the same workload."""
    with tempfile.TemporaryDirectory() as d:
        spec = Path(d) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "model": str(hf_dir),
                    "prompts": wl.prompts,
                    "outputs": wl.outputs,
                    "dtype": dtype,
                }
            )
        )
        script = Path(d) / "run_vllm.py"
        script.write_text(_VLLM_SCRIPT)
        # vLLM's CPU backend binds its OpenMP threads itself and by default keeps a core
        # for its front end; the engine here computes on every core, so vLLM gets them
        # all too (unless the caller set these variables).
        cores = len(os.sched_getaffinity(0))
        env = {
            "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            **os.environ,
        }
        proc = subprocess.run(
            [python, str(script), str(spec)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
            env=env,
        )
    for line in proc.stdout.splitlines():
        if line.startswith("HEARTH_VLLM "):
            return float(json.loads(line.split(" ", 1)[1])["tokens_per_s"])
    raise RuntimeError(f"vLLM run failed (exit {proc.returncode}): {proc.stderr[-2000:]}")


def run_benchmark(
    *,
    model_path: str | None = None,
    requests: int = 32,
    seed: int = 1234,
    baselines: bool = True,
    vllm_python: str | None = None,
    max_batch: int = 32,
    max_step_tokens: int = 512,
    dtype: str | None = None,
    threads: int | None = None,
    repeat: int = 1,
    attention_kernel: bool = True,
) -> dict[str, Any]:
    """Everything ``hearth bench serving`` reports, as one dictionary.

    ``dtype`` (``float32`` or ``bfloat16``) applies to the engine and to the
    transformers baselines alike (default: the engine's own choice, fp32 on the CPU,
    and fp32 baselines); ``threads`` sets torch's intra-op threads for both (default:
    torch's own choice, one per physical core). ``repeat`` runs the engine (and vLLM)
    that many times and reports the median run; ``attention_kernel=False`` keeps the
    engine on torch's attention for decode rows.
    """
    import torch

    from p2pnode.serving.loader import load_model

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    if repeat < 1:
        raise ValueError(f"repeat must be positive, got {repeat}")
    load_before = os.getloadavg()[0]  # the machine may be shared: figures need context
    model = load_model(model_path)
    wl = make_workload(requests, seed, model.config.vocab_size)
    runs: list[dict[str, Any]] = []
    vllm_runs: list[float] = []
    for _ in range(repeat):  # alternating, so both see the same spells of load
        runs.append(
            run_engine(
                model,
                wl,
                max_batch=max_batch,
                max_step_tokens=max_step_tokens,
                max_model_len=1024,
                dtype=getattr(torch, dtype) if dtype else None,
                attention_kernel=attention_kernel,
            )
        )
        if vllm_python:
            vllm_runs.append(run_vllm(vllm_python, model.hf_dir, wl, runs[-1]["dtype"]))
    eng = sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]
    result: dict[str, Any] = {
        "workload": f"mixed{requests}",
        "model": model.name,
        "model_id": model.model_id,
        "device": eng["device"],
        "dtype": eng["dtype"],
        "requests": requests,
        "output_tokens": wl.output_tokens,
        "prompt_tokens": sum(len(p) for p in wl.prompts),
        "model_load_s": round(model.load_seconds, 3),
        "torch_threads": torch.get_num_threads(),
        "decode_attention": eng["decode_attention"],
        "tokens_per_s": eng["tokens_per_s"],
        "tokens_per_s_runs": [r["tokens_per_s"] for r in runs],
        "wall_s": eng["wall_s"],
        "engine_steps": eng["steps"],
        "preemptions": eng["preemptions"],
        "ttft_ms": eng["ttft_ms"],
        "itl_ms": eng["itl_ms"],
        "peak_rss_mb": peak_rss_mb(),
        "baseline_sequential_tokens_per_s": None,
        "baseline_static8_tokens_per_s": None,
    }
    if baselines:
        base_dt = dtype or "float32"
        result["baseline_sequential_tokens_per_s"] = run_transformers(model.hf_dir, wl, 1, base_dt)
        result["baseline_static8_tokens_per_s"] = run_transformers(model.hf_dir, wl, 8, base_dt)
        result["speedup_vs_sequential"] = (
            result["tokens_per_s"] / result["baseline_sequential_tokens_per_s"]
        )
        result["speedup_vs_static8"] = (
            result["tokens_per_s"] / result["baseline_static8_tokens_per_s"]
        )
    if vllm_runs:
        result["vllm_tokens_per_s"] = sorted(vllm_runs)[len(vllm_runs) // 2]
        result["vllm_tokens_per_s_runs"] = vllm_runs
        result["ratio_vs_vllm"] = result["tokens_per_s"] / result["vllm_tokens_per_s"]
    result["peak_rss_mb"] = peak_rss_mb()
    result["load_avg_1m"] = {"start": load_before, "end": os.getloadavg()[0]}
    return result


if __name__ == "__main__":  # python -m p2pnode.serving.bench  (engine only, quick look)
    print(json.dumps(run_benchmark(baselines="--baselines" in sys.argv), indent=1, default=str))
