"""``hearth bench net``: gossip latency and delivery, mesh formation, RSS, stream speed.

Two phases in one run, on the same machine at the same moment:

1. **baseline** — ``procs`` stock py-libp2p processes (``_rawpeer``: GossipSub v1.1 tuned
   as in the field notes, nothing hardened), each dialling up to 8 earlier ones;
2. **hearth** — one bootstrap and ``procs`` hardened ``_testpeer`` processes that find
   each other by rendezvous, as real nodes do.

In each, once every peer has a mesh, the peers publish in turn at ``rate`` messages/s
in total for ``seconds``; payloads carry their send time and every other peer records
publish-to-delivery latency. Delivery ratio = deliveries / (messages × (procs − 1)).
Hearth's phase also streams 2,000 sealed TokenChunk frames between two peers over a
FramedStream (stream bytes/s). ``latency_vs_baseline`` = hearth p50 / baseline p50.
The machine is shared: compare the two phases, not runs taken at different times.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from typing import Any

from p2pnode.net.procs import PeerProcess, spawn_bootstrap, spawn_peer, stop_all

__all__ = ["print_table", "run_bench"]

BENCH_TOPIC = "/hearth/1/bench"
_MODEL = "be" * 32


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _gossip(peers: list[PeerProcess], *, rate: float, seconds: float, size: int) -> dict[str, Any]:
    """Wait for meshes, publish, collect latencies; returns the gossip figures."""
    procs = len(peers)
    t1 = time.perf_counter()
    deadline = t1 + 60
    while time.perf_counter() < deadline:
        if min(p.call("mesh", topic=BENCH_TOPIC)["mesh"] for p in peers) >= min(4, procs - 1):
            break
        time.sleep(0.25)
    mesh_s = time.perf_counter() - t1
    count = max(1, int(rate * seconds))
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    for p, n in zip(peers, shares, strict=True):  # all publish concurrently
        if n:
            p.send_raw({"cmd": "bench_publish", "count": n, "rate": rate / procs, "size": size})
    for p, n in zip(peers, shares, strict=True):
        if n:
            p._next(seconds * 3 + 30)
    expected = count * (procs - 1)
    received, last, quiet_since = 0, -1, time.perf_counter()
    stop_at = time.perf_counter() + 60
    while time.perf_counter() < stop_at:  # stragglers: all in, or 5 s without news
        received = sum(p.call("bench_results")["received"] for p in peers)
        if received >= expected:
            break
        if received != last:
            last, quiet_since = received, time.perf_counter()
        elif time.perf_counter() - quiet_since > 5:
            break
        time.sleep(0.5)
    lat: list[float] = []
    for p in peers:
        lat.extend(p.call("bench_results")["latencies"])
    return {
        "messages": count,
        "delivery_ratio": received / expected if expected else 1.0,
        "latency_ms": {
            "p50": 1000 * _pct(lat, 0.50),
            "p95": 1000 * _pct(lat, 0.95),
            "max": 1000 * max(lat) if lat else float("nan"),
        },
        "mesh_formation_s": mesh_s,
        "rss_mb_per_proc": statistics.fmean(p.call("rss")["rss_mb"] for p in peers),
    }


def run_baseline(*, procs: int, rate: float, seconds: float, size: int) -> dict[str, Any]:
    """The gossip measurement on stock, tuned py-libp2p."""
    peers: list[PeerProcess] = []
    try:
        t0 = time.perf_counter()
        for _ in range(procs):
            argv = [sys.executable, "-m", "p2pnode.net._rawpeer"]
            peers.append(PeerProcess(argv, wait=False))
        for p in peers:
            p.wait_ready()
        rng = random.Random(7)
        for i, p in enumerate(peers[1:], start=1):
            picks = rng.sample(range(i), min(8, i))
            p.call("connect_many", addrs=[peers[j].addr for j in picks], timeout=60)
        connect_s = time.perf_counter() - t0
        return {"connect_s": connect_s, **_gossip(peers, rate=rate, seconds=seconds, size=size)}
    finally:
        stop_all(list(peers))


def run_hearth(*, procs: int, rate: float, seconds: float, size: int) -> dict[str, Any]:
    """The gossip measurement on our hardened layer, plus a token-stream measurement."""
    boot: PeerProcess | None = None
    peers: list[PeerProcess] = []
    try:
        t0 = time.perf_counter()
        boot = spawn_bootstrap()
        for i in range(procs):
            extra = ["--bench"] + (["--model", _MODEL] if i == 0 else [])
            peers.append(spawn_peer([boot.addr], *extra, wait=False))
        for p in peers:
            p.wait_ready()
        connect_s = time.perf_counter() - t0
        result = {"connect_s": connect_s, **_gossip(peers, rate=rate, seconds=seconds, size=size)}
        result["dropped_counted"] = sum(p.call("stats")["pubsub"]["dropped_full"] for p in peers)
        peers[1].call("connect", addr=peers[0].addr)
        trade = peers[1].call(
            "trade", peer=peers[0].peer_id, model=_MODEL, chunks=2000, timeout=120
        )
        result["stream_bytes_per_s"] = trade["bytes_in"] / trade["seconds"]
        result["stream_tokens_per_s"] = 4 * trade["chunks"] / trade["seconds"]
        return result
    finally:
        stop_all([*peers, boot])


def run_bench(
    *, procs: int, rate: float, seconds: float, size: int, baseline: bool = True
) -> dict[str, Any]:
    """Both phases; top-level keys are hearth's figures, ``baseline`` holds the other."""
    result: dict[str, Any] = {"procs": procs, "rate_msg_s": rate, "payload_bytes": size}
    base = run_baseline(procs=procs, rate=rate, seconds=seconds, size=size) if baseline else None
    result.update(run_hearth(procs=procs, rate=rate, seconds=seconds, size=size))
    if base is not None:
        result["baseline"] = base
        b50 = base["latency_ms"]["p50"]
        result["latency_vs_baseline"] = result["latency_ms"]["p50"] / b50 if b50 else None
    return result


