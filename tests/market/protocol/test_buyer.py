"""The buyer job machine, transition by transition (legal and illegal)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from market.protocol import actions as A
from market.protocol import events as E
from market.protocol.buyer import BuyerConfig, BuyerJob, BuyerState
from market.protocol.commitment import chain_genesis, chain_link
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import (
    Accept,
    Bid,
    Cancel,
    Decline,
    DeclineReason,
    EndOfStream,
    Error,
    ErrorCode,
    Heartbeat,
    Prompt,
    Rfq,
    TokenChunk,
    cost_of,
)
from market.protocol.payments import BuyerWallet, ChannelTerms

JOB = bytes(range(16))
TERMS = ChannelTerms(token=b"\x07" * 20, chain_id=1, contract=b"\x0c" * 20)
S = BuyerState


def rfq(max_tokens: int = 32) -> Rfq:
    return Rfq(
        job_id=JOB,
        buyer="Buyer",
        buyer_address=b"\xbb" * 20,
        model_id="ab" * 32,
        prompt_tokens=3,
        max_tokens=max_tokens,
        max_price_per_1k=1000,
        region="",
        bid_window_ms=200,
    )


def new(deposit: int = 10**9, max_rounds: int = 2, max_tokens: int = 32) -> BuyerJob:
    w = BuyerWallet(
        buyer_address=b"\xbb" * 20, deposit=deposit, terms=TERMS, signer=lambda d: bytes(65)
    )
    return BuyerJob(
        rfq=rfq(max_tokens),
        prompt=Prompt(job_id=JOB, prompt="hi"),
        wallet=w,
        config=BuyerConfig(enough_bids=2, max_rounds=max_rounds),
    )


def bid(p: str, price: int = 500, job: bytes = JOB) -> E.BidReceived:
    b = Bid(
        job_id=job,
        provider=p,
        provider_address=(p.encode() * 20)[:20],
        price_per_1k=price,
        est_ttft_ms=100,
        est_tokens_per_s=40.0,
        chunk_tokens=8,
        credit_chunks=1,
    )
    return E.BidReceived(sender=p, bid=b)


def chunk(
    p: str, seq: int, prev: bytes, start: int, n: int = 8, good: bool = True
) -> tuple[E.ChunkReceived, bytes]:
    ids = tuple(range(start, start + n))
    lps = tuple(-0.5 for _ in ids)
    h = chain_link(prev, seq, ids, lps)
    c = TokenChunk(
        job_id=JOB,
        seq=seq,
        token_ids=ids,
        logprobs=lps,
        text="x",
        chain_hash=h if good else bytes(32),
    )
    return E.ChunkReceived(sender=p, chunk=c), h


def collecting() -> BuyerJob:
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    return m


def awarding() -> BuyerJob:
    m = collecting()
    m.handle(bid("PA", 400), 0.05)
    m.handle(bid("PB", 600), 0.06)
    return m


def streaming() -> BuyerJob:
    m = awarding()
    m.handle(E.AcceptReceived(sender="PA", accept=Accept(job_id=JOB, provider="PA")), 0.1)
    return m


def done() -> BuyerJob:
    m = streaming()
    prev = chain_genesis(JOB)
    for seq in range(4):
        ev, prev = chunk("PA", seq, prev, seq * 8)
        m.handle(ev, 0.2 + seq / 10)
    end = EndOfStream(job_id=JOB, total_tokens=32, finish_reason="length", result_commitment=prev)
    m.handle(E.EndReceived(sender="PA", end=end), 1.0)
    return m


def failed() -> BuyerJob:
    m = new(max_rounds=1)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.DeadlinePassed(), 1.0)
    return m


BUILDERS: dict[BuyerState, Callable[[], BuyerJob]] = {
    S.IDLE: new,
    S.COLLECTING: collecting,
    S.AWARDING: awarding,
    S.STREAMING: streaming,
    S.DONE: done,
    S.FAILED: failed,
}


def kinds(actions: list[A.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_builders_reach_their_states() -> None:
    for state, build in BUILDERS.items():
        assert build().state is state


# (start state, event, time, next state, action kinds expected in order)
CASES: list[tuple[BuyerState, E.Event, float, BuyerState, list[str]]] = [
    (S.IDLE, E.JobSubmitted(), 0.0, S.COLLECTING, ["Publish"]),
    (S.IDLE, E.CancelRequested(reason="nope"), 0.0, S.FAILED, ["ReportOutcome"]),
    (S.COLLECTING, bid("PA"), 0.1, S.COLLECTING, []),
    (
        S.COLLECTING,
        E.DeclineReceived(
            sender="PA", decline=Decline(job_id=JOB, provider="PA", reason=DeclineReason.BUSY)
        ),
        0.1,
        S.COLLECTING,
        [],
    ),
    (S.COLLECTING, E.DeadlinePassed(), 0.1, S.COLLECTING, []),  # early: nothing due
    (S.COLLECTING, E.DeadlinePassed(), 0.2, S.BACKOFF, []),  # window over, no bids
    (S.COLLECTING, bid("PA", job=b"\x09" * 16), 0.1, S.COLLECTING, ["ScorePeer"]),
    (S.COLLECTING, bid("PA", price=5000), 0.1, S.COLLECTING, ["ScorePeer"]),
    (
        S.COLLECTING,
        E.AcceptReceived(sender="PZ", accept=Accept(job_id=JOB, provider="PZ")),
        0.1,
        S.COLLECTING,
        ["ScorePeer"],
    ),
    (S.COLLECTING, E.CancelRequested(), 0.1, S.FAILED, ["ReportOutcome"]),
    (
        S.AWARDING,
        E.AcceptReceived(sender="PA", accept=Accept(job_id=JOB, provider="PA")),
        0.1,
        S.STREAMING,
        [],  # the prompt went out with the award
    ),
    (
        S.AWARDING,
        E.AcceptReceived(sender="PB", accept=Accept(job_id=JOB, provider="PB")),
        0.1,
        S.AWARDING,
        ["ScorePeer"],
    ),
    (
        S.AWARDING,
        E.ErrorReceived(sender="PA", error=Error(job_id=JOB, code=ErrorCode.OVERLOADED)),
        0.1,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.AWARDING,
        E.DeadlinePassed(),
        5.0,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.AWARDING,
        E.PeerDisconnected(peer="PA"),
        0.1,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (S.AWARDING, E.PeerDisconnected(peer="PQ"), 0.1, S.AWARDING, []),
    (S.AWARDING, bid("PC", 700), 0.1, S.AWARDING, []),  # late bid joins the runners-up
    (
        S.STREAMING,
        chunk("PA", 0, chain_genesis(JOB), 0)[0],
        0.2,
        S.STREAMING,
        ["DeliverTokens", "SendVoucher"],
    ),
    (
        S.STREAMING,
        chunk("PA", 0, chain_genesis(JOB), 0, good=False)[0],
        0.2,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.STREAMING,
        chunk("PA", 1, chain_genesis(JOB), 0)[0],
        0.2,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.STREAMING,
        chunk("PA", 0, chain_genesis(JOB), 0, n=9)[0],
        0.2,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (S.STREAMING, chunk("PB", 0, chain_genesis(JOB), 0)[0], 0.2, S.STREAMING, ["ScorePeer"]),
    (
        S.STREAMING,
        E.HeartbeatReceived(sender="PA", heartbeat=Heartbeat(job_id=JOB, seq=1)),
        0.2,
        S.STREAMING,
        [],
    ),
    (
        S.STREAMING,
        E.DeadlinePassed(),
        50.0,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.STREAMING,
        E.CancelReceived(sender="PA", cancel=Cancel(job_id=JOB)),
        0.2,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.STREAMING,
        E.EndReceived(
            sender="PA",
            end=EndOfStream(
                job_id=JOB, total_tokens=1, finish_reason="stop", result_commitment=bytes(32)
            ),
        ),
        0.2,
        S.AWARDING,
        ["ScorePeer", "SendCancel", "SendAward", "SendPrompt"],
    ),
    (
        S.STREAMING,
        E.EndReceived(
            sender="PA",
            end=EndOfStream(
                job_id=JOB,
                total_tokens=0,
                finish_reason="stop",
                result_commitment=chain_genesis(JOB),
            ),
        ),
        0.2,
        S.DONE,
        ["ScorePeer", "ReportOutcome"],
    ),
    (S.STREAMING, E.CancelRequested(reason="user"), 0.2, S.FAILED, ["SendCancel", "ReportOutcome"]),
    (S.DONE, chunk("PA", 9, bytes(32), 0)[0], 2.0, S.DONE, []),
    (S.DONE, E.DeadlinePassed(), 2.0, S.DONE, []),
    (S.FAILED, bid("PA"), 2.0, S.FAILED, []),
]


@pytest.mark.parametrize(("start", "event", "now", "after", "want"), CASES)
def test_transition(
    start: BuyerState, event: E.Event, now: float, after: BuyerState, want: list[str]
) -> None:
    m = BUILDERS[start]()
    out = m.handle(event, now)
    assert m.state is after
    assert kinds(out) == want
    for a in out:
        if isinstance(a, A.ScorePeer) and a.delta <= -0.1 and "unexpected" in a.reason:
            assert isinstance(a.error, RemoteProtocolError)


@pytest.mark.parametrize(
    ("start", "event"),
    [
        (S.COLLECTING, E.JobSubmitted()),
        (S.STREAMING, E.JobSubmitted()),
        (S.DONE, E.CancelRequested()),
        (S.FAILED, E.CancelRequested()),
        (S.DONE, E.JobSubmitted()),
        (S.IDLE, E.DeadlinePassed()),
        (S.STREAMING, E.TokensGenerated(token_ids=(1,), logprobs=(0.0,))),
    ],
)
def test_illegal_local_events_are_our_bug(start: BuyerState, event: E.Event) -> None:
    with pytest.raises(LocalProtocolError):
        BUILDERS[start]().handle(event, 9.0)


def test_every_state_answers_every_peer_event_without_raising() -> None:
    peer_events: list[E.Event] = [
        bid("PX"),
        E.DeclineReceived(
            sender="PX", decline=Decline(job_id=JOB, provider="PX", reason=DeclineReason.OTHER)
        ),
        E.AcceptReceived(sender="PX", accept=Accept(job_id=JOB, provider="PX")),
        chunk("PX", 0, chain_genesis(JOB), 0)[0],
        E.EndReceived(
            sender="PX",
            end=EndOfStream(
                job_id=JOB, total_tokens=0, finish_reason="stop", result_commitment=bytes(32)
            ),
        ),
        E.ErrorReceived(sender="PX", error=Error(job_id=JOB, code=ErrorCode.INTERNAL)),
        E.HeartbeatReceived(sender="PX", heartbeat=Heartbeat(job_id=JOB, seq=0)),
        E.CancelReceived(sender="PX", cancel=Cancel(job_id=JOB)),
    ]
    for build in BUILDERS.values():
        for ev in peer_events:
            m = build()
            before = m.state
            out = m.handle(ev, 0.15)
            if not isinstance(ev, E.BidReceived | E.DeclineReceived):
                assert m.state is before  # a stranger cannot move the job
            assert all(isinstance(a, A.Action) for a in out)


def test_pays_each_chunk_exactly_and_completes_with_the_commitment() -> None:
    m = done()
    out = m.outcome
    assert out is not None and out.completed and len(out.token_ids) == 32
    (seg,) = out.segments
    assert seg.provider == "PA" and seg.paid == cost_of(32, 400) and seg.commitment is not None
    assert m.wallet.spent == seg.paid and m.wallet.available == m.wallet.deposit - seg.paid
    assert out.awarded_at == 0.1 and out.bids == 2


def test_no_bids_fails_with_every_decline_reason() -> None:
    m = new(max_rounds=1)
    m.handle(E.JobSubmitted(), 0.0)
    for p, r in [
        ("PA", DeclineReason.REGION),
        ("PB", DeclineReason.POWER_SHED),
        ("PC", DeclineReason.REGION),
    ]:
        m.handle(
            E.DeclineReceived(sender=p, decline=Decline(job_id=JOB, provider=p, reason=r)), 0.1
        )
    out = m.handle(E.DeadlinePassed(), 0.2)
    assert kinds(out) == ["ReportOutcome"] and m.outcome is not None
    assert m.outcome.reason == "no_bids"
    assert "region×2" in m.outcome.why() and "power_shed×1" in m.outcome.why()


def busy(p: str) -> E.DeclineReceived:
    d = Decline(job_id=JOB, provider=p, reason=DeclineReason.BUSY, detail="4/4 slots")
    return E.DeclineReceived(sender=p, decline=d)


def test_a_full_market_queues_the_job_then_serves_it_when_capacity_frees() -> None:
    """Issue 15.2: admission, not failure. Busy answers put the job in the queue; the
    queue's signal runs a fresh auction; queue time is reported apart."""
    m = new(max_rounds=1)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(busy("PA"), 0.05)
    m.handle(
        E.DeclineReceived(
            sender="PB", decline=Decline(job_id=JOB, provider="PB", reason=DeclineReason.POWER_SHED)
        ),
        0.06,
    )
    out = m.handle(E.DeadlinePassed(), 0.2)
    assert kinds(out) == ["AwaitCapacity"] and m.state is S.QUEUED
    wait = out[0]
    assert isinstance(wait, A.AwaitCapacity) and wait.busy == 1 and wait.rfq == m.rfq
    assert m.next_deadline() == pytest.approx(600.0)  # only the job's own deadline runs
    assert kinds(m.handle(E.CapacityFreed(), 5.2)) == ["Publish"] and m.round == 1
    out = m.handle(bid("PA"), 5.25) + m.handle(bid("PB"), 5.26)
    won = next(a for a in out if isinstance(a, A.SendAward)).to
    m.handle(E.AcceptReceived(sender=won, accept=Accept(job_id=JOB, provider=won)), 5.3)
    m.handle(E.CancelRequested(), 5.4)
    assert m.outcome is not None
    assert m.outcome.queued_s == pytest.approx(5.0)
    assert m.outcome.award_s == pytest.approx(0.1)  # from its turn, not the wait


