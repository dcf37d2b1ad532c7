"""The provider's job machine: RFQ → bid/decline → award → accept → stream → end.

One :class:`ProviderJob` per RFQ seen. Drive it like the buyer's:
``handle(event, now)`` returns actions; feed :class:`DeadlinePassed` whenever
``now >= next_deadline()``. All transitions sit in :data:`ProviderJob.TABLE`::

    IDLE ──RfqReceived──▶ (policy) ──▶ BID_SENT (ClaimSlot, SendBid) | DONE(declined)
    BID_SENT ──NotAwarded / hold over──▶ BID_SENT (ReleaseSlot: the bid stays open)
    BID_SENT ──Award (terms match, policy admits)──▶ ACCEPTED  ([ClaimSlot,] SendAccept)
    ACCEPTED ──Prompt──▶ STREAMING  (StartGeneration)
    STREAMING ──TokensGenerated…──▶ SendChunk (chain hash) … ──GenerationFinished──▶
        SendEnd(result commitment) ──▶ FINISHING ──last voucher──▶ DONE

Admission: a bid is made only with a free slot, and holds it (``ClaimSlot``) until
the award, the buyer's "not awarded" (it ends the RFQ stream: :class:`NotAwarded`),
or the end of the bid window plus ``award_grace_s`` (at most ``max_hold_s``: a buyer
cannot pin our slots with a long window). An award within the hold is
admitted on power alone; a later one (a buyer's failover to a runner-up) only if a
slot is free then.

Credit: a chunk goes out only while fewer than ``credit_chunks`` sent chunks are
unpaid (a chunk is paid once the job's vouchers cover ``cost_of(tokens through that
chunk, price)``). With a full chunk waiting and no credit left the machine emits
:class:`PauseGeneration`; if no voucher comes within ``payment_timeout_s`` it sends
``Error(payment_behind)`` and stops. The buyer therefore never owes more than
``credit_chunks`` chunks (one, with the default credit).

While streaming the machine sends a :class:`Heartbeat` whenever it has sent nothing
for ``heartbeat_interval_s`` (so a buyer can tell a slow provider from a frozen one).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from market.protocol.actions import (
    Action,
    ClaimSlot,
    PauseGeneration,
    ReleaseSlot,
    ReportOutcome,
    ResumeGeneration,
    ScorePeer,
    SendAccept,
    SendBid,
    SendCancel,
    SendChunk,
    SendDecline,
    SendEnd,
    SendError,
    SendHeartbeat,
    StartGeneration,
    StopGeneration,
    StoreVoucher,
)
from market.protocol.commitment import chain_genesis, chain_link
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.events import (
    AwardReceived,
    CancelReceived,
    CancelRequested,
    DeadlinePassed,
    Event,
    GenerationFailed,
    GenerationFinished,
    NotAwarded,
    PeerDisconnected,
    PeerEvent,
    PromptReceived,
    RfqReceived,
    TokensGenerated,
    VoucherReceived,
)
from market.protocol.machine import JobMachine
from market.protocol.messages import (
    Accept,
    Award,
    Bid,
    Cancel,
    Decline,
    DeclineReason,
    EndOfStream,
    Error,
    ErrorCode,
    FinishReason,
    Heartbeat,
    Rfq,
    TokenChunk,
    cost_of,
)
from market.protocol.outcomes import ProviderOutcome
from market.protocol.payments import VoucherBook
from market.protocol.policy import BidPolicy, Quote, Refusal

__all__ = ["ProviderConfig", "ProviderJob", "ProviderState"]


class ProviderState(enum.Enum):
    IDLE = "idle"
    BID_SENT = "bid_sent"
    ACCEPTED = "accepted"  # waiting for the prompt
    STREAMING = "streaming"
    FINISHING = "finishing"  # end of stream sent, waiting for the last voucher
    DONE = "done"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderConfig:
    """Timeouts (seconds) of the provider machine."""

    bid_ttl_s: float = 30.0  # how long a bid stays open for an award (failovers come late)
    award_grace_s: float = 2.0  # a bid holds its slot for the bid window plus this…
    max_hold_s: float = 5.0  # …but never longer (an RFQ's window is the buyer's to set)
    prompt_timeout_s: float = 5.0
    heartbeat_interval_s: float = 1.0
    payment_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in (
            "bid_ttl_s",
            "award_grace_s",
            "max_hold_s",
            "prompt_timeout_s",
            "heartbeat_interval_s",
            "payment_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise LocalProtocolError(f"{name} must be > 0")


_REFUSAL_CODE = {
    DeclineReason.POWER_SHED: ErrorCode.POWER_SHED,
    DeclineReason.BUSY: ErrorCode.OVERLOADED,
    DeclineReason.MODEL_NOT_HELD: ErrorCode.MODEL_UNAVAILABLE,
}

_Handler = Callable[["ProviderJob", Any, float], list[Action]]


class ProviderJob(JobMachine):
    """One job, seen from the provider. See the module docstring for the lifecycle."""

    TABLE: ClassVar[dict[tuple[ProviderState, type[Event]], _Handler]]
    ROLE: ClassVar[str] = "provider job"
    state: ProviderState
    __slots__ = (
        "_chunk_cum",
        "_finish",
        "_generated",
        "_hb_seq",
        "_head",
        "_hold_until",
        "_holds_slot",
        "_last_send",
        "_max_new",
        "_paid_chunks",
        "_paused",
        "_pending_ids",
        "_pending_lps",
        "_pending_text",
        "_prompt_tokens",
        "_stalled_since",
        "_timer",
        "award",
        "bid",
        "book",
        "config",
        "outcome",
        "paid",
        "policy",
        "provider",
        "provider_address",
        "rfq",
        "sent_tokens",
        "state",
    )

    def __init__(
        self,
        *,
        provider: str,
        provider_address: bytes,
        policy: BidPolicy,
        book: VoucherBook,
        config: ProviderConfig | None = None,
    ) -> None:
        if book.provider_address != provider_address:
            raise LocalProtocolError("voucher book belongs to another provider address")
        self.provider = provider
        self.provider_address = provider_address
        self.policy = policy
        self.book = book
        self.config = config if config is not None else ProviderConfig()
        self.state = ProviderState.IDLE
        self.outcome: ProviderOutcome | None = None
        self.rfq: Rfq | None = None
        self.bid: Bid | None = None
        self.award: Award | None = None
        self.paid = 0  # credited to this job from the buyer's vouchers
        self.sent_tokens = 0
        self._timer: float | None = None
        self._head = b""
        self._chunk_cum: list[int] = []  # tokens sent through each chunk
        self._paid_chunks = 0
        self._pending_ids: list[int] = []
        self._pending_lps: list[float] = []
        self._pending_text: list[str] = []
        self._max_new = 0
        self._generated = 0
        self._finish: FinishReason | None = None
        self._prompt_tokens = 0
        self._paused = False
        self._stalled_since: float | None = None
        self._last_send = 0.0
        self._hb_seq = 0
        self._holds_slot = False
        self._hold_until: float | None = None  # a bid's slot is held until then

    # ------------------------------------------------------------- interface

    @property
    def job_id(self) -> bytes | None:
        return None if self.rfq is None else self.rfq.job_id

    @property
    def finished(self) -> bool:
        return self.state is ProviderState.DONE

    @property
    def holds_slot(self) -> bool:
        """True while this job holds one of the node's slots (its bid's, or its own)."""
        return self._holds_slot

    @property
    def unpaid_chunks(self) -> int:
        """Chunks sent whose cost the buyer's vouchers do not cover yet."""
        return len(self._chunk_cum) - self._paid_chunks

    def next_deadline(self) -> float | None:
        """When to feed :class:`DeadlinePassed` next (``None``: no timer running)."""
        st = self.state
        if st is ProviderState.STREAMING:
            t = self._last_send + self.config.heartbeat_interval_s
            if self._stalled_since is not None:
                t = min(t, self._stalled_since + self.config.payment_timeout_s)
            return t
        if st is ProviderState.BID_SENT and self._hold_until is not None:
            return self._hold_until if self._timer is None else min(self._timer, self._hold_until)
        return self._timer

    # ------------------------------------------------------------- handlers

    def _on_rfq(self, ev: RfqReceived, now: float) -> list[Action]:
        rfq = ev.rfq
        self.rfq = rfq
        suspended = self.book.suspended(rfq.buyer_address)
        decision = (
            self.policy.quote(rfq, ev.status)
            if suspended is None
            else Refusal(reason=DeclineReason.OTHER, detail=f"channel suspended: {suspended}")
        )
        if not isinstance(decision, Quote):
            decline = Decline(
                job_id=rfq.job_id,
                provider=self.provider,
                reason=decision.reason,
                detail=decision.detail[:200],
            )
            return [SendDecline(to=rfq.buyer, message=decline), *self._done(False, "declined")]
        self.bid = Bid(
            job_id=rfq.job_id,
            provider=self.provider,
            provider_address=self.provider_address,
            price_per_1k=decision.price_per_1k,
            est_ttft_ms=decision.est_ttft_ms,
            est_tokens_per_s=decision.est_tokens_per_s,
            chunk_tokens=decision.chunk_tokens,
            credit_chunks=decision.credit_chunks,
            free_slots=decision.free_slots,
            dtype=ev.status.dtype,
        )
        self.state = ProviderState.BID_SENT
        self._timer = now + self.config.bid_ttl_s
        self._holds_slot = True
        hold = rfq.bid_window_ms / 1000.0 + self.config.award_grace_s
        self._hold_until = now + min(hold, self.config.max_hold_s)
        return [ClaimSlot(job_id=rfq.job_id), SendBid(to=rfq.buyer, message=self.bid)]

    def _drop_hold(self) -> list[Action]:
        """The bid stays open, but its slot goes back to the node."""
        self._hold_until = None
        if not self._holds_slot:
            return []
        self._holds_slot = False
        assert self.rfq is not None
        return [ReleaseSlot(job_id=self.rfq.job_id)]

    def _on_not_awarded(self, ev: NotAwarded, now: float) -> list[Action]:
        return self._drop_hold()

    def _on_award(self, ev: AwardReceived, now: float) -> list[Action]:
        rfq, bid, aw = self.rfq, self.bid, ev.award
        assert rfq is not None and bid is not None
        if ev.sender != rfq.buyer:
            return [self._score(ev.sender, -0.3, "award from a peer that is not the buyer")]
        problem = None
        if aw.job_id != rfq.job_id or aw.provider != self.provider:
            problem = "award names another job or provider"
        elif aw.price_per_1k < bid.price_per_1k:
            problem = f"award price {aw.price_per_1k} below our bid {bid.price_per_1k}"
        elif (aw.chunk_tokens, aw.credit_chunks) != (bid.chunk_tokens, bid.credit_chunks):
            problem = "award chunking or credit differs from our bid"
        elif aw.max_tokens > rfq.max_tokens or aw.resume_offset >= aw.max_tokens:
            problem = "award max_tokens/resume_offset out of the RFQ's bounds"
        if problem is not None:
            err = Error(job_id=rfq.job_id, code=ErrorCode.BAD_REQUEST, message=problem)
            return [
                self._score(ev.sender, -0.3, problem),
                SendError(to=rfq.buyer, message=err),
                *self._done(False, "bad_award"),
            ]
        held = self._holds_slot
        refusal = self.policy.admit(aw, ev.status, held=held)
        if refusal is not None:
            code = _REFUSAL_CODE.get(refusal.reason, ErrorCode.OVERLOADED)
            err = Error(job_id=rfq.job_id, code=code, message=refusal.detail)
            return [SendError(to=rfq.buyer, message=err), *self._done(False, "award_refused")]
        self.award = aw
        self.state = ProviderState.ACCEPTED
        self._timer = now + self.config.prompt_timeout_s
        self._hold_until = None
        self._holds_slot = True
        accept = Accept(job_id=rfq.job_id, provider=self.provider)
        claim: list[Action] = [] if held else [ClaimSlot(job_id=rfq.job_id)]
        return [*claim, SendAccept(to=rfq.buyer, message=accept)]

    def _on_prompt(self, ev: PromptReceived, now: float) -> list[Action]:
        rfq, aw, p = self.rfq, self.award, ev.prompt
        assert rfq is not None and aw is not None
        if ev.sender != rfq.buyer:
            return [self._score(ev.sender, -0.3, "prompt from a peer that is not the buyer")]
        if p.job_id != rfq.job_id or len(p.resume_token_ids) != aw.resume_offset:
            why = "prompt for another job or resume prefix length != award.resume_offset"
            err = Error(job_id=rfq.job_id, code=ErrorCode.BAD_REQUEST, message=why)
            return [
                self._score(ev.sender, -0.3, why),
                SendError(to=rfq.buyer, message=err),
                *self._done(False, "bad_prompt"),
            ]
        self._max_new = aw.max_tokens - aw.resume_offset
        self._head = chain_genesis(rfq.job_id, aw.resume_offset)
        self.state = ProviderState.STREAMING
        self._timer = None
        self._last_send = now
        return [StartGeneration(prompt=p, max_new_tokens=self._max_new)]

    def _on_tokens(self, ev: TokensGenerated, now: float) -> list[Action]:
        if self._finish is not None:
            raise LocalProtocolError("tokens generated after GenerationFinished")
        n = len(ev.token_ids)
        if self._generated + n > self._max_new:
            raise LocalProtocolError(
                f"engine produced {self._generated + n} tokens, limit {self._max_new}"
            )
        self._generated += n
        self._pending_ids.extend(ev.token_ids)
        self._pending_lps.extend(ev.logprobs)
        self._pending_text.extend([""] * (n - 1))
        self._pending_text.append(ev.text)
        return self._flush(now)

    def _on_finished(self, ev: GenerationFinished, now: float) -> list[Action]:
        if self._finish is not None:
            raise LocalProtocolError("GenerationFinished twice")
        self._finish = ev.finish_reason
        self._prompt_tokens = ev.prompt_tokens
        return self._flush(now)

    def _on_gen_failed(self, ev: GenerationFailed, now: float) -> list[Action]:
        rfq = self.rfq
        assert rfq is not None
        code = ErrorCode.BAD_REQUEST if ev.bad_request else ErrorCode.INTERNAL
        err = Error(job_id=rfq.job_id, code=code, message=ev.message[:500])
        return [SendError(to=rfq.buyer, message=err), *self._done(False, "engine_failed")]

    def _on_voucher(self, ev: VoucherReceived, now: float) -> list[Action]:
        rfq, aw = self.rfq, self.award
        assert rfq is not None and aw is not None
        if ev.sender != rfq.buyer:
            return [self._score(ev.sender, -0.3, "voucher from a peer that is not the buyer")]
        v = ev.voucher
        try:
            if v.job_id != rfq.job_id:
                raise RemoteProtocolError("voucher for another job")
            delta = self.book.accept(v, buyer_address=rfq.buyer_address, job_paid=self.paid)
        except RemoteProtocolError as e:
            err = Error(job_id=rfq.job_id, code=ErrorCode.BAD_REQUEST, message=e.reason[:500])
            out: list[Action] = [
                ScorePeer(peer=ev.sender, delta=-0.5, reason=e.reason, error=e),
                SendError(to=rfq.buyer, message=err),
            ]
            if self.state is ProviderState.STREAMING:
                out.append(StopGeneration(job_id=rfq.job_id, reason="bad voucher"))
            return out + self._done(False, "bad_voucher")
        self.paid += delta
        price = aw.price_per_1k
        cum = self._chunk_cum
        while self._paid_chunks < len(cum) and cost_of(cum[self._paid_chunks], price) <= self.paid:
            self._paid_chunks += 1
        out = [StoreVoucher(voucher=v)]
        if self.state is ProviderState.FINISHING:
            if self.unpaid_chunks == 0:
                out += self._done(True, "")
            return out
        return out + self._flush(now)

    def _on_deadline(self, ev: DeadlinePassed, now: float) -> list[Action]:
        rfq = self.rfq
        assert rfq is not None
        st = self.state
        if st is ProviderState.STREAMING:
            if (
                self._stalled_since is not None
                and now >= self._stalled_since + self.config.payment_timeout_s
            ):
                err = Error(
                    job_id=rfq.job_id,
                    code=ErrorCode.PAYMENT_BEHIND,
                    message=f"{self.unpaid_chunks} chunk(s) unpaid",
                )
                return [
                    ScorePeer(peer=rfq.buyer, delta=-0.2, reason="payment behind"),
                    SendError(to=rfq.buyer, message=err),
                    StopGeneration(job_id=rfq.job_id, reason="payment behind"),
                    *self._done(False, "payment_behind"),
                ]
            if now >= self._last_send + self.config.heartbeat_interval_s:
                self._last_send = now
                self._hb_seq += 1
                hb = Heartbeat(job_id=rfq.job_id, seq=self._hb_seq)
                return [SendHeartbeat(to=rfq.buyer, message=hb)]
            return []
        if st is ProviderState.BID_SENT and (self._timer is None or now < self._timer):
            if self._hold_until is not None and now >= self._hold_until:
                return self._drop_hold()
            return []
        if self._timer is None or now < self._timer:
            return []
        if st is ProviderState.BID_SENT:
            return self._done(False, "not_awarded")
        if st is ProviderState.ACCEPTED:
            return self._done(False, "no_prompt")
        # FINISHING: the last voucher never came; the loss is bounded by the credit.
        return [
            ScorePeer(peer=rfq.buyer, delta=-0.2, reason="final payment missing"),
            *self._done(True, "unpaid_tail"),
        ]

    def _on_stop(
        self, ev: CancelReceived | PeerDisconnected | CancelRequested, now: float
    ) -> list[Action]:
        rfq = self.rfq
        if isinstance(ev, CancelReceived) and (rfq is None or ev.sender != rfq.buyer):
            return self._stray(ev, now)
        if isinstance(ev, PeerDisconnected) and (rfq is None or ev.peer != rfq.buyer):
            return []
        out: list[Action] = []
        if self.state is ProviderState.STREAMING and rfq is not None:
            out.append(StopGeneration(job_id=rfq.job_id, reason="cancelled"))
        return out + self._done(False, "cancelled")

    def _on_cancel_local(self, ev: CancelRequested, now: float) -> list[Action]:
        """Our operator stops the job (power shed, shutdown): tell the buyer, then stop."""
        rfq = self.rfq
        out: list[Action] = []
        if rfq is not None and self.state is not ProviderState.IDLE:
            cancel = Cancel(job_id=rfq.job_id, reason=(ev.reason or "provider cancelled")[:200])
            out.append(SendCancel(to=rfq.buyer, message=cancel))
        return out + self._on_stop(ev, now)

    def _late_award(self, ev: AwardReceived, now: float) -> list[Action]:
        """An award after we finished (bid expired, declined): tell the buyer at once."""
        rfq = self.rfq
        if rfq is None or ev.sender != rfq.buyer or self.award is not None:
            return []
        err = Error(job_id=rfq.job_id, code=ErrorCode.OVERLOADED, message="bid no longer open")
        return [SendError(to=rfq.buyer, message=err)]

    # -------------------------------------------------------------- helpers

    def _tolerates(self, ev: PeerEvent) -> bool:
        """After the end, anything from the buyer is a late straggler."""
        return self.state is ProviderState.DONE

    def _flush(self, now: float) -> list[Action]:
        """Send every chunk the credit allows; pause/resume the engine; end when done."""
        rfq, aw = self.rfq, self.award
        assert rfq is not None and aw is not None
        out: list[Action] = []
        size = aw.chunk_tokens
        credit = aw.credit_chunks
        ids, lps, texts = self._pending_ids, self._pending_lps, self._pending_text
        # The first chunk leaves with the first token (time to first token); later ones
        # when full, or at the end.
        while ids and (len(ids) >= size or self._finish is not None or not self._chunk_cum):
            if self.unpaid_chunks >= credit:
                break
            k = min(size, len(ids))
            chunk_ids, chunk_lps = tuple(ids[:k]), tuple(lps[:k])
            text = "".join(texts[:k])
            del ids[:k], lps[:k], texts[:k]
            seq = len(self._chunk_cum)
            self._head = chain_link(self._head, seq, chunk_ids, chunk_lps)
            self.sent_tokens += k
            self._chunk_cum.append(self.sent_tokens)
            if cost_of(self.sent_tokens, aw.price_per_1k) <= self.paid:
                self._paid_chunks = len(self._chunk_cum)
            chunk = TokenChunk(
                job_id=rfq.job_id,
                seq=seq,
                token_ids=chunk_ids,
                logprobs=chunk_lps,
                text=text,
                chain_hash=self._head,
            )
            out.append(SendChunk(to=rfq.buyer, message=chunk))
            self._last_send = now
        blocked = bool(ids) and (
            len(ids) >= size or self._finish is not None or not self._chunk_cum
        )
        if blocked:
            if self._stalled_since is None:
                self._stalled_since = now
            if not self._paused and self._finish is None:
                self._paused = True
                out.append(PauseGeneration(job_id=rfq.job_id))
        else:
            self._stalled_since = None
            if self._paused:
                self._paused = False
                out.append(ResumeGeneration(job_id=rfq.job_id))
        if self._finish is not None and not ids:
            end = EndOfStream(
                job_id=rfq.job_id,
                total_tokens=self.sent_tokens,
                finish_reason=self._finish,
                result_commitment=self._head,
                prompt_tokens=self._prompt_tokens,
            )
            out.append(SendEnd(to=rfq.buyer, message=end))
            out.append(ReleaseSlot(job_id=rfq.job_id))
            self._holds_slot = False
            if self.unpaid_chunks == 0:
                return out + self._done(True, "")
            self.state = ProviderState.FINISHING
            self._timer = now + self.config.payment_timeout_s
        return out

    def _done(self, ok: bool, reason: str) -> list[Action]:
        rfq = self.rfq
        self.state = ProviderState.DONE
        self._timer = None
        self._stalled_since = None
        self._hold_until = None
        out: list[Action] = []
        job_id = rfq.job_id if rfq is not None else bytes(16)
        if self._holds_slot:
            self._holds_slot = False
            out.append(ReleaseSlot(job_id=job_id))
        self.outcome = ProviderOutcome(
            job_id=job_id,
            buyer=rfq.buyer if rfq is not None else "",
            completed=ok,
            reason=reason,
            tokens_sent=self.sent_tokens,
            paid=self.paid,
            commitment=self._head if ok else None,
        )
        out.append(ReportOutcome(outcome=self.outcome))
        return out


