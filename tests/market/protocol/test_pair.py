"""Buyer ↔ provider machines wired by a fake link, through whole jobs."""

from __future__ import annotations

from market.protocol.commitment import ChainVerifier
from market.protocol.messages import Bid, TokenChunk, Voucher, cost_of
from market.protocol.provider import ProviderConfig
from tests.market.protocol.fake_link import FakeLink, Fault, ProviderSpec, token_at


def test_whole_job_best_bid_wins_and_is_paid_exactly() -> None:
    link = FakeLink([ProviderSpec("PA", electricity_per_kwh=200_000), ProviderSpec("PB")])
    out = link.run()
    assert out.completed and out.finish_reason == "length"
    assert out.token_ids == link.expected_tokens()
    assert out.prompt_tokens == 10  # the engine's count travels back in EndOfStream
    (seg,) = out.segments
    assert seg.provider == "PB"  # cheaper electricity → cheaper bid
    assert seg.paid == cost_of(40, seg.price_per_1k) == link.wallet.spent
    pb = link.provider_outcomes["PB"]
    assert pb.completed and pb.paid == seg.paid and pb.commitment == seg.commitment
    assert link.provider_outcomes["PA"].reason == "not_awarded"
    assert link.books["PB"].cumulative(link.wallet.buyer_address) == seg.paid


def test_one_voucher_per_chunk_and_commitment_verifies() -> None:
    link = FakeLink([ProviderSpec("PA")], max_tokens=40, chunk_tokens=8)
    out = link.run()
    chunks = [m for _, src, _, m in link.sent if isinstance(m, TokenChunk)]
    vouchers = [m for _, _, _, m in link.sent if isinstance(m, Voucher)]
    assert len(chunks) == len(vouchers) == 5
    assert [v.cumulative_amount for v in vouchers] == sorted(
        {v.cumulative_amount for v in vouchers}
    )
    v = ChainVerifier(chunks[0].job_id)
    for c in chunks:
        assert v.feed(c.seq, c.token_ids, c.logprobs, c.chain_hash)
    assert out.segments[0].commitment == v.head
    assert [d.offset for d in link.delivered] == [0, 8, 16, 24, 32]


def test_credit_two_lets_the_provider_run_ahead_by_two_chunks() -> None:
    link = FakeLink([ProviderSpec("PA")], credit_chunks=2, latency=0.3, step_s=0.01)
    out = link.run()
    assert out.completed and out.token_ids == link.expected_tokens()
    bids = [m for _, _, _, m in link.sent if isinstance(m, Bid)]
    assert bids[0].credit_chunks == 2


def test_a_buyer_who_stops_paying_loses_the_provider_after_one_chunk() -> None:
    link = FakeLink(
        [ProviderSpec("PA")],
        buyer_pays=False,
        provider_config=ProviderConfig(payment_timeout_s=1.0),
    )
    out = link.run()
    pa = link.provider_history[0]
    assert pa.reason == "payment_behind" and pa.tokens_sent == 8 and pa.paid == 0
    assert not out.completed  # the only provider left; nobody else to fail over to
    assert out.reason == "providers_exhausted"
    assert len(out.token_ids) == 8


def test_everybody_declines_and_the_buyer_learns_why() -> None:
    link = FakeLink(
        [
            ProviderSpec("PA", fault=Fault(power="off")),
            ProviderSpec("PB", models=frozenset()),
            ProviderSpec("PC", electricity_per_kwh=10**9),
        ]
    )
    out = link.run()
    assert not out.completed and out.reason == "no_bids"
    why = out.why()
    for reason in ("power_shed", "model_not_held", "price_below_floor"):
        assert reason in why
    assert out.paid == 0 and link.wallet.available == link.wallet.deposit


def test_tokens_are_position_determined() -> None:
    assert token_at(3) == token_at(3) and token_at(3) != token_at(4)
