"""The buyer's async client: run the auction, stream tokens, pay per chunk, fail over.

The client is a thin driver around :class:`market.protocol.buyer.BuyerJob`: it feeds
the machine what arrives from the network (bids, accepts, chunks…) and the passing
of its deadlines, and carries out the actions the machine returns (publish the RFQ,
open a job stream to the awarded provider, send the prompt and the vouchers, hand
tokens to the caller). Every decision — which bid wins, when a provider is deemed
silent, whom to fail over to, how much each voucher says — is the machine's.

Example::

    async with open_client(identity=ident, net_config=cfg, terms=terms, deposit=d) as client:
        job = client.generate("SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Hi"}])
        async for chunk in job:
            print(chunk.text, end="")
        print(job.result.cost, job.result.provider)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from market.config import MarketSection
from market.ledger import Ledger
from market.protocol import (
    Bid,
    Decline,
    Message,
    Offer,
    RemoteProtocolError,
    ReplayGuard,
    Rfq,
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
from market.protocol.buyer import BuyerConfig, BuyerJob, BuyerState
from market.protocol.driver import PROVIDER_STREAM, RFQ_ANSWERS, buyer_event, dispatch_buyer
from market.protocol.events import (
    BidReceived,
    CancelRequested,
    CapacityFreed,
    CollateralShort,
    DeadlinePassed,
    Event,
    JobSubmitted,
    PeerDisconnected,
    QueueFull,
    RfqDelivered,
)
from market.protocol.outcomes import BuyerFailure, BuyerOutcome
from market.protocol.payments import BuyerWallet
from market.protocol.signing import SigningKey
from market.sdk.catalog import Catalog
from market.sdk.collateral import Collateral
from market.sdk.reputation import Reputation
from market.sdk.stake import StakeCheck
from market.sdk.types import (
    BadRequestError,
    Chunk,
    GenerationParams,
    HearthError,
    InsufficientFundsError,
    JobFailedError,
    MarketBusyError,
    NoBidsError,
    ProviderShare,
    Result,
)
from market.streams import (
    BID_PROTOCOL,
    JOB_PROTOCOL,
    OFFER_PROTOCOL,
    RFQ_PROTOCOL,
    open_sealed,
    receive_message,
    sealed,
    send_message,
)
from market.vouchers import record
from p2pnode.net import NetError, NodeNet
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import GossipMessage, offers_topic, rfq_topic

__all__ = ["Client", "ClientConfig", "JobHandle", "open_client"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Buyer-side knobs: price ceiling, auction window, region preference, timeouts."""

    max_price_per_1k: int | None = None  # None: twice the cheapest offer seen for the model
    bid_window_ms: int = MarketSection().bid_window_ms  # the shipped [market] default
    direct_rfq: int = 4  # round 1 asks this many known providers straight (0: gossip only)
    region: str = ""
    machine: BuyerConfig = field(default_factory=BuyerConfig)
    discovery_wait_s: float = 10.0  # how long generate() waits for a model's first offer
    max_queued: int = 256  # jobs that may wait per model when every provider is busy
    queue_retry_s: float = 0.5  # a waiting job tries the market again this often


class JobHandle:
    """One running job: ``async for chunk in handle`` streams it; then read ``result``."""

    def __init__(self, client: Client, start: Callable[[trio.MemorySendChannel[Any]], Any]) -> None:
        self._client = client
        self._start = start
        self._result: Result | None = None
        self._cancel = trio.Event()

    @property
    def result(self) -> Result:
        """The job's final account (available once iteration finished)."""
        if self._result is None:
            raise RuntimeError("the job has not finished yet: iterate over it first")
        return self._result

    def cancel(self) -> None:
        """Stop the job; providers are paid for what they already delivered."""
        self._cancel.set()

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        send, recv = trio.open_memory_channel[Any](math.inf)
        self._client._nursery.start_soon(self._start, send)
        try:
            async with recv:
                async for item in recv:
                    if isinstance(item, Chunk):
                        yield item
                    elif isinstance(item, Result):
                        self._result = item
                        return
                    else:
                        raise item
        finally:
            if self._result is None:
                self._cancel.set()

    async def text(self) -> str:
        """Run the job to the end and return its whole text."""
        async for _ in self:
            pass
        return self.result.text


