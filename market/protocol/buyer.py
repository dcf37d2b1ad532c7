"""The buyer's job machine: RFQ → bids → award → prompt → chunks ↔ vouchers → done.

One :class:`BuyerJob` per job. Drive it with ``handle(event, now)`` and act on the
returned actions; call ``handle(DeadlinePassed(), now)`` whenever
``now >= next_deadline()``. It never reads a clock, never does I/O, and all its
transitions sit in one table (:data:`BuyerJob.TABLE`)::

    IDLE ──JobSubmitted──▶ COLLECTING ──enough bids / all asked answered / window over──▶
        AWARDING (award and prompt go out together, to the winner only)
    AWARDING ──Accept──▶ STREAMING ──chunks… EndOfStream (commitment ok)──▶ DONE
    COLLECTING ──window over, no bid──▶ BACKOFF ──▶ COLLECTING (next round) … ▶ FAILED
    COLLECTING ──no bid, some provider busy, every provider asked──▶ QUEUED (AwaitCapacity)
    QUEUED ──CapacityFreed──▶ COLLECTING (a fresh round) · a late Bid ──▶ AWARDING
    QUEUED ──deadline / QueueFull──▶ FAILED (saturated)
    AWARDING / STREAMING ──refusal, accept timeout, silence, error, bad chunk──▶
        failover: award the next runner-up with resume_offset = tokens delivered,
        resend the prompt with resume_token_ids = the delivered prefix
        (no runner-up left → a new RFQ round; no round left → FAILED)

Payment: after each verified chunk the buyer owes the active provider
``cost_of(tokens it delivered, its price)``; the difference from what it already
paid goes out as the next cumulative voucher (:class:`~market.protocol.payments.BuyerWallet`).
Each provider is paid for exactly its own tokens. The job's worst-case cost
(``max_tokens`` at ``max_price_per_1k``) is reserved from the deposit up front.

Admission: a market that is full is not a failure. When a round that reached every
provider (gossip, or a direct round to all we know) ends without a bid and at least
one provider declined as busy, the job waits in the driver's admission
queue (FIFO per model, bounded) until the driver says capacity freed, then runs a
fresh auction; only the job's own deadline (the caller's timeout) or a full queue
ends it, as ``saturated``. Time spent queued is reported apart from the auction's.

Peer misbehaviour (a chunk whose hash chain does not verify, a message for another
job, an unsolicited accept…) never raises: it yields a ``ScorePeer`` action carrying
the :class:`RemoteProtocolError`, and, for the active provider, a failover. Feeding
a local event the current state cannot take raises :class:`LocalProtocolError`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from market.protocol.actions import (
    Action,
    AwaitCapacity,
    DeliverTokens,
    Publish,
    ReportOutcome,
    ScorePeer,
    SendAward,
    SendCancel,
    SendPrompt,
    SendVoucher,
)
from market.protocol.auction import (
    BidScorer,
    ReputationSource,
    StaticReputation,
    WeightedScorer,
    rank_bids,
)
from market.protocol.commitment import ChainVerifier
from market.protocol.errors import LocalProtocolError
from market.protocol.events import (
    AcceptReceived,
    BidReceived,
    CancelReceived,
    CancelRequested,
    CapacityFreed,
    ChunkReceived,
    CollateralShort,
    DeadlinePassed,
    DeclineReceived,
    EndReceived,
    ErrorReceived,
    Event,
    HeartbeatReceived,
    JobSubmitted,
    PeerDisconnected,
    PeerEvent,
    QueueFull,
    RfqDelivered,
)
from market.protocol.machine import JobMachine
from market.protocol.messages import (
    Award,
    Bid,
    Cancel,
    DeclineReason,
    ErrorCode,
    Prompt,
    Rfq,
    cost_of,
)
from market.protocol.outcomes import BuyerFailure, BuyerOutcome, DeclineNote, Segment
from market.protocol.payments import BuyerWallet

__all__ = ["BuyerConfig", "BuyerJob", "BuyerState"]


class BuyerState(enum.Enum):
    IDLE = "idle"
    COLLECTING = "collecting"  # RFQ out, bid window open
    BACKOFF = "backoff"  # between RFQ rounds
    QUEUED = "queued"  # every provider busy: waiting in the admission queue
    AWARDING = "awarding"  # award sent, waiting for Accept
    STREAMING = "streaming"  # prompt sent, chunks flowing
    DONE = "done"
    FAILED = "failed"


TERMINAL = (BuyerState.DONE, BuyerState.FAILED)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyerConfig:
    """Timeouts (seconds) and auction knobs of the buyer machine."""

    enough_bids: int = 3  # close the window early once this many admissible bids are in
    accept_timeout_s: float = 2.0
    silence_timeout_s: float = 4.0  # max gap between messages from the streaming provider
    max_rounds: int = 3  # RFQ rounds before giving up
    round_backoff_s: float = 0.5  # × round number
    job_timeout_s: float = 600.0
    # the first token must come within this (a streaming caller's read timeout: once
    # tokens flow it waits between them, not for the whole job); None: no such limit
    start_timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.enough_bids < 1 or self.max_rounds < 1:
            raise LocalProtocolError("enough_bids and max_rounds must be >= 1")
        if self.start_timeout_s is not None and not self.start_timeout_s > 0:
            raise LocalProtocolError("start_timeout_s must be > 0 (or None)")
        for name in ("accept_timeout_s", "silence_timeout_s", "job_timeout_s"):
            if not getattr(self, name) > 0:
                raise LocalProtocolError(f"{name} must be > 0")


@dataclass(slots=True)
class _Active:
    """The provider currently awarded (mutable working copy of a Segment)."""

    bid: Bid
    resume_offset: int
    verifier: ChainVerifier
    tokens: int = 0
    paid: int = 0
    commitment: bytes | None = None

    def close(self) -> Segment:
        b = self.bid
        return Segment(
            provider=b.provider,
            provider_address=b.provider_address,
            price_per_1k=b.price_per_1k,
            resume_offset=self.resume_offset,
            tokens=self.tokens,
            paid=self.paid,
            commitment=self.commitment,
        )


_Handler = Callable[["BuyerJob", Any, float], list[Action]]


class BuyerJob(JobMachine):
    """One job, seen from the buyer. See the module docstring for the lifecycle."""

    TABLE: ClassVar[dict[tuple[BuyerState, type[Event]], _Handler]]
    ROLE: ClassVar[str] = "buyer job"
    state: BuyerState
    __slots__ = (
        "_abandoned",
        "_answered",
        "_asked",
        "_asked_everyone",
        "_award_s",
        "_awarded_at",
        "_barred",
        "_bids",
        "_busy_round",
        "_busy_seen",
        "_declines",
        "_delivered",
        "_extended",
        "_failovers",
        "_job_deadline",
        "_left",
        "_pool",
        "_prompt_tokens",
        "_queued_at",
        "_queued_s",
        "_refused",
        "_reserved",
        "_round",
        "_segments",
        "_submitted_at",
        "_timer",
        "_turn_at",
        "active",
        "config",
        "outcome",
        "prompt",
        "reputation",
        "rfq",
        "scorer",
        "state",
        "wallet",
    )

    def __init__(
        self,
        *,
        rfq: Rfq,
        prompt: Prompt,
        wallet: BuyerWallet,
        scorer: BidScorer | None = None,
        reputation: ReputationSource | None = None,
        config: BuyerConfig | None = None,
    ) -> None:
        if prompt.job_id != rfq.job_id:
            raise LocalProtocolError("prompt and rfq name different jobs")
        if prompt.resume_token_ids:
            raise LocalProtocolError("a new job's prompt has no resume_token_ids")
        if rfq.buyer_address != wallet.buyer_address:
            raise LocalProtocolError("rfq.buyer_address is not the wallet's address")
        self.rfq = rfq
        self.prompt = prompt
        self.wallet = wallet
        self.scorer: BidScorer = scorer if scorer is not None else WeightedScorer()
        self.reputation: ReputationSource = (
            reputation if reputation is not None else StaticReputation()
        )
        self.config = config if config is not None else BuyerConfig()
        self.state = BuyerState.IDLE
        self.outcome: BuyerOutcome | None = None
        self.active: _Active | None = None
        self._timer: float | None = None
        self._job_deadline = 0.0
        self._reserved = 0
        self._pool: dict[str, tuple[Bid, str]] = {}
        self._abandoned: set[str] = set()  # awarded once and left (late messages: fine)
        # Left for a fault of theirs, or a refusal of our request or of our payments:
        # never awarded again in this job. One left for want of a slot, a power cut, a
        # timeout or a drop may win a later round with a fresh bid (it may be the only
        # provider left).
        self._barred: set[str] = set()
        self._left: dict[str, str] = {}  # why we left each awarded provider
        self._declines: dict[str, DeclineNote] = {}
        self._segments: list[Segment] = []
        self._delivered: list[int] = []
        self._bids = 0
        self._round = 0
        self._prompt_tokens = 0
        self._asked: int | None = None  # providers asked directly this round (None: gossip)
        self._asked_everyone = False  # ... and they are every provider we know of
        self._answered: set[str] = set()  # who answered this round
        self._failovers = 0
        self._refused: dict[str, str] = {}  # providers that called our request bad, and why
        self._awarded_at: float | None = None
        # the first award's auction: from submit, or from the job's last turn in the
        # queue, to the accept (failed auctions before that turn count as queueing)
        self._award_s: float | None = None
        self._turn_at = 0.0
        self._extended = False  # this round's window was stretched once for late answers
        self._busy_round = 0  # providers that declined as busy this round
        self._busy_seen = False  # some provider was busy during this job
        self._submitted_at = 0.0
        self._queued_at = 0.0
        self._queued_s = 0.0

    # ------------------------------------------------------------- interface

    @property
    def job_id(self) -> bytes:
        return self.rfq.job_id

    @property
    def round(self) -> int:
        """The RFQ round under way (1 for the first ``Publish``)."""
        return self._round

    @property
    def runner_ups(self) -> tuple[str, ...]:
        """Bidders still in the pool (not awarded): their slots are held for us."""
        return tuple(self._pool)

    @property
    def delivered(self) -> int:
        """Tokens delivered so far, over every provider."""
        return len(self._delivered)

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def next_deadline(self) -> float | None:
        """When to feed :class:`DeadlinePassed` next (``None``: no timer running)."""
        if self.state in TERMINAL or self.state is BuyerState.IDLE:
            return None
        t = self._timer
        end = self._deadline()
        return end if t is None else min(t, end)

    def _deadline(self) -> float:
        """The job's deadline now: its own, or sooner while no token has come yet."""
        if self._delivered or self.config.start_timeout_s is None:
            return self._job_deadline
        return min(self._job_deadline, self._submitted_at + self.config.start_timeout_s)

    # ------------------------------------------------------------- handlers

    def _on_submit(self, ev: JobSubmitted, now: float) -> list[Action]:
        self._job_deadline = now + self.config.job_timeout_s
        self._submitted_at = now
        self._turn_at = now
        budget = cost_of(self.rfq.max_tokens, self.rfq.max_price_per_1k)
        if not self.wallet.reserve(budget):
            return self._fail(
                BuyerFailure.INSUFFICIENT_DEPOSIT,
                f"job needs up to {budget}, deposit has {self.wallet.available} free",
                now,
            )
        self._reserved = budget
        return self._enqueue(now) if ev.queue_first else self._publish(now)

    def _enqueue(self, now: float) -> list[Action]:
        """Every provider that answered is busy: wait for the driver's turn signal."""
        self.state = BuyerState.QUEUED
        self._timer = None  # the job's own deadline still runs
        self._queued_at = now
        return [AwaitCapacity(rfq=self.rfq, busy=self._busy_round)]

    def _dequeue(self, now: float) -> None:
        self._queued_s += now - self._queued_at
        self._turn_at = now

    def _on_capacity_freed(self, ev: CapacityFreed, now: float) -> list[Action]:
        self._dequeue(now)
        self._round = 0  # a fresh auction: rounds count attempts since the queue
        return self._publish(now)

    def _on_queue_full(self, ev: QueueFull, now: float) -> list[Action]:
        self._dequeue(now)
        return self._fail(BuyerFailure.SATURATED, ev.detail or "admission queue full", now)

    def _on_bid(self, ev: BidReceived, now: float) -> list[Action]:
        bid = ev.bid
        who = ev.sender
        if bid.job_id != self.job_id or bid.provider != who:
            return [self._score(who, -0.3, "bid for another job or from another peer")]
        if who in self._pool or who in self._barred or self._is_active(who):
            return []
        self._answered.add(who)  # an answer, even one we cannot take
        if bid.price_per_1k > self.rfq.max_price_per_1k:
            out: list[Action] = [self._score(who, -0.1, "bid above the RFQ's price ceiling")]
            if self.state is BuyerState.COLLECTING and self._all_answered():
                out += self._award_next(now)
            return out
        self._pool[who] = (bid, ev.region)
        self._declines.pop(who, None)
        self._bids += 1
        if self.state is BuyerState.QUEUED:  # a late bid is capacity: take it
            self._dequeue(now)
            return self._award_next(now)
        if self.state is BuyerState.COLLECTING and (
            len(self._pool) >= self.config.enough_bids or self._all_answered()
        ):
            return self._award_next(now)
        return []

    def _on_rfq_delivered(self, ev: RfqDelivered, now: float) -> list[Action]:
        self._asked = ev.asked
        self._asked_everyone = ev.everyone
        return self._award_next(now) if self._all_answered() else []

    def _all_answered(self) -> bool:
        return self._asked is not None and len(self._answered) >= self._asked

    def _on_decline(self, ev: DeclineReceived, now: float) -> list[Action]:
        d = ev.decline
        if d.job_id != self.job_id or d.provider != ev.sender:
            return [self._score(ev.sender, -0.3, "decline for another job or from another peer")]
        if ev.sender not in self._pool:
            self._declines[ev.sender] = DeclineNote(
                provider=ev.sender, reason=d.reason, detail=d.detail
            )
        if d.reason is DeclineReason.BUSY and ev.sender not in self._answered:
            self._busy_round += 1
            self._busy_seen = True
        self._answered.add(ev.sender)
        if self.state is BuyerState.COLLECTING and self._all_answered():
            return self._award_next(now)
        return []

    def _on_accept(self, ev: AcceptReceived, now: float) -> list[Action]:
        a = self.active
        if a is None or ev.sender != a.bid.provider:
            return self._stray(ev, now)
        if ev.accept.job_id != self.job_id or ev.accept.provider != ev.sender:
            return self._misbehaved("accept for another job", now)
        if self._awarded_at is None:
            self._awarded_at = now
            self._award_s = now - self._turn_at
        self.state = BuyerState.STREAMING
        self._timer = now + self.config.silence_timeout_s
        return []  # the prompt went out with the award

    def _on_chunk(self, ev: ChunkReceived, now: float) -> list[Action]:
        a = self.active
        if a is None or ev.sender != a.bid.provider:
            return self._stray(ev, now)
        c = ev.chunk
        n = len(c.token_ids)
        if c.job_id != self.job_id:
            return self._misbehaved("chunk for another job", now)
        if n == 0 or n > a.bid.chunk_tokens:
            return self._misbehaved(f"chunk of {n} tokens (agreed {a.bid.chunk_tokens})", now)
        if len(self._delivered) + n > self.rfq.max_tokens:
            return self._misbehaved("chunk beyond max_tokens", now)
        if not a.verifier.feed(c.seq, c.token_ids, c.logprobs, c.chain_hash):
            return self._misbehaved(f"chunk {c.seq} breaks the hash chain", now)
        offset = len(self._delivered)
        self._delivered.extend(c.token_ids)
        a.tokens += n
        self._timer = now + self.config.silence_timeout_s
        out: list[Action] = [
            DeliverTokens(
                offset=offset,
                token_ids=c.token_ids,
                logprobs=c.logprobs,
                text=c.text,
                provider=ev.sender,
            )
        ]
        owed = cost_of(a.tokens, a.bid.price_per_1k) - a.paid
        if owed > 0:
            voucher = self.wallet.pay(
                self.job_id,
                a.bid.provider_address,
                owed,
                reserved=self._reserved,
                job_paid=a.paid + owed,
            )
            self._reserved -= owed
            a.paid += owed
            out.append(SendVoucher(to=ev.sender, message=voucher))
        return out

    def _on_end(self, ev: EndReceived, now: float) -> list[Action]:
        a = self.active
        if a is None or ev.sender != a.bid.provider:
            return self._stray(ev, now)
        e = ev.end
        if e.job_id != self.job_id:
            return self._misbehaved("end of stream for another job", now)
        if e.finish_reason == "cancelled":
            return self._abandon("provider cancelled the stream", -0.05, now)
        if e.total_tokens != a.tokens:
            return self._misbehaved(f"end says {e.total_tokens} tokens, got {a.tokens}", now)
        if e.result_commitment != a.verifier.head:
            return self._misbehaved("result commitment differs from the chunk chain", now)
        a.commitment = e.result_commitment
        self._prompt_tokens = e.prompt_tokens
        self._leave(a)
        self.active = None
        out: list[Action] = [ScorePeer(peer=ev.sender, delta=0.05, reason="completed")]
        return out + self._complete(e.finish_reason, now)

    def _on_heartbeat(self, ev: HeartbeatReceived, now: float) -> list[Action]:
        a = self.active
        if a is None or ev.sender != a.bid.provider:
            return self._stray(ev, now)
        self._timer = now + self.config.silence_timeout_s
        return []

    def _on_provider_error(self, ev: ErrorReceived | CancelReceived, now: float) -> list[Action]:
        a = self.active
        if a is None or ev.sender != a.bid.provider:
            return self._stray(ev, now)
        if isinstance(ev, ErrorReceived):
            code = ev.error.code
            if code is ErrorCode.BAD_REQUEST:  # about our request: another may take it
                self._refused[ev.sender] = ev.error.message
            if code in (ErrorCode.BAD_REQUEST, ErrorCode.PAYMENT_BEHIND):
                self._barred.add(ev.sender)  # it would refuse us again
            if code is ErrorCode.OVERLOADED:  # no slot for us after all: the market is full
                self._busy_round += 1
                self._busy_seen = True
            soft = code in (
                ErrorCode.OVERLOADED,
                ErrorCode.POWER_SHED,
                ErrorCode.PAYMENT_BEHIND,
                ErrorCode.BAD_REQUEST,
            )
            return self._abandon(
                f"provider error {code.value}: {ev.error.message}", -0.02 if soft else -0.1, now
            )
        return self._abandon(f"provider cancelled: {ev.cancel.reason}", -0.05, now)

    def _on_disconnect(self, ev: PeerDisconnected, now: float) -> list[Action]:
        if self.active is not None and ev.peer == self.active.bid.provider:
            return self._abandon("provider disconnected", -0.1, now)
        return []

    def _on_deadline(self, ev: DeadlinePassed, now: float) -> list[Action]:
        if now >= self._deadline() and self.state is BuyerState.QUEUED:
            self._dequeue(now)
            return self._fail(
                BuyerFailure.SATURATED,
                f"every provider stayed busy; queued {self._queued_s:.1f} s until the deadline",
                now,
            )
        if now >= self._deadline():
            out: list[Action] = []
            if self.active is not None:
                out.append(self._cancel_active("job deadline"))
            if self._busy_seen and not self._delivered:
                # still looking for a slot when time ran out: the market is full, not broken
                why = f"no provider had a free slot before the deadline (queued {self._queued_s:.1f} s)"
                return out + self._fail(BuyerFailure.SATURATED, why, now)
            return out + self._fail(BuyerFailure.DEADLINE, "job deadline passed", now)
        if self._timer is None or now < self._timer:
            return []
        st = self.state
        if st is BuyerState.COLLECTING:
            if (
                not self._pool
                and not self._extended
                and self._asked is not None
                and not self._all_answered()
            ):
                # asked directly and some have not answered: their answers are on the
                # way (a loaded box is slow to quote), and a backoff would cost more
                self._extended = True
                self._timer = now + self.rfq.bid_window_ms / 1000.0
                return []
            return self._award_next(now)
        if st is BuyerState.BACKOFF:
            if self._pool:
                return self._award_next(now)
            if self._busy_round and (self._asked is None or self._asked_everyone):
                return self._enqueue(now)  # busy answers came after the window: queue
            return self._publish(now)
        if st is BuyerState.AWARDING:
            return self._abandon("award not accepted in time", -0.1, now)
        return self._abandon("provider silent past the heartbeat deadline", -0.3, now)

    def _on_collateral_short(self, ev: CollateralShort, now: float) -> list[Action]:
        """Our own money ran short for the award just made: the provider did nothing wrong."""
        if self.active is None or self.active.bid.provider != ev.peer:
            return []  # about an award we have already moved on from
        return self._fail(BuyerFailure.INSUFFICIENT_DEPOSIT, ev.detail, now)

    def _on_cancel(self, ev: CancelRequested, now: float) -> list[Action]:
        out: list[Action] = []
        if self.active is not None:
            out.append(self._cancel_active(ev.reason or "buyer cancelled"))
        return out + self._fail(BuyerFailure.CANCELLED, ev.reason or "buyer cancelled", now)

    # -------------------------------------------------------------- helpers

    def _is_active(self, peer: str) -> bool:
        return self.active is not None and self.active.bid.provider == peer

    def _tolerates(self, ev: PeerEvent) -> bool:
        """Late from a provider we left, or after the end: fine (else it is bogus)."""
        return self.state in TERMINAL or ev.sender in self._abandoned

    def _publish(self, now: float) -> list[Action]:
        self._round += 1
        self._extended = False
        self._asked = None
        self._answered = set()
        self._busy_round = 0
        self.state = BuyerState.COLLECTING
        self._timer = now + self.rfq.bid_window_ms / 1000.0
        return [Publish(rfq=self.rfq)]

    def _award_next(self, now: float) -> list[Action]:
        ranked = rank_bids(self._pool.values(), self.rfq, self.scorer, self.reputation)
        if not ranked:
            return self._next_round(now)
        bid = ranked[0]
        del self._pool[bid.provider]
        offset = len(self._delivered)
        self.active = _Active(
            bid=bid, resume_offset=offset, verifier=ChainVerifier(self.job_id, offset)
        )
        self.state = BuyerState.AWARDING
        self._timer = now + self.config.accept_timeout_s
        award = Award(
            job_id=self.job_id,
            provider=bid.provider,
            price_per_1k=bid.price_per_1k,
            chunk_tokens=bid.chunk_tokens,
            credit_chunks=bid.credit_chunks,
            max_tokens=self.rfq.max_tokens,
            resume_offset=offset,
        )
        # The prompt follows the award at once (one round trip less before the first
        # token); it goes to the winner only, and a winner that refuses is left.
        prompt = self.prompt
        if self._delivered:
            prompt = dataclasses.replace(prompt, resume_token_ids=tuple(self._delivered))
        # What this provider may redeem once this award counts: every voucher signed to
        # it plus every open job's budget with it (this one's included).
        self.wallet.assign(bid.provider_address, self._reserved)
        cover = self.wallet.cover_needed(bid.provider_address)
        return [
            SendAward(
                to=bid.provider,
                message=award,
                provider_address=bid.provider_address,
                cover=cover,
                bid=bid,
            ),
            SendPrompt(to=bid.provider, message=prompt),
        ]

    def _next_round(self, now: float) -> list[Action]:
        if self._busy_round and (self._asked is None or self._asked_everyone):
            # every provider heard us (gossip, or all we know were asked) and the busy
            # ones are full: the market has the model but no slot now, so wait for one
            return self._enqueue(now)
        if self._round >= self.config.max_rounds and self._busy_seen:
            # out of rounds, but providers were busy during this job rather than broken:
            # wait for a slot (until the deadline) instead of failing
            return self._enqueue(now)
        if self._round >= self.config.max_rounds:
            if self._bids == 0:
                n = len(self._declines)
                return self._fail(
                    BuyerFailure.NO_BIDS,
                    f"no bid in {self._round} round(s); {n} provider(s) declined",
                    now,
                )
            if self._refused and self._abandoned <= self._refused.keys():
                why = sorted(set(self._refused.values()))
                return self._fail(
                    BuyerFailure.BAD_REQUEST,
                    f"every provider awarded the job refused it: {'; '.join(why)}"[:500],
                    now,
                )
            causes = "; ".join(f"{p[-8:]}: {why}" for p, why in self._left.items())
            return self._fail(
                BuyerFailure.PROVIDERS_EXHAUSTED,
                f"{len(self._abandoned)} awarded provider(s) failed ({causes}); none left"[:500],
                now,
            )
        self.state = BuyerState.BACKOFF
        self._timer = now + self.config.round_backoff_s * self._round
        return []

    def _leave(self, a: _Active) -> None:
        """``a`` gets no more of this job's money: its unpaid assignment goes back."""
        self.wallet.unassign(a.bid.provider_address, self._reserved)
        self._segments.append(a.close())

    def _cancel_active(self, reason: str) -> SendCancel:
        a = self.active
        assert a is not None
        self._leave(a)
        self._left[a.bid.provider] = reason
        self._abandoned.add(a.bid.provider)
        self.active = None
        return SendCancel(
            to=a.bid.provider, message=Cancel(job_id=self.job_id, reason=reason[:200])
        )

    def _abandon(self, why: str, delta: float, now: float) -> list[Action]:
        """Leave the active provider (paid for what it delivered) and fail over."""
        a = self.active
        assert a is not None
        peer = a.bid.provider
        out: list[Action] = [ScorePeer(peer=peer, delta=delta, reason=why)]
        out.append(self._cancel_active(why))
        self._failovers += 1
        return out + self._failover(now)

    def _misbehaved(self, why: str, now: float) -> list[Action]:
        a = self.active
        assert a is not None
        self._barred.add(a.bid.provider)
        out: list[Action] = [self._score(a.bid.provider, -0.5, why)]
        out.append(self._cancel_active(why))
        self._failovers += 1
        return out + self._failover(now)

    def _failover(self, now: float) -> list[Action]:
        if len(self._delivered) >= self.rfq.max_tokens:
            return self._complete("length", now)
        return self._award_next(now)

    def _complete(self, finish_reason: str, now: float) -> list[Action]:
        self.state = BuyerState.DONE
        return self._finish(True, "", "", finish_reason, now)

    def _fail(self, reason: BuyerFailure, detail: str, now: float) -> list[Action]:
        self.state = BuyerState.FAILED
        return self._finish(False, reason.value, detail, "", now)

    def _finish(
        self, ok: bool, reason: str, detail: str, finish_reason: str, now: float
    ) -> list[Action]:
        self._timer = None
        if self.active is not None:  # an award our own collateral could not back
            self._leave(self.active)
            self.active = None
        if self._reserved:
            self.wallet.release(self._reserved)
            self._reserved = 0
        self.outcome = BuyerOutcome(
            job_id=self.job_id,
            completed=ok,
            reason=reason,
            detail=detail,
            token_ids=tuple(self._delivered),
            segments=tuple(self._segments),
            declines=tuple(self._declines.values()),
            bids=self._bids,
            rounds=self._round,
            failovers=self._failovers,
            awarded_at=self._awarded_at,
            finished_at=now,
            finish_reason=finish_reason,
            prompt_tokens=self._prompt_tokens,
            queued_s=self._queued_s,
            award_s=self._award_s,
        )
        return [ReportOutcome(outcome=self.outcome)]