def test_a_queued_job_past_its_deadline_fails_as_saturated() -> None:
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(busy("PA"), 0.05)
    m.handle(E.DeadlinePassed(), 0.2)
    assert m.state is S.QUEUED
    out = m.handle(E.DeadlinePassed(), 600.0)
    assert kinds(out) == ["ReportOutcome"] and m.outcome is not None
    assert m.outcome.reason == "saturated" and "queued 599.8 s" in m.outcome.detail
    assert m.wallet.available == m.wallet.deposit  # the reservation went back


def test_a_full_queue_fails_the_job_as_saturated_at_once() -> None:
    m = new()
    out = m.handle(E.JobSubmitted(queue_first=True), 0.0)
    assert kinds(out) == ["AwaitCapacity"] and m.state is S.QUEUED  # others wait already
    out = m.handle(E.QueueFull(detail="64 jobs queued for this model"), 0.0)
    assert m.outcome is not None and m.outcome.reason == "saturated"
    assert m.outcome.detail == "64 jobs queued for this model"


def test_a_late_bid_takes_a_queued_job_out_of_the_queue() -> None:
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(busy("PA"), 0.05)
    m.handle(E.DeadlinePassed(), 0.2)
    out = m.handle(bid("PB"), 0.9)
    assert kinds(out) == ["SendAward", "SendPrompt"] and m.state is S.AWARDING
    assert m.handle(E.CapacityFreed(), 1.0) == []  # the queue's turn signal comes late


