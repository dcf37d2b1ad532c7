"""RFQs cannot be amplified against a provider (issue 13, item 7).

A real :class:`ProviderService` on a real libp2p host, its cover cache reading a real
PaymentHub (an in-process chain: one read per new buyer address), an honest buyer and a
hostile peer, each its own host on 127.0.0.1. The hostile peer

* republishes a buyer's RFQ for model B, caught on B's topic, on model A's topic;
* republishes a buyer's RFQ for model A, which the buyer had sent it directly (asking it
  for a quote), on A's topic — so that every provider of A would bid to that buyer;
* floods RFQs of its own, each naming a fresh payment address (a chain read each), on
  gossip and on direct RFQ streams.

Before the fix the provider answered all of it: it read the chain and dialled the buyer
for the forged ones, and quoted every RFQ of the flood. Now the forged and misrouted ones
are rejected at the topic check, the flood is cut to the hostile peer's token bucket
before any chain read or dial, and the honest buyer still gets its bids.
"""

from __future__ import annotations

import os
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from market.chain.aio import TrioChain
from market.chain.deployment import deploy_all
from market.chain.voucher import message_verifier
from market.protocol import Bid, Decline, Rfq
from market.protocol.payments import ChannelTerms, VoucherBook
from market.protocol.policy import CostPlusPolicy, ProviderStatus
from market.protocol.signing import SigningKey
from market.streams import BID_PROTOCOL, RFQ_PROTOCOL, receive_message, sealed
from p2pnode.net import NetConfig, NetError, open_node_host
from p2pnode.net.pubsub import rfq_topic
from p2pnode.net.ratelimit import RateLimit
from p2pnode.node.cover import CoverCache
from p2pnode.node.provider import ProviderService
from p2pnode.serving.openai_http import OpenAIHTTPBackend

MODEL_A = "a1" * 32  # the provider's model
MODEL_B = "b2" * 32
LIMIT = RateLimit(rate_per_s=1.0, burst=4.0)
GOSSIP_FLOOD = 60
STREAM_FLOOD = 20


def _cfg(**kw: Any) -> NetConfig:
    return NetConfig(dht="off", relay="off", target_peers=0, **kw)


def _identity() -> tuple[Any, SigningKey]:
    seed = os.urandom(32)
    return create_new_key_pair(seed), SigningKey.from_private_bytes(seed)


def _rfq(key: SigningKey, model: str, address: bytes) -> Rfq:
    return Rfq(
        job_id=os.urandom(16),
        buyer=key.peer_id,
        buyer_address=address,
        model_id=model,
        prompt_tokens=10,
        max_tokens=16,
        max_price_per_1k=10**9,
        region="",
        bid_window_ms=2000,
    )


