"""``hearth bench market``: what the market adds on top of the engine, measured end to end.

Stands up a :class:`~p2pnode.localnet.LocalMarket` with ``nodes`` homeowner processes,
then:

* **baseline** — the same engine (SmolLM2-135M on the CPU) loaded in this process,
  time to first token of each benchmark prompt called locally, one at a time;
* **market** — ``jobs`` jobs through the market (``concurrency`` at a time), each timed
  from ``generate()`` to the award (the provider's Accept) and to the first token.

The market's overhead is its time to first token minus the local one (p50 and p95
of each, measured in the same run on the same machine).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import trio

from p2pnode.localnet import LocalMarket

__all__ = ["run_bench_market"]

PROMPTS = (
    "Name a colour.",
    "What is two plus two?",
    "Say hello in French.",
    "Give one word for happy.",
    "What is the capital of Italy?",
)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _local_ttft(samples: int, max_tokens: int) -> list[float]:
    from p2pnode.serving import Engine, GenerationRequest, load_model

    model = await trio.to_thread.run_sync(load_model, None)
    out = []
    async with Engine(model, max_batch=8) as engine:
        for i in range(samples):
            request = GenerationRequest(
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens,
                temperature=0.0,
                logprobs=True,
            )
            t0 = trio.current_time()
            first = None
            async for chunk in engine.generate(request):
                if first is None and chunk.token_ids:
                    first = trio.current_time() - t0
            out.append(1000 * (first or 0.0))
    return out


async def _market(
    market: LocalMarket, jobs: int, max_tokens: int, concurrency: int
) -> dict[str, Any]:
    from market.sdk.connect import load_buyer, open_buyer_client
    from market.sdk.types import GenerationParams, HearthError

    awards: list[float] = []
    ttfts: list[float] = []
    failures: dict[str, int] = {}
    failovers = 0
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        with trio.fail_after(60):
            while client.catalog.provider_count(trio.current_time()) < len(market.procs) - 1:
                await trio.sleep(0.2)
        queue = list(range(jobs))
        t0 = trio.current_time()

        async def worker() -> None:
            nonlocal failovers
            while queue:
                i = queue.pop()
                job = client.generate(
                    "SmolLM2-135M-Instruct",
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    params=GenerationParams(max_tokens=max_tokens),
                )
                try:
                    async for _ in job:
                        pass
                except HearthError as exc:
                    failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    continue
                r = job.result
                awards.append(r.award_ms)
                ttfts.append(r.ttft_ms)
                failovers += r.failovers

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        wall = trio.current_time() - t0
    return {
        "awards": awards,
        "ttfts": ttfts,
        "failures": failures,
        "failovers": failovers,
        "wall": wall,
    }


def run_bench_market(
    *, nodes: int = 10, jobs: int = 200, max_tokens: int = 16, concurrency: int = 4
) -> dict[str, Any]:
    """Run the benchmark; returns the figures (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="hearth-bench-market-"))
    market = LocalMarket(workdir)
    try:
        market.stand_up([f"node{i}" for i in range(nodes)], timeout_s=60 + 20 * nodes)
        local = trio.run(_local_ttft, min(jobs, 20), max_tokens)
        m = trio.run(_market, market, jobs, max_tokens, concurrency)
    finally:
        market.stop()
    awards, ttfts = m["awards"], m["ttfts"]
    local_p50, local_p95 = _pct(local, 0.5), _pct(local, 0.95)
    return {
        "nodes": nodes,
        "jobs": jobs,
        "jobs_completed": len(awards),
        "jobs_failed": m["failures"],
        "jobs_per_s": round(len(awards) / m["wall"], 2) if m["wall"] else 0.0,
        "award_ms": {"p50": round(_pct(awards, 0.5), 1), "p95": round(_pct(awards, 0.95), 1)},
        "ttft_ms": {"p50": round(_pct(ttfts, 0.5), 1), "p95": round(_pct(ttfts, 0.95), 1)},
        "local_ttft_ms": {"p50": round(local_p50, 1), "p95": round(local_p95, 1)},
        "ttft_overhead_ms": {
            "p50": round(_pct(ttfts, 0.5) - local_p50, 1),
            "p95": round(_pct(ttfts, 0.95) - local_p95, 1),
        },
        "failovers": m["failovers"],
        "mean_award_ms": round(statistics.fmean(awards), 1) if awards else None,
    }
