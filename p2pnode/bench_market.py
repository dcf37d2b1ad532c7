"""``hearth bench market``: what the market adds on top of the engine, measured end to end.

Stands up a :class:`~p2pnode.localnet.LocalMarket` with ``nodes`` homeowner processes,
then:

* **baseline** — the same engine (SmolLM2-135M on the CPU) configured as in a node
  (``max_batch``, one warm-up generation) in a process with the nodes' environment
  (one torch thread each), time to first token of each benchmark prompt, one at a time;
* **market** — ``jobs`` jobs through the market (``concurrency`` at a time, one by
  default, like the baseline), each timed from ``generate()`` to the award (the
  provider's Accept) and to the first token.

The market's overhead is its time to first token minus the local one (p50 and p95
of each, measured in the same run on the same machine; percentiles are
:func:`market.stats.percentile`, interpolated as numpy's default). With ``concurrency`` > 1
the nodes' engines share the machine's cores, so the overhead then also holds the
slowdown of every engine under load, not only the market's own work.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from market.stats import percentile as _pct
from p2pnode.localnet import LocalMarket

__all__ = ["run_bench_market"]

PROMPTS = (
    "Name a colour.",
    "What is two plus two?",
    "Say hello in French.",
    "Give one word for happy.",
    "What is the capital of Italy?",
)


async def _local_ttft(samples: int, max_tokens: int) -> list[float]:
    from p2pnode.serving import Engine, GenerationRequest, load_model

    model = await trio.to_thread.run_sync(load_model, None)
    out = []
    async with Engine(model, max_batch=8) as engine:  # as a node with capacity <= 8 has it
        await engine.complete(GenerationRequest(prompt="Hello", max_tokens=2, temperature=0.0))
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


def _local_in_node_env(market: LocalMarket, samples: int, max_tokens: int) -> list[float]:
    """The baseline, run in a child process with the environment the nodes have."""
    done = subprocess.run(
        [sys.executable, "-m", "p2pnode.bench_market", str(samples), str(max_tokens)],
        env=market.env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the local baseline failed:\n{done.stderr[-2000:]}")
    return [float(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def run_bench_market(
    *, nodes: int = 10, jobs: int = 200, max_tokens: int = 16, concurrency: int = 1
) -> dict[str, Any]:
    """Run the benchmark; returns the figures (see the module docstring)."""
    workdir = Path(tempfile.mkdtemp(prefix="hearth-bench-market-"))
    market = LocalMarket(workdir)
    try:
        market.stand_up([f"node{i}" for i in range(nodes)], timeout_s=60 + 20 * nodes)
        local = _local_in_node_env(market, min(jobs, 20), max_tokens)
        m = trio.run(_market, market, jobs, max_tokens, concurrency)
    finally:
        market.stop()
    awards, ttfts = m["awards"], m["ttfts"]
    local_p50, local_p95 = _pct(local, 0.5), _pct(local, 0.95)
    return {
        "nodes": nodes,
        "jobs": jobs,
        "concurrency": concurrency,
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


if __name__ == "__main__":  # the baseline's child process: prints its TTFTs (ms) as JSON
    print(json.dumps(trio.run(_local_ttft, int(sys.argv[1]), int(sys.argv[2]))))
