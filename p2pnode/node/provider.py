"""The provider side of the market: answer RFQs, serve awarded jobs, collect vouchers.

A thin driver around :class:`market.protocol.provider.ProviderJob` (one per RFQ
seen): it feeds the machine what the network and the serving engine produce and
carries out the actions it returns. Pricing, credit, heartbeats and the result
commitment are the machine's decisions; this module only moves bytes and tokens.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field

import trio

from market.gossip import rfq_check, valid_rfq
from market.ledger import Ledger
from market.protocol import (
    Award,
    Decline,
    DeclineReason,
    Prompt,
    RemoteProtocolError,
    ReplayGuard,
    Rfq,
    Voucher,
)
from market.protocol.actions import (
    Action,
    ClaimSlot,
    PauseGeneration,
    ReleaseSlot,
    ResumeGeneration,
    ScorePeer,
    Send,
    SendBid,
    SendDecline,
    StartGeneration,
    StopGeneration,
    StoreVoucher,
)
from market.protocol.driver import BUYER_STREAM, dispatch_provider, provider_event
from market.protocol.events import (
    CancelRequested,
    DeadlinePassed,
    Event,
    GenerationFailed,
    GenerationFinished,
    NotAwarded,
    PeerDisconnected,
    RfqReceived,
    TokensGenerated,
)
from market.protocol.outcomes import ProviderOutcome
from market.protocol.payments import VoucherBook
from market.protocol.policy import BidPolicy, ProviderStatus
from market.protocol.provider import ProviderConfig, ProviderJob, ProviderState
from market.protocol.signing import SigningKey
from market.streams import (
    BID_PROTOCOL,
    JOB_PROTOCOL,
    RFQ_PROTOCOL,
    open_sealed,
    receive_message,
    send_message,
)
from market.vouchers import record
from p2pnode.net import NetError, NodeNet
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import GossipMessage, rfq_topic
from p2pnode.net.ratelimit import PeerRateLimiter, RateLimit
from p2pnode.node.cover import CoverCache
from p2pnode.serving import BadRequestError, GenerationRequest, ServingBackend

__all__ = ["ProviderService", "ProviderStats", "generation_request"]

logger = logging.getLogger(__name__)


@dataclass
class ProviderStats:
    """Counters for ``hearth node status`` and ``/metrics``."""

    rfqs_seen: int = 0
    bids: int = 0
    declines: int = 0
    awards: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    tokens_served: int = 0
    earned: int = 0  # sum of vouchers credited (token base units)
    handed_off: int = 0  # jobs passed to a runner-up when the house needed the power
    declines_by_reason: Counter[str] = field(default_factory=Counter)


class ProviderService:
    """Serves one node's models on the market.

    ``status()`` must return this node's current :class:`ProviderStatus` (load, power
    state…); the service adds its own count of active jobs.
    """

    def __init__(
        self,
        *,
        net: NodeNet,
        key: SigningKey,
        engine: ServingBackend,
        model_id: str,
        policy: BidPolicy,
        book: VoucherBook,
        ledger: Ledger | None,
        status: Callable[[], ProviderStatus],
        config: ProviderConfig | None = None,
        covers: CoverCache | None = None,
        rfq_limit: RateLimit | None = None,
        max_open_bids: int = 4096,
        max_held_share: float = 0.5,
    ) -> None:
        self.net = net
        self.key = key
        self.engine = engine
        self.model_id = model_id
        self.policy = policy
        self.book = book
        self.ledger = ledger
        self._status = status
        self.covers = covers  # the chain's view of each buyer's channel (None: no chain)
        self._ledger_limiter = trio.CapacityLimiter(1)
        self.config = config or ProviderConfig()
        self.stats = ProviderStats()
        # Serving slots in use: by a job being served, or held for an open bid (a bid
        # promises capacity only the node really has, and keeps it until the award, the
        # buyer's "not awarded", or the hold's end).
        self._slots: set[bytes] = set()
        self.accepting = True
        self._bids: dict[bytes, ProviderJob] = {}
        # RFQs cost us a chain read and (on gossip) a connection back: each buyer peer
        # gets a token bucket, checked before either (drops in rfq_limiter.stats)
        self.rfq_limiter = PeerRateLimiter(rfq_limit)
        self.max_open_bids = max_open_bids
        # at most this share of our slots held by one buyer's bids not (yet) awarded
        self.max_held_share = max_held_share
        self._guard = ReplayGuard()
        self._sessions: dict[bytes, _JobSession] = {}

    def status(self) -> ProviderStatus:
        """This node right now, with its active jobs counted."""
        base = self._status()
        power = base.power_state if self.accepting else "draining"
        return ProviderStatus(
            provider=base.provider,
            provider_address=base.provider_address,
            region=base.region,
            power_state=power,
            models=base.models,
            active_jobs=self.active_jobs,
            capacity=base.capacity,
            queued=base.queued,
            max_queue=base.max_queue,
            tokens_per_s=base.tokens_per_s,
            price_multiplier=base.price_multiplier,
            ttft_ms=base.ttft_ms,
            rated_tokens_per_s=base.rated_tokens_per_s,
            dtype=base.dtype,
        )

    async def in_ledger(self, write: Callable[[Ledger], object]) -> None:
        """Run ``write(ledger)`` in a worker thread, one at a time (one SQLite connection).

        The node gives this service its own connection, so a slow redemption on the
        redeemer's connection never holds up a job's voucher write.
        """
        if self.ledger is not None:
            ledger = self.ledger
            await trio.to_thread.run_sync(write, ledger, limiter=self._ledger_limiter)

    async def fresh_cover(self, voucher: Voucher) -> None:
        """Re-read the channel's cover when ``voucher`` goes past the cached reading.

        The buyer locks more for us right before an award, after our last reading; a
        voucher is refused only against what the chain says now. A voucher within the
        cached cover costs no chain read.
        """
        covers = self.covers
        if covers is None or voucher.cumulative_amount <= covers.cover_of(voucher.buyer_address):
            return
        with suppress(Exception):  # unreachable chain: the voucher is judged on the old reading
            await covers.refresh(voucher.buyer_address)

    @property
    def active_jobs(self) -> int:
        """Slots in use: jobs being served plus slots held for open bids."""
        return len(self._slots)

    @property
    def held_slots(self) -> int:
        """Slots held for bids not (yet) awarded."""
        return len(self._slots) - len(self._sessions)

    def _bid_actions(self, actions: list[Action]) -> None:
        """Carry out what a job machine asks before any award: its slot, nothing else.

        (Its answer, the Bid or Decline, is sent by the caller on the right stream; an
        outcome of a bid never awarded needs no record.)
        """
        for action in actions:
            if isinstance(action, ClaimSlot):
                self._slots.add(action.job_id)
            elif isinstance(action, ReleaseSlot):
                self._slots.discard(action.job_id)

    def _not_awarded(self, job_id: bytes) -> None:
        """The buyer ended our bid's stream without awarding it: free the held slot."""
        job = self._bids.get(job_id)
        if job is not None and job.state is ProviderState.BID_SENT:
            self._bid_actions(job.handle(NotAwarded(), trio.current_time()))

    @property
    def busy(self) -> bool:
        """True while some job is being served."""
        return bool(self._sessions)

    @property
    def open_bids(self) -> int:
        """Bids sent and not yet awarded or expired."""
        return len(self._bids)

    def hand_off(self, finish_within_s: float) -> int:
        """Cancel the jobs that would not finish within ``finish_within_s`` seconds.

        Their buyers fail over to runner-ups, resuming from the delivered tokens, so
        no job is dropped; the rest finish here. Returns how many were handed off.
        """
        handed = 0
        for session in list(self._sessions.values()):
            if session.remaining_s() > finish_within_s:
                session.events_in.send_nowait(CancelRequested(reason="power_shed"))
                handed += 1
        self.stats.handed_off += handed
        return handed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe to the model's RFQ topic and serve until cancelled."""
        self.net.set_handler(JOB_PROTOCOL, self._on_job_stream)
        self.net.set_handler(RFQ_PROTOCOL, self._on_rfq_stream)
        rfqs = await self.net.subscribe(rfq_topic(self.model_id), check=rfq_check(self.model_id))
        await self.net.provide(self.model_id)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_bids)
            async for msg in rfqs:
                nursery.start_soon(self._on_rfq, msg)

    # ------------------------------------------------------------------ RFQs
    def _admit(self, peer: str) -> bool:
        """True when ``peer``'s RFQ may cost us work: within its rate, and bids not full."""
        if not self.rfq_limiter.allow(peer, trio.current_time()):
            return False
        if len(self._bids) >= self.max_open_bids:
            self.rfq_limiter.stats["dropped_open_bids"] += 1
            return False
        return True

    async def _on_rfq(self, msg: GossipMessage) -> None:
        """An RFQ over gossip: answer on a new bid stream to the buyer.

        The topic check (:func:`~market.gossip.rfq_check`) let through only RFQs for
        our model published by their own buyer; the buyer's rate is checked first.
        """
        if not self._admit(msg.origin):
            return
        try:
            message, sender = open_sealed(msg.data, self._guard)
            rfq = valid_rfq(message, sender, self.model_id)
        except RemoteProtocolError:
            return  # a replay of a message already handled, or expired in flight
        if sender != msg.origin:
            return
        answer = await self._quote(rfq)
        with suppress(NetError, RemoteProtocolError):
            async with self.net.open_stream(answer.to, BID_PROTOCOL, timeout=5) as fs:
                await self._answer_and_wait(fs, answer)

    async def _on_rfq_stream(self, fs: FramedStream) -> None:
        """An RFQ straight from a buyer: answer on the same stream and wait for the award.

        A buyer that picks someone else ends the stream; the bid stays open (a failover
        may still award it on a job stream) until it expires.
        """
        admitted = self._admit(fs.peer_id)
        message = await receive_message(fs, self._guard, timeout=10 if admitted else 2)
        rfq = valid_rfq(message, fs.peer_id, self.model_id)  # raises: an error frame
        if not admitted:
            # Over its rate: no chain read, no bid, no slot; but on its own stream a
            # "busy" costs us one frame and tells a buyer with many users (a gateway)
            # to queue and come back, instead of waiting out a window for nothing.
            self.stats.declines += 1
            self.stats.declines_by_reason["rate"] += 1
            decline = Decline(
                job_id=rfq.job_id,
                provider=self.key.peer_id,
                reason=DeclineReason.BUSY,
                detail="over this buyer's RFQ rate",
            )
            with suppress(NetError), trio.move_on_after(2):
                await send_message(fs, decline, self.key)
                await fs.send_end()
            return
        await self._answer_and_wait(fs, await self._quote(rfq))

    async def _answer_and_wait(self, fs: FramedStream, answer: SendBid | SendDecline) -> None:
        """Send our answer on ``fs``; for a bid, hold the stream open for the award.

        The buyer keeps a bidder's stream open until it awards someone: the award comes
        on it, or the buyer ends it, which says "not awarded" and frees the slot the bid
        holds (the bid itself stays open for a late failover award until it expires).
        """
        await send_message(fs, answer.message, self.key)
        if not isinstance(answer, SendBid):
            with suppress(NetError), trio.move_on_after(2):
                await fs.send_end()
            return
        job_id = answer.message.job_id
        award = None
        with suppress(NetError):  # the buyer went away or picked someone else
            award = await receive_message(fs, self._guard, timeout=self.config.bid_ttl_s)
        if award is None:
            self._not_awarded(job_id)
            return
        await self._serve(fs, award)

    async def _quote(self, rfq: Rfq) -> SendBid | SendDecline:
        """Run the bid policy on ``rfq``: the bid (remembered until awarded) or a decline."""
        self.stats.rfqs_seen += 1
        held = sum(
            1 for j in self._bids.values() if j.holds_slot and j.rfq and j.rfq.buyer == rfq.buyer
        )
        status = self.status()
        cap = max(1, math.ceil(status.capacity * self.max_held_share))
        busy = ""
        if held >= cap:  # one buyer may not pin more of our slots with bids it has not awarded
            busy = "held_by_buyer"
            detail = f"your open bids already hold {held} of our {status.capacity} slots"
        elif rfq.job_id in self._sessions:  # a part of it we were left is still closing
            busy = "still_serving"
            detail = "still closing our earlier part of this job; ask again shortly"
        if busy:
            self.stats.declines += 1
            self.stats.declines_by_reason[busy] += 1
            decline = Decline(
                job_id=rfq.job_id,
                provider=self.key.peer_id,
                reason=DeclineReason.BUSY,
                detail=detail,
            )
            return SendDecline(to=rfq.buyer, message=decline)
        if self.covers is not None:
            with suppress(Exception):  # unreachable chain: vouchers are checked again later
                await self.covers.ensure(rfq.buyer_address)
        job = ProviderJob(
            provider=self.key.peer_id,
            provider_address=self.book.provider_address,
            policy=self.policy,
            book=self.book,
            config=self.config,
        )
        actions = job.handle(RfqReceived(rfq=rfq, status=status), trio.current_time())
        self._bid_actions(actions)
        answer = next(a for a in actions if isinstance(a, SendBid | SendDecline))
        if isinstance(answer, SendBid):
            self.stats.bids += 1
            self._bids[rfq.job_id] = job
        else:
            self.stats.declines += 1
            self.stats.declines_by_reason[answer.message.reason.value] += 1
        return answer

    async def _expire_bids(self, interval_s: float = 0.25) -> None:
        """End holds and bids whose time is up (a held slot goes back within ``interval_s``)."""
        while True:
            await trio.sleep(interval_s)
            now = trio.current_time()
            for job_id, job in list(self._bids.items()):
                deadline = job.next_deadline()
                if deadline is not None and deadline <= now:
                    self._bid_actions(job.handle(DeadlinePassed(), now))
                if job.finished:
                    self._bids.pop(job_id, None)

    # ------------------------------------------------------------------ jobs
    async def _on_job_stream(self, fs: FramedStream) -> None:
        await self._serve(fs, await receive_message(fs, self._guard, timeout=10))

    async def _serve(self, fs: FramedStream, award: object) -> None:
        """Serve the job ``award`` (the stream's first buyer message after any bid) names."""
        if not isinstance(award, Award):
            raise RemoteProtocolError("a job stream must open with an Award")
        job = self._bids.pop(award.job_id, None)
        if job is None or job.rfq is None or job.rfq.buyer != fs.peer_id:
            raise RemoteProtocolError("award for a job we did not bid on")
        self.stats.awards += 1
        session = _JobSession(self, job, fs)
        self._sessions[award.job_id] = session
        try:
            await session.serve(award)
        finally:
            self._sessions.pop(award.job_id, None)

    def _record(self, outcome: ProviderOutcome, model_id: str) -> None:
        if outcome.completed:
            self.stats.jobs_completed += 1
        else:
            self.stats.jobs_failed += 1
        self.stats.tokens_served += outcome.tokens_sent
        self.stats.earned += outcome.paid


