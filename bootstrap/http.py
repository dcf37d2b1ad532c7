"""``/health`` and ``/metrics`` for a bootstrap node, over a deliberately tiny HTTP/1.0.

A monitoring endpoint needs two GET routes; a full ASGI stack would double the
process's memory for that. Requests are bounded (8 KiB head, 5 s deadline); anything
but ``GET /health`` or ``GET /metrics`` gets 404/405.

* ``/health`` → ``{"status": "ok", "peer_id", "peers", "uptime_s", "addrs"}``
* ``/metrics`` → Prometheus text (``prometheus-client``): connected peers, pubsub
  deliveries/drops/invalid/malformed frames, blacklisted peers, relay reservations
  and circuits, rendezvous registrations, handler errors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from p2pnode.net.host import NodeNet

__all__ = ["BootstrapCollector", "serve_http"]

logger = logging.getLogger(__name__)
_MAX_HEAD = 8192


class BootstrapCollector:
    """Reads the node's counters at scrape time (no background bookkeeping)."""

    def __init__(self, net: NodeNet, started: float) -> None:
        self.net = net
        self.started = started

    def collect(self) -> Iterator[Any]:
        stats = self.net.stats()
        ps = stats["pubsub"]
        yield GaugeMetricFamily("hearth_peers", "Connected peers", value=stats["peers"])
        yield GaugeMetricFamily(
            "hearth_uptime_seconds", "Seconds since start", value=time.time() - self.started
        )
        for name in ("delivered", "dropped_full", "invalid", "malformed_frames", "blacklisted"):
            yield CounterMetricFamily(
                f"hearth_pubsub_{name}", f"Pubsub messages/frames: {name}", value=ps[name]
            )
        errors = CounterMetricFamily(
            "hearth_inbound_errors", "Inbound stream failures absorbed", labels=["kind"]
        )
        for kind, n in sorted(stats["errors"].items()):
            errors.add_metric([kind], n)
        yield errors
        relay = stats.get("relay", {})
        yield GaugeMetricFamily(
            "hearth_relay_reservations",
            "Active relay reservations",
            value=relay.get("reservations", 0),
        )
        yield GaugeMetricFamily(
            "hearth_relay_circuits", "Active relayed circuits", value=relay.get("circuits", 0)
        )
        rdv = stats.get("rendezvous", {})
        yield GaugeMetricFamily(
            "hearth_rendezvous_registrations",
            "Rendezvous registrations held",
            value=sum(rdv.values()) if rdv else 0,
        )


async def serve_http(
    net: NodeNet,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /health and /metrics on ``host:port`` (0 = any); reports the bound port."""
    started = time.time()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BootstrapCollector(net, started))  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(5):
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    chunk = await stream.receive_some(1024)
                    if not chunk:
                        return
                    head += chunk
                    if len(head) > _MAX_HEAD:
                        await _reply(stream, 431, "text/plain", b"request head too large\n")
                        return
                line = head.split(b"\n", 1)[0].decode("latin-1").strip().split()
                if len(line) != 3:
                    await _reply(stream, 400, "text/plain", b"bad request\n")
                elif line[0] != "GET":
                    await _reply(stream, 405, "text/plain", b"only GET\n")
                elif line[1] == "/health":
                    body = {
                        "status": "ok",
                        "peer_id": net.peer_id,
                        "peers": len(net.connected_peers()),
                        "uptime_s": round(time.time() - started, 3),
                        "addrs": net.addrs,
                    }
                    await _reply(stream, 200, "application/json", json.dumps(body).encode())
                elif line[1] == "/metrics":
                    await _reply(
                        stream, 200, "text/plain; version=0.0.4", generate_latest(registry)
                    )
                else:
                    await _reply(stream, 404, "text/plain", b"not found\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(handle, listeners, handler_nursery=nursery)


async def _reply(stream: trio.SocketStream, status: int, ctype: str, body: bytes) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
        status, "Error"
    )
    head = (
        f"HTTP/1.0 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    await stream.send_all(head + body)