def print_table(result: dict[str, Any]) -> None:
    """Rich table of :func:`run_bench`'s result (hearth next to the baseline)."""
    from rich.console import Console
    from rich.table import Table

    base = result.get("baseline") or {}
    t = Table(title=f"hearth bench net — {result['procs']} processes, {result['rate_msg_s']} msg/s")
    t.add_column("figure")
    t.add_column("hearth", justify="right")
    t.add_column("raw py-libp2p", justify="right")

    def lat(r: dict[str, Any]) -> str:
        if not r:
            return "-"
        v = r["latency_ms"]
        return f"{v['p50']:.0f} / {v['p95']:.0f} / {v['max']:.0f} ms"

    def get(r: dict[str, Any], key: str, fmt: str) -> str:
        return fmt.format(r[key]) if key in r else "-"

    t.add_row(
        "delivery ratio",
        get(result, "delivery_ratio", "{:.2%}"),
        get(base, "delivery_ratio", "{:.2%}"),
    )
    t.add_row("latency p50 / p95 / max", lat(result), lat(base))
    t.add_row(
        "processes up + connected",
        get(result, "connect_s", "{:.1f} s"),
        get(base, "connect_s", "{:.1f} s"),
    )
    t.add_row(
        "mesh formation",
        get(result, "mesh_formation_s", "{:.2f} s"),
        get(base, "mesh_formation_s", "{:.2f} s"),
    )
    t.add_row(
        "RSS per process",
        get(result, "rss_mb_per_proc", "{:.0f} MB"),
        get(base, "rss_mb_per_proc", "{:.0f} MB"),
    )
    t.add_row("counted subscription drops", get(result, "dropped_counted", "{}"), "-")
    t.add_row("token stream", get(result, "stream_bytes_per_s", "{:,.0f} B/s"), "-")
    t.add_row("token stream", get(result, "stream_tokens_per_s", "{:,.0f} tokens/s"), "-")
    Console().print(t)
