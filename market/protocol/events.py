"""Events: what happened, fed into a job machine with ``machine.handle(event, now)``.

Names are past tense. Two kinds:

* **Peer events** (:class:`PeerEvent`) wrap one decoded message and the peer id the
  transport authenticated it as coming from (``sender``). Anything wrong with them
  is the peer's fault: the machine answers with a ``ScorePeer`` action (carrying the
  :class:`~market.protocol.errors.RemoteProtocolError`) and never raises.
* **Local events** come from our own side: the user, the engine, the clock
  (:class:`DeadlinePassed`, fed when ``now >= machine.next_deadline()``), the
  transport (:class:`PeerDisconnected`). Feeding one in a state that cannot take it
  is our bug: :class:`~market.protocol.errors.LocalProtocolError`.

Every event is a frozen, slotted, keyword-only dataclass that checks its own fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from market.protocol.errors import LocalProtocolError
from market.protocol.messages import (
    Accept,
    Award,
    Bid,
    Cancel,
    Decline,
    EndOfStream,
    Error,
    FinishReason,
    Heartbeat,
    Message,
    Prompt,
    Rfq,
    TokenChunk,
    Voucher,
)
from market.protocol.policy import ProviderStatus

__all__ = [
    "AcceptReceived",
    "AwardReceived",
    "BidReceived",
    "CancelReceived",
    "CancelRequested",
    "CapacityFreed",
    "ChunkReceived",
    "CollateralShort",
    "DeadlinePassed",
    "DeclineReceived",
    "EndReceived",
    "ErrorReceived",
    "Event",
    "GenerationFailed",
    "GenerationFinished",
    "HeartbeatReceived",
    "JobSubmitted",
    "NotAwarded",
    "PeerDisconnected",
    "PeerEvent",
    "PromptReceived",
    "QueueFull",
    "RfqDelivered",
    "RfqReceived",
    "TokensGenerated",
    "VoucherReceived",
]


class Event:
    """Base of every event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerEvent(Event):
    """A message arrived from ``sender`` (a peer id the transport authenticated)."""

    MESSAGE: ClassVar[type[Message]] = Message
    sender: str

    def __post_init__(self) -> None:
        if not isinstance(self.sender, str) or not self.sender:
            raise LocalProtocolError(f"{type(self).__name__}.sender must be a non-empty str")
        msg = self.message
        if not isinstance(msg, self.MESSAGE):
            raise LocalProtocolError(
                f"{type(self).__name__} carries {type(msg).__name__}, not {self.MESSAGE.__name__}"
            )

    @property
    def message(self) -> Message:
        """The wrapped message (each subclass names its own field)."""
        raise NotImplementedError


