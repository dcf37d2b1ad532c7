"""Actions: what a job machine asks its driver (node, SDK, simulator) to do.

Names are imperative. ``machine.handle(event, now)`` returns a list of them, in the
order they must be carried out. The driver owns all I/O:

* :class:`Send` (and its named subclasses :class:`SendBid`, :class:`SendAward`,
  :class:`SendVoucher`, …): deliver ``message`` to peer ``to`` on the job's direct
  stream. A driver may treat every ``Send`` alike (``isinstance(a, Send)``).
* :class:`Publish`: gossip the RFQ on its model's topic.
* :class:`ScorePeer`: adjust the peer's reputation (negative = it misbehaved or
  failed; ``error`` holds the :class:`RemoteProtocolError` when it broke the protocol).
* Engine control (provider): :class:`StartGeneration`, :class:`PauseGeneration`,
  :class:`ResumeGeneration`, :class:`StopGeneration`; capacity:
  :class:`ClaimSlot` / :class:`ReleaseSlot`.
* Admission (buyer): :class:`AwaitCapacity` (every answering provider was busy).
* Output (buyer): :class:`DeliverTokens`. Persistence (provider): :class:`StoreVoucher`.
* :class:`ReportOutcome`: the machine reached a final state (always the last action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from market.protocol.errors import LocalProtocolError, RemoteProtocolError
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
    Rfq,
    TokenChunk,
    Voucher,
)
from market.protocol.outcomes import BuyerOutcome, ProviderOutcome

__all__ = [
    "Action",
    "AwaitCapacity",
    "ClaimSlot",
    "DeliverTokens",
    "PauseGeneration",
    "Publish",
    "ReleaseSlot",
    "ReportOutcome",
    "ResumeGeneration",
    "ScorePeer",
    "Send",
    "SendAccept",
    "SendAward",
    "SendBid",
    "SendCancel",
    "SendChunk",
    "SendDecline",
    "SendEnd",
    "SendError",
    "SendHeartbeat",
    "SendPrompt",
    "SendVoucher",
    "StartGeneration",
    "StopGeneration",
    "StoreVoucher",
]


class Action:
    """Base of every action."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Send(Action):
    """Send ``message`` to peer ``to`` on the job's direct stream."""

    MESSAGE: ClassVar[type[Message]] = Message
    to: str
    message: Message

    def __post_init__(self) -> None:
        if not self.to:
            raise LocalProtocolError(f"{type(self).__name__}.to must be a peer id")
        if not isinstance(self.message, self.MESSAGE):
            raise LocalProtocolError(
                f"{type(self).__name__} cannot carry {type(self.message).__name__}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBid(Send):
    MESSAGE: ClassVar[type[Message]] = Bid


@dataclass(frozen=True, slots=True, kw_only=True)
class SendDecline(Send):
    MESSAGE: ClassVar[type[Message]] = Decline


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAward(Send):
    """Award the job to ``to``, once its channel is sure to pay ``cover``.

    ``cover`` is the cumulative voucher amount the provider at ``provider_address`` may
    be sent by the end of this job (what we signed it before plus the job's remaining
    budget). A provider accepts vouchers only up to what we locked for it on chain, so
    the driver first makes sure that much is locked (or feeds back
    :class:`~market.protocol.events.CollateralShort`). ``bid`` is the bid it wins
    with (the driver keeps that bid's sealed frame as evidence of the terms).
    """

    MESSAGE: ClassVar[type[Message]] = Award
    provider_address: bytes = b""
    cover: int = 0
    bid: Bid | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAccept(Send):
    MESSAGE: ClassVar[type[Message]] = Accept


@dataclass(frozen=True, slots=True, kw_only=True)
class SendPrompt(Send):
    MESSAGE: ClassVar[type[Message]] = Prompt


@dataclass(frozen=True, slots=True, kw_only=True)
class SendChunk(Send):
    MESSAGE: ClassVar[type[Message]] = TokenChunk


@dataclass(frozen=True, slots=True, kw_only=True)
class SendEnd(Send):
    MESSAGE: ClassVar[type[Message]] = EndOfStream


@dataclass(frozen=True, slots=True, kw_only=True)
class SendVoucher(Send):
    MESSAGE: ClassVar[type[Message]] = Voucher


@dataclass(frozen=True, slots=True, kw_only=True)
class SendCancel(Send):
    MESSAGE: ClassVar[type[Message]] = Cancel


@dataclass(frozen=True, slots=True, kw_only=True)
class SendError(Send):
    MESSAGE: ClassVar[type[Message]] = Error


@dataclass(frozen=True, slots=True, kw_only=True)
class SendHeartbeat(Send):
    MESSAGE: ClassVar[type[Message]] = Heartbeat


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish(Action):
    """Gossip ``rfq`` on its model's topic (the driver picks the shard)."""

    rfq: Rfq


@dataclass(frozen=True, slots=True, kw_only=True)
class ScorePeer(Action):
    """Adjust ``peer``'s reputation by ``delta`` (−1..1) because of ``reason``."""

    peer: str
    delta: float
    reason: str
    error: RemoteProtocolError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverTokens(Action):
    """Hand verified tokens to the buyer's user; ``offset`` = tokens before them."""

    offset: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    provider: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StartGeneration(Action):
    """Run the engine on ``prompt`` (continue after ``prompt.resume_token_ids``)."""

    prompt: Prompt
    max_new_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseGeneration(Action):
    """Stop stepping this job: the buyer's payments fell behind the credit."""

    job_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeGeneration(Action):
    """Payments caught up: step this job again."""

    job_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StopGeneration(Action):
    """Abort this job in the engine and free its cache."""

    job_id: bytes
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AwaitCapacity(Action):
    """Every provider of ``rfq.model_id`` that answered was busy: put the job in the
    buyer's admission queue; feed :class:`~market.protocol.events.CapacityFreed` when it
    is its turn to try again (or :class:`~market.protocol.events.QueueFull`)."""

    rfq: Rfq
    busy: int  # providers that declined as busy this round


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimSlot(Action):
    """This job now holds one of the node's serving slots."""

    job_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseSlot(Action):
    """This job no longer holds a serving slot."""

    job_id: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreVoucher(Action):
    """Persist the newly accepted voucher (the ledger must never lose one)."""

    voucher: Voucher


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportOutcome(Action):
    """The job is over for this machine."""

    outcome: BuyerOutcome | ProviderOutcome
