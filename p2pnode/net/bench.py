"""``hearth bench net``: gossip latency and delivery, mesh formation, RSS, stream speed.

Starts one bootstrap and ``procs`` test-peer processes on loopback, waits for every
peer's mesh on the bench topic, then has the peers publish in turn at ``rate``
messages/s in total for ``seconds``. Each payload carries its send time; every other
peer records publish-to-delivery latency. Delivery ratio = deliveries / (messages ×
(procs − 1)). Finally one peer streams token chunks from another (sealed TokenChunk
frames over a FramedStream) to measure stream bytes/s. Processes are stopped by PID.
"""

from __future__ import annotations

import statistics
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


def run_bench(*, procs: int, rate: float, seconds: float, size: int) -> dict[str, Any]:
    """Run the benchmark; returns the figures (see module doc)."""
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
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        deadline = t1 + 60
        while time.perf_counter() < deadline:
            meshes = [p.call("mesh", topic=BENCH_TOPIC)["mesh"] for p in peers]
            if min(meshes) >= min(4, procs - 1):
                break
            time.sleep(0.25)
        mesh_s = time.perf_counter() - t1
        count = max(1, int(rate * seconds))
        per_peer = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
        # every peer publishes its share concurrently, at rate/procs each
        for p, n in zip(peers, per_peer, strict=True):
            if n:
                p.proc.stdin.write(  # type: ignore[union-attr]
                    f'{{"cmd": "bench_publish", "count": {n}, "rate": {rate / procs}, "size": {size}}}\n'
                )
                p.proc.stdin.flush()  # type: ignore[union-attr]
        for p, n in zip(peers, per_peer, strict=True):
            if n:
                p._next(seconds * 3 + 30)
        expected = count * (procs - 1)
        # wait for stragglers: until all arrived, or nothing new for 5 s (max 60 s)
        received, last, quiet_since = 0, -1, time.perf_counter()
        stop_at = time.perf_counter() + 60
        while time.perf_counter() < stop_at:
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
        dropped = sum(p.call("stats")["pubsub"]["dropped_full"] for p in peers)
        rss = [p.call("rss")["rss_mb"] for p in peers]
        peers[1].call("connect", addr=peers[0].addr)
        trade = peers[1].call(
            "trade", peer=peers[0].peer_id, model=_MODEL, chunks=2000, timeout=120
        )
        return {
            "procs": procs,
            "messages": count,
            "rate_msg_s": rate,
            "payload_bytes": size,
            "delivery_ratio": received / expected if expected else 1.0,
            "dropped_counted": dropped,
            "latency_ms": {
                "p50": 1000 * _pct(lat, 0.50),
                "p95": 1000 * _pct(lat, 0.95),
                "max": 1000 * max(lat) if lat else float("nan"),
                "mean": 1000 * statistics.fmean(lat) if lat else float("nan"),
            },
            "connect_s": started,
            "mesh_formation_s": mesh_s,
            "rss_mb_per_proc": statistics.fmean(rss),
            "stream_bytes_per_s": trade["bytes_in"] / trade["seconds"],
            "stream_tokens_per_s": 4 * trade["chunks"] / trade["seconds"],
        }
    finally:
        stop_all([*peers, boot])


def print_table(result: dict[str, Any]) -> None:
    """Rich table of :func:`run_bench`'s result."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"hearth bench net — {result['procs']} processes")
    t.add_column("figure")
    t.add_column("value", justify="right")
    lat = result["latency_ms"]
    rows = [
        ("messages × receivers", f"{result['messages']} × {result['procs'] - 1}"),
        ("delivery ratio", f"{100 * result['delivery_ratio']:.2f} %"),
        ("latency p50 / p95 / max", f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['max']:.1f} ms"),
        ("processes up (connect)", f"{result['connect_s']:.2f} s"),
        ("mesh formation", f"{result['mesh_formation_s']:.2f} s"),
        ("RSS per process", f"{result['rss_mb_per_proc']:.0f} MB"),
        ("token stream", f"{result['stream_bytes_per_s'] / 1e6:.2f} MB/s"),
        ("token stream", f"{result['stream_tokens_per_s']:.0f} tokens/s"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)