def _table() -> dict[tuple[BuyerState, type[Event]], _Handler]:
    S = BuyerState
    B = BuyerJob
    t: dict[tuple[BuyerState, type[Event]], _Handler] = {
        (S.IDLE, JobSubmitted): B._on_submit,
        (S.IDLE, CancelRequested): B._on_cancel,
    }
    live = (S.COLLECTING, S.BACKOFF, S.QUEUED, S.AWARDING, S.STREAMING)
    for s in live:
        t[(s, BidReceived)] = B._on_bid
        t[(s, DeclineReceived)] = B._on_decline
        t[(s, DeadlinePassed)] = B._on_deadline
        t[(s, CancelRequested)] = B._on_cancel
        t[(s, PeerDisconnected)] = B._on_disconnect
        # From a provider we left these are late stragglers; otherwise bogus.
        strays: tuple[type[Event], ...] = (
            AcceptReceived,
            ChunkReceived,
            EndReceived,
            HeartbeatReceived,
        )
        for ev in strays:
            t[(s, ev)] = B._stray
        t[(s, ErrorReceived)] = B._on_provider_error
        t[(s, CancelReceived)] = B._on_provider_error
    t[(S.COLLECTING, RfqDelivered)] = B._on_rfq_delivered
    for s in (S.BACKOFF, S.QUEUED, S.AWARDING, S.STREAMING):
        t[(s, RfqDelivered)] = B._ignore  # the round it counted for is over
    t[(S.QUEUED, CapacityFreed)] = B._on_capacity_freed
    t[(S.QUEUED, QueueFull)] = B._on_queue_full
    for s in (S.COLLECTING, S.BACKOFF, S.AWARDING, S.STREAMING, *TERMINAL):
        # the queue's signal for a job that has moved on (a late bid placed it)
        t[(s, CapacityFreed)] = B._ignore
        t[(s, QueueFull)] = B._ignore
    t[(S.AWARDING, AcceptReceived)] = B._on_accept
    t[(S.AWARDING, CollateralShort)] = B._on_collateral_short
    for s in (S.COLLECTING, S.BACKOFF, S.QUEUED, S.STREAMING):
        t[(s, CollateralShort)] = B._ignore  # about an award already superseded
    t[(S.STREAMING, ChunkReceived)] = B._on_chunk
    t[(S.STREAMING, EndReceived)] = B._on_end
    t[(S.STREAMING, HeartbeatReceived)] = B._on_heartbeat
    for s in TERMINAL:
        for late in (
            BidReceived,
            DeclineReceived,
            AcceptReceived,
            ChunkReceived,
            EndReceived,
            ErrorReceived,
            HeartbeatReceived,
            CancelReceived,
            DeadlinePassed,
            PeerDisconnected,
            RfqDelivered,
            CollateralShort,
        ):
            t[(s, late)] = B._ignore
    return t


BuyerJob.TABLE = _table()
