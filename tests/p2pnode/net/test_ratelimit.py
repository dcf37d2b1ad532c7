"""The per-peer RFQ rate limiter and the one RFQ rule (issue 13, item 7): pure tests."""

from __future__ import annotations

import os
import time

import pytest

from market.gossip import rfq_check, valid_rfq
from market.protocol import RemoteProtocolError, Rfq
from market.protocol.envelope import seal
from market.protocol.signing import SigningKey
from p2pnode.net.ratelimit import PeerRateLimiter, RateLimit

MODEL_A, MODEL_B = "a1" * 32, "b2" * 32


def test_a_peer_gets_its_burst_then_its_rate() -> None:
    lim = PeerRateLimiter(RateLimit(rate_per_s=2.0, burst=3.0))
    assert [lim.allow("p", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert lim.allow("p", 0.49) is False  # under one token back
    assert lim.allow("p", 0.5) is True
    assert lim.allow("p", 0.5) is False
    assert [lim.allow("p", 10.0) for _ in range(4)] == [True, True, True, False]  # capped
    assert lim.allow("q", 10.0) is True  # another peer has its own bucket
    assert lim.stats["dropped_peer"] == 5 and lim.dropped == 5


def test_fresh_identities_pass_a_newcomer_gate() -> None:
    lim = PeerRateLimiter(RateLimit(newcomer_rate_per_s=1.0, newcomer_burst=2.0))
    assert [lim.allow(f"sybil{i}", 0.0) for i in range(5)] == [True, True, False, False, False]
    assert lim.stats["dropped_newcomer"] == 3
    assert lim.allow("sybil0", 0.0) is True  # a tracked peer is not a newcomer
    assert lim.allow("late", 1.0) is True  # the gate refills


def test_all_peers_together_are_capped_and_the_cap_costs_no_peer_its_token() -> None:
    lim = PeerRateLimiter(
        RateLimit(burst=2.0, total_rate_per_s=1.0, total_burst=3.0, newcomer_burst=100.0)
    )
    got = [lim.allow(p, 0.0) for p in ("a", "b", "c", "d")]
    assert got == [True, True, True, False] and lim.stats["dropped_total"] == 1
    assert lim.allow("d", 1.0) is True  # d kept both its tokens
    assert lim.allow("d", 1.0) is False and lim.stats["dropped_total"] == 2


def test_memory_is_bounded_least_recently_used_forgotten_first() -> None:
    lim = PeerRateLimiter(RateLimit(max_peers=3, newcomer_burst=1000.0))
    for i in range(10):
        lim.allow(f"p{i}", 0.0)
    assert len(lim) == 3 and lim.stats["forgotten"] == 7
    lim.allow("p7", 0.1)  # used again: p8 is now the oldest
    lim.allow("new", 0.2)
    assert set(lim._peers) == {"p7", "p9", "new"}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        RateLimit(rate_per_s=0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(burst=0.5)
    with pytest.raises(ValueError, match="max_peers"):
        RateLimit(max_peers=0)


def _key() -> SigningKey:
    return SigningKey.from_private_bytes(os.urandom(32))


def _rfq(buyer: SigningKey, model: str) -> Rfq:
    return Rfq(
        job_id=os.urandom(16),
        buyer=buyer.peer_id,
        buyer_address=bytes(20),
        model_id=model,
        prompt_tokens=1,
        max_tokens=1,
        max_price_per_1k=1,
        region="",
        bid_window_ms=100,
    )


def _sealed(msg: object, key: SigningKey) -> bytes:
    return seal(msg, key=key, now_ms=int(time.time() * 1000), rng=os.urandom)  # type: ignore[arg-type]


def test_one_rfq_rule_origin_signer_buyer_and_model() -> None:
    buyer, other = _key(), _key()
    check = rfq_check(MODEL_A)
    good = _sealed(_rfq(buyer, MODEL_A), buyer)
    assert isinstance(check(good, buyer.peer_id).message, Rfq)
    # republished by someone else: the publisher is not the signer
    with pytest.raises(RemoteProtocolError, match="not the publisher"):
        check(good, other.peer_id)
    # the buyer's RFQ for another model, on this model's topic
    with pytest.raises(RemoteProtocolError, match="for model"):
        check(_sealed(_rfq(buyer, MODEL_B), buyer), buyer.peer_id)
    # signed (and published) by someone who names another buyer
    with pytest.raises(RemoteProtocolError, match="signed by"):
        check(_sealed(_rfq(buyer, MODEL_A), other), other.peer_id)
    # the same rule on a direct stream (the envelope's signer is the stream's peer)
    assert valid_rfq(_rfq(buyer, MODEL_A), buyer.peer_id, MODEL_A).buyer == buyer.peer_id
    with pytest.raises(RemoteProtocolError, match="expected an Rfq"):
        valid_rfq(None, buyer.peer_id, MODEL_A)
