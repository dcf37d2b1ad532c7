"""The deterministic market simulator: the node's real job machines, many of them.

:class:`Simulation` plays N providers and M buyers through J jobs. It is a driver
exactly like the node: it feeds events into :class:`~market.protocol.buyer.BuyerJob`
and :class:`~market.protocol.provider.ProviderJob` and carries out the actions they
return — over a simulated network (:mod:`market.sim.network`), sharded gossip
(:mod:`market.sim.gossip`) and a fake engine that produces deterministic tokens
(token *i* of a job depends only on the job and *i*, so a failover that resumes from
the delivered prefix yields the same output as an uninterrupted run). Messages become
events, and actions reach their handlers, through :mod:`market.protocol.driver`, as
in the node and the SDK; the machines run with the shipped settings (the
``BuyerConfig``/``ProviderConfig`` defaults and ``[market] bid_window_ms``).

Faults, all drawn from the seed: crashes (the node's machines vanish; half the
buyers see an EOF at once, the others must notice the silence), rejoins, freezes
(the node stops processing for a while, then resumes with stale machines), message
loss, and region partitions. After every event the
:class:`~market.sim.invariants.InvariantChecker` runs on what the event touched;
the first violation stops the run, and the report carries the command that
reproduces it.

What the simulator does *not* build: envelopes, signatures, encodings (messages are
passed as objects; a voucher's "signature" is the buyer's address).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from market.config import MarketSection
from market.protocol import actions as A
from market.protocol import events as E
from market.protocol.auction import WeightedScorer
from market.protocol.buyer import BuyerConfig, BuyerJob, BuyerState
from market.protocol.driver import buyer_event, dispatch_buyer, dispatch_provider, provider_event
from market.protocol.messages import (
    Award,
    Bid,
    Decline,
    Error,
    ErrorCode,
    Message,
    Prompt,
    Rfq,
    Voucher,
)
from market.protocol.outcomes import BuyerOutcome, ProviderOutcome
from market.protocol.payments import ChannelTerms
from market.protocol.policy import ProviderStatus
from market.protocol.provider import ProviderConfig, ProviderJob, ProviderState
from market.sim.core import EventQueue
from market.sim.gossip import ShardedGossip
from market.sim.invariants import InvariantChecker
from market.sim.network import NetworkModel, Partition
from market.sim.report import SimReport
from market.sim.world import (
    BuyerNode,
    Generation,
    JobMeta,
    ProviderNode,
    SimConfig,
    Tracked,
    model_id,
)

__all__ = ["SimReport", "Simulation", "run"]

# entry kinds in the event queue
_DELIVER, _TIMER, _ENGINE, _ARRIVAL, _FAULT, _RFQ, _EOF, _WAKE, _RELEASE = range(9)
_QUEUE_RETRY_S = 0.5  # a buyer's admission queue tries the market again this often
_QUEUE_MAX = 256  # jobs one buyer lets wait per model

_REGION_NAMES = ("us-east", "us-west", "eu-west", "ap-south")
_MESH_HOP_S = 0.015  # one GossipSub forwarding hop inside a shard
# The machines run as shipped, so the figures describe the market people run: the
# buyer and provider machines with their defaults (what the SDK and `hearth node` use)
# and the bid window of hearth.toml's [market] section.
_BID_WINDOW_MS = MarketSection().bid_window_ms


class _Reputation:
    """Every buyer's view of providers (shared in the simulator: a simplification)."""

    __slots__ = ("scores",)

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}

    def reputation(self, provider: str) -> float:
        return self.scores.get(provider, 0.8)

    def adjust(self, peer: str, delta: float) -> None:
        s = self.scores.get(peer, 0.8) + delta
        self.scores[peer] = 0.0 if s < 0.0 else (1.0 if s > 1.0 else s)


