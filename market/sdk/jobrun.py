"""The I/O side of one buyer job: its event inbox, its streams to providers.

:class:`JobRun` drives one :class:`~market.protocol.buyer.BuyerJob` for the
:class:`~market.sdk.client.Client`: it feeds the machine what arrives from providers
and the passing of its deadlines, and carries out the actions the machine returns
(publish the RFQ, hold bidders' streams, open the winner's session, lock cover, send
the prompt and vouchers, hand tokens to the caller, wait in the admission queue).
:func:`result_of` turns the machine's outcome into the caller's
:class:`~market.sdk.types.Result` or typed error.
"""

from __future__ import annotations

import math
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from market.protocol import (
    Award,
    Bid,
    EndOfStream,
    Prompt,
    RemoteProtocolError,
    TokenChunk,
    Voucher,
)
from market.protocol.actions import (
    Action,
    AwaitCapacity,
    DeliverTokens,
    Publish,
    ScorePeer,
    Send,
    SendAward,
    SendVoucher,
)
from market.protocol.buyer import BuyerJob
from market.protocol.codec import encode
from market.protocol.driver import PROVIDER_STREAM, buyer_event, dispatch_buyer
from market.protocol.events import (
    BidReceived,
    CancelRequested,
    CollateralShort,
    DeadlinePassed,
    Event,
    JobSubmitted,
    PeerDisconnected,
    RfqDelivered,
)
from market.protocol.evidence import Evidence
from market.protocol.outcomes import BuyerFailure, BuyerOutcome, Segment
from market.sdk.types import (
    BadRequestError,
    Chunk,
    InsufficientFundsError,
    JobFailedError,
    MarketBusyError,
    NoBidsError,
    ProviderShare,
    Result,
)
from market.streams import (
    JOB_PROTOCOL,
    RFQ_PROTOCOL,
    receive_sealed,
    sealed,
    send_message,
)
from market.vouchers import record
from p2pnode.net import NetError
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import rfq_topic

if TYPE_CHECKING:
    from market.sdk.client import Client

__all__ = ["JobRun", "result_of"]


@dataclass(eq=False)
class _Part:
    """One award's share of the job: what one provider was sent and did after it.

    It becomes the outcome's segment of the same index (one award, one segment). A
    provider can hold two parts of one job (it had no slot, then won a later round),
    so everything is kept per part, never per peer.
    """

    peer: str
    awarded_at: float
    offset: int  # where its share of the tokens begins
    bid: Bid | None  # the bid it won with, and that bid's sealed frame
    bid_frame: bytes | None
    # Messages for it while its job stream opens (award, prompt…); None once open.
    pending: list[Any] | None = field(default_factory=list)
    stream: FramedStream | None = None
    prompt: bytes | None = None  # the Prompt we sent it, encoded
    chunks: list[tuple[tuple[int, ...], tuple[float, ...]]] = field(default_factory=list)
    frames: dict[int | str, bytes] = field(default_factory=dict)  # sealed: by seq, "end"
    first_chunk: tuple[float, int] | None = None  # (time, tokens)
    last_chunk: float | None = None


