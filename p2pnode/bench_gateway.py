"""``hearth bench gateway``: many users at once through ``hearth gateway``, against capacity.

Stands up a :class:`~p2pnode.localnet.LocalMarket` with ``nodes`` homeowner processes
and a ``hearth gateway`` process in front of its buyer, as a user would run them, then
in the same run:

* **through the gateway** — ``requests`` chat completions from the official ``openai``
  async client (``AsyncOpenAI`` on 127.0.0.1, no retries, so every failure is seen),
  ``concurrency`` in flight at once, half of them streamed, short prompts and
  ``max_tokens`` from 32 to 48, greedy. Each one's latency, its time to first token
  (streamed ones), its completion tokens, and from the gateway's ``hearth`` answer
  field the auction's duration (``award_ms``), its wait in the admission queue
  (``queued_ms``) and who served it;
* **capacity** — the same requests on ``nodes`` bare engines, one process each, set
  up like the nodes' (their ``[serving]`` section, one torch thread, one warm-up),
  each given every ``nodes``-th request and its share of the concurrency: what the
  providers' hardware delivers with no market in between.

``ratio`` is the gateway's completion tokens per second over the engines'. Percentiles
come from :func:`market.stats.percentile`. Every request has a deadline (the client's
timeout, which the gateway makes the job's), the run as a whole is bounded, traffic
stays on 127.0.0.1, and only the processes started here are stopped, by PID.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from market.stats import percentile
from p2pnode.localnet import LocalMarket, hearth_cmd

__all__ = ["GatewayProcess", "Outcome", "Request", "drive", "plan", "run_bench_gateway"]

MODEL = "SmolLM2-135M-Instruct"
PROMPTS = (
    "Name a colour.",
    "What is two plus two?",
    "Say hello in French.",
    "Give one word for happy.",
    "What is the capital of Italy?",
    "Name a fruit that is yellow.",
)
REQUEST_TIMEOUT_S = 120.0
"""Each request's deadline (the openai client's timeout; the gateway makes it the job's)."""
START_TIMEOUT_S = 120.0


@dataclass(frozen=True, slots=True)
class Request:
    """One benchmark request: which prompt, how many tokens, streamed or not."""

    index: int
    prompt: str
    max_tokens: int
    stream: bool

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def plan(requests: int) -> list[Request]:
    """The run's requests: every other one streamed, ``max_tokens`` cycling 32..48."""
    return [
        Request(i, PROMPTS[i % len(PROMPTS)], 32 + (7 * i) % 17, stream=i % 2 == 1)
        for i in range(requests)
    ]


@dataclass(slots=True)
class Outcome:
    """How one request through the gateway went."""

    request: Request
    ok: bool = False
    error: str = ""
    latency_s: float = 0.0
    ttft_s: float | None = None  # streamed requests: the first text's arrival
    tokens: int = 0
    hearth: dict[str, Any] = field(default_factory=dict)  # the gateway's `hearth` field


# ----------------------------------------------------------------- the gateway process


class GatewayProcess:
    """``hearth gateway --config <buyer> --port 0`` as its own process, ready to sell.

    Ready means it printed its address and lists ``model`` (its buyer has heard an
    offer); ``settle_s`` more lets the other providers' offers arrive too.
    """

    def __init__(
        self, market: LocalMarket, name: str = "gateway", model: str = MODEL, settle_s: float = 3.0
    ) -> None:
        self.log_path = market.dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives with the process
        cmd = hearth_cmd("gateway", "--config", str(market.config_for("buyer")), "--port", "0")
        self.popen = subprocess.Popen(cmd, stdout=self._log, stderr=self._log, env=market.env)
        try:
            self.port = self._wait_port()
            self._wait_model(model)
        except BaseException:
            self.stop()
            raise
        time.sleep(settle_s)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def _wait_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(
                rb"gateway on http://127\.0\.0\.1:(\d+)/v1", self.log_path.read_bytes()
            )
            if found:
                return int(found.group(1))
            if not self.alive():
                break
            time.sleep(0.1)
        raise RuntimeError(f"the gateway did not start:\n{self.tail()}")

    def _wait_model(self, model: str) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.alive():
            try:
                listed = httpx.get(self.base_url + "/models", timeout=10).json()["data"]
            except (httpx.HTTPError, ValueError, KeyError):
                listed = []
            if any(m["id"].startswith(model) for m in listed):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway never listed {model}:\n{self.tail()}")

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


# ----------------------------------------------------------------- the openai driver