def test_concurrent_jobs_on_one_provider_state_a_cover_for_all_of_them() -> None:
    """Issue 15.1: the cover a provider needs counts every open job of ours with it."""
    w = BuyerWallet(
        buyer_address=b"\xbb" * 20, deposit=10**9, terms=TERMS, signer=lambda d: bytes(65)
    )
    covers = []
    jobs = []
    for i in range(3):
        job_id = bytes([i + 1]) * 16
        r = dataclasses.replace(rfq(), job_id=job_id)
        m = BuyerJob(rfq=r, prompt=Prompt(job_id=job_id, prompt="hi"), wallet=w)
        m.handle(E.JobSubmitted(), 0.0)
        out = m.handle(
            dataclasses.replace(bid("PA"), bid=dataclasses.replace(bid("PA").bid, job_id=job_id)),
            0.1,
        )
        out += m.handle(E.DeadlinePassed(), 0.3)
        covers.append(next(a for a in out if isinstance(a, A.SendAward)).cover)
        jobs.append(m)
    budget = cost_of(32, 1000)
    assert covers == [budget, 2 * budget, 3 * budget]
    for m in jobs:
        m.handle(E.CancelRequested(), 1.0)
    assert w.cover_needed((b"PA" * 20)[:20]) == 0


def test_insufficient_deposit_fails_at_once() -> None:
    m = new(deposit=10)
    m.handle(E.JobSubmitted(), 0.0)
    assert m.state is S.FAILED and m.outcome is not None
    assert m.outcome.reason == "insufficient_deposit"


