"""The market end to end: real node processes, a real chain (anvil), the real model.

One local market (a bootstrap and three homeowner nodes, each its own process) is
shared by the tests of this module; each test buys through the same SDK the CLI and
the gateway use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from market.protocol import cost_of
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.localnet import LocalMarket

HOMEOWNERS = ("alice", "bob", "carol")
MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(tmp_path_factory.mktemp("market"), node_extra="[market]\nchunk_tokens = 4\n")
    try:
        m.start_chain()
        m.add_identity("buyer", provider=False)
        m.start_bootstrap()
        for name in HOMEOWNERS:
            m.add_identity(name, provider=True)
        m.wait_serving([m.start_node(n) for n in HOMEOWNERS])
        yield m
    finally:
        m.stop()


async def _client_ready(client: Any, providers: int) -> None:
    with trio.fail_after(60):
        while client.catalog.provider_count(trio.current_time()) < providers:
            await trio.sleep(0.2)


def _live(market: LocalMarket) -> int:
    return sum(market.node(n).alive() for n in HOMEOWNERS)


async def test_jobs_stream_and_each_provider_is_owed_exactly_its_tokens(
    market: LocalMarket,
) -> None:
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _client_ready(client, _live(market))
        for prompt in ("Name a fruit.", "Count to five."):
            job = client.generate(
                MODEL,
                messages=[{"role": "user", "content": prompt}],
                params=GenerationParams(max_tokens=12),
            )
            texts = [chunk.text async for chunk in job]
            r = job.result
            assert r.finish_reason in ("stop", "length")
            assert "".join(texts) == r.text and r.text.strip()
            assert r.completion_tokens == len(r.token_ids) == sum(s.tokens for s in r.shares)
            assert r.cost == sum(cost_of(s.tokens, s.price_per_1k) for s in r.shares)
            assert all(len(s.result_commitment) == 64 for s in r.shares)


async def test_sigkill_mid_stream_fails_over_and_pays_each_provider_for_its_own_tokens(
    market: LocalMarket,
) -> None:
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:
        await _client_ready(client, _live(market))
        job = client.generate(
            MODEL,
            messages=[{"role": "user", "content": "Describe a house in the rain."}],
            params=GenerationParams(max_tokens=40),
        )
        killed = ""
        seen = 0
        async for chunk in job:
            seen += 1
            if seen == 2:
                killed = await trio.to_thread.run_sync(market.kill, chunk.provider)
        r = job.result
    assert killed, "the serving provider was not found to kill"
    assert r.failovers >= 1 and len(r.shares) >= 2
    assert market.name_of(r.shares[0].peer_id) == killed
    assert r.completion_tokens == 40 or r.finish_reason == "stop"
    assert r.completion_tokens == sum(s.tokens for s in r.shares)
    for share in r.shares:
        assert share.amount == cost_of(share.tokens, share.price_per_1k)


def test_settlement_on_chain_matches_the_ledgers_exactly(market: LocalMarket) -> None:
    """Drain the live nodes, redeem the killed one's ledger; chain and ledgers agree."""
    from market.ledger import Ledger

    market.drain()
    for name in HOMEOWNERS:
        if market.node(name).status().get("state") != "stopped":
            market.redeem_offline(name)
    dep = market.deployment
    hub, token = dep.hub(market.admin), dep.erc20(market.admin)
    buyer = market.ids["buyer"].eth_address
    buyer_ledger = Ledger(Path(market.dir / "buyer" / "buyer-ledger.sqlite"))
    signed = {sv.voucher.provider: sv.voucher.cumulative_amount for sv in buyer_ledger.vouchers()}
    total_redeemed = 0
    for name in HOMEOWNERS:
        ident = market.ids[name]
        ledger = Ledger(market.dir / name / "ledger.sqlite")
        held = {sv.voucher.buyer: sv.voucher.cumulative_amount for sv in ledger.vouchers()}
        redeemed, _ = hub.redeemed(buyer, ident.eth_address, dep.token)
        # Exactly what the node held was redeemed, never more than the buyer signed.
        assert redeemed == held.get(bytes.fromhex(buyer[2:]), 0)
        assert redeemed <= signed.get(ident.eth_address_bytes, 0)
        assert not ledger.redemptions("pending")
        earned = sum(int(e["amount"]) for e in ledger.db["earnings"].rows)
        assert token.balance_of(ident.eth_address) == earned
        fee = redeemed * dep.fee_bps // 10_000
        assert math.isclose(earned, redeemed - fee, abs_tol=1)
        total_redeemed += redeemed
        ledger.close()
    assert total_redeemed > 0
    assert hub.balance_of(buyer, dep.token) == market.deposit - total_redeemed
