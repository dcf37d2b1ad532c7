"""`hearth node`, `submit`, `deposit`, `withdraw`, `balance`, `gateway`, `demo`, `bench market`,
`bench gateway`.

Every command reads one ``hearth.toml`` (``--config``; ``hearth config example``
prints a documented one). Heavy imports stay inside the functions.
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer

from p2pnode.cli.errors import explain, explained, fail

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="The node's or buyer's hearth.toml.", show_default=True),
]

node_app = typer.Typer(
    help="Run a homeowner node (with no subcommand), or inspect / settle one.",
    invoke_without_command=True,
)


_fail = fail  # the name the other command modules import


def _check_config(path: Path) -> None:
    if not path.is_file():
        _fail(f"no config file at {path} (write one with `hearth config example > {path}`)")


def _config(path: Path) -> Any:
    """The validated config at ``path`` (no readiness asked: status and gateway read it)."""
    from market.config import load_config

    _check_config(path)
    with explained():
        return load_config(path)


def _load(kind: str, path: Path) -> Any:
    """Load node settings or the buyer setup, turning every known failure into a message:
    an invalid or unready config, a missing keystore, a wrong passphrase, a bad deployment
    file (:func:`p2pnode.cli.errors.explain`)."""
    _check_config(path)
    try:
        if kind == "node":
            from p2pnode.node.setup import load_node_settings

            return load_node_settings(path)
        from market.sdk.connect import load_buyer

        return load_buyer(path)
    except Exception as exc:
        sentence = explain(exc)
        if sentence is None:
            raise
        _fail(sentence)


@node_app.callback()
def node(
    ctx: typer.Context,
    config: ConfigOpt = Path("hearth.toml"),
) -> None:
    """Run a homeowner node until SIGTERM/Ctrl-C, then drain and redeem what it earned.

    Logs go to stderr at warning level; set HEARTH_LOG=info (or debug) for more.
    """
    if ctx.invoked_subcommand is not None:
        return
    name = _config(config).node.name
    settings = _load("node", config)
    import trio

    from p2pnode.node import runtime

    who = f"{name} ({settings.identity.peer_id})" if name else settings.identity.peer_id
    typer.echo(f"node {who} starting (data in {settings.data_dir})", err=True)
    with explained(rpc_url=settings.rpc_url):
        trio.run(runtime.run_node, settings)


@node_app.command("status")
def node_status(
    config: ConfigOpt = Path("hearth.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a node's jobs, earnings, redemptions, power state and peers.

    Works whether the node runs or not: the ledger is read directly, and the running
    node's last status (refreshed every second) adds its live figures.
    """
    from p2pnode.node.telemetry import Telemetry

    cfg = _config(config)
    data_dir = Path(cfg.node.data_dir).expanduser()
    try:
        live = json.loads((data_dir / "status.json").read_text())
    except (OSError, ValueError):
        live = {}
    if live and live.get("state") != "stopped" and not _pid_alive(live.get("pid")):
        live["state"] = f"not running (last seen {live.get('state')}; it did not stop cleanly)"
    telemetry = Telemetry(
        ledger_path=data_dir / "ledger.sqlite",
        provider_address=live.get("address", ""),
        currency_symbol=live.get("currency", {}).get("symbol", ""),
        currency_decimals=live.get("currency", {}).get("decimals", 0),
    )
    doc = telemetry.snapshot(
        state=live.get("state", "not running"),
        service=None,
        net=None,
        power_state=live.get("power", {}).get("state", "unknown"),
        peer_id=live.get("peer_id", ""),
    )
    telemetry.close()
    doc["name"] = cfg.node.name
    for key in ("tokens", "bids", "peers", "gossip", "power", "uptime_s", "accepting", "jobs"):
        if key in live and key != "jobs":
            doc[key] = live[key]
    if "jobs" in live:  # live counters of this run; the ledger's history stays
        doc["jobs"]["active"] = live["jobs"].get("active", 0)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    symbol = doc.get("currency", {}).get("symbol", "")
    title = " ".join(
        x for x in (cfg.node.name, f"({doc['peer_id']})" if doc.get("peer_id") else "") if x
    )
    table = Table(title=f"hearth node {title}".strip())
    table.add_column("what")
    table.add_column("value", justify="right")
    rows: list[tuple[str, Any]] = [
        ("state", doc.get("state")),
        ("uptime (s)", doc.get("uptime_s")),
        ("bidding", doc.get("accepting")),
        ("power state", doc.get("power", {}).get("state")),
        (
            "peers",
            doc.get("peers", {}).get("count") if isinstance(doc.get("peers"), dict) else None,
        ),
        ("tokens served", doc.get("tokens", {}).get("total")),
        ("jobs by outcome", doc.get("jobs", {}).get("by_outcome")),
        ("bids", {k: v for k, v in doc.get("bids", {}).items() if k != "declined"} or None),
        ("declined by reason", doc.get("bids", {}).get("declined")),
        (f"credited ({symbol} base units)", doc.get("earnings", {}).get("credited")),
        (
            f"earned on chain, net ({symbol} base units)",
            doc.get("earnings", {}).get("on_chain_net"),
        ),
        (
            "vouchers held / pending amount",
            (doc.get("vouchers", {}).get("held"), doc.get("vouchers", {}).get("pending_amount")),
        ),
        ("redemptions", doc.get("redemptions")),
        (f"lost by cause ({symbol} base units)", doc.get("losses", {}).get("by_cause") or None),
        (
            "flagged buyers",
            ", ".join(f"{f['buyer']} ({f['cause']})" for f in doc.get("flagged_buyers", []))
            or None,
        ),
    ]
    for key, value in rows:
        if value is not None:
            table.add_row(key, str(value))
    Console().print(table)