def test_second_round_then_award() -> None:
    m = new(max_rounds=2)
    assert kinds(m.handle(E.JobSubmitted(), 0.0)) == ["Publish"]
    m.handle(E.DeadlinePassed(), 0.2)
    assert m.state is S.BACKOFF
    assert kinds(m.handle(E.DeadlinePassed(), 0.7)) == ["Publish"]
    m.handle(bid("PA"), 0.8)
    assert kinds(m.handle(E.DeadlinePassed(), 0.9)) == ["SendAward", "SendPrompt"]
    assert m.outcome is None and m.state is S.AWARDING


def test_direct_round_closes_once_every_asked_provider_answered() -> None:
    m = new()  # enough_bids 3: two answers would not close a gossip round
    m.handle(E.JobSubmitted(), 0.0)
    assert m.handle(E.RfqDelivered(asked=2), 0.0) == []
    assert m.handle(bid("PA"), 0.01) == []
    decline = Decline(job_id=JOB, provider="PB", reason=DeclineReason.BUSY)
    out = m.handle(E.DeclineReceived(sender="PB", decline=decline), 0.02)
    assert kinds(out) == ["SendAward", "SendPrompt"] and m.state is S.AWARDING
    assert out[0].to == out[1].to == "PA"


def test_direct_round_all_declined_backs_off_without_waiting_for_the_window() -> None:
    m = new(max_rounds=2)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=1), 0.0)
    decline = Decline(job_id=JOB, provider="PB", reason=DeclineReason.BUSY)
    assert m.handle(E.DeclineReceived(sender="PB", decline=decline), 0.01) == []
    assert m.state is S.BACKOFF
    # the next round goes out to everyone (the driver decides how); no count carries over
    assert kinds(m.handle(E.DeadlinePassed(), 0.6)) == ["Publish"]
    assert m.handle(bid("PA"), 0.61) == [] and m.state is S.COLLECTING


