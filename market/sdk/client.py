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
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import trio

from market.config import MarketSection
from market.ledger import Ledger
from market.ledger.evidence import EvidenceStore
from market.protocol import (
    Bid,
    Decline,
    Message,
    Offer,
    RemoteProtocolError,
    ReplayGuard,
    Rfq,
)
from market.protocol.buyer import BuyerConfig, BuyerJob
from market.protocol.driver import RFQ_ANSWERS, buyer_event
from market.protocol.events import (
    Event,
)
from market.protocol.evidence import Evidence
from market.protocol.outcomes import BuyerFailure, BuyerOutcome
from market.protocol.payments import BuyerWallet
from market.protocol.signing import SigningKey
from market.sdk.admission import AdmissionQueue
from market.sdk.audit import Audit, fraud_check
from market.sdk.catalog import Catalog
from market.sdk.collateral import Collateral
from market.sdk.jobrun import JobRun, result_of
from market.sdk.reputation import Reputation
from market.sdk.stake import StakeCheck
from market.sdk.types import (
    Chunk,
    GenerationParams,
    HearthError,
    JobFailedError,
    NoBidsError,
    Result,
)
from market.streams import (
    BID_PROTOCOL,
    EVIDENCE_PROTOCOL,
    OFFER_PROTOCOL,
    open_sealed,
    receive_message,
    receive_sealed,
)
from p2pnode.net import NetError, NodeNet
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import GossipMessage, fraud_topic, offers_topic

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
    keep_evidence_s: float = 7 * 86_400.0  # how long each job's evidence stays in the ledger
    verify_rate: float = 0.05  # share of jobs re-scored by another provider (in the background)
    verify_first: int = 3  # a provider's first jobs with us are always verified
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
        self.distrusted_bids = 0  # bids ignored from providers whose work failed verification
        self.rfq_rounds: Counter[str] = Counter()  # RFQ rounds put out, "direct" / "gossip"
        self.key = key
        self.wallet = wallet
        self.config = config
        self.catalog = Catalog()
        self.reputation = Reputation()
        self._nursery = nursery
        self._jobs: dict[bytes, JobRun] = {}
        # Jobs that found every provider busy wait here, first come first served.
        self.admission = AdmissionQueue(max_queued=config.max_queued, retry_s=config.queue_retry_s)
        self._guard = ReplayGuard()
        self._evidence: EvidenceStore | None = None
        self._kept = 0
        self.audit = Audit(self)  # sampled verification of what we bought, and its consequences
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
        first_token_timeout_s: float | None = None,
    ) -> JobHandle:
        """Start a job; iterate the returned handle for chunks (see :class:`JobHandle`).

        ``timeout_s`` is the caller's deadline for the whole job, time waiting for a
        free provider included (default: the client's ``machine.job_timeout_s``). When
        every provider stays busy until then, iteration raises :class:`MarketBusyError`.
        ``first_token_timeout_s`` bounds only the wait for the first token (a streaming
        caller's read timeout: once tokens flow, it waits between them, not for the end).
        """
        if (messages is None) == (prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        for name, value in (
            ("timeout_s", timeout_s),
            ("first_token_timeout_s", first_token_timeout_s),
        ):
            if value is not None and not 0 < value <= 86_400:
                raise ValueError(f"{name} must be in (0, 86400], got {value!r}")
        p = params or GenerationParams()
        if p.seed is None:  # every job carries a seed: its tokens can then be re-derived
            p = dataclasses.replace(p, seed=int.from_bytes(os.urandom(8), "big") >> 1)
        ceiling = self.config.max_price_per_1k if max_price_per_1k is None else max_price_per_1k

        async def start(out: trio.MemorySendChannel[Any]) -> None:
            async with out:
                outcome: Result | HearthError
                try:
                    outcome = await self._run(
                        model,
                        messages,
                        prompt,
                        p,
                        ceiling,
                        out,
                        handle,
                        timeout_s,
                        first_token_timeout_s,
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
        first_token_timeout_s: float | None = None,
        *,
        renamed: int = 0,
    ) -> Result:
        model_id = await self.resolve_model(model)
        asked_ceiling = ceiling  # a re-run on a new release prices that one afresh
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
        if first_token_timeout_s is not None:
            machine = dataclasses.replace(machine, start_timeout_s=first_token_timeout_s)
        job = BuyerJob(
            rfq=rfq,
            prompt=prompt,
            wallet=self.wallet,
            reputation=self.reputation,
            config=machine,
        )
        run = JobRun(self, job, out)
        self._jobs[job_id] = run
        try:
            queue_first = self.admission.waiting(model_id) > 0  # no jumping the queue
            outcome = await run.drive(handle._cancel, queue_first=queue_first)
        finally:
            del self._jobs[job_id]
        ran = outcome.finished_at - run.started_at - outcome.queued_s
        # our slot (if we had one) is free: the next in line tries
        self.admission.finished(model_id, ran if outcome.completed else None)
        newer = self._moved_on(model, model_id, outcome)
        if newer is not None and renamed < 2:
            # Asked by name, and nobody bid: its providers moved to a new release of it
            # meanwhile (their old weights finish old jobs, take no new ones). The job
            # goes to the address the name has now, as it would have a moment later.
            logger.info("model %s moved from %s to %s: retrying the job", model, model_id, newer)
            left = (timeout_s or machine.job_timeout_s) - (trio.current_time() - run.started_at)
            return await self._run(
                model, messages, prompt_text, p, asked_ceiling, out, handle, max(1.0, left),
                first_token_timeout_s, renamed=renamed + 1,
            )  # fmt: skip
        retry_after = self.admission.retry_after_s(model_id)
        return result_of(outcome, model_id, prompt_tokens, run, retry_after)

    def _moved_on(self, model: str, model_id: str, outcome: BuyerOutcome) -> str | None:
        """The address ``model`` names now, when a job by that name found no bidder at
        ``model_id`` and the name has moved to another address since (``None``
        otherwise: an address pins its version, and a job with tokens is not re-run)."""
        if outcome.reason != BuyerFailure.NO_BIDS or outcome.token_ids:
            return None
        if model.removeprefix("sha256:").lower() == model_id:
            return None
        now = self.catalog.resolve(model, trio.current_time())
        return now if now is not None and now != model_id else None

    async def keep_evidence(self, records: list[Evidence]) -> None:
        """Write a finished job's evidence to the ledger (none kept without a ledger);
        every hundred records, drop those older than ``keep_evidence_s``; then let the
        audit sample them for verification."""
        ledger = self.ledger
        if ledger is None:
            self.audit.consider(records)
            return
        window = self.config.keep_evidence_s

        def write() -> None:
            if self._evidence is None:
                self._evidence = EvidenceStore(ledger.db)
            now = time.time()
            for ev in records:
                self._evidence.put(ev, now=now)
            self._kept += len(records)
            if self._kept >= 100:
                self._kept = 0
                self._evidence.purge(older_than=now - window)

        await trio.to_thread.run_sync(write, limiter=self._ledger_limiter)
        self.audit.consider(records)

    def _looking(self, model_id: str) -> bool:
        """A job of ``model_id`` let out of the queue is still running its auction."""
        return any(r.woken and r.job.rfq.model_id == model_id for r in self._jobs.values())

    # ----------------------------------------------------------------- network input
    async def _bid_event(self, peer: str, message: Message | None) -> Event | None:
        """``peer``'s answer to an RFQ as an event for the job (``None``: not to be routed).

        Only staked providers' bids count (Sybil resistance), and none from a provider
        whose work failed verification (:class:`~market.sdk.audit.Audit`).
        """
        if message is None:
            raise RemoteProtocolError("the stream ended before a Bid or Decline")
        event = buyer_event(peer, message, region=self.catalog.region_of(peer), only=RFQ_ANSWERS)
        if isinstance(message, Bid) and self.audit.distrusts(peer) is not None:
            self.distrusted_bids += 1
            return None
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
        got = await receive_sealed(fs, self._guard, timeout=5)
        message, frame = got if got is not None else (None, b"")
        event = await self._bid_event(fs.peer_id, message)
        assert isinstance(message, Bid | Decline)
        run = self._jobs.get(message.job_id)
        if run is not None and event is not None:
            await run.route_answer(fs.peer_id, fs, event, frame)

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
                if self.admission.has(m.model_id):
                    self.admission.wake(m.model_id)
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
        net.set_handler(EVIDENCE_PROTOCOL, client.audit.serve_evidence)
        await client.audit.load()
        reports = await net.subscribe(fraud_topic(), check=fraud_check)
        nursery.start_soon(client.audit.watch_reports, reports)
        offers = await net.subscribe(offers_topic(), check=_offer_check)
        nursery.start_soon(client._watch_offers, offers)
        nursery.start_soon(client._pull_offers)
        nursery.start_soon(client.admission.run, client._looking)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


def _offer_check(data: bytes, origin: str) -> None:
    offer, sender = open_sealed(data)
    if not isinstance(offer, Offer) or offer.provider != sender or sender != origin:
        raise RemoteProtocolError("offers topic carries only offers signed by their provider")
