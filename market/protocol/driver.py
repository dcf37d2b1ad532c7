"""The one driver contract: messages in as events, actions out to typed handlers.

Every driver of the job machines (the node, the SDK, the simulator, the fake link)
does the same two things around ``machine.handle(event, now)``:

1. **Message → event.** A message that arrived from a peer becomes the machine's
   :class:`~market.protocol.events.PeerEvent`. :func:`buyer_event` knows what a
   buyer's job takes from a provider (:data:`BUYER_INBOX`); :func:`provider_event`
   what a provider's job takes from its buyer (:data:`PROVIDER_INBOX`). Anything
   else is the peer's fault: :class:`~market.protocol.errors.RemoteProtocolError`.
2. **Action → handler.** Each action the machine returns goes to one method of a
   driver-supplied object: :func:`dispatch_buyer` routes a buyer job's actions to a
   :class:`BuyerDriver`, :func:`dispatch_provider` a provider job's to a
   :class:`ProviderDriver`. The protocols are generic in what the handlers return:
   ``None`` for a synchronous driver (the simulator), a coroutine for an async one
   (``await dispatch_provider(self, action)`` in the node)::

       for action in job.handle(event, now):
           await dispatch_buyer(self, action)

A new message or action is added here once; mypy then names every driver that does
not handle it yet. Gossip (:class:`~market.protocol.messages.Rfq`,
:class:`~market.protocol.messages.Offer`) is not a job-stream message: a provider
turns an RFQ into :class:`~market.protocol.events.RfqReceived` itself, with its
status.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol, TypeVar, cast

from market.protocol.actions import (
    Action,
    AwaitCapacity,
    ClaimSlot,
    DeliverTokens,
    PauseGeneration,
    Publish,
    ReleaseSlot,
    ReportOutcome,
    ResumeGeneration,
    ScorePeer,
    Send,
    SendAccept,
    SendAward,
    SendBid,
    SendCancel,
    SendChunk,
    SendDecline,
    SendEnd,
    SendError,
    SendHeartbeat,
    SendPrompt,
    SendVoucher,
    StartGeneration,
    StopGeneration,
    StoreVoucher,
)
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.events import (
    AcceptReceived,
    AwardReceived,
    BidReceived,
    CancelReceived,
    ChunkReceived,
    DeclineReceived,
    EndReceived,
    ErrorReceived,
    HeartbeatReceived,
    PeerEvent,
    PromptReceived,
    VoucherReceived,
)
from market.protocol.messages import (
    Accept,
    Award,
    Bid,
    Cancel,
    Decline,
    EndOfStream,
    Error,
    Heartbeat,
    Message,
    Prompt,
    TokenChunk,
    Voucher,
)
from market.protocol.outcomes import BuyerOutcome, ProviderOutcome
from market.protocol.policy import ProviderStatus

__all__ = [
    "BUYER_ACTIONS",
    "BUYER_INBOX",
    "BUYER_STREAM",
    "PROVIDER_ACTIONS",
    "PROVIDER_INBOX",
    "PROVIDER_STREAM",
    "RFQ_ANSWERS",
    "BuyerDriver",
    "ProviderDriver",
    "buyer_event",
    "dispatch_buyer",
    "dispatch_provider",
    "provider_event",
]

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

# ------------------------------------------------------------ messages → events

# Each entry: the event a message becomes, and how to build it from (sender, message,
# context). The buyer's context is the sender's region (from its Offer); the
# provider's a callable giving the node's status now (read only for an award).
_ToBuyer = Callable[[str, Any, str], PeerEvent]
_ToProvider = Callable[[str, Any, Callable[[], ProviderStatus] | None], PeerEvent | None]


def _award(sender: str, award: Award, status: Callable[[], ProviderStatus] | None) -> AwardReceived:
    if status is None:
        raise LocalProtocolError("provider_event needs status= to turn an Award into an event")
    return AwardReceived(sender=sender, award=award, status=status())


_TO_BUYER: dict[type[Message], tuple[type[PeerEvent], _ToBuyer]] = {
    Bid: (BidReceived, lambda s, m, region: BidReceived(sender=s, bid=m, region=region)),
    Decline: (DeclineReceived, lambda s, m, _: DeclineReceived(sender=s, decline=m)),
    Accept: (AcceptReceived, lambda s, m, _: AcceptReceived(sender=s, accept=m)),
    TokenChunk: (ChunkReceived, lambda s, m, _: ChunkReceived(sender=s, chunk=m)),
    EndOfStream: (EndReceived, lambda s, m, _: EndReceived(sender=s, end=m)),
    Error: (ErrorReceived, lambda s, m, _: ErrorReceived(sender=s, error=m)),
    Heartbeat: (HeartbeatReceived, lambda s, m, _: HeartbeatReceived(sender=s, heartbeat=m)),
    Cancel: (CancelReceived, lambda s, m, _: CancelReceived(sender=s, cancel=m)),
}

_TO_PROVIDER: dict[type[Message], tuple[type[PeerEvent] | None, _ToProvider]] = {
    Award: (AwardReceived, _award),
    Prompt: (PromptReceived, lambda s, m, _: PromptReceived(sender=s, prompt=m)),
    Voucher: (VoucherReceived, lambda s, m, _: VoucherReceived(sender=s, voucher=m)),
    Cancel: (CancelReceived, lambda s, m, _: CancelReceived(sender=s, cancel=m)),
    # A buyer's heartbeat is liveness only: taken (never the peer's fault), but the
    # provider machine has no use for it; its transport tracks that the buyer is there.
    Heartbeat: (None, lambda s, m, _: None),
}

#: The messages a buyer's job takes from a provider, and the event each becomes.
BUYER_INBOX: Mapping[type[Message], type[PeerEvent]] = MappingProxyType(
    {m: ev for m, (ev, _) in _TO_BUYER.items()}
)

#: The messages a provider's job takes from its buyer, and the event each becomes
#: (``None``: taken, but nothing for the machine).
PROVIDER_INBOX: Mapping[type[Message], type[PeerEvent] | None] = MappingProxyType(
    {m: ev for m, (ev, _) in _TO_PROVIDER.items()}
)

# Where each message may arrive, for drivers whose transport has separate streams.
#: A provider's answer to an RFQ (on a bid stream, or on the direct RFQ's own stream).
RFQ_ANSWERS: frozenset[type[Message]] = frozenset({Bid, Decline})
#: What the awarded provider sends on the job's stream.
PROVIDER_STREAM: frozenset[type[Message]] = frozenset(BUYER_INBOX) - RFQ_ANSWERS
#: What the buyer sends on a job's stream after the :class:`Award` that opened it.
BUYER_STREAM: frozenset[type[Message]] = frozenset(PROVIDER_INBOX) - {Award}


def _unexpected(message: Message, only: frozenset[type[Message]]) -> RemoteProtocolError:
    expected = " or ".join(sorted(t.__name__ for t in only))
    return RemoteProtocolError(f"unexpected {type(message).__name__} (expected {expected})")


def buyer_event(
    sender: str,
    message: Message,
    *,
    region: str = "",
    only: frozenset[type[Message]] | None = None,
) -> PeerEvent:
    """``message`` from provider ``sender`` as the buyer job's event.

    ``region`` is the sender's region from its Offer ("" = unknown; bids only).
    ``only``, when given, narrows what this stream may carry (:data:`RFQ_ANSWERS`,
    :data:`PROVIDER_STREAM`). Raises :class:`RemoteProtocolError` for a message a
    buyer never takes, or one outside ``only``.
    """
    route = _TO_BUYER.get(type(message))
    if route is None:
        raise RemoteProtocolError(f"a buyer takes no {type(message).__name__} from a provider")
    if only is not None and type(message) not in only:
        raise _unexpected(message, only)
    return route[1](sender, message, region)


def provider_event(
    sender: str,
    message: Message,
    *,
    status: Callable[[], ProviderStatus] | None = None,
    only: frozenset[type[Message]] | None = None,
) -> PeerEvent | None:
    """``message`` from buyer ``sender`` as the provider job's event.

    ``None`` for a message the provider takes but its machine does not
    (:class:`Heartbeat`: liveness only). ``status`` gives the node's
    :class:`ProviderStatus` now; it is called only for an :class:`Award` (the machine
    admits an award against it) and must be given then.
    ``only``, when given, narrows what this stream may carry (:data:`BUYER_STREAM`).
    Raises :class:`RemoteProtocolError` for a message a provider never takes, or one
    outside ``only``.
    """
    route = _TO_PROVIDER.get(type(message))
    if route is None:
        raise RemoteProtocolError(f"a provider takes no {type(message).__name__} from a buyer")
    if only is not None and type(message) not in only:
        raise _unexpected(message, only)
    return route[1](sender, message, status)


# ------------------------------------------------------------ actions → handlers


class BuyerDriver(Protocol[R_co]):
    """What carries out a buyer job's actions (one method per kind of action)."""

    def publish(self, action: Publish) -> R_co:
        """Put the RFQ out (gossip, or straight to known providers)."""
        ...

    def await_capacity(self, action: AwaitCapacity) -> R_co:
        """Queue the job until capacity frees (FIFO per model, bounded)."""
        ...

    def send_award(self, action: SendAward) -> R_co:
        """Open the winner's session: lock ``action.cover`` for it, send the award."""
        ...

    def send_voucher(self, action: SendVoucher) -> R_co:
        """Send a payment voucher (persist it first where there is a ledger)."""
        ...

    def send(self, action: SendPrompt | SendCancel) -> R_co:
        """Send any other message to the provider on the job's stream."""
        ...

    def deliver_tokens(self, action: DeliverTokens) -> R_co:
        """Hand verified tokens to the user."""
        ...

    def score_peer(self, action: ScorePeer) -> R_co:
        """Adjust a provider's reputation."""
        ...

    def report_outcome(self, outcome: BuyerOutcome) -> R_co:
        """The job is over."""
        ...


