"""The homeowner's override over HTTP, authenticated by a bearer token.

``POST /power/override`` with ``Authorization: Bearer <token>`` and a JSON body
``{"state": "normal"|"throttled"|"draining"|"off"|"auto"}``; ``GET /power`` (same
token) returns the current policy. A missing or wrong token → 401, a bad body → 400.
Served by hypercorn on trio, bound to 127.0.0.1 by default (the dashboard will mount
the same app).
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import Callable

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from p2pnode.power.governor import Override, PowerPolicy, PowerState, Reading

__all__ = ["override_app", "serve_override_http"]


def override_app(
    send: trio.MemorySendChannel[Reading],
    token: str,
    policy: Callable[[], PowerPolicy],
) -> Starlette:
    """A Starlette app; overrides go on ``send``, ``policy()`` answers GET."""
    if len(token) < 16:
        raise ValueError("the override token must be at least 16 characters")
    expected = f"Bearer {token}".encode()

    def authorized(request: Request) -> bool:
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    async def get_power(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "missing or bad token"}, status_code=401)
        p = policy()
        return JSONResponse(
            {
                "state": p.state.wire,
                "may_bid": p.may_bid,
                "since": p.since,
                "reasons": list(p.reasons),
            }
        )

    async def post_override(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "missing or bad token"}, status_code=401)
        try:
            body = json.loads(await request.body())
            word = body["state"] if isinstance(body, dict) else None
            if not isinstance(word, str):
                raise ValueError("state must be a string")
            state = None if word.lower() == "auto" else PowerState.parse(word)
        except (ValueError, KeyError) as exc:
            return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)
        await send.send(Override(at=trio.current_time(), state=state, source="http"))
        return JSONResponse({"override": "auto" if state is None else state.wire})

    return Starlette(
        routes=[
            Route("/power", get_power, methods=["GET"]),
            Route("/power/override", post_override, methods=["POST"]),
        ]
    )


async def serve_override_http(
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn on trio; ``task_status.started(port)`` once bound."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    sock = trio.socket.socket()
    await sock.bind((host, port))
    sock.listen(64)
    bound = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    task_status.started(bound)
    try:
        await serve(app, config, mode="asgi")  # type: ignore[arg-type]
    finally:
        with contextlib.suppress(OSError):  # hypercorn may have closed the fd already
            sock.close()