def test_the_prompt_follows_the_award_with_the_delivered_prefix_on_failover() -> None:
    m = streaming()
    ev, _ = chunk("PA", 0, chain_genesis(JOB), 0)
    m.handle(ev, 0.2)
    out = m.handle(E.PeerDisconnected(peer="PA"), 0.3)
    assert kinds(out)[-2:] == ["SendAward", "SendPrompt"]
    award, prompt = out[-2].message, out[-1].message
    assert out[-1].to == "PB" and award.resume_offset == 8
    assert prompt.resume_token_ids == tuple(range(8))


def test_a_bid_over_the_ceiling_still_counts_as_an_answer() -> None:
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=2), 0.0)
    assert m.handle(bid("PA"), 0.01) == []
    out = m.handle(bid("PB", price=5000), 0.02)  # too dear: scored down, but it answered
    assert kinds(out) == ["ScorePeer", "SendAward", "SendPrompt"] and out[1].to == "PA"


def test_rfq_delivered_must_count_someone() -> None:
    with pytest.raises(LocalProtocolError):
        E.RfqDelivered(asked=0)


def test_job_deadline_cancels_the_active_provider() -> None:
    m = streaming()
    out = m.handle(E.DeadlinePassed(), 10_000.0)
    assert kinds(out) == ["SendCancel", "ReportOutcome"] and m.outcome is not None
    assert m.outcome.reason == "deadline"