class ProviderDriver(Protocol[R_co]):
    """What carries out a provider job's actions (one method per kind of action)."""

    def send(self, action: Send) -> R_co:
        """Send the action's message to the buyer (bid, accept, chunk, end, error…)."""
        ...

    def start_generation(self, action: StartGeneration) -> R_co:
        """Run the engine on the prompt."""
        ...

    def pause_generation(self, action: PauseGeneration) -> R_co:
        """Stop stepping the job until :meth:`resume_generation`."""
        ...

    def resume_generation(self, action: ResumeGeneration) -> R_co:
        """Step the job again."""
        ...

    def stop_generation(self, action: StopGeneration) -> R_co:
        """Abort the job in the engine."""
        ...

    def claim_slot(self, action: ClaimSlot) -> R_co:
        """The job now holds a serving slot."""
        ...

    def release_slot(self, action: ReleaseSlot) -> R_co:
        """The job no longer holds a serving slot."""
        ...

    def store_voucher(self, action: StoreVoucher) -> R_co:
        """Persist the voucher just accepted."""
        ...

    def score_peer(self, action: ScorePeer) -> R_co:
        """Adjust the buyer's reputation."""
        ...

    def report_outcome(self, outcome: ProviderOutcome) -> R_co:
        """The job is over."""
        ...


