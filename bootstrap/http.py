"""``/health`` and ``/metrics`` for a bootstrap node: a Starlette app served by hypercorn.

The same stack as the buyer's gateway and the homeowner's dashboard (hypercorn's trio
worker), so HTTP parsing, keep-alive and limits are a maintained server's, not ours.
Bounds for a public port: a request head is refused once it is still incomplete past
8 KiB (hypercorn reads at most 64 KiB at a time, so memory per connection stays under
that), a connection that sends nothing for 5 s is closed, and a body is never read
(both routes are ``GET``).
Any other path is 404, any other method 405 (``HEAD`` is answered like ``GET``).

* ``GET /health`` → ``{"status": "ok", "peer_id", "peers", "uptime_s", "addrs"}``
* ``GET /metrics`` → Prometheus text (``prometheus-client``): connected peers, pubsub
  deliveries/drops/invalid/malformed frames, blacklisted peers, relay reservations
  and circuits, rendezvous registrations, handler errors.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from p2pnode.net.host import NodeNet

__all__ = ["BootstrapCollector", "create_http_app", "serve_http"]

MAX_HEAD = 8192
"""Bytes of an incomplete request head held before hypercorn answers 431."""
READ_TIMEOUT_S = 5
"""Seconds a connection may stay silent (mid-request or between requests)."""


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


def create_http_app(net: NodeNet, started: float | None = None) -> Starlette:
    """The ``/health`` and ``/metrics`` app for ``net`` (``started``: epoch seconds)."""
    started = time.time() if started is None else started
    registry = CollectorRegistry(auto_describe=True)
    registry.register(BootstrapCollector(net, started))

    async def health(request: Request) -> Response:
        return JSONResponse(
            {
                "status": "ok",
                "peer_id": net.peer_id,
                "peers": len(net.connected_peers()),
                "uptime_s": round(time.time() - started, 3),
                "addrs": net.addrs,
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port); raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve_http(
    net: NodeNet,
    host: str,
    port: int,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /health and /metrics on ``host:port`` (0 = any); reports the bound port.

    The socket is bound before anything else, so a port in use raises :class:`OSError`
    from ``nursery.start`` at once.
    """
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    config.h11_max_incomplete_size = MAX_HEAD
    config.read_timeout = READ_TIMEOUT_S
    config.keep_alive_timeout = READ_TIMEOUT_S
    config.include_server_header = False
    app = wrap_app(create_http_app(net), config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(worker_serve, app, config, sockets=sockets))
            task_status.started(bound)
    finally:
        sock.close()