async def _until(pred: Any, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


async def test_forged_misrouted_and_flooded_rfqs_cost_the_provider_nothing(
    embedded_chain: Any,
) -> None:
    admin = embedded_chain.client(0)
    dep = await trio.to_thread.run_sync(lambda: deploy_all(admin))
    token = bytes.fromhex(dep.token[2:])
    p_kp, p_key = _identity()
    b_kp, b_key = _identity()
    h_kp, h_key = _identity()
    p_address, b_address = os.urandom(20), os.urandom(20)
    covers = CoverCache(dep.hub(admin), TrioChain(), p_address, token)
    terms = ChannelTerms(
        token=token, chain_id=dep.chain_id, contract=bytes.fromhex(dep.payment_hub[2:])
    )
    book = VoucherBook(
        provider_address=p_address,
        terms=terms,
        verifier=message_verifier(chain_id=dep.chain_id, contract=terms.contract),
        cover_of=covers.cover_of,
    )
    # never called: nothing here is awarded (an engine would only serve an award)
    engine = OpenAIHTTPBackend("http://127.0.0.1:9", MODEL_A)

    def status() -> ProviderStatus:
        return ProviderStatus(
            provider=p_key.peer_id,
            provider_address=p_address,
            region="",
            power_state="normal",
            models=frozenset({MODEL_A}),
            active_jobs=0,
            capacity=4,
            tokens_per_s=50.0,
        )

    inbox: list[Any] = []  # what reaches the honest buyer on /hearth/bid/1
    caught: list[bytes] = []  # what the hostile peer caught

    async with (
        open_node_host(p_kp, _cfg()) as pnet,
        open_node_host(b_kp, _cfg(bootstrap=(pnet.addrs[0],))) as bnet,
        open_node_host(h_kp, _cfg(bootstrap=(pnet.addrs[0],))) as hnet,
        trio.open_nursery() as nursery,
    ):
        service = ProviderService(
            net=pnet,
            key=p_key,
            engine=engine,
            model_id=MODEL_A,
            policy=CostPlusPolicy(electricity_per_kwh=100_000, power_draw_w=300.0),
            book=book,
            ledger=None,
            status=status,
            covers=covers,
            rfq_limit=LIMIT,
        )
        await nursery.start(service.run)

        async def on_bid(fs: Any) -> None:
            inbox.append(await receive_message(fs, timeout=5))

        async def on_rfq(fs: Any) -> None:  # the hostile peer "quotes" by keeping the RFQ
            data = await fs.receive(timeout=5)
            if data is not None:
                caught.append(data)

        bnet.set_handler(BID_PROTOCOL, on_bid)
        hnet.set_handler(RFQ_PROTOCOL, on_rfq)
        await bnet.connect(hnet.addrs[0])
        on_b = await hnet.subscribe(rfq_topic(MODEL_B))  # it poses as a provider of B
        await _until(lambda: bnet.topic_peers(rfq_topic(MODEL_B)) >= 1)
        await _until(lambda: hnet.topic_peers(rfq_topic(MODEL_A)) >= 1)
        await _until(lambda: bnet.topic_peers(rfq_topic(MODEL_A)) >= 1)

        # 1. the buyer's RFQ for model B, caught on B's topic, republished on A's
        misrouted = _rfq(b_key, MODEL_B, b_address)
        await bnet.publish(rfq_topic(MODEL_B), sealed(misrouted, b_key))
        with trio.fail_after(10):
            msg = await on_b.receive()
        await hnet.publish(rfq_topic(MODEL_A), msg.data)
        # 2. the buyer's RFQ for model A, sent to the hostile peer directly, republished
        forged = _rfq(b_key, MODEL_A, b_address)
        async with bnet.open_stream(hnet.peer_id, RFQ_PROTOCOL) as fs:
            await fs.send(sealed(forged, b_key))
            await fs.send_end()
        await _until(lambda: bool(caught))
        await hnet.publish(rfq_topic(MODEL_A), caught[0])
        await _until(lambda: pnet.stats()["pubsub"]["invalid"] >= 2)

        # 3. the flood: the hostile peer's own RFQs, each with a fresh payment address
        t0 = trio.current_time()
        for _ in range(GOSSIP_FLOOD):
            await hnet.publish(
                rfq_topic(MODEL_A), sealed(_rfq(h_key, MODEL_A, os.urandom(20)), h_key)
            )
            await trio.sleep(0.01)  # py-libp2p's own send queue drops beyond 32 queued
        limiter = service.rfq_limiter
        await _until(lambda: service.stats.rfqs_seen + limiter.dropped >= GOSSIP_FLOOD)
        answered_streams = 0  # with a bid (over its rate: a one-frame "busy")
        for _ in range(STREAM_FLOOD):
            try:
                async with hnet.open_stream(pnet.peer_id, RFQ_PROTOCOL, timeout=5) as fs:
                    await fs.send(sealed(_rfq(h_key, MODEL_A, os.urandom(20)), h_key))
                    if isinstance(await receive_message(fs, timeout=5), Bid):
                        answered_streams += 1
            except NetError:
                pass
        flood_s = trio.current_time() - t0

        # 4. the honest buyer still gets bids, on gossip and on a direct stream
        honest = _rfq(b_key, MODEL_A, b_address)
        await bnet.publish(rfq_topic(MODEL_A), sealed(honest, b_key))
        await _until(lambda: any(m.job_id == honest.job_id for m in inbox))
        direct = _rfq(b_key, MODEL_A, b_address)
        async with bnet.open_stream(pnet.peer_id, RFQ_PROTOCOL) as fs:
            await fs.send(sealed(direct, b_key))
            answer = await receive_message(fs, timeout=5)
            await fs.send_end()
        assert isinstance(answer, Bid) and answer.job_id == direct.job_id

        await trio.sleep(0.5)  # anything the forged RFQs set off would have arrived by now
        nursery.cancel_scope.cancel()

    await engine.aclose()
    # the forged and misrouted RFQs were answered with nothing: no bid, no decline
    assert [m.job_id for m in inbox] == [honest.job_id]
    assert isinstance(inbox[0], Bid)
    assert not any(isinstance(m, Decline) for m in inbox)
    # the flood was cut to the hostile peer's bucket, before any chain read
    flooded = GOSSIP_FLOOD + STREAM_FLOOD
    admitted = service.stats.rfqs_seen - 2  # less the honest buyer's two
    ceiling = LIMIT.burst + LIMIT.rate_per_s * flood_s + 1
    assert admitted <= ceiling, (admitted, flood_s)
    assert limiter.stats["dropped_peer"] >= flooded - ceiling
    assert answered_streams <= ceiling
    # one cover reading per admitted payment address, the buyer's included: no more
    assert len(covers) <= admitted + 1
    # and its bids could pin at most half of the node's slots: the rest were "busy"
    held_cap = service.stats.declines_by_reason["held_by_buyer"]
    assert service.stats.bids + held_cap == admitted + 2
    # the homeowner sees the drops in the node's status and dashboard
    from p2pnode.node.telemetry import _bids

    dropped = _bids(service)["rfqs_dropped"]
    assert dropped["peer"] == limiter.stats["dropped_peer"] and sum(dropped.values()) > 0