async def _one(client: Any, request: Request) -> Outcome:
    out = Outcome(request)
    t0 = time.perf_counter()
    args: dict[str, Any] = {
        "model": MODEL,
        "messages": request.messages,
        "max_tokens": request.max_tokens,
        "temperature": 0.0,
    }
    try:
        if request.stream:
            stream = await client.chat.completions.create(
                **args, stream=True, stream_options={"include_usage": True}
            )
            async with stream:
                async for chunk in stream:
                    if out.ttft_s is None and chunk.choices and chunk.choices[0].delta.content:
                        out.ttft_s = time.perf_counter() - t0
                    out.hearth = (chunk.model_extra or {}).get("hearth", out.hearth)
                    if chunk.usage is not None:
                        out.tokens = chunk.usage.completion_tokens
        else:
            done = await client.chat.completions.create(**args)
            out.tokens = done.usage.completion_tokens if done.usage else 0
            out.hearth = (done.model_extra or {}).get("hearth", {})
        out.ok = True
    except Exception as exc:  # openai.APIError (an HTTP error, a timeout, an error event
        # mid-stream) or anything else: one failed request, named, never the whole run
        out.error = f"{type(exc).__name__}: {exc}"[:400]
    out.latency_s = time.perf_counter() - t0
    return out


async def drive(
    base_url: str,
    requests: list[Request],
    concurrency: int,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> tuple[list[Outcome], float]:
    """Send ``requests`` through the gateway at ``base_url``, ``concurrency`` at a time.

    Returns each request's :class:`Outcome` (in order) and the wall time of the run.
    """
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="unused", max_retries=0, timeout=timeout_s
    )
    outcomes: list[Outcome | None] = [None] * len(requests)
    queue = iter(requests)

    async def worker() -> None:
        for request in queue:
            outcomes[request.index] = await _one(client, request)

    t0 = time.perf_counter()
    async with client:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return [o for o in outcomes if o is not None], wall


# ----------------------------------------------------------------- capacity