class Simulation:
    """One seeded run. ``run()`` returns a :class:`SimReport`."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = cfg = config
        seed = cfg.seed
        world = random.Random(f"{seed}/world")
        self.rng = random.Random(f"{seed}/run")
        self.q = EventQueue()
        self.check = InvariantChecker()
        self.report = SimReport(config=cfg)
        self.net = NetworkModel(rng=random.Random(f"{seed}/net"), loss=cfg.loss)
        self.terms = ChannelTerms(token=b"\x07" * 20, chain_id=31337, contract=b"\x0c" * 20)
        self.model_ids = [model_id(i) for i in range(cfg.models)]
        self.rep = _Reputation()
        self.scorer = WeightedScorer()
        self.buyer_cfg = BuyerConfig()
        self.provider_cfg = ProviderConfig()
        self.rate = max(cfg.providers * cfg.jobs_per_provider_s, 0.5)
        self.horizon = cfg.jobs / self.rate  # expected arrival span, seconds
        max_job_cost = cfg.max_tokens * cfg.max_price_per_1k // 1000 + 1
        per_buyer = math.ceil(cfg.jobs / cfg.n_buyers) + 8
        deposit = per_buyer * max_job_cost * 2
        self.deposits: dict[bytes, int] = {}
        self.buyers = [
            BuyerNode(i, world, self.terms, deposit, cfg.inject == "overpay")
            for i in range(cfg.n_buyers)
        ]
        for b in self.buyers:
            self.deposits[b.address] = deposit
        self.providers = [
            ProviderNode(
                i,
                world,
                cfg.models,
                self.model_ids,
                self.terms,
                self.deposits,
                cfg.max_price_per_1k,
                cfg.chunk_tokens,
            )
            for i in range(cfg.providers)
        ]
        self.nodes: dict[str, ProviderNode | BuyerNode] = {}
        for p in self.providers:
            self.nodes[p.name] = p
        for b in self.buyers:
            self.nodes[b.name] = b
        holders: list[list[int]] = [[] for _ in range(cfg.models)]
        for p in self.providers:
            for m in p.model_idx:
                holders[m].append(p.idx)
        keys = [world.getrandbits(32) for _ in self.providers]
        self.gossip = ShardedGossip(
            random.Random(f"{seed}/mesh"),
            holders,
            keys,
            shard_size=cfg.shard_size,
            degree=cfg.mesh_degree,
        )
        self.free_slots = [0] * cfg.models  # live, able, price-ok providers' free slots
        for p in self.providers:
            self._recount(p)
        self.meta: dict[bytes, JobMeta] = {}
        self.created = 0
        self.open_jobs = 0
        self.signed: dict[tuple[bytes, bytes], int] = {}
        self.spent_seen: dict[bytes, int] = {}
        self._schedule_faults(random.Random(f"{seed}/faults"))

    # ---------------------------------------------------------------- setup

    def _schedule_faults(self, rng: random.Random) -> None:
        cfg = self.cfg
        span = max(self.horizon, 1.0)
        n_crash = round(cfg.crash_rate * cfg.providers)
        n_freeze = round(cfg.freeze_rate * cfg.providers)
        order = list(range(cfg.providers))
        rng.shuffle(order)
        for i in order[:n_crash]:
            t = rng.uniform(0.05 * span, 0.9 * span)
            self.q.push(t, _FAULT, self.providers[i], "crash")
            if rng.random() < 0.5:
                self.q.push(t + rng.uniform(2.0, 20.0), _FAULT, self.providers[i], "rejoin")
        for i in order[n_crash : n_crash + n_freeze]:
            t = rng.uniform(0.05 * span, 0.9 * span)
            self.q.push(t, _FAULT, self.providers[i], ("freeze", rng.uniform(4.0, 20.0)))
        for _ in range(cfg.partitions):
            a, b = rng.sample(range(4), 2)
            t = rng.uniform(0.1 * span, 0.8 * span)
            self.net.partitions.append(Partition(t, t + rng.uniform(1.0, 5.0), a, b))

    # ----------------------------------------------------------------- loop

    def run(self, *, max_events: int | None = None) -> SimReport:
        """Run until every job has ended (or an invariant breaks); return the figures."""
        t0 = time.perf_counter()
        q = self.q
        check = self.check
        q.push(0.0, _ARRIVAL)
        limit = max_events if max_events is not None else 1 << 62
        deadline = self.horizon + 3600.0
        dispatch: dict[int, Callable[[float, Any, Any], None]] = {
            _DELIVER: self._on_deliver,
            _TIMER: self._on_timer,
            _ENGINE: self._on_engine,
            _ARRIVAL: self._on_arrival,
            _FAULT: self._on_fault,
            _RFQ: self._on_rfq,
            _EOF: self._on_eof,
            _WAKE: self._on_wake,
            _RELEASE: self._on_release,
        }
        while q and not check.violations:
            if self.created >= self.cfg.jobs and self.open_jobs == 0:
                break
            if q.popped >= limit or q.now > deadline:
                break
            t, kind, a, b = q.pop()
            check.now = t
            check.event_index = q.popped
            dispatch[kind](t, a, b)
        if not check.violations and self.created >= self.cfg.jobs:
            for job_id in check.open_jobs:
                check.unfinished(job_id)
                break
        r = self.report
        r.events = q.popped
        r.sim_time_s = q.now
        r.wall_s = time.perf_counter() - t0
        r.violations = list(check.violations)
        return r

    # ------------------------------------------------------------- handlers

    def _on_arrival(self, now: float, a: Any, b: Any) -> None:
        cfg = self.cfg
        rng = self.rng
        self.created += 1
        if self.created < cfg.jobs:
            self.q.push(now + rng.expovariate(self.rate), _ARRIVAL)
        buyer = self.buyers[rng.randrange(len(self.buyers))]
        model = rng.randrange(cfg.models)
        job_id = rng.getrandbits(128).to_bytes(16, "big")
        pinned = rng.random() < 0.1
        rfq = Rfq(
            job_id=job_id,
            buyer=buyer.name,
            buyer_address=buyer.address,
            model_id=self.model_ids[model],
            prompt_tokens=rng.randint(8, 512),
            max_tokens=rng.randint(cfg.min_tokens, cfg.max_tokens),
            max_price_per_1k=cfg.max_price_per_1k,
            region=_REGION_NAMES[buyer.region] if pinned else "",
            bid_window_ms=_BID_WINDOW_MS,
        )
        prompt = Prompt(job_id=job_id, prompt="simulated prompt")
        machine = BuyerJob(
            rfq=rfq,
            prompt=prompt,
            wallet=buyer.wallet,
            scorer=self.scorer,
            reputation=self.rep,
            config=self.buyer_cfg,
        )
        shards = self.gossip.n_shards(model)
        self.meta[job_id] = JobMeta(buyer, model, now, rng.randrange(shards), pinned)
        tr = Tracked(machine, buyer)
        buyer.jobs[job_id] = tr
        self.open_jobs += 1
        self.check.job_started(job_id)
        self._drive(tr, E.JobSubmitted(), now)

    def _on_rfq(self, now: float, p: ProviderNode, rfq: Rfq) -> None:
        if not p.alive or p.frozen_until > now:
            return
        old = p.machines.get(rfq.job_id)
        if old is not None:
            if not old.machine.finished:
                return  # a duplicate round while we still hold a bid
            old.dead = True
        m = ProviderJob(
            provider=p.name,
            provider_address=p.address,
            policy=p.policy,
            book=p.book,
            config=self.provider_cfg,
        )
        tr = Tracked(m, p)
        p.machines[rfq.job_id] = tr
        self._drive(tr, E.RfqReceived(rfq=rfq, status=self._status(p)), now)

    def _on_deliver(
        self, now: float, dst: ProviderNode | BuyerNode, env: tuple[str, Message]
    ) -> None:
        sender, msg = env
        if isinstance(dst, BuyerNode):
            tr = dst.jobs.get(msg.job_id)  # type: ignore[attr-defined]
            if tr is None:
                return
            self._drive(tr, buyer_event(sender, msg, region=self._region_name(sender)), now)
            return
        if not dst.alive or dst.frozen_until > now:
            return
        tr = dst.machines.get(msg.job_id)  # type: ignore[attr-defined]
        if tr is None:
            if isinstance(msg, Award):
                # the node no longer has this job (evicted or restarted): refuse at once
                err = Error(job_id=msg.job_id, code=ErrorCode.OVERLOADED, message="no open bid")
                self._send(dst, sender, err, now)
            return
        ev = provider_event(sender, msg, status=lambda: self._status(dst))
        if ev is not None:
            self._drive(tr, ev, now)

    def _on_timer(self, now: float, tr: Tracked, b: Any) -> None:
        if tr.dead or tr.timer_at != now:
            return
        owner = tr.owner
        if isinstance(owner, ProviderNode) and owner.frozen_until > now:
            tr.timer_at = owner.frozen_until
            self.q.push(owner.frozen_until, _TIMER, tr)
            return
        tr.timer_at = None
        d = tr.machine.next_deadline()
        if d is None:
            return
        if d > now:
            tr.timer_at = d
            self.q.push(d, _TIMER, tr)
            return
        self._drive(tr, E.DeadlinePassed(), now)

    def _on_engine(self, now: float, p: ProviderNode, key: tuple[bytes, int]) -> None:
        job_id, epoch = key
        if not p.alive or p.epoch != epoch:
            return
        if p.frozen_until > now:
            self.q.push(p.frozen_until, _ENGINE, p, key)
            return
        g = p.engine.get(job_id)
        tr = p.machines.get(job_id)
        if g is None or tr is None:
            return
        g.scheduled = False
        if g.paused:
            return
        k = min(self.cfg.chunk_tokens, g.finish_at - g.produced)
        pos = g.base + g.produced
        salt = int.from_bytes(job_id[:4], "big")
        ids = tuple((salt + (pos + i) * 7919) % 32000 for i in range(k))
        lps = tuple(-((t % 97) / 32.0) for t in ids)
        g.produced += k
        self._drive(tr, E.TokensGenerated(token_ids=ids, logprobs=lps, text=""), now)
        if job_id not in p.engine:
            return
        if g.produced >= g.finish_at:
            del p.engine[job_id]
            m = tr.machine
            assert isinstance(m, ProviderJob)
            reason = (
                "length"
                if m.award is not None and g.base + g.produced >= m.award.max_tokens
                else "stop"
            )
            self._drive(tr, E.GenerationFinished(finish_reason=reason), now)  # type: ignore[arg-type]
        elif not g.paused:
            self._schedule_step(p, g, now)

    def _on_fault(self, now: float, p: ProviderNode, what: Any) -> None:
        if what == "crash":
            if not p.alive:
                return
            self.report.crashes += 1
            p.alive = False
            p.epoch += 1
            rng = self.rng
            for job_id, tr in p.machines.items():
                tr.dead = True
                m = tr.machine
                assert isinstance(m, ProviderJob)
                if (
                    m.rfq is not None
                    and m.state
                    in (
                        ProviderState.ACCEPTED,
                        ProviderState.STREAMING,
                    )
                    and rng.random() < 0.5
                ):  # the buyer's stream reads EOF
                    self.q.push(now + 0.05, _EOF, m.rfq.buyer, (job_id, p.name))
            p.machines.clear()
            p.engine.clear()
            p.active = 0
        elif what == "rejoin":
            p.alive = True
        elif what == "thaw":
            pass
        else:
            _, length = what
            self.report.freezes += 1
            p.frozen_until = now + length
        self._recount(p)
        if isinstance(what, tuple):
            self.q.push(p.frozen_until, _FAULT, p, "thaw")

    # ------------------------------------------------------ admission queue

    def _enqueue(self, b: BuyerNode, job_id: bytes, now: float) -> None:
        """``job_id`` waits for capacity in its buyer's queue (what the SDK client does)."""
        meta = self.meta[job_id]
        q = b.queues.setdefault(meta.model, deque())
        tr = b.jobs[job_id]
        if len(q) >= _QUEUE_MAX:
            self._drive(tr, E.QueueFull(detail=f"{len(q)} jobs queued"), now)
            return
        if meta.queued:
            q.appendleft(job_id)  # tried its turn and found no slot: still first in line
        else:
            q.append(job_id)
        meta.queued = True
        self.report.queued += 1
        self._arm_wake(b, meta.model, now + _QUEUE_RETRY_S)

    def _arm_wake(self, b: BuyerNode, model: int, at: float) -> None:
        armed = b.wake_at.get(model)
        if armed is None or at < armed:
            b.wake_at[model] = at
            self.q.push(at, _WAKE, b, model)

    def _on_wake(self, now: float, b: BuyerNode, model: int) -> None:
        if b.wake_at.get(model) != now:
            return  # superseded by an earlier retry
        del b.wake_at[model]
        self._wake(b, model, now)

    def _wake(self, b: BuyerNode, model: int, now: float) -> None:
        """Let the first job still waiting for ``model`` try the market again."""
        q = b.queues.get(model)
        while q:
            job_id = q.popleft()
            tr = b.jobs.get(job_id)
            if tr is None or tr.machine.state is not BuyerState.QUEUED:
                continue  # it left the queue meanwhile (a late bid, cancelled)
            self.meta[job_id].woken = True
            self._drive(tr, E.CapacityFreed(), now)
            break
        if q:
            self._arm_wake(b, model, now + _QUEUE_RETRY_S)

    def _on_release(self, now: float, p: ProviderNode, job_id: bytes) -> None:
        """The buyer ended our bid's stream without an award ("not awarded")."""
        if not p.alive or p.frozen_until > now:
            return
        tr = p.machines.get(job_id)
        if tr is not None and tr.machine.state is ProviderState.BID_SENT:
            self._drive(tr, E.NotAwarded(), now)

    def _on_eof(self, now: float, buyer_name: str, key: tuple[bytes, str]) -> None:
        job_id, peer = key
        b = self.nodes[buyer_name]
        assert isinstance(b, BuyerNode)
        tr = b.jobs.get(job_id)
        if tr is not None:
            self._drive(tr, E.PeerDisconnected(peer=peer), now)

    # --------------------------------------------------------------- driving

    def _region_name(self, peer: str) -> str:
        """The region a peer states in its Offer (what a buyer's node would know)."""
        return _REGION_NAMES[self.nodes[peer].region]

    def _status(self, p: ProviderNode) -> ProviderStatus:
        return ProviderStatus(
            provider=p.name,
            provider_address=p.address,
            region=_REGION_NAMES[p.region],
            power_state=p.power,  # type: ignore[arg-type]
            models=p.models,
            active_jobs=p.active,
            capacity=p.capacity,
            tokens_per_s=p.tps,
        )

    def _drive(self, tr: Tracked, event: E.Event, now: float) -> None:
        """Feed one event to a machine, carry out its actions, re-arm its timer."""
        m = tr.machine
        actions = m.handle(event, now)
        owner = tr.owner
        if isinstance(owner, BuyerNode):
            if actions:
                buyer = _BuyerSide(self, owner, tr, now)
                for act in actions:
                    dispatch_buyer(buyer, act)
        else:
            assert isinstance(m, ProviderJob)
            if actions:
                provider = _ProviderSide(self, owner, tr, now)
                for act in actions:
                    dispatch_provider(provider, act)
            if m.award is not None and m.state is not ProviderState.DONE:
                self.check.provider_credit(m.award.job_id, m.unpaid_chunks, m.award.credit_chunks)
        if tr.dead or m.finished:
            return
        d = m.next_deadline()
        if d is not None and (tr.timer_at is None or d < tr.timer_at):
            d = max(d, now)
            tr.timer_at = d
            self.q.push(d, _TIMER, tr)

    def _send(self, src: ProviderNode | BuyerNode, to: str, msg: Message, now: float) -> None:
        dst = self.nodes.get(to)
        if dst is None:
            return
        self.report.direct_messages += 1
        ai = src.idx if isinstance(src, ProviderNode) else -1 - src.idx
        bi = dst.idx if isinstance(dst, ProviderNode) else -1 - dst.idx
        if isinstance(msg, (Bid, Decline)):
            t = self.net.dial_arrival(now, ai, bi, src.region, dst.region)
        else:
            t = self.net.stream_arrival(now, ai, bi, src.region, dst.region)
        if t is not None:
            self.q.push(t, _DELIVER, dst, (src.name, msg))

    def _schedule_step(self, p: ProviderNode, g: Generation, now: float) -> None:
        tps = p.tps * (0.5 if p.power == "throttled" else 1.0)
        g.scheduled = True
        self.q.push(now + self.cfg.chunk_tokens / tps, _ENGINE, p, (g.job_id, p.epoch))

    def _publish(self, b: BuyerNode, rfq: Rfq, now: float) -> None:
        meta = self.meta[rfq.job_id]
        gossip = self.gossip
        n_shards = gossip.n_shards(meta.model)
        shard = (meta.shard0 + meta.publishes) % n_shards
        meta.publishes += 1
        members = gossip.members(meta.model, shard)
        if not members:
            return
        self.report.gossip_messages += gossip.transmissions(meta.model, shard)
        entry = self.rng.randrange(len(members))
        hops = gossip.hops(meta.model, shard, entry)
        net = self.net
        loss = net.loss
        rng = self.rng
        base = now + net.base_s(b.region, self.providers[members[entry]].region)
        for j, pi in enumerate(members):
            if loss and rng.random() < loss:
                continue
            p = self.providers[pi]
            if net.partitions and net.cut(now, b.region, p.region):
                continue
            self.q.push(base + hops[j] * _MESH_HOP_S, _RFQ, p, rfq)

    def _job_done(self, b: BuyerNode, out: BuyerOutcome) -> None:
        r = self.report
        meta = self.meta.pop(out.job_id)
        tr = b.jobs.pop(out.job_id)
        tr.dead = True
        self.open_jobs -= 1
        lost = False
        if out.completed:
            r.jobs_completed += 1
        else:
            r.jobs_failed += 1
            r.failed_by_reason[out.reason] = r.failed_by_reason.get(out.reason, 0) + 1
            if (
                out.reason in ("no_bids", "providers_exhausted", "saturated")
                and not meta.region_pinned
                and self.free_slots[meta.model] > 0
            ):
                lost = True
                r.jobs_lost += 1
        if out.award_s is not None:
            r.award_ms.append(out.award_s)
        r.queued_s.append(out.queued_s)
        if b.queues.get(meta.model):  # a slot of ours freed: the next in line may try
            self._wake(b, meta.model, self.q.now)
        r.bids += out.bids
        r.failovers += out.failovers
        r.tokens += len(out.token_ids)
        r.paid += out.paid
        self.check.job_finished(
            out.job_id,
            out.completed,
            out.reason,
            [(s.provider, s.price_per_1k, s.tokens, s.paid) for s in out.segments],
            lost,
        )

    def _recount(self, p: ProviderNode) -> None:
        """Keep ``free_slots[model]`` = free slots of live, able, price-ok providers."""
        able = (
            p.alive
            and p.frozen_until <= self.q.now
            and p.power in ("normal", "throttled")
            and p.price_ok
        )
        new = max(0, p.capacity - p.active) if able else 0
        if new != p.contrib:
            d = new - p.contrib
            p.contrib = new
            for m in p.model_idx:
                self.free_slots[m] += d