class JobRun:
    """The I/O side of one BuyerJob: its event inbox and its streams to providers.

    It is the job's :class:`~market.protocol.driver.BuyerDriver`: each action the
    machine returns reaches one of its handler coroutines (``publish``,
    ``send_award``…) through :func:`~market.protocol.driver.dispatch_buyer`.
    """

    def __init__(self, client: Client, job: BuyerJob, out: trio.MemorySendChannel[Any]) -> None:
        self.client = client
        self.job = job
        self.out = out
        self.events_in, self.events = trio.open_memory_channel[Event](math.inf)
        # Direct RFQ streams of bidders, kept open so the winner's carries its award.
        self.held: dict[str, tuple[FramedStream, trio.Event]] = {}
        # Each bidder's sealed bid frames this job (the award names which one won).
        self.offers: dict[str, list[tuple[Bid, bytes]]] = {}
        # Every award's part, in award order, and each provider's live one: only the
        # live part's stream feeds the machine (a part we left may still be closing).
        self.parts: list[_Part] = []
        self.live: dict[str, _Part] = {}
        self.outcome: BuyerOutcome | None = None
        self.started_at = trio.current_time()
        self.first_token_at: float | None = None
        self.texts: list[str] = []
        self.queued_before = False  # has waited in the admission queue
        self.woken = False  # let out of the queue and not placed yet

    async def drive(self, cancel: trio.Event, *, queue_first: bool = False) -> BuyerOutcome:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.cancel = cancel
            nursery.start_soon(self._cancel_on, cancel)
            submitted = JobSubmitted(queue_first=queue_first)
            await self._apply(self.job.handle(submitted, trio.current_time()))
            while self.outcome is None:
                deadline = self.job.next_deadline()
                event: Event = DeadlinePassed()
                with trio.move_on_at(deadline if deadline is not None else math.inf):
                    event = await self.events.receive()
                await self._apply(self.job.handle(event, trio.current_time()))
            self._release(except_peer=None)
            nursery.cancel_scope.cancel()
        return self.outcome

    def _release(self, except_peer: str | None) -> None:
        """End the held direct RFQ streams (all but ``except_peer``'s)."""
        for peer, (_, released) in list(self.held.items()):
            if peer != except_peer:
                released.set()

    async def _cancel_on(self, cancel: trio.Event) -> None:
        await cancel.wait()
        self.events_in.send_nowait(CancelRequested(reason="buyer cancelled"))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            await dispatch_buyer(self, action)

    # ------------------------------------------------ the machine's actions (BuyerDriver)

    async def await_capacity(self, action: AwaitCapacity) -> None:
        """Every provider that heard us is busy: wait in the client's admission queue."""
        self.client.admission.put(self)

    async def send_award(self, action: SendAward) -> None:
        """Start the winner's session; the award (then the prompt) waits for its stream."""
        assert isinstance(action.message, Award)
        frame = next((f for b, f in self.offers.pop(action.to, []) if b == action.bid), None)
        part = _Part(
            peer=action.to,
            awarded_at=trio.current_time(),
            offset=action.message.resume_offset,
            bid=action.bid,
            bid_frame=frame,
            pending=[action.message],
        )
        self.parts.append(part)
        self.live[action.to] = part
        self._release(except_peer=action.to)
        self.nursery.start_soon(self._provider_session, action, part)
        self.client.admission.placed(self)

    async def deliver_tokens(self, action: DeliverTokens) -> None:
        now = trio.current_time()
        if self.first_token_at is None:
            self.first_token_at = now
        part = self.live[action.provider]  # tokens come only from the live part
        if part.first_chunk is None:
            part.first_chunk = (now, len(action.token_ids))
        part.last_chunk = now
        part.chunks.append((action.token_ids, action.logprobs))
        self.texts.append(action.text)
        chunk = Chunk(
            text=action.text,
            token_ids=action.token_ids,
            logprobs=action.logprobs,
            provider=action.provider,
        )
        try:
            await self.out.send(chunk)
        except trio.BrokenResourceError:  # the consumer went away: this job ends
            self.cancel.set()  # (the provider stops; it is paid what it delivered)

    async def score_peer(self, action: ScorePeer) -> None:
        self.client.reputation.adjust(action.peer, action.delta)

    async def report_outcome(self, outcome: BuyerOutcome) -> None:
        self.outcome = outcome
        self._observe(outcome)
        records = self.evidence(outcome)
        if records:
            await self.client.keep_evidence(records)
        for part in self.live.values():  # sessions end meanwhile
            if part.stream is not None:
                with trio.move_on_after(1):
                    with suppress(NetError):
                        await part.stream.send_end()

    def _segments(self, outcome: BuyerOutcome) -> list[tuple[Segment, _Part]]:
        """Each outcome segment with the part of the award that opened it."""
        return [
            (seg, part)
            for seg, part in zip(outcome.segments, self.parts, strict=False)
            if seg.provider == part.peer
        ]

    def evidence(self, outcome: BuyerOutcome) -> list[Evidence]:
        """One record per segment that delivered tokens: what its provider was sent,
        what it streamed, and the envelope it sealed over the head of its chain."""
        out: list[Evidence] = []
        for seg, part in self._segments(outcome):
            chunks = part.chunks
            if not chunks or part.prompt is None:
                continue  # nothing delivered: nothing to prove
            frames = part.frames
            signed = (
                frames.get("end") if seg.commitment is not None else frames.get(len(chunks) - 1)
            )
            if signed is None or part.bid_frame is None:
                continue
            out.append(
                Evidence(
                    job_id=self.job.job_id,
                    provider=part.peer,
                    model_id=self.job.rfq.model_id,
                    prompt=part.prompt,
                    resume_offset=part.offset,
                    chunk_sizes=tuple(len(ids) for ids, _ in chunks),
                    token_ids=tuple(i for ids, _ in chunks for i in ids),
                    logprobs=tuple(lp for _, lps in chunks for lp in lps),
                    signed=signed,
                    bid=part.bid_frame,
                )
            )
        return out

    def _observe(self, outcome: BuyerOutcome) -> None:
        """Tell the client's statistics what each provider of this job did.

        A provider is judged only on its own part: it finished (its end of stream
        came), or it failed; a segment we ended ourselves (our caller cancelled, our
        own money ran short) counts for its speed alone.
        """
        ours = outcome.reason in (BuyerFailure.CANCELLED, BuyerFailure.INSUFFICIENT_DEPOSIT)
        now = trio.current_time()
        last = len(outcome.segments) - 1
        for i, (seg, part) in enumerate(self._segments(outcome)):
            first = part.first_chunk
            ok: bool | None = True  # its end of stream came
            if seg.commitment is None:
                ok = None if ours and i == last else False
            self.client.reputation.observe(
                seg.provider,
                ok=ok,
                tokens=seg.tokens,
                seconds=max(0.0, (part.last_chunk or now) - part.awarded_at),
                ttft_s=None if first is None else first[0] - part.awarded_at,
                first_tokens=max(1, first[1]) if first is not None else 1,
                bid=part.bid,
            )

    async def publish(self, action: Publish) -> None:
        """Put the RFQ out: straight to the best known providers, and on gossip after.

        Every round asks up to ``direct_rfq`` providers whose live offers name the model
        and to whom we are connected, on ``/hearth/rfq/1`` (no gossip hop, no stream
        back). The first round asks them alone (the machine is told how many, so the
        window closes once each answered); later rounds, and markets we know nothing of
        yet, also go on the model's gossip topic so every provider hears them (a
        provider that hears one RFQ both ways drops the second as a replay).
        """
        rfq = action.rfq
        client = self.client
        data = sealed(rfq, client.key)
        peers, everyone = self._direct_candidates(rfq.model_id)
        if peers:
            client.rfq_rounds["direct"] += 1
            for peer in peers:
                self.nursery.start_soon(self._ask, peer, data)
            if self.job.round == 1:
                self.events_in.send_nowait(RfqDelivered(asked=len(peers), everyone=everyone))
                return
        client.rfq_rounds["gossip"] += 1
        net = client.net
        topic = rfq_topic(rfq.model_id)
        if net.topic_peers(topic) == 0:
            with trio.move_on_after(3):
                await net.connect_providers(rfq.model_id)
        # On failure the machine's bid window runs out and it retries or reports no bids.
        with suppress(NetError):
            await net.publish(topic, data)

    def _direct_candidates(self, model_id: str) -> tuple[list[str], bool]:
        """Up to ``direct_rfq`` connected providers of the model, and whether they are
        every provider of it we know of."""
        client = self.client
        connected = set(client.net.connected_peers())
        now = trio.current_time()
        offers = client.catalog.candidates(model_id, now, salt=self.job.job_id)
        out = [o.provider for o in offers if o.provider in connected]
        limit = client.config.direct_rfq
        return out[:limit], len(offers) <= limit and len(out) == len(offers)

    async def _ask(self, peer: str, data: bytes) -> None:
        """One direct RFQ: send it, turn the answer into an event, hold a bidder's stream."""
        client = self.client
        window = max(1.0, self.job.rfq.bid_window_ms / 1000.0)
        try:
            async with client.net.open_stream(peer, RFQ_PROTOCOL, timeout=window) as fs:
                t0 = trio.current_time()
                await fs.send(data)
                got = await receive_sealed(fs, client._guard, timeout=window)
                client.reputation.observe_rtt(peer, trio.current_time() - t0)
                message, frame = got if got is not None else (None, b"")
                event = await client._bid_event(peer, message)
                if event is not None:
                    await self.route_answer(peer, fs, event, frame)
        except (NetError, RemoteProtocolError) as exc:
            client.reputation.note_failure(peer, str(exc))

    async def route_answer(self, peer: str, fs: FramedStream, event: Event, frame: bytes) -> None:
        """Hand a bid or decline to the job; hold a bidder's stream until we award.

        ``frame`` is the sealed answer as it came (a bid's is kept as evidence).

        The award goes on the winner's held stream; ending the others' tells those
        providers "not awarded", and they free the slots their bids hold at once.
        """
        if not isinstance(event, BidReceived) or self.outcome is not None:
            self.events_in.send_nowait(event)
            return
        offers = self.offers.setdefault(peer, [])
        if len(offers) < 8:  # one per round; the machine takes a peer's first pooled bid
            offers.append((event.bid, frame))
        released = trio.Event()
        self.held[peer] = (fs, released)
        try:
            self.events_in.send_nowait(event)
            await released.wait()
        finally:
            if self.held.get(peer, (None,))[0] is fs:
                del self.held[peer]

    async def send_voucher(self, action: SendVoucher) -> None:
        ledger = self.client.ledger
        if ledger is not None:
            # Written before it leaves: a restarted buyer resumes its channels from here.
            voucher = action.message
            assert isinstance(voucher, Voucher)
            await trio.to_thread.run_sync(
                record, ledger, voucher, limiter=self.client._ledger_limiter
            )
        await self.send(action)

    async def send(self, action: Send) -> None:
        """Send ``action.message`` on its provider's live job stream (queued while it
        opens)."""
        part = self.live.get(action.to)
        if part is None:
            return  # never awarded: nothing to send on
        if isinstance(action.message, Prompt):
            part.prompt = encode(action.message)
        if part.pending is not None:
            part.pending.append(action.message)  # still opening: it sends these first
            return
        fs = part.stream
        if fs is None:
            return  # the session is already gone; its PeerDisconnected is on the way
        try:
            await send_message(fs, action.message, self.client.key)
        except NetError:
            if self.live.get(action.to) is part:
                self.events_in.send_nowait(PeerDisconnected(peer=action.to))

    async def _provider_session(self, award: SendAward, part: _Part) -> None:
        """Carry the award to its provider and turn what comes back into events.

        The award travels on the winner's held direct RFQ stream when there is one,
        else on a new job stream.
        """
        peer = award.to
        net = self.client.net
        held = self.held.get(peer)
        self.client.reputation.started(peer)
        try:
            if not await self._cover(award):
                return
            net.protect(peer)
            if held is not None:
                fs, released = held
                try:
                    await self._converse(part, fs)
                finally:
                    released.set()
            else:
                async with net.open_stream(peer, JOB_PROTOCOL, timeout=5) as fs:
                    await self._converse(part, fs)
        except (NetError, RemoteProtocolError) as exc:
            self.client.reputation.note_failure(peer, str(exc))
        finally:
            part.pending = None
            part.stream = None
            net.unprotect(peer)
            self.client.reputation.stopped(peer)
        if self.outcome is None and self.live.get(peer) is part:
            self.events_in.send_nowait(PeerDisconnected(peer=peer))

    async def _cover(self, award: SendAward) -> bool:
        """Lock what the award may cost for its provider first; ``False``: we cannot."""
        collateral = self.client.collateral
        if collateral is None:
            return True
        try:
            await collateral.ensure(award.provider_address, award.cover)
        except Exception as exc:  # short of money, or the chain refused: our side, not theirs
            self.events_in.send_nowait(CollateralShort(peer=award.to, detail=str(exc)))
            return False
        return True

    async def _converse(self, part: _Part, fs: FramedStream) -> None:
        """Send ``part``'s queued messages on ``fs``, then feed what comes back to the
        machine while ``part`` is its provider's live one."""
        queued, part.pending = part.pending or [], None
        part.stream = fs
        for message in queued:
            await send_message(fs, message, self.client.key)
        while True:
            got = await receive_sealed(fs, self.client._guard)
            if got is None or self.live.get(part.peer) is not part:
                return  # ended, or a part we left (the provider has a newer one)
            message, data = got
            if isinstance(message, TokenChunk):
                part.frames[message.seq] = data
            elif isinstance(message, EndOfStream):
                part.frames["end"] = data
            self.events_in.send_nowait(buyer_event(part.peer, message, only=PROVIDER_STREAM))


