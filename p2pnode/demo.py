"""``hearth demo``: a whole Hearth market on this machine, in about two minutes.

What it does, step by step (each step is printed as it happens):

1. starts a local EVM (anvil, installed by ``make`` from npm) and deploys the contracts;
2. creates four identities (a buyer and three homeowners) with encrypted keystores,
   stakes the homeowners in the ProviderRegistry and deposits the buyer's money in
   the PaymentHub;
3. starts a bootstrap node and three homeowner nodes, each its own process serving
   SmolLM2-135M-Instruct on the CPU;
4. runs chat jobs through the market with the text streaming on screen; during one
   job it SIGKILLs the homeowner serving it, and the job finishes on a runner-up;
5. settles: the live homeowners drain (SIGTERM) and redeem their vouchers; the killed
   one's ledger is redeemed by ``hearth node redeem`` — earned pay is never lost;
6. prints each homeowner's tokens and earnings and the buyer's spend, read back from
   the chain.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.table import Table

from p2pnode.localnet import LocalMarket

__all__ = ["run_demo"]

HOMEOWNERS = ("alice", "bob", "carol")
PROMPTS = (
    "In two sentences, why would a homeowner rent out a GPU?",
    "List three things that draw a lot of power in a house.",
    "Write a haiku about a quiet server in a garage.",
)


class Demo:
    """The demo's script over a :class:`LocalMarket`, narrated on a rich console."""

    def __init__(self, market: LocalMarket, console: Console, max_tokens: int) -> None:
        self.m = market
        self.console = console
        self.max_tokens = max_tokens

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]▸[/] {text}")

    def setup(self) -> None:
        m = self.m
        self.step("starting a local EVM chain (anvil) and deploying PaymentHub + ProviderRegistry")
        m.start_chain()
        dep = m.deployment
        self.console.print(f"  chain {dep.chain_id} at {m.anvil.url}; hub {dep.payment_hub}")
        self.step("creating encrypted keystores: a buyer and three homeowners; staking; depositing")
        m.add_identity("buyer", provider=False)
        for name in HOMEOWNERS:
            m.add_identity(name, provider=True)
        self.console.print(
            f"  buyer deposited {m.deposit / 1e6:.2f} hUSD; homeowners staked "
            f"{dep.min_stake / 1e6:.0f} hUSD each"
        )
        self.step("starting a bootstrap node (DHT server, relay, rendezvous)")
        self.console.print(f"  {m.start_bootstrap()}")
        self.step("starting three homeowner nodes (each loads SmolLM2-135M-Instruct)")
        m.wait_serving([m.start_node(n) for n in HOMEOWNERS])

    async def run_jobs(self) -> list[Any]:
        from market.sdk.connect import load_buyer, open_buyer_client
        from market.sdk.types import GenerationParams

        m = self.m
        results = []
        async with open_buyer_client(load_buyer(m.config_for("buyer"), m.env)) as client:
            self.step("buyer joined the network; waiting for the homeowners' offers")
            with trio.fail_after(60):
                while client.catalog.provider_count(trio.current_time()) < len(HOMEOWNERS):
                    await trio.sleep(0.2)
            for listing in client.catalog.models(trio.current_time()):
                self.console.print(
                    f"  {listing.name}: {listing.providers} providers, best price "
                    f"{listing.best_price_per_1k / 1e6:.6f} hUSD per 1k tokens"
                )
            for i, prompt in enumerate(PROMPTS):
                kill = i == 1
                note = "  [the homeowner serving it will be killed mid-stream]" if kill else ""
                self.step(f"job {i + 1}: {prompt!r}{note}")
                job = client.generate(
                    "SmolLM2-135M-Instruct",
                    messages=[{"role": "user", "content": prompt}],
                    params=GenerationParams(max_tokens=self.max_tokens),
                )
                chunks = 0
                async for chunk in job:
                    chunks += 1
                    self.console.print(chunk.text, end="", style="green", highlight=False)
                    if kill and chunks == 2:
                        name = await trio.to_thread.run_sync(m.kill, chunk.provider)
                        self.console.print(f" [bold red]✖ SIGKILL {name}[/] ", end="")
                r = job.result
                who = ", ".join(f"{m.name_of(s.peer_id)} {s.tokens} tokens" for s in r.shares)
                self.console.print(
                    f"\n  [dim]{r.completion_tokens} tokens · cost {r.cost / 1e6:.6f} hUSD · "
                    f"served by {who} · failovers {r.failovers} · award {r.award_ms:.0f} ms · "
                    f"first token {r.ttft_ms:.0f} ms[/]"
                )
                results.append(r)
        return results

    def settle(self) -> None:
        m = self.m
        self.step("settling: live homeowners drain (SIGTERM) and redeem their vouchers on chain")
        m.drain()
        for name in HOMEOWNERS:
            if m.node(name).status().get("state") != "stopped":
                self.step(f"{name} was killed: `hearth node redeem` settles what its ledger kept")
                m.redeem_offline(name)

    def report(self, results: list[Any]) -> None:
        m = self.m
        dep = m.deployment
        token, hub = dep.erc20(m.admin), dep.hub(m.admin)
        table = Table(title="Settled on chain (read back from the contracts)")
        delivered: dict[str, int] = {}
        for r in results:
            for share in r.shares:
                delivered[share.peer_id] = delivered.get(share.peer_id, 0) + share.tokens
        for col in ("who", "address", "tokens delivered", "hUSD"):
            table.add_column(col, justify="right" if col != "who" else "left")
        for name in HOMEOWNERS:
            p = m.node(name)
            served = delivered.get(p.peer_id, 0)
            table.add_row(
                name, p.address, str(served), f"earned {token.balance_of(p.address) / 1e6:.6f}"
            )
        buyer = m.ids["buyer"].eth_address
        # What the buyer still has: its free balance and what it locked for providers.
        locked = sum(hub.collateral(buyer, m.node(n).address, dep.token).locked for n in HOMEOWNERS)
        spent = m.deposit - hub.balance_of(buyer, dep.token) - locked
        table.add_row("buyer", buyer, "", f"spent {spent / 1e6:.6f}")
        table.add_row("", "", "", f"locked {locked / 1e6:.6f}")
        table.add_row(
            "treasury (fee)", dep.treasury, "", f"{hub.accrued_fees(dep.token) / 1e6:.6f}"
        )
        self.console.print(table)


def run_demo(workdir: Path, max_tokens: int = 48) -> None:
    """Run the whole demo (see the module docstring)."""
    console = Console()
    t0 = time.monotonic()
    market = LocalMarket(workdir, say=lambda line: console.print(f"  {line}"))
    demo = Demo(market, console, max_tokens)
    try:
        demo.setup()
        results = trio.run(demo.run_jobs)
        demo.settle()
        demo.report(results)
    finally:
        market.stop()
    console.print(
        f"[bold green]demo finished in {time.monotonic() - t0:.0f} s[/] (logs in {workdir})"
    )