def generation_request(p: Prompt, max_new_tokens: int) -> GenerationRequest:
    """The engine request for a wire :class:`Prompt` (a job, or one being verified)."""
    return GenerationRequest(
        messages=[{"role": m.role, "content": m.content} for m in p.messages]
        if p.messages is not None
        else None,
        prompt=p.prompt,
        resume_token_ids=p.resume_token_ids,
        max_tokens=len(p.resume_token_ids) + max_new_tokens,
        temperature=p.params.temperature,
        top_p=p.params.top_p,
        top_k=p.params.top_k,
        stop=p.params.stop,
        seed=p.params.seed,
        logprobs=True,
        top_logprobs=p.params.logprobs_top_k,
        request_id=p.job_id.hex(),
    )


class _JobSession:
    """One awarded job on one stream: network frames and engine output in, actions out.

    It is the job's :class:`~market.protocol.driver.ProviderDriver`: each action the
    machine returns reaches one of its handler coroutines (``send``,
    ``start_generation``…) through :func:`~market.protocol.driver.dispatch_provider`.
    """

    def __init__(self, service: ProviderService, job: ProviderJob, fs: FramedStream) -> None:
        self.svc = service
        self.job = job
        self.fs = fs
        self.events_in, self.events = trio.open_memory_channel[Event](math.inf)
        self.running = trio.Event()
        self.running.set()
        self.generation: trio.CancelScope | None = None
        self.outcome: ProviderOutcome | None = None
        self.generated = 0

    def remaining_s(self) -> float:
        """How long this job should still take at the node's rate (0 once ended)."""
        award = self.job.award
        if award is None or self.outcome is not None:
            return 0.0
        left = award.max_tokens - award.resume_offset - self.generated
        return max(0, left) / self.svc.status().tokens_per_s

    async def serve(self, award: Award) -> None:
        svc, fs = self.svc, self.fs
        now = trio.current_time()
        awarded = provider_event(fs.peer_id, award, status=svc.status)
        assert awarded is not None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self._apply(self.job.handle(awarded, now))
            rfq = self.job.rfq
            if self.job.award is not None and rfq is not None:  # bookkeeping, off the path
                nursery.start_soon(  # to the first token
                    svc.in_ledger,
                    lambda ledger, rfq=rfq: ledger.record_job(
                        rfq.job_id, role="provider", counterparty=rfq.buyer, model_id=rfq.model_id
                    ),
                )
            nursery.start_soon(self._read)
            while not self.job.finished:
                deadline = self.job.next_deadline()
                event: Event = DeadlinePassed()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    event = await self.events.receive()
                await self._apply(self.job.handle(event, trio.current_time()))
            nursery.cancel_scope.cancel()
        with suppress(NetError), trio.move_on_after(2):
            await fs.send_end()

    async def _read(self) -> None:
        try:
            while True:
                message = await receive_message(self.fs, self.svc._guard, timeout=math.inf)
                if message is None:
                    break
                event = provider_event(self.fs.peer_id, message, only=BUYER_STREAM)
                if isinstance(message, Voucher):
                    await self.svc.fresh_cover(message)
                if event is not None:  # None: a heartbeat (the framed stream tracks liveness)
                    self.events_in.send_nowait(event)
        except (NetError, RemoteProtocolError) as exc:
            logger.info("buyer %s stream ended: %s", self.fs.peer_id, exc)
        self.events_in.send_nowait(PeerDisconnected(peer=self.fs.peer_id))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            await dispatch_provider(self, action)

    # ------------------------------------------ the machine's actions (ProviderDriver)

    async def send(self, action: Send) -> None:
        try:
            await send_message(self.fs, action.message, self.svc.key)
        except NetError:
            self.events_in.send_nowait(PeerDisconnected(peer=self.fs.peer_id))

    async def start_generation(self, action: StartGeneration) -> None:
        self.nursery.start_soon(self._generate, action)

    async def pause_generation(self, action: PauseGeneration) -> None:
        self.running = trio.Event()  # chunks already made wait here
        self.svc.engine.pause(action.job_id.hex())  # and the engine stops stepping it

    async def resume_generation(self, action: ResumeGeneration) -> None:
        self.svc.engine.resume(action.job_id.hex())
        self.running.set()

    async def stop_generation(self, action: StopGeneration) -> None:
        if self.generation is not None:
            self.generation.cancel()

    async def claim_slot(self, action: ClaimSlot) -> None:
        self.svc._slots.add(action.job_id)  # a late award: its bid's hold had ended

    async def release_slot(self, action: ReleaseSlot) -> None:
        self.svc._slots.discard(action.job_id)

    async def store_voucher(self, action: StoreVoucher) -> None:
        """Persist the voucher before anything else happens: it is the node's pay."""
        voucher = action.voucher
        await self.svc.in_ledger(lambda ledger: record(ledger, voucher))

    async def score_peer(self, action: ScorePeer) -> None:
        logger.info("buyer %s: %s (%+.2f)", action.peer, action.reason, action.delta)

    async def report_outcome(self, outcome: ProviderOutcome) -> None:
        svc = self.svc
        self.outcome = outcome
        svc._record(outcome, svc.model_id)
        await svc.in_ledger(
            lambda ledger: ledger.finish_job(
                outcome.job_id,
                tokens=outcome.tokens_sent,
                amount=outcome.paid,
                status="done" if outcome.completed else outcome.reason,
            )
        )

    async def _generate(self, start: StartGeneration) -> None:
        request = generation_request(start.prompt, start.max_new_tokens)
        with trio.CancelScope() as scope:
            self.generation = scope
            try:
                async for chunk in self.svc.engine.generate(request):
                    await self.running.wait()
                    if chunk.token_ids:
                        self.generated += len(chunk.token_ids)
                        self.events_in.send_nowait(
                            TokensGenerated(
                                token_ids=tuple(chunk.token_ids),
                                logprobs=tuple(lp.logprob for lp in chunk.logprobs),
                                text=chunk.text,
                            )
                        )
                    if chunk.finish_reason in ("stop", "length"):
                        self.events_in.send_nowait(
                            GenerationFinished(
                                finish_reason=chunk.finish_reason,
                                prompt_tokens=chunk.prompt_tokens,
                            )
                        )
                    elif chunk.finish_reason is not None:
                        self.events_in.send_nowait(
                            GenerationFailed(message=chunk.error or chunk.finish_reason)
                        )
            except BadRequestError as exc:  # the request itself (e.g. longer than our context)
                self.events_in.send_nowait(GenerationFailed(message=str(exc), bad_request=True))
            except Exception as exc:  # the engine crashed: tell the buyer
                logger.warning("generation failed: %r", exc)
                self.events_in.send_nowait(GenerationFailed(message=f"{type(exc).__name__}: {exc}"))