def run(config: SimConfig, *, max_events: int | None = None) -> SimReport:
    """Build and run one simulation."""
    return Simulation(config).run(max_events=max_events)


class _BuyerSide:
    """Carries out one buyer job's actions in the simulated world (a ``BuyerDriver``)."""

    __slots__ = ("node", "now", "sim", "tr")

    def __init__(self, sim: Simulation, node: BuyerNode, tr: Tracked, now: float) -> None:
        self.sim, self.node, self.tr, self.now = sim, node, tr, now

    def publish(self, action: A.Publish) -> None:
        self.sim._publish(self.node, action.rfq, self.now)

    def await_capacity(self, action: A.AwaitCapacity) -> None:
        self.sim._enqueue(self.node, action.rfq.job_id, self.now)

    def send_award(self, action: A.SendAward) -> None:
        sim, b = self.sim, self.node
        msg = action.message
        assert isinstance(msg, Award)
        sim.check.awarded(msg.job_id, msg.provider, msg.price_per_1k, msg.resume_offset)
        self.send(action)
        # the other bidders' streams end: their held slots go back at once
        m = self.tr.machine
        assert isinstance(m, BuyerJob)
        for peer in m.runner_ups:
            dst = sim.nodes.get(peer)
            if isinstance(dst, ProviderNode):
                t = sim.net.stream_arrival(self.now, -1 - b.idx, dst.idx, b.region, dst.region)
                if t is not None:
                    sim.q.push(t, _RELEASE, dst, msg.job_id)
        meta = sim.meta.get(msg.job_id)
        if meta is not None and meta.woken:  # placed: the next in line may try now
            meta.woken = False
            if b.queues.get(meta.model):
                sim._wake(b, meta.model, self.now)

    def send_voucher(self, action: A.SendVoucher) -> None:
        sim, b, msg = self.sim, self.node, action.message
        assert isinstance(msg, Voucher)
        key = (b.address, msg.provider_address)
        prev = sim.signed.get(key, 0)
        sim.signed[key] = msg.cumulative_amount
        delta = msg.cumulative_amount - prev
        sim.spent_seen[b.address] = sim.spent_seen.get(b.address, 0) + delta
        sim.check.paid(msg.job_id, action.to, delta)
        w = b.wallet
        sim.check.wallet(b.name, w.deposit, w.spent, w.available, sim.spent_seen[b.address])
        self.send(action)

    def send(self, action: A.Send) -> None:
        self.sim._send(self.node, action.to, action.message, self.now)

    def deliver_tokens(self, action: A.DeliverTokens) -> None:
        job_id = self.tr.machine.job_id
        assert job_id is not None
        self.sim.check.delivered(job_id, action.provider, action.offset, len(action.token_ids))

    def score_peer(self, action: A.ScorePeer) -> None:
        self.sim.rep.adjust(action.peer, action.delta)

    def report_outcome(self, outcome: BuyerOutcome) -> None:
        sim = self.sim
        if sim.cfg.inject == "lose_outcome" and sim.report.jobs == 0:
            return  # deliberate bug: the driver forgets a finished job
        sim._job_done(self.node, outcome)


