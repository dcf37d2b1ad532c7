"""Serve the gateway app with hypercorn's trio worker."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from market.gateway.app import Backend, create_app

__all__ = ["serve_gateway"]


async def serve_gateway(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``nursery.start`` returns the bound port (useful with ``port=0``)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, create_app(backend), config)  # type: ignore[arg-type]
        task_status.started(int(str(binds[0]).rsplit(":", 1)[1]))
