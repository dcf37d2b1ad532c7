"""``hearth bench net``: gossip latency and delivery, mesh formation, RSS, stream speed.

Two phases in one run, on the same machine at the same moment:

1. **baseline** — ``procs`` stock py-libp2p processes (:mod:`~p2pnode.bench_net.rawpeer`:
   GossipSub v1.1 tuned as in the field notes, nothing hardened), each dialling up to 8
   earlier ones;
2. **hearth** — one bootstrap and ``procs`` hardened :mod:`~p2pnode.bench_net.peer`
   processes that find each other by rendezvous, as real nodes do.

In each, once every peer has a mesh of ≥ 4 (or procs − 1), a **warm-up** of at least
``warmup`` seconds (default :data:`WARMUP_S`), extended while the peers together still
use more than :data:`IDLE_CORES_PER_PROC` × procs cores (at most :data:`WARMUP_MAX_S`),
lets identify, subscriptions, the first heartbeats and discovery finish; nothing is
measured then except the CPU the idle peers use (``idle_cpu_cores``, last second) and
how long it took (``warmup_s``). Then the peers publish **in turn on one even schedule**: message
``k`` leaves peer ``k % procs`` at ``t0 + k / rate`` (wall clock, shared by every
process on the machine), ``rate`` messages/s in total for ``seconds``. Payloads carry
their send time; every other peer records publish-to-delivery latency, and *every*
delivery counts (nothing slow is excluded; stragglers are awaited until all arrive or
5 s pass without news). Delivery ratio = deliveries / (messages × (procs − 1)).
``gossip_cpu_cores`` is the CPU all peers used during the window over its wall time,
``cpu_ms_per_msg`` the same CPU per published message, ``other_cpu_cores`` what every
other process on the machine used meanwhile (``/proc/stat``; includes the bootstrap and
this driver), ``load_avg_1m`` the machine's load when the window opened — a shared 2-core machine turns CPU saturation directly
into latency, so read the latencies with those next to them.

Why the schedule matters: earlier versions had every peer start its own
``1 / (rate / procs)`` timer at the same moment, so all ``procs`` peers published
together — bursts of 25 messages every 5 s at 25 processes — and each burst (25 × 24
deliveries, each hop signature-checked) queued for seconds on 2 cores: p50 0.5–2.8 s
measured that queueing, not the gossip layer.
Hearth's phase also streams 2,000 sealed TokenChunk frames between two peers over a
FramedStream (stream bytes/s). ``latency_vs_baseline`` = hearth p50 / baseline p50.
The machine is shared: compare the two phases, not runs taken at different times.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from typing import Any

from market.stats import percentile
from p2pnode.bench_net.procs import PeerProcess, spawn_bootstrap, spawn_peer, stop_all

__all__ = ["print_table", "run_bench"]

BENCH_TOPIC = "/hearth/1/bench"
_MODEL = "be" * 32
WARMUP_S = 5.0
"""Minimum warm-up between mesh formation and the measurement window (seconds)."""
WARMUP_MAX_S = 30.0
"""The warm-up goes on past WARMUP_S while peers are still busy starting, up to this."""
IDLE_CORES_PER_PROC = 0.01
"""'Quiet' for the warm-up: under this CPU per peer process over the last second."""


def _machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all processes, all cores)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / (os.sysconf("SC_CLK_TCK") or 100)


def _cpu_total(peers: list[PeerProcess]) -> float:
    """CPU seconds the peer processes have used so far, all together."""
    return sum(float(p.call("rss")["cpu_s"]) for p in peers)


def _gossip(
    peers: list[PeerProcess], *, rate: float, seconds: float, size: int, warmup: float
) -> dict[str, Any]:
    """Wait for meshes, warm up, publish on an even schedule, collect latencies."""
    procs = len(peers)
    t1 = time.perf_counter()
    deadline = t1 + 60
    while time.perf_counter() < deadline:
        if min(p.call("mesh", topic=BENCH_TOPIC)["mesh"] for p in peers) >= min(4, procs - 1):
            break
        time.sleep(0.25)
    mesh_s = time.perf_counter() - t1
    # warm-up: identify, subscriptions, first heartbeats and discovery settle; the idle
    # CPU they use is reported (it competes with gossip on a loaded machine)
    c0, w0 = _cpu_total(peers), time.perf_counter()
    time.sleep(warmup)
    idle_cores = (_cpu_total(peers) - c0) / max(1e-9, time.perf_counter() - w0)
    settle_until = time.perf_counter() + WARMUP_MAX_S - warmup
    while idle_cores > IDLE_CORES_PER_PROC * procs and time.perf_counter() < settle_until:
        c1, w1 = _cpu_total(peers), time.perf_counter()  # still starting: wait for quiet
        time.sleep(1.0)
        idle_cores = (_cpu_total(peers) - c1) / max(1e-9, time.perf_counter() - w1)
    warmed_s = time.perf_counter() - w0
    count = max(1, int(rate * seconds))
    shares = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    # message k goes out at t0 + k / rate from peer k % procs: one every 1/rate s in total
    t0 = time.time() + 0.5
    c0, w0, load = _cpu_total(peers), time.perf_counter(), os.getloadavg()[0]
    m0 = _machine_busy_s()
    for i, (p, n) in enumerate(zip(peers, shares, strict=True)):
        if n:
            p.send_raw(
                {
                    "cmd": "bench_publish",
                    "count": n,
                    "rate": rate / procs,
                    "period": procs / rate,
                    "start_at": t0 + i / rate,
                    "size": size,
                }
            )
    for p, n in zip(peers, shares, strict=True):
        if n:
            p.next_reply(seconds * 3 + 30)
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
    busy_cpu = _cpu_total(peers) - c0
    window = max(1e-9, time.perf_counter() - w0)
    busy_cores = busy_cpu / window
    other_cores = max(0.0, (_machine_busy_s() - m0 - busy_cpu) / window)
    lat: list[float] = []
    for p in peers:
        lat.extend(p.call("bench_results")["latencies"])
    return {
        "messages": count,
        "delivery_ratio": received / expected if expected else 1.0,
        "latency_ms": {
            "p50": 1000 * percentile(lat, 0.50),
            "p95": 1000 * percentile(lat, 0.95),
            "max": 1000 * max(lat) if lat else float("nan"),
        },
        "mesh_formation_s": mesh_s,
        "warmup_s": warmed_s,
        "idle_cpu_cores": idle_cores,
        "gossip_cpu_cores": busy_cores,
        "cpu_ms_per_msg": 1000 * busy_cpu / count,
        "load_avg_1m": load,
        "other_cpu_cores": other_cores,
        "rss_mb_per_proc": statistics.fmean(p.call("rss")["rss_mb"] for p in peers),
    }


def run_baseline(
    *, procs: int, rate: float, seconds: float, size: int, warmup: float = WARMUP_S
) -> dict[str, Any]:
    """The gossip measurement on stock, tuned py-libp2p."""
    peers: list[PeerProcess] = []
    try:
        t0 = time.perf_counter()
        for _ in range(procs):
            argv = [sys.executable, "-m", "p2pnode.bench_net.rawpeer"]
            peers.append(PeerProcess(argv, wait=False))
        for p in peers:
            p.wait_ready()
        rng = random.Random(7)
        for i, p in enumerate(peers[1:], start=1):
            picks = rng.sample(range(i), min(8, i))
            p.call("connect_many", addrs=[peers[j].addr for j in picks], timeout=60)
        connect_s = time.perf_counter() - t0
        return {
            "connect_s": connect_s,
            **_gossip(peers, rate=rate, seconds=seconds, size=size, warmup=warmup),
        }
    finally:
        stop_all(list(peers))


def run_hearth(
    *, procs: int, rate: float, seconds: float, size: int, warmup: float = WARMUP_S
) -> dict[str, Any]:
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
        result = {
            "connect_s": connect_s,
            **_gossip(peers, rate=rate, seconds=seconds, size=size, warmup=warmup),
        }
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
    *,
    procs: int,
    rate: float,
    seconds: float,
    size: int,
    baseline: bool = True,
    warmup: float = WARMUP_S,
) -> dict[str, Any]:
    """Both phases; top-level keys are hearth's figures, ``baseline`` holds the other."""
    result: dict[str, Any] = {"procs": procs, "rate_msg_s": rate, "payload_bytes": size}
    base = (
        run_baseline(procs=procs, rate=rate, seconds=seconds, size=size, warmup=warmup)
        if baseline
        else None
    )
    result.update(run_hearth(procs=procs, rate=rate, seconds=seconds, size=size, warmup=warmup))
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

    both = [  # (figure, key, format), for hearth and the baseline alike
        ("delivery ratio", "delivery_ratio", "{:.2%}"),
        ("latency p50 / p95 / max", "", ""),
        ("processes up + connected", "connect_s", "{:.1f} s"),
        ("mesh formation", "mesh_formation_s", "{:.2f} s"),
        ("idle CPU at end of warm-up", "idle_cpu_cores", "{:.2f} cores"),
        ("warm-up after mesh", "warmup_s", "{:.1f} s"),
        ("CPU while gossiping", "gossip_cpu_cores", "{:.2f} cores"),
        ("CPU per message (all peers)", "cpu_ms_per_msg", "{:.0f} ms"),
        ("machine load (1 min) at window", "load_avg_1m", "{:.1f}"),
        ("CPU used by other processes", "other_cpu_cores", "{:.2f} cores"),
        ("RSS per process", "rss_mb_per_proc", "{:.0f} MB"),
    ]
    for label, key, fmt in both:
        if not key:
            t.add_row(label, lat(result), lat(base))
        else:
            t.add_row(label, get(result, key, fmt), get(base, key, fmt))
    hearth_only = [
        ("counted subscription drops", "dropped_counted", "{}"),
        ("token stream", "stream_bytes_per_s", "{:,.0f} B/s"),
        ("token stream", "stream_tokens_per_s", "{:,.0f} tokens/s"),
    ]
    for label, key, fmt in hearth_only:
        t.add_row(label, get(result, key, fmt), "-")
    Console().print(t)
    cores = os.cpu_count() or 1
    other = [r["other_cpu_cores"] for r in (result, base) if r and "other_cpu_cores" in r]
    if other and max(other) > 0.25 * cores:
        Console().print(
            f"[yellow]note: other processes used up to {max(other):.1f} of {cores} cores "
            "during a window; latencies then measure CPU queueing more than gossip — "
            "rerun on a quieter machine.[/yellow]"
        )