def test_constructor_checks_its_inputs() -> None:
    w = BuyerWallet(buyer_address=b"\xcc" * 20, deposit=1, terms=TERMS, signer=lambda d: bytes(65))
    with pytest.raises(LocalProtocolError):
        BuyerJob(rfq=rfq(), prompt=Prompt(job_id=JOB, prompt="x"), wallet=w)
    with pytest.raises(LocalProtocolError):
        BuyerJob(rfq=rfq(), prompt=Prompt(job_id=bytes(16), prompt="x"), wallet=new().wallet)


def test_the_award_states_the_cover_its_provider_needs() -> None:
    """Issue 13.3: the driver locks this much for the provider before the award goes."""
    m = collecting()
    out = m.handle(bid("PA", 400), 0.05) + m.handle(bid("PB", 600), 0.06)
    award = next(a for a in out if isinstance(a, A.SendAward))
    budget = cost_of(32, 1000)  # the job's worst case, reserved at submit
    assert award.provider_address == (b"PA" * 20)[:20]
    assert award.cover == budget


def test_collateral_short_fails_the_job_as_ours_and_scores_nobody() -> None:
    m = awarding()
    assert m.state is S.AWARDING
    out = m.handle(E.CollateralShort(peer="PB", detail="late"), 0.07)
    assert out == [] and m.state is S.AWARDING  # about another award: ignored
    out = m.handle(E.CollateralShort(peer="PA", detail="free deposit is 3"), 0.08)
    assert m.state is S.FAILED
    assert not any(isinstance(a, A.ScorePeer) for a in out)
    assert m.outcome is not None and m.outcome.reason == "insufficient_deposit"
    assert "free deposit is 3" in m.outcome.detail
    assert m.wallet.available == 10**9  # the reservation went back


def test_a_request_every_provider_refuses_as_bad_fails_as_bad_request() -> None:
    m = awarding()  # PA awarded, PB in the pool
    bad = Error(job_id=JOB, code=ErrorCode.BAD_REQUEST, message="prompt is 9000 tokens")
    m.handle(E.ErrorReceived(sender="PA", error=bad), 0.1)  # fails over to PB
    assert m.state is S.AWARDING and m.active is not None and m.active.bid.provider == "PB"
    m.handle(E.ErrorReceived(sender="PB", error=bad), 0.2)
    for t in range(3, 40):  # later rounds: no bids, the machine gives up
        if m.state in (S.DONE, S.FAILED):
            break
        m.handle(E.DeadlinePassed(), t * 1.0)
    assert m.outcome is not None and m.outcome.reason == "bad_request"
    assert "prompt is 9000 tokens" in m.outcome.detail


def test_one_provider_calling_a_request_bad_does_not_make_it_bad() -> None:
    m = awarding()
    bad = Error(job_id=JOB, code=ErrorCode.BAD_REQUEST, message="too long for me")
    m.handle(E.ErrorReceived(sender="PA", error=bad), 0.1)
    crash = Error(job_id=JOB, code=ErrorCode.INTERNAL, message="oom")
    m.handle(E.ErrorReceived(sender="PB", error=crash), 0.2)
    for t in range(3, 40):
        if m.state in (S.DONE, S.FAILED):
            break
        m.handle(E.DeadlinePassed(), t * 1.0)
    assert m.outcome is not None and m.outcome.reason == "providers_exhausted"