class _ProviderSide:
    """Carries out one provider job's actions in the simulated world (a ``ProviderDriver``)."""

    __slots__ = ("node", "now", "sim", "tr")

    def __init__(self, sim: Simulation, node: ProviderNode, tr: Tracked, now: float) -> None:
        self.sim, self.node, self.tr, self.now = sim, node, tr, now

    def send(self, action: A.Send) -> None:
        self.sim._send(self.node, action.to, action.message, self.now)

    def start_generation(self, action: A.StartGeneration) -> None:
        sim, p = self.sim, self.node
        m = self.tr.machine
        assert isinstance(m, ProviderJob) and m.award is not None
        job_id = m.award.job_id
        n = action.max_new_tokens
        # most jobs stop on their own before max_tokens
        rng = sim.rng
        finish_at = n if rng.random() < 0.3 else max(1, int(n * rng.uniform(0.5, 1.0)))
        g = Generation(job_id, m.award.resume_offset, finish_at)
        p.engine[job_id] = g
        ttft = 0.08 + 0.04 * p.active
        g.scheduled = True
        sim.q.push(self.now + ttft, _ENGINE, p, (job_id, p.epoch))

    def pause_generation(self, action: A.PauseGeneration) -> None:
        g = self.node.engine.get(action.job_id)
        if g is not None:
            g.paused = True

    def resume_generation(self, action: A.ResumeGeneration) -> None:
        g = self.node.engine.get(action.job_id)
        if g is not None:
            g.paused = False
            if not g.scheduled:
                self.sim._schedule_step(self.node, g, self.now)

    def stop_generation(self, action: A.StopGeneration) -> None:
        self.node.engine.pop(action.job_id, None)

    def claim_slot(self, action: A.ClaimSlot) -> None:
        self.node.active += 1
        self.sim._recount(self.node)

    def release_slot(self, action: A.ReleaseSlot) -> None:
        self.node.active -= 1
        self.sim._recount(self.node)

    def store_voucher(self, action: A.StoreVoucher) -> None:
        p, v = self.node, action.voucher
        signed = self.sim.signed.get((v.buyer_address, p.address), 0)
        self.sim.check.channel(
            v.buyer_address.hex(), p.name, signed, p.book.cumulative(v.buyer_address)
        )

    def score_peer(self, action: A.ScorePeer) -> None:
        pass  # providers' views of buyers are not modelled

    def report_outcome(self, outcome: ProviderOutcome) -> None:
        p, tr = self.node, self.tr
        if p.machines.get(outcome.job_id) is tr:
            del p.machines[outcome.job_id]
        tr.dead = True