class _Child:
    """A capacity engine's process and the lines it prints, read by a thread."""

    def __init__(self, market: LocalMarket, k: int, spec: dict[str, Any]) -> None:
        self.log_path = market.dir / f"capacity-{k}.log"
        with open(self.log_path, "w") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "p2pnode.bench_gateway"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=market.env,
                text=True,
            )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.say(json.dumps(spec))

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put("")  # the child closed its output

    def say(self, line: str, last: bool = False) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()
        if last:
            self.popen.stdin.close()

    def expect(self, prefix: str, deadline: float) -> str:
        """The rest of the first line that starts with ``prefix`` (other output skipped)."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not line:
                break
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        cause = lines[-1] if lines else "nothing in its log"
        raise RuntimeError(
            f"a capacity engine did not say {prefix.strip()!r} (exit {self.popen.poll()}; "
            f"{self.log_path.name}: {cause})"
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def capacity(
    market: LocalMarket, node_names: list[str], requests: list[Request], concurrency: int
) -> dict[str, Any]:
    """Run ``requests`` on one bare engine per node, all at once (see the module docstring)."""
    n = len(node_names)
    children: list[_Child] = []
    try:
        for k, name in enumerate(node_names):
            share = [r for r in requests if r.index % n == k]
            spec = {
                "config": str(market.config_for(name)),
                "concurrency": max(1, concurrency // n + (k < concurrency % n)),
                "requests": [[r.prompt, r.max_tokens] for r in share],
            }
            children.append(_Child(market, k, spec))
        deadline = time.monotonic() + START_TIMEOUT_S
        for child in children:
            child.expect("ready", deadline)
        for child in children:  # all at once, as the nodes served
            child.say("go", last=True)
        deadline = time.monotonic() + 10 * REQUEST_TIMEOUT_S
        results = [json.loads(c.expect("figures ", deadline)) for c in children]
    finally:
        for child in children:
            child.stop()
    tokens = sum(r["tokens"] for r in results)
    wall = max(r["wall_s"] for r in results)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall if wall else 0.0,
        "latency_s": [x for r in results for x in r["latency_s"]],
        "ttft_s": [x for r in results for x in r["ttft_s"]],
    }


async def _engine_run(spec: dict[str, Any]) -> dict[str, Any]:
    """One capacity engine (a child process): set up as the node of ``spec["config"]``."""
    from market.config import load_config
    from p2pnode.serving import Engine, GenerationRequest, load_model

    serving = load_config(spec["config"]).serving
    model = await trio.to_thread.run_sync(load_model, serving.model or None)
    engine = Engine(  # as p2pnode.node.runtime builds a node's
        model,
        device=serving.device,
        kv_cache_mb=serving.kv_cache_mb or None,
        max_batch=max(8, serving.max_batch),
        pack_weights=serving.pack_weights,
    )
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens = 0
    async with engine:
        await engine.complete(GenerationRequest(prompt="Hello", max_tokens=2, temperature=0.0))
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go", sent to every engine at once
        limiter = trio.CapacityLimiter(spec["concurrency"])

        async def one(prompt: str, max_tokens: int) -> None:
            nonlocal tokens
            request = GenerationRequest(
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.0,
                logprobs=True,  # as a node asks
            )
            async with limiter:
                t0 = trio.current_time()
                first = None
                async for chunk in engine.generate(request):
                    if chunk.token_ids:
                        first = trio.current_time() - t0 if first is None else first
                        tokens += len(chunk.token_ids)
                latencies.append(trio.current_time() - t0)
                if first is not None:
                    ttfts.append(first)

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for prompt, max_tokens in spec["requests"]:
                nursery.start_soon(one, prompt, max_tokens)
        wall = trio.current_time() - t0
    return {"tokens": tokens, "wall_s": wall, "latency_s": latencies, "ttft_s": ttfts}


# ----------------------------------------------------------------- the benchmark


def _p(values: list[float], scale: float = 1.0, digits: int = 3) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    return {
        "p50": round(scale * percentile(values, 0.5), digits),
        "p95": round(scale * percentile(values, 0.95), digits),
    }


def figures(
    market: LocalMarket,
    outcomes: list[Outcome],
    wall_s: float,
    cap: dict[str, Any] | None,
) -> dict[str, Any]:
    """The benchmark's report (see :func:`run_bench_gateway`; ``cap`` None: capacity
    could not be measured, and its figures are None)."""
    if cap is None:
        cap = {"tokens_per_s": None, "latency_s": [], "ttft_s": []}
    done = [o for o in outcomes if o.ok]
    tokens = sum(o.tokens for o in done)
    tokens_per_s = tokens / wall_s if wall_s else 0.0
    errors = Counter(o.error for o in outcomes if not o.ok)
    served = Counter(
        market.name_of(o.hearth["providers"][-1]) for o in done if o.hearth.get("providers")
    )
    return {
        "completed": len(done),
        "failed": len(outcomes) - len(done),
        "errors": dict(errors.most_common()),
        "completion_tokens": tokens,
        "wall_s": round(wall_s, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "capacity_tokens_per_s": round(cap["tokens_per_s"], 1) if cap["tokens_per_s"] else None,
        "ratio": round(tokens_per_s / cap["tokens_per_s"], 3) if cap["tokens_per_s"] else None,
        "latency_s": _p([o.latency_s for o in done]),
        "ttft_s": _p([o.ttft_s for o in done if o.ttft_s is not None]),
        "award_ms": _p([o.hearth["award_ms"] for o in done if "award_ms" in o.hearth], digits=1),
        "queued_ms": _p([o.hearth["queued_ms"] for o in done if "queued_ms" in o.hearth], 1, 1),
        "failovers": sum(o.hearth.get("failovers", 0) for o in done),
        "jobs_per_provider": dict(sorted(served.items())),
        "capacity_latency_s": _p(cap["latency_s"]),
        "capacity_ttft_s": _p(cap["ttft_s"]),
    }


def run_bench_gateway(
    *,
    nodes: int = 3,
    concurrency: int = 32,
    requests: int = 96,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns its figures.

    ``say`` hears one line per phase. The figures: ``completed``, ``failed``,
    ``errors`` (each failure's message, counted), ``tokens_per_s`` (completion tokens
    per second through the gateway), ``capacity_tokens_per_s`` and ``ratio``,
    ``latency_s``, ``ttft_s``, ``award_ms`` and ``queued_ms`` (each ``p50``/``p95``),
    ``jobs_per_provider``, ``gateway_up`` (still serving at the end).
    """
    try:
        import openai  # noqa: F401 - checked first: it is a development dependency
    except ImportError:
        raise RuntimeError(
            "hearth bench gateway drives the gateway with the official openai client: "
            "pip install openai (make setup installs it)"
        ) from None
    workdir = Path(tempfile.mkdtemp(prefix="hearth-bench-gateway-"))
    market = LocalMarket(workdir, say=say)
    names = [f"node{i}" for i in range(nodes)]
    work = plan(requests)
    gateway: GatewayProcess | None = None
    try:
        say(f"standing up {nodes} nodes in {workdir}")
        market.stand_up(names, timeout_s=60 + 20 * nodes)
        gateway = GatewayProcess(market)
        say(f"{requests} requests through {gateway.base_url}, {concurrency} at a time")
        bound = 2 * REQUEST_TIMEOUT_S * (1 + requests // concurrency)
        outcomes, wall = asyncio.run(
            asyncio.wait_for(drive(gateway.base_url, work, concurrency), bound)
        )
        gateway_up = gateway.alive()
        say(f"the same requests on {nodes} bare engines")
        cap: dict[str, Any] | None = None
        try:
            cap = capacity(market, names, work, concurrency)
        except RuntimeError as exc:  # the gateway's figures still stand: report both
            capacity_error = str(exc)
            say(f"capacity not measured: {exc}")
        else:
            capacity_error = ""
    finally:
        if gateway is not None:
            gateway.stop()
        market.stop()
    report: dict[str, Any] = {"nodes": nodes, "concurrency": concurrency, "requests": requests}
    report.update(figures(market, outcomes, wall, cap))
    report["gateway_up"] = gateway_up
    if capacity_error:
        report["capacity_error"] = capacity_error
    report["workdir"] = str(workdir)
    return report


if __name__ == "__main__":  # one capacity engine: a JSON spec, "ready", "go", its figures
    done = trio.run(_engine_run, json.loads(sys.stdin.readline()))
    print("figures " + json.dumps(done), flush=True)