def test_a_direct_round_waits_once_more_for_answers_on_their_way() -> None:
    """A loaded provider is slow to quote: a direct round whose window ends with
    answers missing waits one more window before backing off (cheaper than a backoff
    and a new round when the answers were only late)."""
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=2), 0.0)
    assert m.handle(E.DeadlinePassed(), 0.2) == [] and m.state is S.COLLECTING
    assert m.next_deadline() == pytest.approx(0.4)
    out = m.handle(bid("PA"), 0.3) + m.handle(bid("PB"), 0.35)
    assert "SendAward" in kinds(out)
    m = new()
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=2), 0.0)
    m.handle(E.DeadlinePassed(), 0.2)
    m.handle(E.DeadlinePassed(), 0.4)  # once only: then the usual backoff
    assert m.state is S.BACKOFF


def test_time_running_out_while_every_slot_is_taken_is_saturation_not_a_failure() -> None:
    """The deadline passes mid-auction after busy answers (a short caller timeout):
    the market is full, which the SDK reports as MarketBusyError (HTTP 429)."""
    m = BuyerJob(
        rfq=rfq(),
        prompt=Prompt(job_id=JOB, prompt="hi"),
        wallet=new().wallet,
        config=BuyerConfig(enough_bids=2, job_timeout_s=1.0),
    )
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=2), 0.0)
    m.handle(busy("PA"), 0.05)  # PB has not answered: a direct round, not everyone
    m.handle(E.DeadlinePassed(), 0.2)  # the window closes: backs off for round 2
    out = m.handle(E.DeadlinePassed(), 1.0)
    assert kinds(out) == ["ReportOutcome"] and m.outcome is not None
    assert m.outcome.reason == "saturated" and "no provider had a free slot" in m.outcome.detail


def test_an_award_refused_for_want_of_a_slot_counts_as_busy() -> None:
    """A runner-up whose bid's hold had ended refuses the failover award ('no free
    slot'): that is the market being full, so the job queues rather than failing."""
    m = new(max_rounds=1)
    m.handle(E.JobSubmitted(), 0.0)
    out = m.handle(bid("PA"), 0.05) + m.handle(bid("PB"), 0.06)
    first = next(a for a in out if isinstance(a, A.SendAward)).to
    err = Error(job_id=JOB, code=ErrorCode.OVERLOADED, message="no free slot")
    out = m.handle(E.ErrorReceived(sender=first, error=err), 0.1)
    second = next(a for a in out if isinstance(a, A.SendAward)).to
    out = m.handle(E.ErrorReceived(sender=second, error=err), 0.2)
    assert "AwaitCapacity" in kinds(out) and m.state is S.QUEUED


def test_a_start_timeout_bounds_the_wait_for_the_first_token_only() -> None:
    """A streaming caller's read timeout: the first token must come within it; once
    tokens flow, only the job's own deadline counts."""
    cfg = BuyerConfig(enough_bids=1, start_timeout_s=2.0, job_timeout_s=600.0)
    m = BuyerJob(rfq=rfq(), prompt=Prompt(job_id=JOB, prompt="hi"), wallet=new().wallet, config=cfg)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(busy("PA"), 0.05)
    m.handle(E.DeadlinePassed(), 0.2)
    assert m.state is S.QUEUED and m.next_deadline() == pytest.approx(2.0)
    out = m.handle(E.DeadlinePassed(), 2.0)
    assert m.outcome is not None and m.outcome.reason == "saturated", kinds(out)
    m = BuyerJob(rfq=rfq(), prompt=Prompt(job_id=JOB, prompt="hi"), wallet=new().wallet, config=cfg)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(bid("PA"), 0.05)
    m.handle(E.AcceptReceived(sender="PA", accept=Accept(job_id=JOB, provider="PA")), 0.1)
    m.handle(chunk("PA", 0, chain_genesis(JOB, 0), 0)[0], 1.0)
    assert m.next_deadline() == pytest.approx(5.0)  # silence timer, no start limit now
    m.handle(E.HeartbeatReceived(sender="PA", heartbeat=Heartbeat(job_id=JOB, seq=1)), 4.0)
    assert m.handle(E.DeadlinePassed(), 4.5) == [] and m.state is S.STREAMING