# ---------------------------------------------------------------- buyer inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSubmitted(Event):
    """The buyer's user asked for the job to start (publishes the RFQ).

    ``queue_first``: jobs of this model are already waiting for capacity, so this one
    joins the back of the admission queue instead of jumping ahead of them.
    """

    queue_first: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RfqDelivered(Event):
    """The round's RFQ went straight to ``asked`` known providers (not over gossip).

    Once each of them has answered (bid or decline) the bid window closes early:
    nobody else was asked, so waiting longer cannot bring another bid. ``everyone``:
    they are all the providers of the model we know of (so if all are busy, the
    market is full, rather than merely the few we asked).
    """

    asked: int
    everyone: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.asked, int) or self.asked < 1:
            raise LocalProtocolError("RfqDelivered.asked must be an int >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class BidReceived(PeerEvent):
    """A provider bid. ``region`` is the bidder's region from its Offer ("" = unknown)."""

    MESSAGE: ClassVar[type[Message]] = Bid
    bid: Bid
    region: str = ""

    @property
    def message(self) -> Message:
        return self.bid


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclineReceived(PeerEvent):
    """A provider declined, with a reason."""

    MESSAGE: ClassVar[type[Message]] = Decline
    decline: Decline

    @property
    def message(self) -> Message:
        return self.decline


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptReceived(PeerEvent):
    """The awarded provider accepted."""

    MESSAGE: ClassVar[type[Message]] = Accept
    accept: Accept

    @property
    def message(self) -> Message:
        return self.accept


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkReceived(PeerEvent):
    """A chunk of generated tokens arrived."""

    MESSAGE: ClassVar[type[Message]] = TokenChunk
    chunk: TokenChunk

    @property
    def message(self) -> Message:
        return self.chunk


@dataclass(frozen=True, slots=True, kw_only=True)
class EndReceived(PeerEvent):
    """The provider ended its stream with a result commitment."""

    MESSAGE: ClassVar[type[Message]] = EndOfStream
    end: EndOfStream

    @property
    def message(self) -> Message:
        return self.end


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorReceived(PeerEvent):
    """The peer reported a failure (refused award, overload, payment behind…)."""

    MESSAGE: ClassVar[type[Message]] = Error
    error: Error

    @property
    def message(self) -> Message:
        return self.error


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatReceived(PeerEvent):
    """The peer is alive (resets the silence deadline)."""

    MESSAGE: ClassVar[type[Message]] = Heartbeat
    heartbeat: Heartbeat

    @property
    def message(self) -> Message:
        return self.heartbeat


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReceived(PeerEvent):
    """The peer stopped the job."""

    MESSAGE: ClassVar[type[Message]] = Cancel
    cancel: Cancel

    @property
    def message(self) -> Message:
        return self.cancel


@dataclass(frozen=True, slots=True, kw_only=True)
class CollateralShort(Event):
    """Our award to ``peer`` cannot go out: the money we can lock for that provider does
    not cover the award's :attr:`~market.protocol.actions.SendAward.cover`."""

    peer: str
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapacityFreed(Event):
    """The buyer's admission queue lets this waiting job try the market again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueFull(Event):
    """The buyer's admission queue has no room for this job (``detail`` says how full)."""

    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NotAwarded(Event):
    """The buyer ended our bid's RFQ stream without an award: free the slot the bid holds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested(Event):
    """Our own user (buyer) or operator (provider) stops the job."""

    reason: str = ""


# ------------------------------------------------------------- provider inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class RfqReceived(Event):
    """An RFQ arrived on gossip; ``status`` is this node's state right now.

    Not a :class:`PeerEvent`: gossip is forwarded, so the relaying peer is not the
    author (the envelope signature authenticates the buyer).
    """

    rfq: Rfq
    status: ProviderStatus

    def __post_init__(self) -> None:
        if not isinstance(self.rfq, Rfq) or not isinstance(self.status, ProviderStatus):
            raise LocalProtocolError("RfqReceived needs an Rfq and a ProviderStatus")


@dataclass(frozen=True, slots=True, kw_only=True)
class AwardReceived(PeerEvent):
    """The buyer awarded us the job; ``status`` is this node's state right now."""

    MESSAGE: ClassVar[type[Message]] = Award
    award: Award
    status: ProviderStatus

    @property
    def message(self) -> Message:
        return self.award


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptReceived(PeerEvent):
    """The buyer sent the prompt (and, after a failover, the delivered prefix)."""

    MESSAGE: ClassVar[type[Message]] = Prompt
    prompt: Prompt

    @property
    def message(self) -> Message:
        return self.prompt


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherReceived(PeerEvent):
    """The buyer sent a cumulative payment voucher."""

    MESSAGE: ClassVar[type[Message]] = Voucher
    voucher: Voucher

    @property
    def message(self) -> Message:
        return self.voucher


@dataclass(frozen=True, slots=True, kw_only=True)
class TokensGenerated(Event):
    """The engine produced tokens; ``text`` is their detokenized text."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str = ""

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs) or not self.token_ids:
            raise LocalProtocolError("TokensGenerated needs ≥1 token and one logprob per token")
        if not all(math.isfinite(x) for x in self.logprobs):
            raise LocalProtocolError("logprobs must be finite")


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationFinished(Event):
    """The engine stopped on its own (stop sequence/EOS, or the token limit).

    ``prompt_tokens``: the prompt's length in the model's tokens, a resumed prefix
    not counted (0 = not known).
    """

    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationFailed(Event):
    """The engine crashed or gave up on this job (``bad_request``: it refused the
    request itself, e.g. a prompt longer than its context: the buyer's fault)."""

    message: str = ""
    bad_request: bool = False


# ------------------------------------------------------------------ both sides


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlinePassed(Event):
    """Time moved past ``machine.next_deadline()`` (the only clock input)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDisconnected(Event):
    """The transport lost the connection to ``peer`` (a dead peer reads as EOF)."""

    peer: str = field(default="")

    def __post_init__(self) -> None:
        if not self.peer:
            raise LocalProtocolError("PeerDisconnected.peer must be set")