def _pid_alive(pid: Any) -> bool:
    """Whether the process that wrote a status file still runs (signal 0 probes it)."""
    import os

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@node_app.command("redeem")
def node_redeem(config: ConfigOpt = Path("hearth.toml")) -> None:
    """Reconcile and redeem every voucher the node's ledger holds (the node may be stopped)."""
    from market.chain.backends import connect
    from market.chain.client import ChainClient
    from market.ledger import Ledger, Redeemer
    from p2pnode.node.runtime import redeem_all

    s = _load("node", config)
    with explained(rpc_url=s.rpc_url):
        client = ChainClient(connect(s.rpc_url), s.identity.eth_private_key)
        ledger = Ledger(s.data_dir / "ledger.sqlite")
        redeemer = Redeemer(ledger, s.deployment.hub(client), s.redemption)
        redeemer.reconcile()
        done = redeem_all(redeemer)
    typer.echo(
        json.dumps(
            {
                "redeemed": done,
                "confirmed": len(ledger.redemptions("confirmed")),
                # may still land (nonce unused): never sent again; run this again later
                "pending": len(ledger.redemptions("pending")),
                "lost": ledger.lost_total(),
                "flagged_buyers": len(ledger.flagged_buyers()),
            }
        )
    )


def _decimal(text: str) -> Decimal:
    """A positive amount as typed by a person (checked before anything is loaded)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        _fail(f"not an amount: {text!r} (write e.g. 12.5)")
    if not value.is_finite() or value <= 0:
        _fail(f"amount must be a positive number, got {text}")
    return value


def _amount(value: Decimal, decimals: int) -> int:
    """``value`` in token base units; refuses more decimals than the token has."""
    if value != value.quantize(Decimal(1).scaleb(-decimals)):
        _fail(f"amount has more than the token's {decimals} decimals: {value}")
    return int(value.scaleb(decimals))


def submit(
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as one user message).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name or id.")] = (
        "SmolLM2-135M-Instruct"
    ),
    config: ConfigOpt = Path("hearth.toml"),
    max_tokens: Annotated[int, typer.Option(min=1, max=100_000)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, max=5.0)] = 0.0,
    seed: Annotated[int | None, typer.Option()] = None,
    max_price: Annotated[
        int | None, typer.Option(help="Price ceiling per 1k tokens (token base units).", min=1)
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Send as a raw prompt, not a chat.")] = False,
) -> None:
    """Buy one completion: stream the tokens here, then print the cost and the provider."""
    import trio

    from market.sdk.connect import open_buyer_client
    from market.sdk.types import GenerationParams

    setup = _load("buyer", config)
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, seed=seed)

    async def run() -> None:
        async with open_buyer_client(setup) as client:
            messages = None if raw else [{"role": "user", "content": prompt}]
            job = client.generate(
                model,
                messages=messages,
                prompt=prompt if raw else None,
                params=params,
                max_price_per_1k=max_price,
            )
            async for chunk in job:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            r = job.result
            decimals = setup.deployment.token_decimals
            typer.echo("", err=False)
            typer.echo(
                f"[{r.completion_tokens} tokens · cost {Decimal(r.cost).scaleb(-decimals)} "
                f"{setup.deployment.token_symbol} · provider {r.provider} · failovers {r.failovers}]",
                err=True,
            )

    with explained(rpc_url=setup.rpc_url):
        trio.run(run)


def deposit(
    amount: Annotated[str, typer.Argument(help="How much to deposit, e.g. 10 or 2.5.")],
    config: ConfigOpt = Path("hearth.toml"),
    mint: Annotated[
        bool, typer.Option("--mint", help="Mint the test token first (development chains).")
    ] = False,
) -> None:
    """Deposit payment tokens into the PaymentHub (approves the hub first)."""
    typed = _decimal(amount)
    setup = _load("buyer", config)
    dep = setup.deployment
    value = _amount(typed, dep.token_decimals)
    with explained(rpc_url=setup.rpc_url):
        client = setup.chain_client()
        token = dep.erc20(client)
        if mint:
            token.mint(client.address, value)
        have = token.balance_of(client.address)
        if have < value:
            _fail(
                f"the wallet {client.address} holds only "
                f"{Decimal(have).scaleb(-dep.token_decimals)} {dep.token_symbol}"
            )
        token.approve(dep.payment_hub, value)
        dep.hub(client).deposit(dep.token, value)
        left = dep.hub(client).balance_of(client.address, dep.token)
    typer.echo(
        f"deposited {amount} {dep.token_symbol}; hub balance {Decimal(left).scaleb(-dep.token_decimals)}"
    )


def withdraw(
    amount: Annotated[
        str | None,
        typer.Argument(help="How much to give notice for (leave out with --execute/--cancel)."),
    ] = None,
    execute: Annotated[
        bool,
        typer.Option("--execute", help="Pay out the pending withdrawal once its notice is over."),
    ] = False,
    cancel: Annotated[
        bool, typer.Option("--cancel", help="Take back the pending notice (the deposit stays).")
    ] = False,
    config: ConfigOpt = Path("hearth.toml"),
) -> None:
    """Take money out of the PaymentHub: give notice, then --execute when it is over.

    The notice gives providers time to redeem the vouchers they hold; a new
    notice replaces a pending one.
    """
    if execute and cancel:
        _fail("give --execute or --cancel, not both")
    if (amount is None) != (execute or cancel):
        _fail("give an AMOUNT to give notice, or --execute / --cancel without one")
    typed = _decimal(amount) if amount is not None else None
    setup = _load("buyer", config)
    dep = setup.deployment
    value = _amount(typed, dep.token_decimals) if typed is not None else 0
    with explained(rpc_url=setup.rpc_url):
        client = setup.chain_client()
        hub = dep.hub(client)
        pending, unlock_at = hub.pending_withdrawal(client.address, dep.token)
        if (execute or cancel) and unlock_at == 0:
            _fail("no withdrawal notice is pending (give one with `hearth withdraw AMOUNT`)")
        if execute:
            now = client.w3.eth.get_block("latest")["timestamp"]
            if now < unlock_at:
                _fail(f"the notice ends in {unlock_at - now} s (at chain time {unlock_at})")
            before = hub.balance_of(client.address, dep.token)
            hub.execute_withdrawal(dep.token)
            paid = before - hub.balance_of(client.address, dep.token)
        elif cancel:
            hub.cancel_withdrawal(dep.token)
        else:
            hub.request_withdrawal(dep.token, value)
    symbol = dep.token_symbol
    if execute:
        typer.echo(
            f"withdrew {Decimal(paid).scaleb(-dep.token_decimals)} {symbol} to {client.address}"
        )
    elif cancel:
        typer.echo(
            f"withdrawal notice of {Decimal(pending).scaleb(-dep.token_decimals)} {symbol} cancelled"
        )
    else:
        typer.echo(
            f"withdrawal of {amount} {symbol} requested; run `hearth withdraw --execute` after "
            f"{dep.withdrawal_delay_s} s"
        )


def balance(
    config: ConfigOpt = Path("hearth.toml"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show the wallet's token balance, its free PaymentHub deposit and what is locked for
    providers (`hearth unlock` releases it)."""
    from market.sdk.collateral import channel_providers

    setup = _load("buyer", config)
    dep = setup.deployment
    with explained(rpc_url=setup.rpc_url):
        client = setup.chain_client()
        wallet = dep.erc20(client).balance_of(client.address)
        hub = dep.hub(client).balance_of(client.address, dep.token)
        pending, unlock = dep.hub(client).pending_withdrawal(client.address, dep.token)
        locked = sum(
            dep.hub(client).collateral(client.address, p, dep.token).locked
            for p in channel_providers(setup.data_dir)
        )
    doc = {
        "address": client.address,
        "token": dep.token_symbol,
        "wallet": str(Decimal(wallet).scaleb(-dep.token_decimals)),
        "deposit": str(Decimal(hub).scaleb(-dep.token_decimals)),
        "locked_for_providers": str(Decimal(locked).scaleb(-dep.token_decimals)),
        "pending_withdrawal": str(Decimal(pending).scaleb(-dep.token_decimals)),
        "withdrawal_unlocks_at": unlock,
    }
    if as_json:
        typer.echo(json.dumps(doc))
    else:
        for k, v in doc.items():
            typer.echo(f"{k:>22}: {v}")


