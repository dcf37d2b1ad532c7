"""The default scorer, row by row: expected completion time, price, trust, load, exploration."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from market.protocol.auction import (
    BidContext,
    PeerView,
    StaticReputation,
    WeightedScorer,
    rank_bids,
)
from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Bid, Rfq

JOB = b"\x11" * 16
RFQ = Rfq(
    job_id=JOB,
    buyer="Buyer",
    buyer_address=b"\xbb" * 20,
    model_id="ab" * 32,
    prompt_tokens=10,
    max_tokens=100,
    max_price_per_1k=1000,
    region="eu-west",
    bid_window_ms=100,
)
STRANGER = PeerView()


def bid(p: str, **kw: Any) -> Bid:
    fields: dict[str, Any] = dict(
        job_id=JOB,
        provider=p,
        provider_address=b"\xaa" * 20,
        price_per_1k=500,
        est_ttft_ms=200,
        est_tokens_per_s=30.0,
        chunk_tokens=16,
        credit_chunks=1,
        free_slots=2,
    )
    fields.update(kw)
    return Bid(**fields)


# (why, A's bid fields, A's view, A's region, B's …, max_tokens, winner)
ROWS: list[tuple[str, dict[str, Any], PeerView, str, dict[str, Any], PeerView, str, int, str]] = [
    (
        "faster decode wins a long job",
        dict(est_tokens_per_s=20.0), STRANGER, "eu-west",
        dict(est_tokens_per_s=40.0), STRANGER, "eu-west",
        500, "PB",
    ),
    (
        "a quick first token wins a short job",
        dict(est_ttft_ms=100, est_tokens_per_s=20.0), STRANGER, "eu-west",
        dict(est_ttft_ms=800, est_tokens_per_s=40.0), STRANGER, "eu-west",
        4, "PA",
    ),
    (
        "... and the same two bids flip for a long job",
        dict(est_ttft_ms=100, est_tokens_per_s=20.0), STRANGER, "eu-west",
        dict(est_ttft_ms=800, est_tokens_per_s=40.0), STRANGER, "eu-west",
        1000, "PB",
    ),
    (
        "a provider that over-stated its speed is judged at what it delivered",
        dict(est_tokens_per_s=40.0), PeerView(speed_ratio=0.4), "eu-west",
        dict(est_tokens_per_s=25.0), STRANGER, "eu-west",
        300, "PB",
    ),
    (
        "one that delivered more than it claimed is credited",
        dict(est_tokens_per_s=20.0), PeerView(speed_ratio=1.5), "eu-west",
        dict(est_tokens_per_s=25.0), STRANGER, "eu-west",
        300, "PA",
    ),
    (
        "a slow-to-answer provider's first token is judged as it came",
        dict(est_ttft_ms=100), PeerView(ttft_ratio=5.0), "eu-west",
        dict(est_ttft_ms=200), STRANGER, "eu-west",
        4, "PB",
    ),
    (
        "the measured round trip counts",
        dict(est_ttft_ms=100), PeerView(rtt_ms=400.0), "eu-west",
        dict(est_ttft_ms=100), PeerView(rtt_ms=20.0), "eu-west",
        4, "PB",
    ),
    (
        "cheaper wins among equals",
        dict(price_per_1k=600), STRANGER, "eu-west",
        dict(price_per_1k=300), STRANGER, "eu-west",
        100, "PB",
    ),
    (
        "a three times faster provider is worth a higher price",
        dict(price_per_1k=800, est_tokens_per_s=60.0), STRANGER, "eu-west",
        dict(price_per_1k=400, est_tokens_per_s=20.0), STRANGER, "eu-west",
        500, "PA",
    ),
    (
        "more free slots wins among equals: equal providers fill evenly",
        dict(free_slots=0), STRANGER, "eu-west",
        dict(free_slots=3), STRANGER, "eu-west",
        100, "PB",
    ),
    (
        "a never-used provider beats a well-used equal",
        {}, PeerView(recent_jobs=20.0), "eu-west",
        {}, STRANGER, "eu-west",
        100, "PB",
    ),
    (
        "exploration does not buy a much slower provider",
        dict(est_tokens_per_s=30.0), PeerView(recent_jobs=20.0), "eu-west",
        dict(est_tokens_per_s=10.0), STRANGER, "eu-west",
        300, "PA",
    ),
    (
        "a provider that fails loses to an equal one",
        {}, PeerView(reputation=0.5), "eu-west",
        {}, PeerView(reputation=1.0), "eu-west",
        100, "PB",
    ),
    (
        "off the RFQ's region loses among equals",
        {}, STRANGER, "ap-south",
        {}, STRANGER, "eu-west",
        100, "PB",
    ),
    (
        "a bid that states no speed is taken at the scorer's cautious default",
        dict(est_tokens_per_s=0.0), STRANGER, "eu-west",
        dict(est_tokens_per_s=10.0), STRANGER, "eu-west",
        100, "PB",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "a", "view_a", "region_a", "b", "view_b", "region_b", "max_tokens", "winner"),
    ROWS,
    ids=[r[0] for r in ROWS],
)
def test_scorer_row(
    why: str,
    a: dict[str, Any],
    view_a: PeerView,
    region_a: str,
    b: dict[str, Any],
    view_b: PeerView,
    region_b: str,
    max_tokens: int,
    winner: str,
) -> None:
    rfq = dataclasses.replace(RFQ, max_tokens=max_tokens)
    source = StaticReputation(
        {"PA": view_a.reputation, "PB": view_b.reputation}, views={"PA": view_a, "PB": view_b}
    )
    bids = [(bid("PA", **a), region_a), (bid("PB", **b), region_b)]
    ranked = rank_bids(bids, rfq, WeightedScorer(), source)
    assert ranked[0].provider == winner, why
    # the jitter is not what decided it: the margin is wider than the whole draw
    scorer = WeightedScorer()
    scores = {}
    for bd, region in bids:
        view = source.view(bd.provider)
        ctx = BidContext(rfq=rfq, region=region, reputation=view.reputation, peer=view)
        scores[bd.provider] = scorer.score(bd, ctx)
    loser = "PA" if winner == "PB" else "PB"
    assert scores[loser] - scores[winner] > scorer.w_jitter, why


def test_completion_time_is_first_token_plus_decode() -> None:
    scorer = WeightedScorer()
    peer = PeerView(rtt_ms=50.0, ttft_ratio=2.0, speed_ratio=0.5)
    b = bid("PA", est_ttft_ms=150, est_tokens_per_s=40.0)
    ctx = BidContext(rfq=RFQ, region="eu-west", reputation=1.0, peer=peer)
    assert scorer.expected_ttft_s(b, peer) == pytest.approx((0.150 + 0.050) * 2.0)
    assert scorer.expected_tokens_per_s(b, peer) == pytest.approx(20.0)
    assert scorer.completion_s(b, ctx) == pytest.approx(0.4 + 100 / 20.0)
    explore = scorer.w_explore / 1.0  # never used: the full exploration bonus
    expected = math.log(5.4) + 500 / 1000 + 0.0 + 0.0 + 0.2 / 3 - explore + 0.02 * ctx.tiebreak
    assert scorer.score(b, ctx) == pytest.approx(expected)


def test_a_source_that_only_knows_reputation_still_ranks() -> None:
    class Plain:
        def reputation(self, provider: str) -> float:
            return {"PA": 0.1}.get(provider, 0.9)

    ranked = rank_bids(
        [(bid("PA"), "eu-west"), (bid("PB"), "eu-west")], RFQ, WeightedScorer(), Plain()
    )
    assert [b.provider for b in ranked] == ["PB", "PA"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(w_price=-1.0),
        dict(w_explore=-0.1),
        dict(unknown_tokens_per_s=0.0),
        dict(min_seconds=0.0),
    ],
)
def test_scorer_refuses_bad_settings(kw: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        WeightedScorer(**kw)


@pytest.mark.parametrize(
    "kw", [dict(reputation=1.5), dict(speed_ratio=0.0), dict(recent_jobs=-1.0), dict(rtt_ms=-1.0)]
)
def test_peer_view_refuses_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(LocalProtocolError):
        PeerView(**kw)


def test_our_own_jobs_running_on_a_provider_send_the_next_one_elsewhere() -> None:
    """Least outstanding requests: two equal bids, ours already run two jobs on PA."""
    scorer = WeightedScorer()
    a, b = bid("PA"), bid("PB")
    busy = BidContext(rfq=RFQ, region="eu-west", reputation=1.0, peer=PeerView(in_flight=2))
    idle = BidContext(rfq=RFQ, region="eu-west", reputation=1.0, peer=PeerView())
    assert scorer.score(a, busy) - scorer.score(b, idle) > 2 * scorer.w_load - scorer.w_jitter
    with pytest.raises(LocalProtocolError):
        PeerView(in_flight=-1)
