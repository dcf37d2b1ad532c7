"""A bootstrap node: DHT server, circuit relay (hop), rendezvous point and gossip seed.

Newcomers dial a bootstrap first. It answers DHT queries (server mode), hosts the
rendezvous namespaces (``hearth/peers``, ``hearth/model/<id>``), relays for peers that
cannot be dialled (circuit relay v2 within the operator's :class:`RelayLimitsConfig`)
and subscribes to the offers topic so offers cross between gossip meshes. Run several:
each node lists all of them, registers at all of them, and keeps a peer cache, so no
single bootstrap is a point of failure.

``/health`` (JSON) and ``/metrics`` (Prometheus text) are served over plain HTTP by
:mod:`bootstrap.http`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pnode.net.config import NetConfig, RelayLimitsConfig

__all__ = ["BootstrapConfig", "load_or_create_seed", "run_bootstrap"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapConfig:
    """What an operator sets: addresses, HTTP port, identity file, limits, peers."""

    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    announce: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # other bootstraps (…/p2p/<id>), dialled at start
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP; 0: any free port
    key_file: Path | None = None  # 32-byte ed25519 seed; created (0600) when missing
    limits: RelayLimitsConfig = field(default_factory=RelayLimitsConfig)


def load_or_create_seed(path: Path | None) -> bytes:
    """The bootstrap's stable identity seed (its peer id must not change across restarts)."""
    if path is None:
        return os.urandom(32)
    if path.exists():
        seed = path.read_bytes()
        if len(seed) != 32:
            raise ValueError(f"{path}: expected a 32-byte ed25519 seed, got {len(seed)} bytes")
        return seed
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = os.urandom(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(seed)
    return seed


async def run_bootstrap(
    cfg: BootstrapConfig,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until cancelled; ``task_status.started(info)`` gets peer id, addrs, http port.

    Also prints the same info as one JSON line on stdout (tests and operators read it).
    """
    from libp2p.crypto.ed25519 import create_new_key_pair

    from bootstrap.http import serve_http
    from market.gossip import offer_check
    from p2pnode.net.host import open_node_host
    from p2pnode.net.pubsub import offers_topic

    seed = load_or_create_seed(cfg.key_file)
    net_cfg = NetConfig(
        listen=cfg.listen,
        announce=cfg.announce,
        bootstrap=cfg.peers,
        dht="server",
        relay="hop",
        relay_limits=cfg.limits,
        rendezvous_server=True,
        target_peers=0,
    )
    async with open_node_host(create_new_key_pair(seed), net_cfg, bootstrap_services=True) as net:
        offers = await net.subscribe(offers_topic(), offer_check())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, offers)
            http_port = None
            if cfg.http_port is not None:
                http_port = await nursery.start(serve_http, net, cfg.http_host, cfg.http_port)
            info = {
                "event": "ready",
                "peer_id": net.peer_id,
                "addrs": net.addrs,
                "http_port": http_port,
            }
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
            task_status.started(info)
            await _until_stopped()
            nursery.cancel_scope.cancel()


async def _until_stopped() -> None:
    """Return on SIGTERM/SIGINT, or when stdin says ``quit`` / closes (if it is a pipe)."""
    import signal
    import stat

    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        async def on_stdin() -> None:
            try:
                mode = os.fstat(sys.stdin.fileno()).st_mode
            except (OSError, ValueError):
                return
            if not stat.S_ISFIFO(mode):
                return
            stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buf = b""
            while True:
                chunk = await stream.receive_some(4096)
                buf += chunk
                if not chunk or b"quit" in buf:
                    nursery.cancel_scope.cancel()
                    return
                buf = buf[-64:]

        nursery.start_soon(on_signal)
        nursery.start_soon(on_stdin)


async def _drain(rx: trio.MemoryReceiveChannel[Any]) -> None:
    """The seed forwards offers; it has no use for them itself."""
    async for _ in rx:
        pass
