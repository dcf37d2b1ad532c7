"""The buyer's memory of providers: failures, penalties, speed, round trip, use, bounds."""

from __future__ import annotations

import pytest

from market.protocol.auction import PeerView
from market.protocol.messages import Bid
from market.sdk.reputation import Reputation


def bid(tps: float = 40.0, ttft_ms: int = 100) -> Bid:
    return Bid(
        job_id=b"\x01" * 16,
        provider="PA",
        provider_address=b"\xaa" * 20,
        price_per_1k=500,
        est_ttft_ms=ttft_ms,
        est_tokens_per_s=tps,
        chunk_tokens=16,
        credit_chunks=1,
    )


def test_a_stranger_is_neither_favoured_nor_locked_out() -> None:
    rep = Reputation()
    assert rep.reputation("PA") == pytest.approx(0.95)
    assert rep.view("PA") == PeerView(reputation=0.95)
    assert rep.record("PA") is None and len(rep) == 0
    for _ in range(10):
        rep.observe("PB", ok=True)
    # a provider with a spotless record is only a little ahead of a stranger
    assert 0.95 < rep.reputation("PB") <= 1.0
    assert rep.reputation("PB") - rep.reputation("PA") < 0.05


def test_a_failure_costs_and_later_successes_earn_it_back() -> None:
    rep = Reputation()
    rep.observe("PA", ok=False)
    after_failure = rep.reputation("PA")
    assert after_failure < 0.7
    for _ in range(20):
        rep.observe("PA", ok=True)
    assert rep.reputation("PA") > 0.9 > after_failure


def test_what_the_buyer_ended_itself_moves_no_reputation() -> None:
    rep = Reputation()
    rep.observe("PA", ok=True)
    before = rep.reputation("PA")
    rep.observe("PA", ok=None, tokens=40, seconds=1.2, ttft_s=0.2, first_tokens=8, bid=bid())
    assert rep.reputation("PA") == before
    record = rep.record("PA")
    assert record is not None and record.tokens_per_s == pytest.approx(32 / 1.0)  # speed counts


def test_machine_penalties_fade_and_positive_deltas_change_nothing() -> None:
    rep = Reputation(penalty_fade=0.5)
    rep.adjust("PA", 0.05)
    assert rep.reputation("PA") == pytest.approx(0.95)
    rep.adjust("PA", -0.5)
    assert rep.reputation("PA") == pytest.approx(0.45)
    rep.observe("PB", ok=True)  # time passes in segments, whoever served them
    assert rep.reputation("PA") == pytest.approx(0.95 - 0.25)
    rep.adjust("PA", -2.0)
    assert rep.reputation("PA") == 0.0  # a penalty is at most 1: the floor is 0


def test_speed_is_compared_with_the_claim() -> None:
    rep = Reputation()
    # claimed 40 tokens/s and 100 ms; delivered 16 tokens after the first chunk of 16
    # in 0.8 s (20 tokens/s), the first chunk after 0.1 + 15/40 = 0.475 s (as claimed)
    rep.observe("PA", ok=True, tokens=32, seconds=1.275, ttft_s=0.475, first_tokens=16, bid=bid())
    view = rep.view("PA")
    # one job is shrunk towards the claim (the claim weighs as two jobs): 0.5^(1/3)
    assert view.speed_ratio == pytest.approx(0.5 ** (1 / 3))
    assert view.ttft_ratio == pytest.approx(1.0)
    # the next ones move it further (log space), then recent ones weigh most
    rep.observe("PA", ok=True, tokens=32, seconds=1.275, ttft_s=0.475, first_tokens=16, bid=bid())
    assert rep.view("PA").speed_ratio == pytest.approx(0.5 ** (1 / 3 + (1 - 1 / 3) / 4))
    for _ in range(30):
        rep.observe(
            "PA", ok=True, tokens=32, seconds=1.275, ttft_s=0.475, first_tokens=16, bid=bid()
        )
    assert rep.view("PA").speed_ratio == pytest.approx(0.5, rel=0.05)  # the truth wins


def test_the_round_trip_is_measured_and_enters_the_first_token_claim() -> None:
    rep = Reputation()
    rep.observe_rtt("PA", 0.1)
    assert rep.view("PA").rtt_ms == pytest.approx(100.0)
    # first token at claim (100 ms) + round trip (100 ms): as promised
    rep.observe("PA", ok=True, tokens=1, seconds=0.2, ttft_s=0.2, bid=bid())
    assert rep.view("PA").ttft_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="round trip"):
        rep.observe_rtt("PA", -1.0)


def test_use_is_counted_and_fades_as_other_providers_serve() -> None:
    rep = Reputation(use_fade=0.5)
    rep.observe("PA", ok=True)
    rep.observe("PA", ok=True)
    assert rep.view("PA").recent_jobs == pytest.approx(1.0 * 0.5 + 1.0)
    rep.observe("PB", ok=True)
    assert rep.view("PA").recent_jobs == pytest.approx(0.75)
    assert rep.view("PB").recent_jobs == pytest.approx(1.0)


def test_memory_is_bounded_and_forgets_the_least_recently_seen() -> None:
    rep = Reputation(max_peers=3)
    for p in ("PA", "PB", "PC"):
        rep.observe(p, ok=False)
    rep.note_failure("PA", "x" * 500)  # PA seen again: PB is now the oldest
    rep.observe("PD", ok=True)
    assert len(rep) == 3
    assert rep.record("PB") is None  # forgotten: a stranger again
    assert rep.reputation("PB") == pytest.approx(0.95)
    record = rep.record("PA")
    assert record is not None and record.last_failure == "x" * 200


@pytest.mark.parametrize("kw", [dict(tokens=-1), dict(seconds=-1.0), dict(first_tokens=0)])
def test_observe_refuses_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Reputation().observe("PA", ok=True, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kw", [dict(max_peers=0), dict(prior_failure=1.0), dict(memory=0.0), dict(use_fade=1.5)]
)
def test_settings_are_checked(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Reputation(**kw)  # type: ignore[arg-type]