class Client:
    """A buyer on the Hearth market (see the module docstring). Made by :func:`open_client`."""

    def __init__(
        self,
        *,
        net: NodeNet,
        key: SigningKey,
        wallet: BuyerWallet,
        config: ClientConfig,
        nursery: trio.Nursery,
        ledger: Ledger | None = None,
        stake_check: StakeCheck | None = None,
        collateral: Collateral | None = None,
    ) -> None:
        self.net = net
        self.ledger = ledger
        self.stake_check = stake_check
        self.collateral = collateral  # None: no chain (a simulated or test market)
        self._ledger_limiter = trio.CapacityLimiter(1)  # one thread at a time per connection
        self.unstaked_bids = 0
        self.rfq_rounds: Counter[str] = Counter()  # RFQ rounds put out, "direct" / "gossip"
        self.key = key
        self.wallet = wallet
        self.config = config
        self.catalog = Catalog()
        self.reputation = Reputation()
        self._nursery = nursery
        self._jobs: dict[bytes, _JobRun] = {}
        # The admission queue: per model, jobs waiting for a provider with a free slot,
        # in arrival order (one that tried its turn and found none goes back in front).
        self._queues: dict[str, deque[_JobRun]] = {}
        self._recent_s: deque[float] = deque(maxlen=64)  # how long recent jobs took
        self._guard = ReplayGuard()
        self._offers_seen = trio.Event()

    # ----------------------------------------------------------------- market view
    async def list_models(self) -> list[str]:
        """Names of the models some provider offers right now."""
        return [m.name for m in self.catalog.models(trio.current_time())]

    def knows_model(self, model: str) -> bool:
        """True when some live offer names ``model`` (by name, short name or id)."""
        return self.catalog.resolve(model, trio.current_time()) is not None

    async def resolve_model(self, model: str) -> str:
        """The content address of ``model`` (a name or an address), waiting for offers."""
        with trio.move_on_after(self.config.discovery_wait_s):
            while True:
                found = self.catalog.resolve(model, trio.current_time())
                if found is not None:
                    return found
                self._offers_seen = trio.Event()
                await self._offers_seen.wait()
        raise NoBidsError(model, {})

    # ----------------------------------------------------------------- jobs
    def generate(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
        params: GenerationParams | None = None,
        *,
        max_price_per_1k: int | None = None,
        timeout_s: float | None = None,
    ) -> JobHandle:
        """Start a job; iterate the returned handle for chunks (see :class:`JobHandle`).

        ``timeout_s`` is the caller's deadline for the whole job, time waiting for a
        free provider included (default: the client's ``machine.job_timeout_s``). When
        every provider stays busy until then, iteration raises :class:`MarketBusyError`.
        """
        if (messages is None) == (prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        if timeout_s is not None and not 0 < timeout_s <= 86_400:
            raise ValueError(f"timeout_s must be in (0, 86400], got {timeout_s!r}")
        p = params or GenerationParams()
        ceiling = self.config.max_price_per_1k if max_price_per_1k is None else max_price_per_1k

        async def start(out: trio.MemorySendChannel[Any]) -> None:
            async with out:
                outcome: Result | HearthError
                try:
                    outcome = await self._run(
                        model, messages, prompt, p, ceiling, out, handle, timeout_s
                    )
                except HearthError as exc:
                    outcome = exc
                except Exception as exc:  # one job's bug must not take the client (and
                    # every other job, e.g. behind the gateway) down with it
                    logger.exception("job %s failed inside the client", model)
                    outcome = JobFailedError(f"internal error: {type(exc).__name__}: {exc}")
                # A consumer that went away (an HTTP client that hung up) closed its end:
                # nobody is left to tell, and nothing may escape into the client's nursery.
                with suppress(trio.BrokenResourceError):
                    await out.send(outcome)

        handle = JobHandle(self, start)
        return handle

    async def _run(
        self,
        model: str,
        messages: list[dict[str, str]] | None,
        prompt_text: str | None,
        p: GenerationParams,
        ceiling: int | None,
        out: trio.MemorySendChannel[Any],
        handle: JobHandle,
        timeout_s: float | None = None,
    ) -> Result:
        model_id = await self.resolve_model(model)
        if ceiling is None:
            best = [
                m.best_price_per_1k
                for m in self.catalog.models(trio.current_time())
                if m.model_id == model_id
            ]
            ceiling = 2 * min(best) if best else 0
        job_id = os.urandom(16)
        text_len = len(prompt_text or "") + sum(len(m["content"]) + 8 for m in messages or [])
        # For the RFQ an estimate (the buyer holds no tokenizer); the result carries the
        # count the provider's engine reported at the end of the stream.
        prompt_tokens = max(1, text_len // 4)
        rfq = Rfq(
            job_id=job_id,
            buyer=self.key.peer_id,
            buyer_address=self.wallet.buyer_address,
            model_id=model_id,
            prompt_tokens=prompt_tokens,
            max_tokens=p.max_tokens,
            max_price_per_1k=ceiling,
            region=self.config.region,
            bid_window_ms=self.config.bid_window_ms,
        )
        prompt = p.prompt_message(job_id, messages, prompt_text)
        machine = self.config.machine
        if timeout_s is not None:
            machine = dataclasses.replace(machine, job_timeout_s=timeout_s)
        job = BuyerJob(
            rfq=rfq,
            prompt=prompt,
            wallet=self.wallet,
            reputation=self.reputation,
            config=machine,
        )
        run = _JobRun(self, job, out)
        self._jobs[job_id] = run
        try:
            outcome = await run.drive(handle._cancel, queue_first=self._waiting(model_id) > 0)
        finally:
            del self._jobs[job_id]
            self._wake(model_id)  # our slot (if we had one) is free: the next in line tries
        if outcome.completed:
            self._recent_s.append(outcome.finished_at - run.started_at - outcome.queued_s)
        return _result(outcome, model_id, prompt_tokens, run, self.retry_after_s(model_id))

    # ----------------------------------------------------------------- admission queue
    def _waiting(self, model_id: str) -> int:
        """Jobs of ``model_id`` waiting in the queue right now."""
        q = self._queues.get(model_id)
        return 0 if q is None else sum(1 for r in q if r.job.state is BuyerState.QUEUED)

    def _enqueue(self, run: _JobRun) -> None:
        """``run`` found every provider busy: it waits its turn (the machine's deadline
        still runs), or fails at once when the queue is full."""
        model_id = run.job.rfq.model_id
        q = self._queues.setdefault(model_id, deque())
        waiting = self._waiting(model_id)
        if waiting >= self.config.max_queued:
            run.events_in.send_nowait(
                QueueFull(detail=f"{waiting} jobs already wait for this model (max_queued)")
            )
            return
        if run.queued_before:
            q.appendleft(run)  # tried its turn and found no slot: still first in line
        else:
            q.append(run)
        run.queued_before = True

    def _wake(self, model_id: str) -> None:
        """Let the first job still waiting for ``model_id`` run a fresh auction."""
        q = self._queues.get(model_id)
        while q:
            run = q.popleft()
            if run.job.state is BuyerState.QUEUED and run.outcome is None:
                run.woken = True
                run.events_in.send_nowait(CapacityFreed())
                return
        self._queues.pop(model_id, None)

    async def _retry_queues(self) -> None:
        """Every ``queue_retry_s``, the head of each queue tries again, unless a job let
        out before it is still looking (capacity our own jobs free wakes it at once)."""
        while True:
            await trio.sleep(self.config.queue_retry_s)
            for model_id in list(self._queues):
                looking = any(
                    r.woken and r.job.rfq.model_id == model_id for r in self._jobs.values()
                )
                if not looking:
                    self._wake(model_id)

    def retry_after_s(self, model_id: str) -> float:
        """A fair guess of when capacity frees: how long recent jobs took, for each
        batch of waiters ahead (used for ``Retry-After``)."""
        typical = statistics.median(self._recent_s) if self._recent_s else 5.0
        return float(min(60, max(1, math.ceil(typical * (1 + self._waiting(model_id) // 8)))))

    # ----------------------------------------------------------------- network input
    async def _bid_event(self, peer: str, message: Message | None) -> Event | None:
        """``peer``'s answer to an RFQ as an event for the job (``None``: not to be routed).

        Only staked providers' bids count (Sybil resistance).
        """
        if message is None:
            raise RemoteProtocolError("the stream ended before a Bid or Decline")
        event = buyer_event(peer, message, region=self.catalog.region_of(peer), only=RFQ_ANSWERS)
        if (
            isinstance(message, Bid)
            and self.stake_check is not None
            and not await self.stake_check(peer, message.provider_address)
        ):
            self.unstaked_bids += 1
            return None
        return event

    async def _on_bid_stream(self, fs: FramedStream) -> None:
        """A provider's answer to a gossiped RFQ; a bid's stream is held like a direct one
        (the award goes on it, or ending it tells the provider "not awarded")."""
        message = await receive_message(fs, self._guard, timeout=5)
        event = await self._bid_event(fs.peer_id, message)
        assert isinstance(message, Bid | Decline)
        run = self._jobs.get(message.job_id)
        if run is not None and event is not None:
            await run.route_answer(fs.peer_id, fs, event)

    async def _watch_offers(self, channel: trio.MemoryReceiveChannel[GossipMessage]) -> None:
        async for msg in channel:
            try:
                offer, sender = open_sealed(msg.data)
            except RemoteProtocolError:
                continue  # the topic check already scored the publisher down
            if isinstance(offer, Offer) and offer.provider == sender:
                self._add_offer(offer)

    def _add_offer(self, offer: Offer) -> None:
        self.catalog.add(offer, trio.current_time())
        self._offers_seen.set()
        if offer.free_slots > 0 and offer.power_state in ("normal", "throttled"):
            for m in offer.models:  # a provider says it has room: the next in line tries
                if m.model_id in self._queues:
                    self._wake(m.model_id)
        if self.stake_check is not None:  # read the registry now, not mid-auction
            self._nursery.start_soon(self.stake_check.warm, offer.provider, offer.provider_address)

    async def _pull_offers(self, interval_s: float = 2.0) -> None:
        """Ask each connected peer with no live offer for its own, every ``interval_s``.

        Gossip alone can leave a buyer blind for a while (a peer that rejoins under the
        same id can be missed by a publisher's fanout), and a new buyer should not wait
        a whole offer interval. Peers that do not serve ``/hearth/offer/1``
        (bootstraps, other buyers) are left alone for a minute.
        """
        not_providers: dict[str, float] = {}
        while True:
            now = trio.current_time()
            ask = [
                p
                for p in self.net.connected_peers()
                if not self.catalog.has(p, now) and not_providers.get(p, 0.0) <= now
            ]
            async with trio.open_nursery() as nursery:
                for peer in ask[:16]:
                    nursery.start_soon(self._pull_offer, peer, not_providers)
            await trio.sleep(interval_s)

    async def _pull_offer(self, peer: str, not_providers: dict[str, float]) -> None:
        offer: object = None
        with trio.move_on_after(3), suppress(NetError, RemoteProtocolError):
            async with self.net.open_stream(peer, OFFER_PROTOCOL, timeout=2) as fs:
                offer = await receive_message(fs, timeout=2)
        if isinstance(offer, Offer) and offer.provider == peer:
            self._add_offer(offer)
        else:
            not_providers[peer] = trio.current_time() + 60.0


class _JobRun:
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
        self.streams: dict[str, FramedStream] = {}
        # Messages for a provider whose job stream is still opening (award, prompt…).
        self.pending: dict[str, list[Any]] = {}
        # Direct RFQ streams of bidders, kept open so the winner's carries its award.
        self.held: dict[str, tuple[FramedStream, trio.Event]] = {}
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
        self.woken = False
        self.client._enqueue(self)

    async def send_award(self, action: SendAward) -> None:
        """Start the winner's session; the award (then the prompt) waits for its stream."""
        self.pending[action.to] = [action.message]
        self._release(except_peer=action.to)
        self.nursery.start_soon(self._provider_session, action)
        if self.woken:  # placed after waiting: the next in line may find room too
            self.woken = False
            self.client._wake(self.job.rfq.model_id)

    async def deliver_tokens(self, action: DeliverTokens) -> None:
        if self.first_token_at is None:
            self.first_token_at = trio.current_time()
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
        for fs in list(self.streams.values()):  # sessions end meanwhile
            with trio.move_on_after(1):
                with suppress(NetError):
                    await fs.send_end()

    async def publish(self, action: Publish) -> None:
        """Put the RFQ out: straight to the best known providers first, else on gossip.

        The first round asks up to ``direct_rfq`` providers whose live offers name the
        model and to whom we are connected, on ``/hearth/rfq/1`` (no gossip hop, no
        stream back); later rounds, and markets we know nothing of yet, use the
        model's gossip topic so every provider hears it.
        """
        rfq = action.rfq
        client = self.client
        data = sealed(rfq, client.key)
        peers, everyone = (
            self._direct_candidates(rfq.model_id) if self.job.round == 1 else ([], False)
        )
        if peers:
            client.rfq_rounds["direct"] += 1
            for peer in peers:
                self.nursery.start_soon(self._ask, peer, data)
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
        offers = client.catalog.candidates(model_id, trio.current_time())
        out = [o.provider for o in offers if o.provider in connected]
        limit = client.config.direct_rfq
        return out[:limit], len(offers) <= limit and len(out) == len(offers)

    async def _ask(self, peer: str, data: bytes) -> None:
        """One direct RFQ: send it, turn the answer into an event, hold a bidder's stream."""
        client = self.client
        window = max(1.0, self.job.rfq.bid_window_ms / 1000.0)
        try:
            async with client.net.open_stream(peer, RFQ_PROTOCOL, timeout=window) as fs:
                await fs.send(data)
                message = await receive_message(fs, client._guard, timeout=window)
                event = await client._bid_event(peer, message)
                if event is not None:
                    await self.route_answer(peer, fs, event)
        except (NetError, RemoteProtocolError) as exc:
            client.reputation.note_failure(peer, str(exc))

    async def route_answer(self, peer: str, fs: FramedStream, event: Event) -> None:
        """Hand a bid or decline to the job; hold a bidder's stream until we award.

        The award goes on the winner's held stream; ending the others' tells those
        providers "not awarded", and they free the slots their bids hold at once.
        """
        if not isinstance(event, BidReceived) or self.outcome is not None:
            self.events_in.send_nowait(event)
            return
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
        """Send ``action.message`` on its provider's job stream (queued while it opens)."""
        queued = self.pending.get(action.to)
        if queued is not None:
            queued.append(action.message)  # the stream is still opening: it sends these first
            return
        fs = self.streams.get(action.to)
        if fs is None:
            return  # the session is already gone; its PeerDisconnected is on the way
        try:
            await send_message(fs, action.message, self.client.key)
        except NetError:
            self.events_in.send_nowait(PeerDisconnected(peer=action.to))

    async def _provider_session(self, award: SendAward) -> None:
        """Carry the award to its provider and turn what comes back into events.

        The award travels on the winner's held direct RFQ stream when there is one,
        else on a new job stream.
        """
        peer = award.to
        net = self.client.net
        held = self.held.get(peer)
        try:
            if not await self._cover(award):
                return
            net.protect(peer)
            if held is not None:
                fs, released = held
                try:
                    await self._converse(peer, fs)
                finally:
                    released.set()
            else:
                async with net.open_stream(peer, JOB_PROTOCOL, timeout=5) as fs:
                    await self._converse(peer, fs)
        except (NetError, RemoteProtocolError) as exc:
            self.client.reputation.note_failure(peer, str(exc))
        finally:
            self.pending.pop(peer, None)
            self.streams.pop(peer, None)
            net.unprotect(peer)
        if self.outcome is None:
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

    async def _converse(self, peer: str, fs: FramedStream) -> None:
        queued = self.pending.pop(peer, [])
        self.streams[peer] = fs
        for message in queued:
            await send_message(fs, message, self.client.key)
        while True:
            message = await receive_message(fs, self.client._guard)
            if message is None:
                return
            self.events_in.send_nowait(buyer_event(peer, message, only=PROVIDER_STREAM))


def _result(
    outcome: BuyerOutcome, model_id: str, prompt_tokens: int, run: _JobRun, retry_after_s: float
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


@asynccontextmanager
async def open_client(
    *,
    net: NodeNet,
    key: SigningKey,
    wallet: BuyerWallet,
    config: ClientConfig | None = None,
    ledger: Ledger | None = None,
    stake_check: StakeCheck | None = None,
    collateral: Collateral | None = None,
) -> AsyncIterator[Client]:
    """Run a buyer client on a started network host (see :mod:`market.sdk.connect`)."""
    async with trio.open_nursery() as nursery:
        client = Client(
            net=net,
            key=key,
            wallet=wallet,
            config=config or ClientConfig(),
            nursery=nursery,
            ledger=ledger,
            stake_check=stake_check,
            collateral=collateral,
        )
        net.set_handler(BID_PROTOCOL, client._on_bid_stream)
        offers = await net.subscribe(offers_topic(), check=_offer_check)
        nursery.start_soon(client._watch_offers, offers)
        nursery.start_soon(client._pull_offers)
        nursery.start_soon(client._retry_queues)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


def _offer_check(data: bytes, origin: str) -> None:
    offer, sender = open_sealed(data)
    if not isinstance(offer, Offer) or offer.provider != sender or sender != origin:
        raise RemoteProtocolError("offers topic carries only offers signed by their provider")
