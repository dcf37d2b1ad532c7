"""`hearth chain …` (deploy, info) and `hearth bench gas`.

Heavy imports (web3, eth-tester) happen inside the commands so `hearth --help` stays
instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

chain_app = typer.Typer(
    help="On-chain settlement: deploy the contracts, inspect a deployment.", no_args_is_help=True
)


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@chain_app.command("deploy")
def deploy(
    out: Path = typer.Option(
        Path("deployment.json"), "--out", help="Where to write the deployment JSON."
    ),
    rpc_url: str | None = typer.Option(
        None, "--rpc-url", help="JSON-RPC endpoint of any EVM chain."
    ),
    embedded: bool = typer.Option(
        False, "--embedded", help="Deploy on an in-process eth-tester chain (demo)."
    ),
    key_env: str = typer.Option(
        "HEARTH_DEPLOYER_KEY",
        "--key-env",
        help="Environment variable holding the deployer's hex private key.",
    ),
    token: str | None = typer.Option(
        None, "--token", help="Existing ERC-20 to use (default: deploy HearthTestUSD)."
    ),
    fee_bps: int = typer.Option(
        100, "--fee-bps", min=0, max=1000, help="Protocol fee in basis points."
    ),
    withdrawal_delay_s: int = typer.Option(
        86_400, "--withdrawal-delay", min=0, help="Buyer withdrawal notice (s)."
    ),
    min_stake: int = typer.Option(
        100 * 10**6, "--min-stake", min=0, help="Provider minimum stake (base units)."
    ),
    unbonding_delay_s: int = typer.Option(
        7 * 86_400, "--unbonding-delay", min=0, help="Provider unbonding delay (s)."
    ),
) -> None:
    """Deploy PaymentHub, ProviderRegistry (and the test token) and write the deployment file."""
    if embedded == (rpc_url is not None):
        raise _fail("give exactly one of --rpc-url URL or --embedded")
    from market.chain.backends import ANVIL_DEV_KEY, connect, start_embedded_chain
    from market.chain.client import ChainClient
    from market.chain.deployment import deploy_all
    from market.chain.errors import ChainError

    try:
        if embedded:
            client = start_embedded_chain().client(0)
        else:
            assert rpc_url is not None
            w3 = connect(rpc_url)
            raw_key = os.environ.get(key_env)
            if raw_key:
                try:
                    key = bytes.fromhex(raw_key.strip().removeprefix("0x"))
                except ValueError:
                    raise _fail(f"${key_env} is not a hex private key") from None
                if len(key) != 32:
                    raise _fail(f"${key_env} must hold a 32-byte key")
            elif w3.eth.chain_id == 31337:
                key = ANVIL_DEV_KEY  # anvil/hardhat development chain
            else:
                raise _fail(f"set ${key_env} to the deployer's private key")
            client = ChainClient(w3, key)
        deployment = deploy_all(
            client,
            token=token,
            fee_bps=fee_bps,
            withdrawal_delay_s=withdrawal_delay_s,
            min_stake=min_stake,
            unbonding_delay_s=unbonding_delay_s,
        )
    except ChainError as exc:
        raise _fail(str(exc)) from None
    try:
        deployment.save(out)
    except OSError as exc:
        raise _fail(f"cannot write {out}: {exc}") from None
    typer.echo(f"deployed on chain {deployment.chain_id}: hub {deployment.payment_hub}, "
               f"registry {deployment.provider_registry}, token {deployment.token} -> {out}")  # fmt: skip
    if embedded:
        typer.echo(
            "note: the embedded chain ends with this process; use --rpc-url for a lasting one"
        )


@chain_app.command("info")
def info(
    deployment_path: Path = typer.Option(
        Path("deployment.json"), "--deployment", help="Deployment JSON file."
    ),
    rpc_url: str | None = typer.Option(
        None, "--rpc-url", help="Also read live state from this node."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a deployment (and, with --rpc-url, its live state)."""
    from market.chain.deployment import Deployment

    try:
        d = Deployment.load(deployment_path)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    data: dict[str, object] = json.loads(d.to_json())
    if rpc_url:
        from market.chain.backends import connect
        from market.chain.client import ChainClient
        from market.chain.errors import ChainError

        try:
            client = ChainClient(connect(rpc_url))
            if client.chain_id != d.chain_id:
                raise _fail(
                    f"{rpc_url} is chain {client.chain_id}, the deployment is for {d.chain_id}"
                )
            hub = d.hub(client)
            data["live"] = {
                "block_number": client.block_number(),
                "fee_bps": hub.fee_bps(),
                "treasury": hub.treasury(),
                "accrued_fees": hub.accrued_fees(d.token),
                "hub_token_balance": d.erc20(client).balance_of(d.payment_hub),
            }
        except ChainError as exc:
            raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(data))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Hearth deployment ({deployment_path})")
    table.add_column("field")
    table.add_column("value")
    for k, v in data.items():
        table.add_row(k, json.dumps(v) if isinstance(v, dict) else str(v))
    Console().print(table)


def bench_gas(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Gas per job with cumulative vouchers vs one escrow transfer per job; redeemMany per buyer."""
    from market.chain.gasbench import measure_gas

    result = measure_gas()
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.console import Console
    from rich.table import Table

    naive = result["naive_gas_per_job"]
    table = Table(title="Settlement gas (embedded EVM, new channel, steady-state hub)")
    table.add_column("jobs per redemption", justify="right")
    table.add_column("redeem gas", justify="right")
    table.add_column("gas per job", justify="right")
    table.add_column("naive gas per job", justify="right")
    table.add_column("saving", justify="right")
    for n, per_job in result["gas_per_job"].items():
        table.add_row(
            n,
            f"{result['redeem_gas'][n]:,}",
            f"{per_job:,.1f}",
            f"{naive:,.0f}",
            f"{naive / per_job:,.1f}x",
        )
    Console().print(table)
    many = Table(title="redeemMany (one job per buyer)")
    many.add_column("buyers", justify="right")
    many.add_column("gas per buyer", justify="right")
    for n, g in result["redeem_many_gas_per_buyer"].items():
        many.add_row(n, f"{g:,.0f}")
    Console().print(many)
    verdict = "meets" if result["meets_target"] else "MISSES"
    typer.echo(
        f"target ≤ 1,000 gas per job at 100 jobs: {verdict} ({result['gas_per_job'].get('100', 0):,.1f})"
    )


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth chain` and `hearth bench gas`."""
    app.add_typer(chain_app, name="chain")
    bench.command("gas")(bench_gas)
