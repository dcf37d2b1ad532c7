"""Auction scoring: price, time to first token, reputation, region; determinism."""

from __future__ import annotations

import pytest

from market.protocol.auction import StaticReputation, WeightedScorer, rank_bids
from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Bid, Rfq

JOB = bytes(16)
RFQ = Rfq(
    job_id=JOB,
    buyer="Buyer",
    buyer_address=b"\xbb" * 20,
    model_id="ab" * 32,
    prompt_tokens=1,
    max_tokens=100,
    max_price_per_1k=1000,
    region="eu-west",
    bid_window_ms=100,
)


def bid(p: str, price: int = 500, ttft: int = 200, job: bytes = JOB) -> Bid:
    return Bid(
        job_id=job,
        provider=p,
        provider_address=b"\xaa" * 20,
        price_per_1k=price,
        est_ttft_ms=ttft,
        est_tokens_per_s=30.0,
        chunk_tokens=16,
        credit_chunks=1,
    )


def order(bids: list[tuple[Bid, str]], rep: StaticReputation | None = None) -> list[str]:
    return [b.provider for b in rank_bids(bids, RFQ, WeightedScorer(), rep or StaticReputation())]


def test_cheaper_wins_all_else_equal() -> None:
    assert order([(bid("PA", 600), "eu-west"), (bid("PB", 400), "eu-west")]) == ["PB", "PA"]


def test_faster_first_token_wins_all_else_equal() -> None:
    assert order([(bid("PA", ttft=900), "eu-west"), (bid("PB", ttft=100), "eu-west")]) == [
        "PB",
        "PA",
    ]


def test_reputation_outweighs_a_small_discount() -> None:
    rep = StaticReputation({"PA": 0.2, "PB": 1.0})
    assert order([(bid("PA", 450), "eu-west"), (bid("PB", 500), "eu-west")], rep) == ["PB", "PA"]


def test_off_region_is_penalised() -> None:
    assert order([(bid("PA"), "ap-south"), (bid("PB"), "eu-west")]) == ["PB", "PA"]


def test_ties_break_on_provider_id_and_over_ceiling_is_dropped() -> None:
    bids = [(bid("PC"), "eu-west"), (bid("PA"), "eu-west"), (bid("PX", 1001), "eu-west")]
    assert order(bids) == ["PA", "PC"]


def test_a_bid_for_another_job_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError):
        order([(bid("PA", job=b"\x01" * 16), "")])
