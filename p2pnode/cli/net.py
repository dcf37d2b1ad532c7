"""`hearth bench net` (gossip benchmark); `hearth bootstrap` lives in :mod:`bootstrap.cli`.

libp2p and trio are imported inside the command so `hearth --help` stays instant.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["register"]


def bench_net_cmd(
    procs: Annotated[int, typer.Option("--procs", min=3, max=64, help="Node processes.")] = 10,
    rate: Annotated[float, typer.Option("--rate", min=0.1, help="Messages/s in total.")] = 5.0,
    seconds: Annotated[float, typer.Option("--seconds", min=1.0)] = 10.0,
    size: Annotated[int, typer.Option("--size", min=16, max=65536)] = 512,
    baseline: Annotated[
        bool, typer.Option("--baseline/--no-baseline", help="Also measure stock py-libp2p.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Gossip latency/delivery, mesh formation, RSS and stream throughput on loopback."""
    from p2pnode.bench_net import print_table, run_bench

    try:
        result = run_bench(procs=procs, rate=rate, seconds=seconds, size=size, baseline=baseline)
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result))
    else:
        print_table(result)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth bench net`."""
    bench.command("net")(bench_net_cmd)
