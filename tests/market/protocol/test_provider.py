"""The provider job machine, transition by transition (legal and illegal)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from market.protocol import actions as A
from market.protocol import events as E
from market.protocol.commitment import chain_genesis, chain_link
from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Award, Cancel, Prompt, Rfq, TokenChunk, Voucher, cost_of
from market.protocol.payments import BuyerWallet, ChannelTerms, VoucherBook
from market.protocol.policy import CostPlusPolicy, ProviderStatus
from market.protocol.provider import ProviderConfig, ProviderJob, ProviderState

JOB = bytes(range(16))
MODEL = "ab" * 32
TERMS = ChannelTerms(token=b"\x07" * 20, chain_id=1, contract=b"\x0c" * 20)
BUYER_ADDR = b"\xbb" * 20
ME = b"\xaa" * 20
S = ProviderState
RFQ = Rfq(
    job_id=JOB,
    buyer="Buyer",
    buyer_address=BUYER_ADDR,
    model_id=MODEL,
    prompt_tokens=3,
    max_tokens=32,
    max_price_per_1k=1000,
    region="",
    bid_window_ms=200,
)
STATUS = ProviderStatus(
    provider="PA",
    provider_address=ME,
    region="eu-west",
    power_state="normal",
    models=frozenset({MODEL}),
    active_jobs=0,
    capacity=1,
    tokens_per_s=40.0,
)
POLICY = CostPlusPolicy(
    electricity_per_kwh=150_000, power_draw_w=300.0, chunk_tokens=8, credit_chunks=1
)
PRICE = 375


def verify(v: Voucher) -> bool:
    return v.signature[:20] == v.buyer_address


def new() -> ProviderJob:
    book = VoucherBook(provider_address=ME, terms=TERMS, verifier=verify, cover_of=lambda a: 10**6)
    return ProviderJob(
        provider="PA", provider_address=ME, policy=POLICY, book=book, config=ProviderConfig()
    )


WALLET: list[BuyerWallet] = []


def voucher(
    cum: int, job: bytes = JOB, sig_ok: bool = True, job_paid: int | None = None
) -> E.VoucherReceived:
    """A voucher of a channel with one job (so the job has paid the whole cumulative)."""
    sig = (BUYER_ADDR if sig_ok else bytes(20)) + bytes(45)
    v = Voucher(
        job_id=job,
        buyer_address=BUYER_ADDR,
        provider_address=ME,
        token=TERMS.token,
        cumulative_amount=cum,
        epoch=0,
        chain_id=1,
        contract=TERMS.contract,
        signature=sig,
        job_paid=cum if job_paid is None else job_paid,
    )
    return E.VoucherReceived(sender="Buyer", voucher=v)


def award(**kw: object) -> E.AwardReceived:
    a = Award(
        job_id=JOB,
        provider="PA",
        price_per_1k=PRICE,
        chunk_tokens=8,
        credit_chunks=1,
        max_tokens=32,
    )
    return E.AwardReceived(sender="Buyer", award=dataclasses.replace(a, **kw), status=STATUS)  # type: ignore[arg-type]


def toks(n: int = 8, start: int = 0) -> E.TokensGenerated:
    ids = tuple(range(start, start + n))
    return E.TokensGenerated(token_ids=ids, logprobs=tuple(-0.25 for _ in ids), text="t")


def bid_sent() -> ProviderJob:
    m = new()
    m.handle(E.RfqReceived(rfq=RFQ, status=STATUS), 0.0)
    return m


def accepted() -> ProviderJob:
    m = bid_sent()
    m.handle(award(), 0.1)
    return m


def streaming() -> ProviderJob:
    m = accepted()
    m.handle(E.PromptReceived(sender="Buyer", prompt=Prompt(job_id=JOB, prompt="hi")), 0.2)
    return m


def finishing() -> ProviderJob:
    m = streaming()
    m.handle(toks(8), 0.3)
    m.handle(E.GenerationFinished(finish_reason="stop"), 0.31)
    return m


def done() -> ProviderJob:
    m = finishing()
    m.handle(voucher(cost_of(8, PRICE)), 0.4)
    return m


BUILDERS: dict[ProviderState, Callable[[], ProviderJob]] = {
    S.IDLE: new,
    S.BID_SENT: bid_sent,
    S.ACCEPTED: accepted,
    S.STREAMING: streaming,
    S.FINISHING: finishing,
    S.DONE: done,
}


def kinds(actions: list[A.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_bid_holds_its_slot_until_not_awarded_then_a_late_award_needs_a_free_one() -> None:
    """Issue 15.2: bids reserve what they promise; a failover award after the hold
    is admitted only against the capacity free then."""
    m = bid_sent()
    assert m.next_deadline() == pytest.approx(2.2)  # the hold, before the bid's TTL
    assert kinds(m.handle(E.NotAwarded(), 0.3)) == ["ReleaseSlot"]
    assert m.next_deadline() == pytest.approx(30.0)
    full = dataclasses.replace(STATUS, active_jobs=1)
    out = m.handle(E.AwardReceived(sender="Buyer", award=award().award, status=full), 5.0)
    assert kinds(out) == ["SendError", "ReportOutcome"] and m.state is S.DONE
    m = bid_sent()
    m.handle(E.NotAwarded(), 0.3)
    out = m.handle(E.AwardReceived(sender="Buyer", award=award().award, status=STATUS), 5.0)
    assert kinds(out) == ["ClaimSlot", "SendAccept"] and m.state is S.ACCEPTED
    # every claim is matched by one release over the job's life
    out += m.handle(E.PromptReceived(sender="Buyer", prompt=Prompt(job_id=JOB, prompt="hi")), 5.1)
    out += m.handle(E.CancelReceived(sender="Buyer", cancel=Cancel(job_id=JOB)), 5.2)
    assert kinds(out).count("ClaimSlot") == kinds(out).count("ReleaseSlot") == 1


def test_a_long_bid_window_cannot_pin_a_slot() -> None:
    """A buyer sets the RFQ's window; a hostile one asking for ten minutes must not
    hold our capacity that long: the hold is capped at ``max_hold_s``."""
    m = new()
    slow = dataclasses.replace(RFQ, bid_window_ms=600_000)
    m.handle(E.RfqReceived(rfq=slow, status=STATUS), 0.0)
    assert m.next_deadline() == pytest.approx(5.0)
    assert kinds(m.handle(E.DeadlinePassed(), 5.0)) == ["ReleaseSlot"]


def test_the_bid_carries_the_slots_left_after_its_own() -> None:
    roomy = dataclasses.replace(STATUS, capacity=4, active_jobs=1)
    out = new().handle(E.RfqReceived(rfq=RFQ, status=roomy), 0.0)
    bid = next(a for a in out if isinstance(a, A.SendBid)).message
    assert bid.free_slots == 2


def test_builders_reach_their_states() -> None:
    for state, build in BUILDERS.items():
        assert build().state is state


CASES: list[tuple[ProviderState, E.Event, float, ProviderState, list[str]]] = [
    (S.IDLE, E.RfqReceived(rfq=RFQ, status=STATUS), 0.0, S.BID_SENT, ["ClaimSlot", "SendBid"]),
    (
        S.IDLE,
        E.RfqReceived(rfq=RFQ, status=dataclasses.replace(STATUS, power_state="off")),
        0.0,
        S.DONE,
        ["SendDecline", "ReportOutcome"],
    ),
    (
        S.IDLE,
        E.RfqReceived(rfq=RFQ, status=dataclasses.replace(STATUS, active_jobs=1)),
        0.0,
        S.DONE,
        ["SendDecline", "ReportOutcome"],
    ),
    # the bid holds its slot: the award takes it, no second claim
    (S.BID_SENT, award(), 0.1, S.ACCEPTED, ["SendAccept"]),
    (
        S.BID_SENT,
        award(price_per_1k=PRICE - 1),
        0.1,
        S.DONE,
        ["ScorePeer", "SendError", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.BID_SENT,
        award(chunk_tokens=9),
        0.1,
        S.DONE,
        ["ScorePeer", "SendError", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.BID_SENT,
        award(max_tokens=33),
        0.1,
        S.DONE,
        ["ScorePeer", "SendError", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.BID_SENT,
        E.AwardReceived(sender="Mallory", award=award().award, status=STATUS),
        0.1,
        S.BID_SENT,
        ["ScorePeer"],
    ),
    (
        # within the hold the node is "full" with our own held slot: still ours
        S.BID_SENT,
        E.AwardReceived(
            sender="Buyer", award=award().award, status=dataclasses.replace(STATUS, active_jobs=1)
        ),
        0.1,
        S.ACCEPTED,
        ["SendAccept"],
    ),
    (S.BID_SENT, E.NotAwarded(), 0.1, S.BID_SENT, ["ReleaseSlot"]),
    (S.BID_SENT, E.DeadlinePassed(), 1.0, S.BID_SENT, []),
    # the hold ends with the bid window (0.2 s) plus the grace (2 s); the bid stays open
    (S.BID_SENT, E.DeadlinePassed(), 2.2, S.BID_SENT, ["ReleaseSlot"]),
    (S.BID_SENT, E.DeadlinePassed(), 31.0, S.DONE, ["ReleaseSlot", "ReportOutcome"]),
    (
        S.BID_SENT,
        E.CancelReceived(sender="Buyer", cancel=Cancel(job_id=JOB)),
        0.1,
        S.DONE,
        ["ReleaseSlot", "ReportOutcome"],
    ),
    (S.BID_SENT, voucher(1), 0.1, S.BID_SENT, ["ScorePeer"]),
    (
        S.ACCEPTED,
        E.PromptReceived(sender="Buyer", prompt=Prompt(job_id=JOB, prompt="hi")),
        0.2,
        S.STREAMING,
        ["StartGeneration"],
    ),
    (
        S.ACCEPTED,
        E.PromptReceived(
            sender="Buyer", prompt=Prompt(job_id=JOB, prompt="hi", resume_token_ids=(1,))
        ),
        0.2,
        S.DONE,
        ["ScorePeer", "SendError", "ReleaseSlot", "ReportOutcome"],
    ),
    (S.ACCEPTED, E.DeadlinePassed(), 10.0, S.DONE, ["ReleaseSlot", "ReportOutcome"]),
    (S.ACCEPTED, award(), 0.2, S.ACCEPTED, []),
    (S.STREAMING, toks(8), 0.3, S.STREAMING, ["SendChunk"]),
    # The first chunk leaves with the first tokens (time to first token)…
    (S.STREAMING, toks(5), 0.3, S.STREAMING, ["SendChunk"]),
    (
        S.STREAMING,
        E.GenerationFinished(finish_reason="stop"),
        0.3,
        S.DONE,
        ["SendEnd", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        E.GenerationFailed(message="oom"),
        0.3,
        S.DONE,
        ["SendError", "ReleaseSlot", "ReportOutcome"],
    ),
    (S.STREAMING, E.DeadlinePassed(), 1.5, S.STREAMING, ["SendHeartbeat"]),
    (
        S.STREAMING,
        E.CancelReceived(sender="Buyer", cancel=Cancel(job_id=JOB)),
        0.3,
        S.DONE,
        ["StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        E.PeerDisconnected(peer="Buyer"),
        0.3,
        S.DONE,
        ["StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        E.CancelRequested(reason="power_shed"),
        0.3,
        S.DONE,
        ["SendCancel", "StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        voucher(1, sig_ok=False),
        0.3,
        S.DONE,
        ["ScorePeer", "SendError", "StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        voucher(10**7),
        0.3,
        S.DONE,
        ["ScorePeer", "SendError", "StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (
        S.STREAMING,
        voucher(1, job=bytes(16)),
        0.3,
        S.DONE,
        ["ScorePeer", "SendError", "StopGeneration", "ReleaseSlot", "ReportOutcome"],
    ),
    (S.FINISHING, voucher(cost_of(8, PRICE)), 0.4, S.DONE, ["StoreVoucher", "ReportOutcome"]),
    (S.FINISHING, voucher(1), 0.4, S.FINISHING, ["StoreVoucher"]),
    (S.FINISHING, E.DeadlinePassed(), 100.0, S.DONE, ["ScorePeer", "ReportOutcome"]),
    (S.DONE, award(), 1.0, S.DONE, []),  # accepted before: a late duplicate is ignored
    (S.DONE, E.DeadlinePassed(), 1.0, S.DONE, []),
]


@pytest.mark.parametrize(("start", "event", "now", "after", "want"), CASES)
def test_transition(
    start: ProviderState, event: E.Event, now: float, after: ProviderState, want: list[str]
) -> None:
    m = BUILDERS[start]()
    out = m.handle(event, now)
    assert m.state is after
    assert kinds(out) == want


@pytest.mark.parametrize(
    ("start", "event"),
    [
        (S.IDLE, toks()),
        (S.BID_SENT, toks()),
        (S.ACCEPTED, E.GenerationFinished()),
        (S.DONE, toks()),
        (S.BID_SENT, E.RfqReceived(rfq=RFQ, status=STATUS)),
        (S.FINISHING, toks()),
        (S.IDLE, E.DeadlinePassed()),
    ],
)
def test_illegal_local_events_are_our_bug(start: ProviderState, event: E.Event) -> None:
    with pytest.raises(LocalProtocolError):
        BUILDERS[start]().handle(event, 1.0)


def test_engine_overrun_is_our_bug() -> None:
    m = streaming()
    with pytest.raises(LocalProtocolError):
        m.handle(toks(33), 0.3)


def test_late_award_after_declining_gets_an_error_back() -> None:
    m = new()
    m.handle(E.RfqReceived(rfq=RFQ, status=dataclasses.replace(STATUS, power_state="off")), 0.0)
    assert kinds(m.handle(award(), 1.0)) == ["SendError"]


def test_credit_bounds_unpaid_chunks_and_pauses_the_engine() -> None:
    m = streaming()
    assert kinds(m.handle(toks(8, 0), 0.3)) == ["SendChunk"]
    assert kinds(m.handle(toks(8, 8), 0.4)) == ["PauseGeneration"]  # one chunk unpaid = credit
    assert m.unpaid_chunks == 1
    out = m.handle(voucher(cost_of(8, PRICE)), 0.5)
    assert kinds(out) == ["StoreVoucher", "SendChunk", "ResumeGeneration"]
    assert m.unpaid_chunks == 1
    # no more payment: after payment_timeout the provider gives up, risk one chunk
    m.handle(toks(8, 16), 0.6)
    out = m.handle(E.DeadlinePassed(), 0.6 + 4.99)
    assert "SendError" not in kinds(out)
    out = m.handle(E.DeadlinePassed(), 0.6 + 5.0)
    assert kinds(out) == [
        "ScorePeer",
        "SendError",
        "StopGeneration",
        "ReleaseSlot",
        "ReportOutcome",
    ]
    assert m.outcome is not None and m.outcome.reason == "payment_behind"
    assert m.outcome.tokens_sent - 8 == 8  # exactly one unpaid chunk out


def test_chunks_carry_the_hash_chain_and_end_carries_the_commitment() -> None:
    m = streaming()
    sent: list[A.Action] = []
    sent += m.handle(toks(8, 0), 0.3)
    sent += m.handle(voucher(cost_of(8, PRICE)), 0.35)
    sent += m.handle(toks(3, 8), 0.4)
    sent += m.handle(E.GenerationFinished(finish_reason="stop"), 0.41)
    chunks = [a.message for a in sent if isinstance(a, A.SendChunk)]
    ends = [a.message for a in sent if isinstance(a, A.SendEnd)]
    assert [len(c.token_ids) for c in chunks if isinstance(c, TokenChunk)] == [8, 3]
    h = chain_genesis(JOB)
    for c in chunks:
        assert isinstance(c, TokenChunk)
        h = chain_link(h, c.seq, c.token_ids, c.logprobs)
        assert c.chain_hash == h
    (end,) = ends
    assert end.result_commitment == h and end.total_tokens == 11  # type: ignore[attr-defined]
    assert m.state is S.FINISHING
    m.handle(voucher(cost_of(11, PRICE)), 0.5)
    assert m.outcome is not None and m.outcome.completed and m.outcome.paid == cost_of(11, PRICE)


def test_only_the_first_chunk_leaves_before_it_is_full() -> None:
    m = streaming()
    assert kinds(m.handle(toks(1, 0), 0.3)) == ["SendChunk"]  # first token out at once
    m.handle(voucher(cost_of(1, PRICE) or 1), 0.31)
    assert kinds(m.handle(toks(5, 1), 0.4)) == []  # a later partial chunk waits to fill
    assert kinds(m.handle(toks(3, 6), 0.5)) == ["SendChunk"]


def test_a_suspended_buyer_is_declined_with_the_cause() -> None:
    """Issue 13.1: a channel that changed under the provider stops new jobs."""
    m = new()
    m.book.suspend(BUYER_ADDR, "epoch 1 on chain voided 279 held in epoch 0")
    out = m.handle(E.RfqReceived(rfq=RFQ, status=STATUS), 0.0)
    decline = next(a for a in out if isinstance(a, A.SendDecline))
    assert decline.message.reason.value == "other"
    assert "channel suspended: epoch 1 on chain voided 279" in decline.message.detail
    assert m.state is S.DONE
    other = dataclasses.replace(RFQ, buyer_address=b"\xcc" * 20)
    fresh = new()
    assert kinds(fresh.handle(E.RfqReceived(rfq=other, status=STATUS), 0.0)) == [
        "ClaimSlot",
        "SendBid",
    ]


def test_an_engine_refusing_the_request_says_bad_request() -> None:
    m = streaming()
    out = m.handle(E.GenerationFailed(message="prompt is 9000 tokens", bad_request=True), 0.3)
    err = next(a for a in out if isinstance(a, A.SendError))
    assert err.message.code.value == "bad_request"
    m = streaming()
    out = m.handle(E.GenerationFailed(message="CUDA error"), 0.3)
    err = next(a for a in out if isinstance(a, A.SendError))
    assert err.message.code.value == "internal"