def _buyer_outcome(action: ReportOutcome) -> BuyerOutcome:
    if not isinstance(action.outcome, BuyerOutcome):
        raise LocalProtocolError("a buyer job reported a provider's outcome")
    return action.outcome


def _provider_outcome(action: ReportOutcome) -> ProviderOutcome:
    if not isinstance(action.outcome, ProviderOutcome):
        raise LocalProtocolError("a provider job reported a buyer's outcome")
    return action.outcome


_BuyerRoute = Callable[[BuyerDriver[Any], Any], Any]
_ProviderRoute = Callable[[ProviderDriver[Any], Any], Any]

_BUYER_ROUTES: dict[type[Action], _BuyerRoute] = {
    Publish: lambda d, a: d.publish(a),
    AwaitCapacity: lambda d, a: d.await_capacity(a),
    SendAward: lambda d, a: d.send_award(a),
    SendVoucher: lambda d, a: d.send_voucher(a),
    SendPrompt: lambda d, a: d.send(a),
    SendCancel: lambda d, a: d.send(a),
    DeliverTokens: lambda d, a: d.deliver_tokens(a),
    ScorePeer: lambda d, a: d.score_peer(a),
    ReportOutcome: lambda d, a: d.report_outcome(_buyer_outcome(a)),
}

_PROVIDER_ROUTES: dict[type[Action], _ProviderRoute] = {
    **{
        t: (lambda d, a: d.send(a))
        for t in (
            SendBid,
            SendDecline,
            SendAccept,
            SendChunk,
            SendEnd,
            SendError,
            SendHeartbeat,
            SendCancel,
        )
    },
    StartGeneration: lambda d, a: d.start_generation(a),
    PauseGeneration: lambda d, a: d.pause_generation(a),
    ResumeGeneration: lambda d, a: d.resume_generation(a),
    StopGeneration: lambda d, a: d.stop_generation(a),
    ClaimSlot: lambda d, a: d.claim_slot(a),
    ReleaseSlot: lambda d, a: d.release_slot(a),
    StoreVoucher: lambda d, a: d.store_voucher(a),
    ScorePeer: lambda d, a: d.score_peer(a),
    ReportOutcome: lambda d, a: d.report_outcome(_provider_outcome(a)),
}

#: The action types a buyer job emits (each has one :class:`BuyerDriver` method).
BUYER_ACTIONS: frozenset[type[Action]] = frozenset(_BUYER_ROUTES)
#: The action types a provider job emits (each has one :class:`ProviderDriver` method).
PROVIDER_ACTIONS: frozenset[type[Action]] = frozenset(_PROVIDER_ROUTES)


def dispatch_buyer(driver: BuyerDriver[R], action: Action) -> R:
    """Carry out one buyer-job ``action`` with the ``driver`` method for its type.

    Returns what that method returns (``await`` it in an async driver). An action a
    buyer job never emits is our bug: :class:`LocalProtocolError`.
    """
    route = _BUYER_ROUTES.get(type(action))
    if route is None:
        raise LocalProtocolError(f"a buyer job does not emit {type(action).__name__}")
    return cast(R, route(driver, action))


def dispatch_provider(driver: ProviderDriver[R], action: Action) -> R:
    """Carry out one provider-job ``action`` with the ``driver`` method for its type.

    Returns what that method returns (``await`` it in an async driver). An action a
    provider job never emits is our bug: :class:`LocalProtocolError`.
    """
    route = _PROVIDER_ROUTES.get(type(action))
    if route is None:
        raise LocalProtocolError(f"a provider job does not emit {type(action).__name__}")
    return cast(R, route(driver, action))