def test_out_of_rounds_after_busy_answers_the_job_waits_instead_of_failing() -> None:
    """A direct round (not everyone asked) met a busy provider, later rounds heard
    nothing: the market was busy, not broken, so the job queues until its deadline."""
    m = new(max_rounds=1)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(E.RfqDelivered(asked=2), 0.0)
    m.handle(busy("PA"), 0.05)
    m.handle(E.DeadlinePassed(), 0.2)  # the window stretches once for PB
    out = m.handle(E.DeadlinePassed(), 0.4)
    assert kinds(out) == ["AwaitCapacity"] and m.state is S.QUEUED


def test_a_provider_that_had_no_room_may_take_the_job_later() -> None:
    """CI: A refused its award for want of a slot; the job went to B, B died, and A,
    the one provider left, bid again: its bids were ignored for the rest of the job,
    which queued until its 600 s deadline. No room then is no fault: A may win a
    later round (a fresh bid), and is paid for that segment on its own."""
    m = new(max_rounds=2)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(bid("PA", 400), 0.05)
    m.handle(bid("PB", 600), 0.06)  # PA first (cheaper)
    err = Error(job_id=JOB, code=ErrorCode.OVERLOADED, message="no free slot")
    out = m.handle(E.ErrorReceived(sender="PA", error=err), 0.1)
    assert [a.to for a in out if isinstance(a, A.SendAward)] == ["PB"]
    m.handle(E.AcceptReceived(sender="PB", accept=Accept(job_id=JOB, provider="PB")), 0.2)
    ev, _ = chunk("PB", 0, chain_genesis(JOB, 0), 0)
    m.handle(ev, 0.3)
    out = m.handle(E.PeerDisconnected(peer="PB"), 0.4)  # PB is gone, nobody left
    assert kinds(out)[-1] == "AwaitCapacity"  # PA was busy: the job waits its turn
    m.handle(E.CapacityFreed(), 0.9)
    m.handle(bid("PA", 400), 1.0)
    out = m.handle(E.DeadlinePassed(), m.next_deadline() or 0.0)  # the window closes
    (award,) = [a for a in out if isinstance(a, A.SendAward)]
    assert award.to == "PA" and award.message.resume_offset == 8


def test_a_provider_that_cheated_is_never_awarded_again_in_that_job() -> None:
    """A provider whose chunk broke the hash chain stays out of the job, whatever it bids."""
    m = new(max_rounds=3)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(bid("PA", 400), 0.05)
    m.handle(E.AcceptReceived(sender="PA", accept=Accept(job_id=JOB, provider="PA")), 0.1)
    ev, _ = chunk("PA", 0, chain_genesis(JOB, 0), 0, good=False)
    m.handle(ev, 0.2)
    while m.state is not S.COLLECTING:
        m.handle(E.DeadlinePassed(), m.next_deadline() or 0.0)
    assert m.handle(bid("PA", 400), 1.0) == [] and m.state is S.COLLECTING


def test_a_provider_that_refused_our_request_is_not_asked_again_in_that_job() -> None:
    """'bad request' is about our request: the same provider would refuse it again."""
    m = new(max_rounds=3)
    m.handle(E.JobSubmitted(), 0.0)
    m.handle(bid("PA", 400), 0.05)
    err = Error(job_id=JOB, code=ErrorCode.BAD_REQUEST, message="prompt too long")
    m.handle(E.ErrorReceived(sender="PA", error=err), 0.1)
    while m.state is not S.COLLECTING:
        m.handle(E.DeadlinePassed(), m.next_deadline() or 0.0)
    assert m.handle(bid("PA", 400), 1.0) == []
