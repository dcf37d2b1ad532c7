"""The one driver contract (market.protocol.driver): message → event tables, action
dispatch, and the shared ``handle()`` of the job machines. Table-driven."""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from market.protocol import MESSAGE_TYPES, LocalProtocolError, Message, RemoteProtocolError
from market.protocol import actions as A
from market.protocol import events as E
from market.protocol.buyer import BuyerJob
from market.protocol.driver import (
    BUYER_ACTIONS,
    BUYER_INBOX,
    BUYER_STREAM,
    PROVIDER_ACTIONS,
    PROVIDER_INBOX,
    PROVIDER_STREAM,
    RFQ_ANSWERS,
    BuyerDriver,
    ProviderDriver,
    buyer_event,
    dispatch_buyer,
    dispatch_provider,
    provider_event,
)
from market.protocol.machine import JobMachine
from market.protocol.messages import (
    Accept,
    Award,
    Bid,
    Cancel,
    Decline,
    EndOfStream,
    Error,
    Heartbeat,
    Prompt,
    Rfq,
    TokenChunk,
    Voucher,
)
from market.protocol.outcomes import BuyerOutcome, ProviderOutcome
from market.protocol.policy import ProviderStatus
from market.protocol.provider import ProviderJob
from tests.market.protocol.wire_corpus import random_struct

JOB = bytes(range(16))


def sample(cls: type[Message], seed: int = 0) -> Any:
    return random_struct(cls, random.Random(f"{cls.__name__}/{seed}"))


def status() -> ProviderStatus:
    return ProviderStatus(
        provider="P1",
        provider_address=b"\x01" * 20,
        region="eu-west",
        power_state="normal",
        models=frozenset({"m"}),
        active_jobs=0,
        capacity=1,
        tokens_per_s=10.0,
    )


# ------------------------------------------------------------- messages → events

# The whole contract, spelled out: a change to it must change this test.
TO_BUYER = [
    (Bid, E.BidReceived),
    (Decline, E.DeclineReceived),
    (Accept, E.AcceptReceived),
    (TokenChunk, E.ChunkReceived),
    (EndOfStream, E.EndReceived),
    (Error, E.ErrorReceived),
    (Heartbeat, E.HeartbeatReceived),
    (Cancel, E.CancelReceived),
]
TO_PROVIDER = [
    (Award, E.AwardReceived),
    (Prompt, E.PromptReceived),
    (Voucher, E.VoucherReceived),
    (Cancel, E.CancelReceived),
    (Heartbeat, None),  # liveness only: taken, nothing for the machine
]


def test_the_inboxes_are_exactly_these() -> None:
    assert dict(BUYER_INBOX) == dict(TO_BUYER)
    assert dict(PROVIDER_INBOX) == dict(TO_PROVIDER)
    assert set(BUYER_INBOX) == RFQ_ANSWERS | PROVIDER_STREAM
    assert not RFQ_ANSWERS & PROVIDER_STREAM
    assert set(PROVIDER_INBOX) - {Award} == BUYER_STREAM


@pytest.mark.parametrize(("msg_type", "event_type"), TO_BUYER)
def test_each_message_to_a_buyer_becomes_its_event(
    msg_type: type[Message], event_type: type[E.PeerEvent]
) -> None:
    msg = sample(msg_type)
    ev = buyer_event("P1", msg, region="eu-west")
    assert type(ev) is event_type
    assert ev.sender == "P1" and ev.message is msg
    if isinstance(ev, E.BidReceived):
        assert ev.region == "eu-west"


@pytest.mark.parametrize(("msg_type", "event_type"), TO_PROVIDER)
def test_each_message_to_a_provider_becomes_its_event(
    msg_type: type[Message], event_type: type[E.PeerEvent] | None
) -> None:
    msg = sample(msg_type)
    calls: list[int] = []

    def now_status() -> ProviderStatus:
        calls.append(1)
        return status()

    ev = provider_event("B1", msg, status=now_status)
    if event_type is None:
        assert ev is None and calls == []
        return
    assert type(ev) is event_type
    assert ev.sender == "B1" and ev.message is msg
    if isinstance(ev, E.AwardReceived):
        assert ev.status == status() and calls == [1]
    else:
        assert calls == []  # the node's status is read for an award only


@pytest.mark.parametrize("msg_type", sorted(MESSAGE_TYPES.values(), key=lambda t: t.__name__))
def test_a_message_outside_the_inbox_is_the_peers_fault(msg_type: type[Message]) -> None:
    msg = sample(msg_type)
    if msg_type not in BUYER_INBOX:
        with pytest.raises(RemoteProtocolError, match="a buyer takes no"):
            buyer_event("P1", msg)
    if msg_type not in PROVIDER_INBOX:
        with pytest.raises(RemoteProtocolError, match="a provider takes no"):
            provider_event("B1", msg, status=status)


def test_unknown_messages_include_gossip_and_the_wrong_direction() -> None:
    for msg_type in (Rfq, Award, Prompt, Voucher):
        with pytest.raises(RemoteProtocolError):
            buyer_event("P1", sample(msg_type))
    for msg_type in (Rfq, Bid, Decline, Accept, TokenChunk, EndOfStream, Error):
        with pytest.raises(RemoteProtocolError):
            provider_event("B1", sample(msg_type), status=status)


