"""A fake link: one buyer machine and a few provider machines wired in memory.

The smallest complete driver of the job machines, and the harness of the pair and
failover tests. Everything is scripted and deterministic: messages take
``latency`` seconds; each provider's fake engine emits ``chunk_tokens`` tokens every
``step_s`` seconds; token *i* of the job is ``token_at(i)`` whoever generates it, so a
failover that resumes from the delivered prefix must reproduce the uninterrupted
output exactly. Per-provider faults (:class:`Fault`) script crashes, silence,
refusals, tampering and a buyer who stops paying.

    link = FakeLink([ProviderSpec("PA"), ProviderSpec("PB", fault=Fault(crash_after=16))])
    outcome = link.run()
    assert outcome.completed and outcome.token_ids == link.expected_tokens()
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from market.protocol import actions as A
from market.protocol import events as E
from market.protocol.buyer import BuyerConfig, BuyerJob
from market.protocol.driver import buyer_event, dispatch_buyer, dispatch_provider, provider_event
from market.protocol.messages import (
    Accept,
    EndOfStream,
    Message,
    Prompt,
    Rfq,
    TokenChunk,
    Voucher,
)
from market.protocol.outcomes import BuyerOutcome, ProviderOutcome
from market.protocol.payments import BuyerWallet, ChannelTerms, VoucherBook, VoucherDraft
from market.protocol.policy import CostPlusPolicy, ProviderStatus
from market.protocol.provider import ProviderConfig, ProviderJob, ProviderState
from market.sim.world import model_id

__all__ = ["FakeLink", "Fault", "ProviderSpec", "token_at"]

BUYER = "Buyer1"
BUYER_ADDRESS = b"\xbb" * 20
TERMS = ChannelTerms(token=b"\x07" * 20, chain_id=31337, contract=b"\x0c" * 20)
MODEL = model_id(0)
JOB_ID = bytes(range(16))


def token_at(i: int) -> tuple[int, float]:
    """Token ``i`` of the test job and its logprob (exact in fp32)."""
    t = (i * 7919 + 11) % 32000
    return t, -((t % 97) / 32.0)


def sign(draft: VoucherDraft) -> bytes:
    """Stand-in signature that :func:`verify` accepts."""
    return draft.buyer_address + bytes(45)


def verify(voucher: Voucher) -> bool:
    return voucher.signature[:20] == voucher.buyer_address


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """What goes wrong with one provider (all off by default)."""

    crash_after: int | None = None  # dies (silently) once it has sent this many tokens
    eof_on_crash: bool = False  # …and the buyer's stream reads EOF at once
    never_accept: bool = False  # swallows the award (buyer's accept timeout)
    power: str = "normal"  # "off"/"draining" → declines (power_shed); at award → refuses
    tamper_seq: int | None = None  # corrupts the chain hash of this chunk
    wrong_total: bool = False  # lies about total_tokens in EndOfStream


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    tps: float = 40.0
    electricity_per_kwh: int = 150_000
    capacity: int = 1
    models: frozenset[str] = frozenset({MODEL})
    fault: Fault = field(default_factory=Fault)

    @property
    def address(self) -> bytes:
        return (self.name.encode() * 20)[:20]


class FakeLink:
    """Runs one job from RFQ to outcome over an in-memory link."""

    def __init__(
        self,
        providers: list[ProviderSpec],
        *,
        max_tokens: int = 40,
        chunk_tokens: int = 8,
        credit_chunks: int = 1,
        deposit: int = 10**9,
        latency: float = 0.01,
        step_s: float = 0.1,
        buyer_config: BuyerConfig | None = None,
        provider_config: ProviderConfig | None = None,
        buyer_pays: bool = True,
    ) -> None:
        self.now = 0.0
        self.latency = latency
        self.step_s = step_s
        self.buyer_pays = buyer_pays
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.specs = {p.name: p for p in providers}
        self.dead: set[str] = set()  # membership only
        self.sent: list[tuple[float, str, str, Message]] = []
        self.delivered: list[A.DeliverTokens] = []
        self.provider_outcomes: dict[str, ProviderOutcome] = {}  # latest per provider
        self.provider_history: list[ProviderOutcome] = []
        self.scores: list[A.ScorePeer] = []
        self.wallet = BuyerWallet(
            buyer_address=BUYER_ADDRESS, deposit=deposit, terms=TERMS, signer=sign
        )
        self.rfq = Rfq(
            job_id=JOB_ID,
            buyer=BUYER,
            buyer_address=BUYER_ADDRESS,
            model_id=MODEL,
            prompt_tokens=10,
            max_tokens=max_tokens,
            max_price_per_1k=1000,
            region="",
            bid_window_ms=200,
        )
        self.buyer = BuyerJob(
            rfq=self.rfq,
            prompt=Prompt(job_id=JOB_ID, prompt="hello"),
            wallet=self.wallet,
            config=buyer_config or BuyerConfig(enough_bids=len(providers)),
        )
        self.providers: dict[str, ProviderJob] = {}
        self.books: dict[str, VoucherBook] = {}
        self._gen: dict[str, int] = {}  # tokens produced by each provider's engine
        self._paused: set[str] = set()  # membership only
        self._chunk_tokens = chunk_tokens
        self._credit = credit_chunks
        self._provider_config = provider_config or ProviderConfig()
        for spec in providers:
            self.books[spec.name] = VoucherBook(
                provider_address=spec.address,
                terms=TERMS,
                verifier=verify,
                cover_of=lambda _a: deposit,
            )
            self.providers[spec.name] = self._new_machine(spec.name)

    def _new_machine(self, name: str) -> ProviderJob:
        """A fresh provider machine (one per RFQ round, as a node keeps one per job)."""
        spec = self.specs[name]
        return ProviderJob(
            provider=spec.name,
            provider_address=spec.address,
            policy=CostPlusPolicy(
                electricity_per_kwh=spec.electricity_per_kwh,
                power_draw_w=300.0,
                chunk_tokens=self._chunk_tokens,
                credit_chunks=self._credit,
            ),
            book=self.books[name],
            config=self._provider_config,
        )

    # ----------------------------------------------------------------- plumbing

    def _at(self, t: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def status(self, name: str) -> ProviderStatus:
        spec = self.specs[name]
        return ProviderStatus(
            provider=name,
            provider_address=spec.address,
            region="us-east",
            power_state=spec.fault.power,  # type: ignore[arg-type]
            models=spec.models,
            active_jobs=0,
            capacity=spec.capacity,
            tokens_per_s=spec.tps,
        )

    def expected_tokens(self, n: int | None = None) -> tuple[int, ...]:
        return tuple(token_at(i)[0] for i in range(n if n is not None else self.rfq.max_tokens))

    def run(self, until: float = 120.0) -> BuyerOutcome:
        """Run the job to its outcome (bounded by ``until`` simulated seconds)."""
        self._buyer(E.JobSubmitted())
        while self._heap and self.buyer.outcome is None:
            t, _, fn = heapq.heappop(self._heap)
            if t > until:
                break
            self.now = t
            fn()
        # let providers wind down (final vouchers, cancels) for a bounded while
        while self._heap:
            t, _, fn = heapq.heappop(self._heap)
            if t > self.now + 30.0:
                break
            self.now = t
            fn()
        assert self.buyer.outcome is not None, "job did not end"
        return self.buyer.outcome

    def _arm(self, machine: BuyerJob | ProviderJob, who: str) -> None:
        d = machine.next_deadline()
        if d is None:
            return

        def fire() -> None:
            if machine.finished or who in self.dead:
                return
            d2 = machine.next_deadline()
            if d2 is not None and d2 <= self.now:
                if who == BUYER:
                    self._buyer(E.DeadlinePassed())
                else:
                    self._provider(who, E.DeadlinePassed())

        self._at(max(d, self.now), fire)

    # -------------------------------------------------------------------- buyer

    def _buyer(self, ev: E.Event) -> None:
        side = _BuyerSide(self)
        for a in self.buyer.handle(ev, self.now):
            dispatch_buyer(side, a)
        self._arm(self.buyer, BUYER)

    def _rfq(self, name: str) -> None:
        if name not in self.dead:
            if self.providers[name].finished:
                self.providers[name] = self._new_machine(name)
            elif self.providers[name].state is not ProviderState.IDLE:
                return  # still holds a bid from an earlier round
            self._provider(name, E.RfqReceived(rfq=self.rfq, status=self.status(name)))

    # ----------------------------------------------------------------- provider

    def _provider(self, name: str, ev: E.Event) -> None:
        if name in self.dead:
            return
        m = self.providers[name]
        side = _ProviderSide(self, name)
        for a in m.handle(ev, self.now):
            dispatch_provider(side, a)
        self._arm(m, name)

    def _step(self, name: str) -> None:
        m = self.providers[name]
        if name in self.dead or name in self._paused or name not in self._gen:
            return
        assert m.award is not None
        limit = m.award.max_tokens - m.award.resume_offset
        done = self._gen[name]
        k = min(m.award.chunk_tokens, limit - done)
        base = m.award.resume_offset + done
        toks = [token_at(base + i) for i in range(k)]
        self._gen[name] = done + k
        self._provider(
            name,
            E.TokensGenerated(
                token_ids=tuple(t for t, _ in toks),
                logprobs=tuple(lp for _, lp in toks),
                text=f"<{base}>",
            ),
        )
        if name not in self._gen:
            return
        if done + k >= limit:
            del self._gen[name]
            # the fake engine "reads" the RFQ's prompt_tokens
            self._provider(name, E.GenerationFinished(finish_reason="length", prompt_tokens=10))
        elif name not in self._paused:
            self._at(self.now + self.step_s, lambda: self._step(name))

    # ------------------------------------------------------------------ the wire

    def _send(self, src: str, dst: str, msg: Message) -> None:
        fault = self.specs[src].fault if src in self.specs else None
        if fault is not None:
            if isinstance(msg, Accept) and fault.never_accept:
                return
            if isinstance(msg, TokenChunk):
                m = self.providers[src]
                if fault.crash_after is not None and m.sent_tokens > fault.crash_after:
                    self._crash(src)
                    return
                if fault.tamper_seq == msg.seq:
                    msg = TokenChunk(
                        job_id=msg.job_id,
                        seq=msg.seq,
                        token_ids=msg.token_ids,
                        logprobs=msg.logprobs,
                        text=msg.text,
                        chain_hash=bytes(32),
                    )
            if isinstance(msg, EndOfStream) and fault.wrong_total:
                msg = EndOfStream(
                    job_id=msg.job_id,
                    total_tokens=msg.total_tokens + 1,
                    finish_reason=msg.finish_reason,
                    result_commitment=msg.result_commitment,
                )
        if src in self.dead:
            return
        self.sent.append((self.now, src, dst, msg))
        self._at(self.now + self.latency, lambda: self._deliver(src, dst, msg))

    def _crash(self, name: str) -> None:
        self.dead.add(name)
        if self.specs[name].fault.eof_on_crash:
            self._at(self.now + self.latency, lambda: self._buyer(E.PeerDisconnected(peer=name)))

    def _deliver(self, src: str, dst: str, msg: Message) -> None:
        if dst == BUYER:
            self._buyer(buyer_event(src, msg, region="us-east"))
            return
        if dst in self.dead:
            return
        ev = provider_event(src, msg, status=lambda: self.status(dst))
        if ev is not None:
            self._provider(dst, ev)


class _BuyerSide:
    """The link's buyer-side handlers (a ``BuyerDriver``)."""

    def __init__(self, link: FakeLink) -> None:
        self.link = link

    def publish(self, action: A.Publish) -> None:
        link = self.link
        for name in link.specs:
            link._at(link.now + link.latency, functools.partial(link._rfq, name))

    def send_award(self, action: A.SendAward) -> None:
        self.send(action)

    def send_voucher(self, action: A.SendVoucher) -> None:
        if self.link.buyer_pays:
            self.send(action)

    def send(self, action: A.Send) -> None:
        self.link._send(BUYER, action.to, action.message)

    def deliver_tokens(self, action: A.DeliverTokens) -> None:
        self.link.delivered.append(action)

    def score_peer(self, action: A.ScorePeer) -> None:
        self.link.scores.append(action)

    def report_outcome(self, outcome: BuyerOutcome) -> None:
        pass  # run() reads it from the machine


