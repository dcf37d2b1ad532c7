"""``hearth unlock``: give back to the free deposit what a buyer locked for providers.

The SDK locks money for a provider before it awards that provider a job (a provider
accepts vouchers only up to what is locked for it). Locks stay between jobs, so a
provider used again costs no new transaction; this command releases them, with the
same notice as a withdrawal (the provider can still redeem meanwhile), then
``--execute`` moves what is left back to the free deposit.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer

from p2pnode.cli.errors import explain
from p2pnode.cli.market import ConfigOpt, _fail, _load

__all__ = ["register"]


def _providers(setup: Any, only: str | None) -> list[bytes]:
    """Providers the buyer may have locked for: those it signed vouchers to."""
    if only is not None:
        text = only.removeprefix("0x")
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
        if len(raw) != 20:
            _fail(f"--provider must be a 0x-prefixed 20-byte address, got {only!r}")
        return [raw]
    from market.sdk.collateral import channel_providers

    return channel_providers(setup.data_dir)


def unlock(
    execute: Annotated[
        bool,
        typer.Option("--execute", help="Move released locks back once their notice is over."),
    ] = False,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this provider's lock (0x address).")
    ] = None,
    config: ConfigOpt = Path("hearth.toml"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Release money locked for providers: give notice, then --execute when it is over."""
    setup = _load("buyer", config)
    dep = setup.deployment
    rows = []
    try:
        client = setup.chain_client()
        hub = dep.hub(client)
        now = int(client.w3.eth.get_block("latest")["timestamp"])
        for p in _providers(setup, provider):
            c = hub.collateral(client.address, p, dep.token)
            row: dict[str, Any] = {"provider": "0x" + p.hex(), "locked": c.locked}
            if execute:
                if c.unlock_at == 0:
                    row["action"] = "no notice pending"
                elif now < c.unlock_at:
                    row["action"] = f"notice ends in {c.unlock_at - now} s"
                else:
                    hub.execute_unlock(p, dep.token)
                    row["action"] = "released"
                    row["locked"] = hub.collateral(client.address, p, dep.token).locked
            elif c.locked == 0:
                row["action"] = "nothing locked"
            else:
                hub.request_unlock(p, dep.token, c.locked)
                row["action"] = f"notice given, --execute after {dep.withdrawal_delay_s} s"
            rows.append(row)
    except typer.Exit:
        raise
    except Exception as exc:
        _fail(explain(exc, rpc_url=setup.rpc_url) or str(exc))
    scale = -dep.token_decimals
    for row in rows:
        row["locked"] = str(Decimal(row["locked"]).scaleb(scale))
    if as_json:
        typer.echo(json.dumps({"token": dep.token_symbol, "providers": rows}))
        return
    if not rows:
        typer.echo("no provider channels in the buyer ledger: nothing is locked")
    for row in rows:
        typer.echo(f"{row['provider']}  {row['locked']:>14} {dep.token_symbol}  {row['action']}")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``hearth unlock``."""
    app.command("unlock")(unlock)
