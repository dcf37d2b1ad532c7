"""Failover: the buyer moves to the next runner-up and resumes from the delivered prefix."""

from __future__ import annotations

import pytest

from market.protocol.messages import Award, Prompt, cost_of
from tests.market.protocol.fake_link import FakeLink, Fault, ProviderSpec


def cheap(name: str, fault: Fault | None = None) -> ProviderSpec:
    return ProviderSpec(name, electricity_per_kwh=100_000, fault=fault or Fault())


def dear(name: str, kwh: int = 150_000) -> ProviderSpec:
    return ProviderSpec(name, electricity_per_kwh=kwh)


def check_split(link: FakeLink, n_segments: int) -> None:
    out = link.buyer.outcome
    assert out is not None and out.completed
    assert out.token_ids == link.expected_tokens()  # nothing lost, nothing repeated
    assert len(out.segments) == n_segments
    offset = 0
    for seg in out.segments:
        assert seg.resume_offset == offset
        assert seg.paid == cost_of(seg.tokens, seg.price_per_1k)  # paid for its own tokens
        offset += seg.tokens
    assert link.wallet.spent == out.paid


@pytest.mark.parametrize("eof", [False, True])
def test_crash_mid_stream_resumes_on_the_runner_up(eof: bool) -> None:
    link = FakeLink([cheap("PA", Fault(crash_after=16, eof_on_crash=eof)), dear("PB")])
    out = link.run()
    check_split(link, 2)
    assert out.failovers == 1 and [s.provider for s in out.segments] == ["PA", "PB"]
    award = next(m for _, _, to, m in link.sent if isinstance(m, Award) and to == "PB")
    prompt = next(m for _, _, to, m in link.sent if isinstance(m, Prompt) and to == "PB")
    assert award.resume_offset == 16 == len(prompt.resume_token_ids)
    assert prompt.resume_token_ids == link.expected_tokens(16)
    # noticed by EOF at once, or by the heartbeat deadline a few seconds later
    assert out.finished_at < (3.0 if eof else 10.0)


def test_award_never_accepted_moves_on() -> None:
    link = FakeLink([cheap("PA", Fault(never_accept=True)), dear("PB")])
    out = link.run()
    check_split(link, 2)
    assert out.segments[0].tokens == 0 and out.segments[1].provider == "PB"


def test_tampered_chunk_is_not_delivered_nor_paid() -> None:
    link = FakeLink([cheap("PA", Fault(tamper_seq=2)), dear("PB")])
    out = link.run()
    check_split(link, 2)
    assert out.segments[0].tokens == 16  # chunks 0 and 1 only
    assert any(s.peer == "PA" and s.error is not None for s in link.scores)


def test_lying_end_of_stream_fails_over_without_losing_tokens() -> None:
    link = FakeLink([cheap("PA", Fault(wrong_total=True)), dear("PB")])
    out = link.run()
    # PA delivered everything, then lied: the buyer keeps the tokens (all verified and paid)
    assert out.completed and out.token_ids == link.expected_tokens()
    assert out.segments[0].tokens == 40 and out.segments[0].commitment is None


def test_two_failures_in_a_row() -> None:
    link = FakeLink(
        [cheap("PA", Fault(crash_after=8)), dear("PB", 120_000), dear("PC", 160_000)],
        max_tokens=48,
    )
    link.specs["PB"] = ProviderSpec("PB", electricity_per_kwh=120_000, fault=Fault(crash_after=16))
    out = link.run()
    check_split(link, 3)
    assert out.failovers == 2 and [s.provider for s in out.segments] == ["PA", "PB", "PC"]


def test_all_awardees_fail_gives_providers_exhausted() -> None:
    link = FakeLink(
        [cheap("PA", Fault(crash_after=8)), ProviderSpec("PB", fault=Fault(crash_after=8))]
    )
    out = link.run()
    assert not out.completed and out.reason == "providers_exhausted"
    assert len(out.token_ids) == sum(s.tokens for s in out.segments) > 0
    for seg in out.segments:
        assert seg.paid == cost_of(seg.tokens, seg.price_per_1k)