class _ProviderSide:
    """Provider ``name``'s handlers on the link (a ``ProviderDriver``)."""

    def __init__(self, link: FakeLink, name: str) -> None:
        self.link = link
        self.name = name

    def send(self, action: A.Send) -> None:
        self.link._send(self.name, action.to, action.message)

    def start_generation(self, action: A.StartGeneration) -> None:
        link = self.link
        link._gen[self.name] = 0
        link._at(link.now + link.step_s, functools.partial(link._step, self.name))

    def pause_generation(self, action: A.PauseGeneration) -> None:
        self.link._paused.add(self.name)

    def resume_generation(self, action: A.ResumeGeneration) -> None:
        link = self.link
        link._paused.discard(self.name)
        link._at(link.now + link.step_s, functools.partial(link._step, self.name))

    def stop_generation(self, action: A.StopGeneration) -> None:
        self.link._gen.pop(self.name, None)

    def claim_slot(self, action: A.ClaimSlot) -> None:
        pass  # one job per provider here: no capacity to count

    def release_slot(self, action: A.ReleaseSlot) -> None:
        pass

    def store_voucher(self, action: A.StoreVoucher) -> None:
        pass  # the VoucherBook already holds it

    def score_peer(self, action: A.ScorePeer) -> None:
        pass

    def report_outcome(self, outcome: ProviderOutcome) -> None:
        self.link.provider_outcomes[self.name] = outcome
        self.link.provider_history.append(outcome)