def gateway(
    config: ConfigOpt = Path("hearth.toml"),
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to bind (default: gateway.host of --config, 127.0.0.1; keep it "
            "unless proxied).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="TCP port (default: gateway.port of --config, 8000; 0 = any free one).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            max=3600.0,
            help="A request's deadline in seconds, waiting for a free provider included, "
            "when its client states none (the openai client states its own); past it the "
            "answer is 429 with Retry-After. Default: the buyer client's (600 s).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions).

    Many requests run at once; when every provider is busy they wait their turn (429 with
    Retry-After past their deadline). A client that hangs up cancels its job.
    """
    from functools import partial

    import trio

    from market import gateway as gw
    from market.sdk.connect import open_buyer_client

    cfg = _config(config).gateway  # the one default of host and port: [gateway]
    host = cfg.host if host is None else host
    port = cfg.port if port is None else port
    try:  # first: a port already taken is one line, before anything slow starts
        sock = gw.listen(host, port)
    except gw.GatewayBindError as exc:
        _fail(str(exc))
    setup = _load("buyer", config)
    gw.restore_recursion_limit()  # web3's imports raised it; this process parses strangers' JSON

    async def run() -> None:
        async with open_buyer_client(setup) as client, trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(gw.serve_gateway, client, sock=sock, default_timeout_s=timeout)
            )
            typer.echo(
                f"gateway on http://{host}:{bound}/v1 (buyer {client.key.peer_id})", err=True
            )

    with sock, explained(rpc_url=setup.rpc_url):
        trio.run(run)


def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Where logs, keystores and ledgers go (default: a temp dir)."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=8, max=512)] = 48,
) -> None:
    """Run a whole market here: chain, bootstrap, 3 homeowner nodes, jobs, a failover, settlement."""
    import tempfile

    from p2pnode.demo import run_demo

    run_demo(workdir or Path(tempfile.mkdtemp(prefix="hearth-demo-")), max_tokens=max_tokens)


def bench_market(
    nodes: Annotated[int, typer.Option(min=1, max=32)] = 10,
    jobs: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
    max_tokens: Annotated[int, typer.Option(min=1, max=256)] = 16,
    concurrency: Annotated[
        int, typer.Option(min=1, max=64, help="jobs in flight at once (1: as the baseline)")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Submit → award latency, TTFT overhead vs the local engine, jobs/s, failovers.

    The baseline is the same engine in a process set up like a node's, one
    request at a time. With --concurrency above 1 the overhead also holds the
    engines' slowdown under load (they share this machine's cores).
    """
    from p2pnode.bench_market import run_bench_market

    started = time.monotonic()
    figures = run_bench_market(
        nodes=nodes, jobs=jobs, max_tokens=max_tokens, concurrency=concurrency
    )
    figures["wall_s"] = round(time.monotonic() - started, 1)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hearth bench market — {nodes} nodes, {jobs} jobs")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, json.dumps(value))
    Console().print(table)


def bench_gateway(
    nodes: Annotated[int, typer.Option(min=1, max=16)] = 3,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 32,
    requests: Annotated[int, typer.Option(min=1, max=10_000)] = 96,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Many users at once: the openai client through `hearth gateway` vs the engines' capacity.

    Completed and failed requests (each failure's message), completion tokens/s
    through the gateway and on as many bare engines in the same run (their ratio),
    latency, time to first token, award and queue time (p50/p95), jobs per provider.
    """
    from p2pnode.bench_gateway import run_bench_gateway

    started = time.monotonic()
    try:
        figures = run_bench_gateway(
            nodes=nodes,
            concurrency=concurrency,
            requests=requests,
            say=lambda line: typer.echo(line, err=True),
        )
    except RuntimeError as exc:
        _fail(str(exc))
    figures["wall_s_total"] = round(time.monotonic() - started, 1)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hearth bench gateway — {nodes} nodes, {requests} requests")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in figures.items():
        table.add_row(key, json.dumps(value))
    Console().print(table)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the node, buyer, gateway and demo commands, and `hearth bench market|gateway`."""
    app.add_typer(node_app, name="node")
    app.command("submit")(submit)
    app.command("deposit")(deposit)
    app.command("withdraw")(withdraw)
    app.command("balance")(balance)
    app.command("gateway")(gateway)
    app.command("demo")(demo)
    bench.command("market")(bench_market)
    bench.command("gateway")(bench_gateway)