@pytest.mark.parametrize(
    ("side", "only", "msg_type"),
    [
        ("buyer", RFQ_ANSWERS, Accept),  # a bid stream carries a bid or a decline only
        ("buyer", RFQ_ANSWERS, TokenChunk),
        ("buyer", PROVIDER_STREAM, Bid),  # a job stream carries no bids
        ("buyer", PROVIDER_STREAM, Decline),
        ("provider", BUYER_STREAM, Award),  # the award opens the stream; a second is bogus
    ],
)
def test_a_stream_narrowed_with_only_refuses_the_rest(
    side: str, only: frozenset[type[Message]], msg_type: type[Message]
) -> None:
    msg = sample(msg_type)
    with pytest.raises(RemoteProtocolError, match="unexpected"):
        if side == "buyer":
            buyer_event("P1", msg, only=only)
        else:
            provider_event("B1", msg, status=status, only=only)
    for ok in only:  # and takes what it names
        if side == "buyer":
            assert isinstance(buyer_event("P1", sample(ok), only=only), E.PeerEvent)
        else:
            provider_event("B1", sample(ok), status=status, only=only)  # no error


def test_an_award_without_the_nodes_status_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match="status"):
        provider_event("B1", sample(Award))


# ------------------------------------------------------------- actions → handlers


