"""The market end to end: real node processes, a real chain (anvil), the real model.

One local market (a bootstrap and three homeowner nodes, each its own process) is
shared by the tests of this module; each test buys through the same SDK the CLI and
the gateway use.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from market.protocol import cost_of
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.localnet import LocalMarket, hearth_cmd

HOMEOWNERS = ("alice", "bob", "carol")
MODEL = "SmolLM2-135M-Instruct"


@contextmanager
def running_market(workdir: Path) -> Iterator[LocalMarket]:
    """A bootstrap and the three HOMEOWNERS serving, stopped (by PID) on exit."""
    m = LocalMarket(
        workdir,
        # Small chunks; a bid window long enough that every live node's bid is in, so a
        # runner-up exists when a test kills or sheds the provider serving a job.
        node_extra="[market]\nchunk_tokens = 4\nbid_window_ms = 1500\n",
        # A shed node finishes here only what ends within 0.5 s; the rest goes elsewhere.
        power_extra="governor = { drain_finish_s = 0.5 }",
    )
    try:
        m.stand_up(HOMEOWNERS)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    with running_market(tmp_path_factory.mktemp("market")) as m:
        yield m


async def _client_ready(client: Any, providers: int) -> None:
    with trio.fail_after(60):
        while client.catalog.provider_count(trio.current_time()) < providers:
            await trio.sleep(0.2)


def _chat_tokens(prompt: str) -> int:
    """The chat-templated prompt's length, by transformers' tokenizer on the same model."""
    from transformers import AutoTokenizer

    from p2pnode.serving import load_model

    tok = AutoTokenizer.from_pretrained(str(load_model(None).hf_dir))
    text = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _live(market: LocalMarket) -> int:
    return sum(market.node(n).alive() for n in HOMEOWNERS)


async def test_jobs_stream_and_each_provider_is_owed_exactly_its_tokens(
    market: LocalMarket,
) -> None:
    setup = load_buyer(market.config_for("buyer"), market.env)
    # The RFQ goes straight to known providers (the default), or over gossip to all.
    for direct, prompt in ((4, "Name a fruit."), (0, "Count to five.")):
        async with open_buyer_client(setup, direct_rfq=direct) as client:
            await _client_ready(client, _live(market))
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
            assert client.rfq_rounds["direct" if direct else "gossip"] >= 1
            # the provider's engine counted the prompt (the buyer holds no tokenizer)
            assert r.prompt_tokens == await trio.to_thread.run_sync(_chat_tokens, prompt)
            assert client.unstaked_bids == 0  # every node here is staked on the registry


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


async def test_openai_client_through_the_gateway(market: LocalMarket) -> None:
    import openai

    from market.gateway import serve_gateway

    async with (
        open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client,
        trio.open_nursery() as nursery,
    ):
        await _client_ready(client, _live(market))
        port = await nursery.start(serve_gateway, client, "127.0.0.1", 0)

        def use() -> tuple[Any, list[str], Any]:
            oc = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
            models = [m.id for m in oc.models.list()]
            plain = oc.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
            )
            stream = oc.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Say hi"}],
                max_tokens=8,
                stream=True,
                stream_options={"include_usage": True},
            )
            parts = [c for c in stream]
            with pytest.raises(openai.NotFoundError):
                oc.completions.create(model="no-such-model", prompt="x", max_tokens=2)
            return plain, models, parts

        plain, models, parts = await trio.to_thread.run_sync(use)
        nursery.cancel_scope.cancel()
    assert any(m.startswith(MODEL) for m in models)
    assert plain.choices[0].message.content and plain.usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text and parts[-1].usage is not None and parts[-1].usage.completion_tokens == 8
    assert parts[0].choices[0].delta.role == "assistant"


async def test_a_buyer_that_stops_paying_is_cut_off_within_one_chunk(market: LocalMarket) -> None:
    """A raw buyer speaking the protocol by hand: it takes an award, never pays."""
    import os

    from market.identity.keystore import generate_identity
    from market.protocol import Award, Bid, Error, ErrorCode, Prompt, Rfq, TokenChunk
    from market.sdk.catalog import Catalog
    from market.streams import BID_PROTOCOL, JOB_PROTOCOL, receive_message, sealed, send_message
    from p2pnode.net import NetConfig, open_node_host
    from p2pnode.net.pubsub import offers_topic, rfq_topic

    cheat = generate_identity()
    key = cheat.signing_key()
    bids: list[Bid] = []

    async def on_bid(fs: Any) -> None:
        message = await receive_message(fs, timeout=5)
        if isinstance(message, Bid):
            bids.append(message)

    async with open_node_host(
        cheat.libp2p_keypair(), NetConfig(bootstrap=(market.bootstrap,))
    ) as net:
        net.set_handler(BID_PROTOCOL, on_bid)
        offers = await net.subscribe(offers_topic())
        catalog = Catalog()
        with trio.fail_after(30):
            while not catalog.models(trio.current_time()):
                from market.streams import open_sealed

                offer, _ = open_sealed((await offers.receive()).data)
                catalog.add(offer, trio.current_time())  # type: ignore[arg-type]
        listing = catalog.models(trio.current_time())[0]
        job_id = os.urandom(16)
        rfq = Rfq(
            job_id=job_id,
            buyer=key.peer_id,
            buyer_address=cheat.eth_address_bytes,
            model_id=listing.model_id,
            prompt_tokens=8,
            max_tokens=40,
            max_price_per_1k=10 * listing.best_price_per_1k,
            region="",
            bid_window_ms=500,
        )
        with trio.fail_after(30):
            while not bids:
                await net.connect_providers(listing.model_id)
                await net.publish(rfq_topic(listing.model_id), sealed(rfq, key))
                await trio.sleep(1.0)
        bid = bids[0]
        award = Award(
            job_id=job_id,
            provider=bid.provider,
            price_per_1k=bid.price_per_1k,
            chunk_tokens=bid.chunk_tokens,
            credit_chunks=bid.credit_chunks,
            max_tokens=40,
        )
        got: list[Any] = []
        async with net.open_stream(bid.provider, JOB_PROTOCOL) as fs:
            await send_message(fs, award, key)
            await receive_message(fs, timeout=10)  # Accept
            prompt = Prompt(job_id=job_id, prompt="Once upon a time")
            await send_message(fs, prompt, key)
            with trio.fail_after(30):
                while True:
                    message = await receive_message(fs, timeout=20)
                    got.append(message)
                    if message is None or isinstance(message, Error):
                        break
    chunks = [m for m in got if isinstance(m, TokenChunk)]
    errors = [m for m in got if isinstance(m, Error)]
    assert errors and errors[0].code == ErrorCode.PAYMENT_BEHIND
    unpaid_tokens = sum(len(c.token_ids) for c in chunks)
    # Cut off within one chunk of value: a chunk counts as paid once vouchers cover the
    # cost of the tokens through it, so chunks that cost nothing yet (the first token at
    # a low price rounds to 0) need no voucher; past them, at most credit_chunks go out.
    through = 0
    owing = 0
    for c in chunks:
        through += len(c.token_ids)
        owing += cost_of(through, bid.price_per_1k) > 0
    assert unpaid_tokens >= 1 and owing <= bid.credit_chunks, (unpaid_tokens, owing)


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
    still_locked = 0
    for name in HOMEOWNERS:
        ident = market.ids[name]
        # Every award was covered by money locked for its provider first.
        locked = hub.collateral(buyer, ident.eth_address, dep.token).locked
        if ident.eth_address_bytes in signed:
            assert hub.cover(buyer, ident.eth_address, dep.token) >= signed[ident.eth_address_bytes]
        still_locked += locked
        ledger = Ledger(market.dir / name / "ledger.sqlite")
        held = {sv.voucher.buyer: sv.voucher.cumulative_amount for sv in ledger.vouchers()}
        redeemed, _ = hub.redeemed(buyer, ident.eth_address, dep.token)
        # Exactly what the node held was redeemed, never more than the buyer signed.
        assert redeemed == held.get(bytes.fromhex(buyer[2:]), 0)
        assert redeemed <= signed.get(ident.eth_address_bytes, 0)
        assert not ledger.redemptions("pending")
        rows = list(ledger.db["earnings"].rows)
        gross = sum(int(e["amount"]) for e in rows)
        fees = sum(int(e["fee"]) for e in rows)
        # The ledger's earnings come from the chain's Redeemed logs: gross = redeemed.
        assert gross == redeemed
        assert fees == sum(int(e["amount"]) * dep.fee_bps // 10_000 for e in rows)
        assert token.balance_of(ident.eth_address) == gross - fees
        total_redeemed += redeemed
        ledger.close()
    assert total_redeemed > 0
    # Money is conserved: what the buyer deposited is free, locked for a provider, or paid.
    assert hub.balance_of(buyer, dep.token) + still_locked == market.deposit - total_redeemed
    # `hearth node status` tells the homeowner the same story from the ledger.
    earner = next(n for n in HOMEOWNERS if token.balance_of(market.ids[n].eth_address) > 0)
    out = subprocess.run(
        hearth_cmd(
            "node", "status", "--json", "--config", str(market.dir / earner / "hearth.toml")
        ),
        capture_output=True,
        text=True,
        check=True,
        env=market.env,
    )
    status = json.loads(out.stdout)
    # Drained nodes stopped cleanly; a SIGKILLed one is reported as not running.
    assert status["state"] == "stopped" or status["state"].startswith("not running")
    assert status["redemptions"]["confirmed"]["count"] >= 1
    assert status["earnings"]["on_chain_net"] == token.balance_of(market.ids[earner].eth_address)
