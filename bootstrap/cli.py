"""`hearth bootstrap` and ``python -m bootstrap``: run a bootstrap node.

The command lives with the bootstrap it runs; :mod:`p2pnode.cli.app` adds it to the
``hearth`` app through :func:`register`. libp2p and trio are imported inside the
command so `hearth --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["bootstrap_cmd", "bootstrap_main", "register"]


def _check_multiaddrs(values: list[str], flag: str) -> tuple[str, ...]:
    import multiaddr

    out = []
    for v in values:
        try:
            multiaddr.Multiaddr(v)
        except Exception as e:
            raise typer.BadParameter(f"{flag} {v!r} is not a multiaddr: {e}") from None
        out.append(v)
    return tuple(out)


def bootstrap_cmd(
    listen: Annotated[
        list[str], typer.Option("--listen", help="Multiaddr to listen on (repeatable).")
    ],
    announce: Annotated[
        list[str] | None,
        typer.Option("--announce", help="Public multiaddr to advertise (repeatable)."),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option("--peer", help="Another bootstrap (…/p2p/<id>) to join (repeatable)."),
    ] = None,
    http_port: Annotated[
        int | None, typer.Option("--http-port", help="Serve /health and /metrics (0 = any).")
    ] = None,
    http_host: Annotated[str, typer.Option("--http-host")] = "127.0.0.1",
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="32-byte identity seed (created if missing).")
    ] = None,
    max_reservations: Annotated[int, typer.Option(min=0)] = 128,
    max_circuits: Annotated[int, typer.Option(min=0)] = 64,
    circuit_duration_s: Annotated[int, typer.Option(min=1)] = 600,
    circuit_mb: Annotated[int, typer.Option(min=1)] = 64,
) -> None:
    """Run a bootstrap node: DHT server, circuit relay, rendezvous point, gossip seed."""
    import logging

    import trio

    from bootstrap.node import BootstrapConfig, run_bootstrap

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    from p2pnode.net.config import RelayLimitsConfig

    if http_port is not None and not 0 <= http_port <= 65535:
        raise typer.BadParameter("--http-port must be 0..65535")
    cfg = BootstrapConfig(
        listen=_check_multiaddrs(listen, "--listen"),
        announce=_check_multiaddrs(announce or [], "--announce"),
        peers=_check_multiaddrs(peer or [], "--peer"),
        http_host=http_host,
        http_port=http_port,
        key_file=key_file,
        limits=RelayLimitsConfig(
            max_reservations=max_reservations,
            max_circuits=max_circuits,
            circuit_duration_s=circuit_duration_s,
            circuit_bytes=circuit_mb * 1024 * 1024,
        ),
    )
    try:
        trio.run(run_bootstrap, cfg)
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def bootstrap_main() -> None:
    """Entry point of ``python -m bootstrap``."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(bootstrap_cmd)
    app()


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth bootstrap` (no benchmark)."""
    app.command("bootstrap")(bootstrap_cmd)