class Recorder:
    """A driver of both sides that records which handler got what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def _got(self, name: str, arg: object) -> str:
        self.calls.append((name, arg))
        return name

    # BuyerDriver
    def publish(self, action: A.Publish) -> str:
        return self._got("publish", action)

    def await_capacity(self, action: A.AwaitCapacity) -> str:
        return self._got("await_capacity", action)

    def send_award(self, action: A.SendAward) -> str:
        return self._got("send_award", action)

    def send_voucher(self, action: A.SendVoucher) -> str:
        return self._got("send_voucher", action)

    def deliver_tokens(self, action: A.DeliverTokens) -> str:
        return self._got("deliver_tokens", action)

    # both
    def send(self, action: A.Send) -> str:
        return self._got("send", action)

    def score_peer(self, action: A.ScorePeer) -> str:
        return self._got("score_peer", action)

    def report_outcome(self, outcome: BuyerOutcome | ProviderOutcome) -> str:
        return self._got("report_outcome", outcome)

    # ProviderDriver
    def start_generation(self, action: A.StartGeneration) -> str:
        return self._got("start_generation", action)

    def pause_generation(self, action: A.PauseGeneration) -> str:
        return self._got("pause_generation", action)

    def resume_generation(self, action: A.ResumeGeneration) -> str:
        return self._got("resume_generation", action)

    def stop_generation(self, action: A.StopGeneration) -> str:
        return self._got("stop_generation", action)

    def claim_slot(self, action: A.ClaimSlot) -> str:
        return self._got("claim_slot", action)

    def release_slot(self, action: A.ReleaseSlot) -> str:
        return self._got("release_slot", action)

    def store_voucher(self, action: A.StoreVoucher) -> str:
        return self._got("store_voucher", action)


BUYER_OUTCOME = BuyerOutcome(
    job_id=JOB,
    completed=True,
    reason="",
    detail="",
    token_ids=(1, 2),
    segments=(),
    declines=(),
    bids=1,
    rounds=1,
    failovers=0,
    awarded_at=0.1,
    finished_at=1.0,
)
PROVIDER_OUTCOME = ProviderOutcome(
    job_id=JOB, buyer="B1", completed=True, reason="", tokens_sent=2, paid=3, commitment=None
)


def send(cls: type[A.Send]) -> A.Send:
    return cls(to="X1", message=sample(cls.MESSAGE))


BUYER_CASES: list[tuple[A.Action, str]] = [
    (A.Publish(rfq=sample(Rfq)), "publish"),
    (A.AwaitCapacity(rfq=sample(Rfq), busy=2), "await_capacity"),
    (send(A.SendAward), "send_award"),
    (send(A.SendVoucher), "send_voucher"),
    (send(A.SendPrompt), "send"),
    (send(A.SendCancel), "send"),
    (
        A.DeliverTokens(offset=0, token_ids=(1,), logprobs=(-0.5,), text="a", provider="P1"),
        "deliver_tokens",
    ),
    (A.ScorePeer(peer="P1", delta=-0.1, reason="late"), "score_peer"),
    (A.ReportOutcome(outcome=BUYER_OUTCOME), "report_outcome"),
]
PROVIDER_CASES: list[tuple[A.Action, str]] = [
    *[
        (send(cls), "send")
        for cls in (
            A.SendBid,
            A.SendDecline,
            A.SendAccept,
            A.SendChunk,
            A.SendEnd,
            A.SendError,
            A.SendHeartbeat,
            A.SendCancel,
        )
    ],
    (A.StartGeneration(prompt=sample(Prompt), max_new_tokens=4), "start_generation"),
    (A.PauseGeneration(job_id=JOB), "pause_generation"),
    (A.ResumeGeneration(job_id=JOB), "resume_generation"),
    (A.StopGeneration(job_id=JOB, reason="cancelled"), "stop_generation"),
    (A.ClaimSlot(job_id=JOB), "claim_slot"),
    (A.ReleaseSlot(job_id=JOB), "release_slot"),
    (A.StoreVoucher(voucher=sample(Voucher)), "store_voucher"),
    (A.ScorePeer(peer="B1", delta=-0.2, reason="payment behind"), "score_peer"),
    (A.ReportOutcome(outcome=PROVIDER_OUTCOME), "report_outcome"),
]


@pytest.mark.parametrize(("action", "handler"), BUYER_CASES, ids=lambda x: type(x).__name__)
def test_each_buyer_action_reaches_its_handler(action: A.Action, handler: str) -> None:
    r = Recorder()
    assert dispatch_buyer(r, action) == handler  # the handler's return comes back
    expected = BUYER_OUTCOME if isinstance(action, A.ReportOutcome) else action
    assert r.calls == [(handler, expected)]


@pytest.mark.parametrize(("action", "handler"), PROVIDER_CASES, ids=lambda x: type(x).__name__)
def test_each_provider_action_reaches_its_handler(action: A.Action, handler: str) -> None:
    r = Recorder()
    assert dispatch_provider(r, action) == handler
    expected = PROVIDER_OUTCOME if isinstance(action, A.ReportOutcome) else action
    assert r.calls == [(handler, expected)]


def test_every_action_type_is_routed_by_some_side() -> None:
    concrete = {
        cls
        for name in A.__all__
        if inspect.isclass(cls := getattr(A, name)) and cls not in (A.Action, A.Send)
    }
    assert concrete == BUYER_ACTIONS | PROVIDER_ACTIONS
    assert {type(a) for a, _ in BUYER_CASES} == BUYER_ACTIONS
    assert {type(a) for a, _ in PROVIDER_CASES} == PROVIDER_ACTIONS


def test_handlers_are_the_protocols_methods() -> None:
    """The recorder's method names are exactly the protocols' (no stray handler)."""

    def names(proto: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(proto, inspect.isfunction) if n[0] != "_"}

    assert {h for _, h in BUYER_CASES} == names(BuyerDriver)
    assert {h for _, h in PROVIDER_CASES} == names(ProviderDriver)


@pytest.mark.parametrize(
    ("dispatch", "action"),
    [
        (dispatch_buyer, A.StartGeneration(prompt=sample(Prompt), max_new_tokens=1)),
        (dispatch_buyer, send(A.SendBid)),
        (dispatch_buyer, A.ReportOutcome(outcome=PROVIDER_OUTCOME)),
        (dispatch_provider, A.Publish(rfq=sample(Rfq))),
        (dispatch_provider, send(A.SendAward)),
        (dispatch_provider, A.ReportOutcome(outcome=BUYER_OUTCOME)),
    ],
)
def test_an_action_from_the_other_side_is_our_bug(dispatch: Any, action: A.Action) -> None:
    r = Recorder()
    with pytest.raises(LocalProtocolError):
        dispatch(r, action)
    assert r.calls == []


async def test_an_async_driver_awaits_what_dispatch_returns() -> None:
    got: list[A.Action] = []

    class Async:
        async def send(self, action: A.Send) -> None:
            got.append(action)

    action = send(A.SendChunk)
    await dispatch_provider(Async(), action)  # type: ignore[arg-type]  # a partial driver
    assert got == [action]


# ------------------------------------------------------------- the shared handle()


def test_both_machines_share_one_handle() -> None:
    assert issubclass(BuyerJob, JobMachine) and issubclass(ProviderJob, JobMachine)
    assert "handle" not in vars(BuyerJob) and "handle" not in vars(ProviderJob)
    assert "_stray" not in vars(BuyerJob) and "_stray" not in vars(ProviderJob)


def provider_job() -> ProviderJob:
    from market.protocol.payments import ChannelTerms, VoucherBook
    from market.protocol.policy import CostPlusPolicy

    book = VoucherBook(
        provider_address=b"\x01" * 20,
        terms=ChannelTerms(token=b"\x07" * 20, chain_id=1, contract=b"\x0c" * 20),
        verifier=lambda v: True,
        cover_of=lambda a: 10**9,
    )
    policy = CostPlusPolicy(electricity_per_kwh=1, power_draw_w=1.0)
    return ProviderJob(provider="P1", provider_address=b"\x01" * 20, policy=policy, book=book)


def test_a_stray_message_is_scored_and_a_bad_local_event_raises() -> None:
    job = provider_job()
    (score,) = job.handle(E.PromptReceived(sender="B1", prompt=sample(Prompt)), 0.0)
    assert isinstance(score, A.ScorePeer) and score.delta < 0 and score.error is not None
    assert "unexpected Prompt in state idle" in score.reason
    with pytest.raises(LocalProtocolError, match="provider job cannot take TokensGenerated"):
        job.handle(E.TokensGenerated(token_ids=(1,), logprobs=(-0.1,)), 0.0)
