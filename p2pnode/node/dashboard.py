"""The homeowner's dashboard: a small web app the node serves on 127.0.0.1.

Routes
------
* ``GET /`` — the page (``dashboard_assets/index.html`` + ``app.js`` + ``app.css``;
  vanilla JS, an inline SVG chart, no network fetches but its own API). It polls
  ``/api/status`` every 2 s.
* ``GET /api/status`` — the node's snapshot as JSON (shape in
  :mod:`p2pnode.node.telemetry`).
* ``GET /metrics`` — Prometheus text (:mod:`p2pnode.node.metrics`).
* ``POST /api/drain``, ``POST /api/resume``, ``POST /api/price`` with
  ``{"price_per_1k": <int>}`` — controls. Each needs ``Authorization: Bearer
  <dashboard.token>``: 403 when the node has no token configured (controls are
  then off), 401 when the header is missing or wrong, 400 for a bad body. A refused
  request changes nothing.

Requests whose ``Host`` is not a loopback name are refused (400), which keeps a
web page elsewhere from reading the API through DNS rebinding; the Bearer header
cannot be sent cross-origin without a CORS preflight, which this app never grants.

The node is reached only through :class:`NodeControl`, so the app is tested
against any object with those four methods.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from market.config import MAX_PRICE_PER_1K  # one limit for hearth.toml and the dashboard
from p2pnode.node.metrics import node_registry, render_metrics

__all__ = ["MAX_PRICE_PER_1K", "NodeControl", "create_dashboard_app", "serve_dashboard"]

logger = logging.getLogger(__name__)

_MAX_BODY = 1024
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


@runtime_checkable
class NodeControl(Protocol):
    """What the dashboard needs from a running node.

    ``snapshot`` is called from a worker thread (it reads SQLite), so it must not
    touch trio objects; the three controls are called on the event-loop thread and
    must return at once (start work, don't wait for it).
    """

    def snapshot(self) -> dict[str, Any]:
        """The node's state now (see :mod:`p2pnode.node.telemetry`)."""
        ...

    def drain(self) -> None:
        """Stop bidding now; running jobs finish. The node keeps running."""
        ...

    def resume(self) -> None:
        """Bid again after :meth:`drain` (the power governor may still hold it off)."""
        ...

    def set_price_floor(self, price_per_1k: int) -> None:
        """Never bid below ``price_per_1k`` (token base units per 1000 tokens)."""
        ...


def _asset(name: str) -> bytes:
    return resources.files("p2pnode.node.dashboard_assets").joinpath(name).read_bytes()


def create_dashboard_app(control: NodeControl, *, token: str) -> Starlette:
    """The ASGI app; ``token`` is ``dashboard.token`` from the config ("" = controls off)."""
    registry = node_registry(control.snapshot)
    pages = {path: (_asset(name), ctype) for path, (name, ctype) in _ASSETS.items()}

    async def page(request: Request) -> Response:
        body, ctype = pages[request.url.path]
        return Response(body, media_type=ctype, headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        doc = await anyio.to_thread.run_sync(control.snapshot)
        return JSONResponse(doc, headers={"Cache-Control": "no-store"})

    async def metrics(request: Request) -> Response:
        body = await anyio.to_thread.run_sync(render_metrics, registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def refused(request: Request) -> Response | None:
        """The auth verdict: ``None`` when the caller holds the configured token."""
        if not token:
            return _error(403, "controls are off: set dashboard.token in the node's config")
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), token.encode()
        ):
            return _error(401, "missing or wrong token", {"WWW-Authenticate": "Bearer"})
        return None

    async def drain(request: Request) -> Response:
        if (bad := refused(request)) is not None:
            return bad
        control.drain()
        logger.info("dashboard: drain requested")
        return JSONResponse({"ok": True, "action": "drain"})

    async def resume(request: Request) -> Response:
        if (bad := refused(request)) is not None:
            return bad
        control.resume()
        logger.info("dashboard: resume requested")
        return JSONResponse({"ok": True, "action": "resume"})

    async def price(request: Request) -> Response:
        if (bad := refused(request)) is not None:
            return bad
        value = await _price_from(request)
        if isinstance(value, Response):
            return value
        try:
            control.set_price_floor(value)
        except ValueError as e:
            return _error(400, str(e))
        logger.info("dashboard: price floor set to %d per 1k", value)
        return JSONResponse({"ok": True, "action": "price", "price_per_1k": value})

    routes = [Route(path, page, methods=["GET"]) for path in _ASSETS]
    routes += [
        Route("/api/status", status, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/drain", drain, methods=["POST"]),
        Route("/api/resume", resume, methods=["POST"]),
        Route("/api/price", price, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=_LOOPBACK_HOSTS)],
    )


async def _price_from(request: Request) -> int | Response:
    """``price_per_1k`` from a small JSON body, or the 400 that says what is wrong."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_BODY:
            return _error(400, f"body over {_MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, 'body must be JSON like {"price_per_1k": 1200}')
    if not isinstance(doc, dict) or set(doc) != {"price_per_1k"}:
        return _error(400, 'body must be exactly {"price_per_1k": <integer>}')
    value = doc["price_per_1k"]
    if isinstance(value, bool) or not isinstance(value, int):
        return _error(400, "price_per_1k must be an integer (token base units per 1000 tokens)")
    if not 0 <= value <= MAX_PRICE_PER_1K:
        return _error(400, f"price_per_1k must be between 0 and {MAX_PRICE_PER_1K}")
    return value


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status, headers=headers)


async def serve_dashboard(
    control: NodeControl,
    *,
    token: str,
    host: str = "127.0.0.1",
    port: int = 8090,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard until cancelled; ``nursery.start`` returns the bound port.

    ``host`` must be a loopback address: the dashboard is for the person at the box.
    ``port=0`` picks a free port (tests); the config's "0 = no dashboard" is the
    caller's to honour by not starting it.
    """
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the dashboard serves on loopback only, not {host!r}")
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    app = create_dashboard_app(control, token=token)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, app, config)
        bound = int(str(binds[0]).rsplit(":", 1)[1])
        logger.info("dashboard on http://%s:%d/", host, bound)
        task_status.started(bound)