def result_of(
    outcome: BuyerOutcome, model_id: str, prompt_tokens: int, run: JobRun, retry_after_s: float
) -> Result:
    text = "".join(run.texts)
    shares = tuple(
        ProviderShare(
            peer_id=s.provider,
            address="0x" + s.provider_address.hex(),
            tokens=s.tokens,
            amount=s.paid,
            price_per_1k=s.price_per_1k,
            result_commitment=s.commitment.hex() if s.commitment else "",
        )
        for s in outcome.segments
    )
    result = Result(
        job_id=outcome.job_id.hex(),
        model_id=model_id,
        text=text,
        token_ids=outcome.token_ids,
        finish_reason=outcome.finish_reason or outcome.reason,
        prompt_tokens=outcome.prompt_tokens or prompt_tokens,
        completion_tokens=len(outcome.token_ids),
        cost=outcome.paid,
        shares=shares,
        failovers=outcome.failovers,
        award_ms=1000 * outcome.award_s if outcome.award_s is not None else 0.0,
        ttft_ms=1000 * (run.first_token_at - run.started_at) if run.first_token_at else 0.0,
        queued_ms=1000 * outcome.queued_s,
    )
    if outcome.completed:
        return result
    if outcome.reason == BuyerFailure.NO_BIDS:
        raise NoBidsError(
            model_id, {d.provider: f"{d.reason.value} {d.detail}".strip() for d in outcome.declines}
        )
    if outcome.reason == BuyerFailure.INSUFFICIENT_DEPOSIT:
        raise InsufficientFundsError(outcome.detail)
    if outcome.reason == BuyerFailure.BAD_REQUEST:
        raise BadRequestError(outcome.detail)
    if outcome.reason == BuyerFailure.SATURATED:
        raise MarketBusyError(model_id, outcome.detail, retry_after_s)
    if outcome.reason == BuyerFailure.CANCELLED:
        return result
    raise JobFailedError(outcome.why(), partial=result)
