"""Serve the gateway app with hypercorn's trio worker.

:func:`listen` binds the socket first, so a port already taken is one clear
:class:`GatewayBindError` (raised before anything slow starts) rather than an error
deep inside a nursery; :func:`serve_gateway` then serves on it until cancelled.
"""

from __future__ import annotations

import errno
import importlib.util
import socket
import sys
from functools import partial

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from market.gateway.app import Backend, create_app

__all__ = [
    "SANE_RECURSION_LIMIT",
    "GatewayBindError",
    "listen",
    "restore_recursion_limit",
    "serve_gateway",
]

SANE_RECURSION_LIMIT = 1000
"""Python's own default recursion limit, which the gateway process runs with."""


class GatewayBindError(OSError):
    """The gateway cannot listen where it was asked to (the message says why, in one line)."""


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free one)."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise GatewayBindError(f"cannot listen on {where}: unknown host ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "the port is already in use (another gateway?); choose another with --port"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "this machine has no such address"
        else:
            why = exc.strerror or str(exc)
        error = GatewayBindError(f"cannot listen on {where}: {why}")
        error.errno = exc.errno
        raise error from None
    sock.setblocking(False)
    return sock


def restore_recursion_limit() -> None:
    """Put the process back on :data:`SANE_RECURSION_LIMIT` (call once imports are done).

    Importing web3 pulls in ``py_ecc``, which raises the limit to 100,000 for the whole
    process; with that, recursive C code (the ``json`` decoder among it) can overflow
    the C stack on deep input and kill the process instead of raising RecursionError.
    ``py_ecc`` is imported here first so its import-time change cannot come back later.
    (The gateway never runs the in-process EVM, which wants a higher limit.)
    """
    if importlib.util.find_spec("py_ecc") is not None:
        import py_ecc  # noqa: F401
    sys.setrecursionlimit(SANE_RECURSION_LIMIT)


async def serve_gateway(
    backend: Backend,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    sock: socket.socket | None = None,
    default_timeout_s: float | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``nursery.start`` returns the bound port (useful with ``port=0``).

    ``sock`` is a socket from :func:`listen` to serve on (``host``/``port`` are then
    ignored); without one, this binds ``host:port`` itself (:class:`GatewayBindError`).
    ``default_timeout_s`` is a job's deadline, queueing included, for a caller whose
    client states none (see :func:`market.gateway.request.job_timeout_s`; ``None``:
    the buyer client's own default).
    """
    if sock is None:
        sock = listen(host, port)
    config = Config()
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    bound = sock.getsockname()[1]
    asgi = create_app(backend, default_timeout_s=default_timeout_s)
    app = wrap_app(asgi, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(worker_serve, app, config, sockets=sockets))
        task_status.started(bound)