def _table() -> dict[tuple[ProviderState, type[Event]], _Handler]:
    S = ProviderState
    P = ProviderJob
    t: dict[tuple[ProviderState, type[Event]], _Handler] = {
        (S.IDLE, RfqReceived): P._on_rfq,
        (S.BID_SENT, AwardReceived): P._on_award,
        (S.BID_SENT, NotAwarded): P._on_not_awarded,
        (S.ACCEPTED, PromptReceived): P._on_prompt,
        (S.ACCEPTED, AwardReceived): P._ignore,  # duplicate award
        (S.STREAMING, TokensGenerated): P._on_tokens,
        (S.STREAMING, GenerationFinished): P._on_finished,
        (S.STREAMING, GenerationFailed): P._on_gen_failed,
        (S.STREAMING, VoucherReceived): P._on_voucher,
        (S.FINISHING, VoucherReceived): P._on_voucher,
    }
    for s in (S.BID_SENT, S.ACCEPTED, S.STREAMING, S.FINISHING):
        t[(s, DeadlinePassed)] = P._on_deadline
        t[(s, CancelReceived)] = P._on_stop
        t[(s, PeerDisconnected)] = P._on_stop
        t[(s, CancelRequested)] = P._on_cancel_local
    t[(S.IDLE, CancelRequested)] = P._on_cancel_local
    for ev in (AwardReceived, PromptReceived, VoucherReceived, CancelReceived):
        t[(S.DONE, ev)] = P._ignore
    t[(S.DONE, AwardReceived)] = P._late_award
    t[(S.DONE, DeadlinePassed)] = P._ignore
    for s in (S.ACCEPTED, S.STREAMING, S.FINISHING, S.DONE):
        t[(s, NotAwarded)] = P._ignore  # the RFQ stream ended after the award: no news
    t[(S.DONE, PeerDisconnected)] = P._ignore
    return t


ProviderJob.TABLE = _table()
