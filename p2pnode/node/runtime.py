"""One homeowner node, wired: identity → chain → model → network → market → ledger.

:func:`run_node` starts every service of a node in one trio nursery and runs until
cancelled or told to drain (SIGTERM): then it stops bidding at once, lets running
jobs finish (up to ``drain_timeout_s``), redeems everything it holds, and exits.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from market.chain.aio import TrioChain
from market.chain.backends import connect
from market.chain.client import ChainClient
from market.chain.deployment import Deployment
from market.chain.voucher import message_verifier
from market.identity import Identity
from market.ledger import Ledger, Redeemer, RedemptionPolicy
from market.ledger.service import run_redeemer
from market.ledger.store import PENDING
from market.protocol import ModelOffer, Offer
from market.protocol.payments import ChannelTerms, VoucherBook
from market.protocol.policy import CostPlusPolicy, ProviderStatus
from market.protocol.provider import ProviderConfig
from market.streams import OFFER_PROTOCOL, SCORE_PROTOCOL, sealed
from market.vouchers import from_stored
from p2pnode.net import NetConfig, NodeNet, open_node_host
from p2pnode.net.framing import FramedStream
from p2pnode.net.pubsub import offers_topic
from p2pnode.net.ratelimit import PeerRateLimiter
from p2pnode.node.cover import CoverCache
from p2pnode.node.dashboard import serve_dashboard
from p2pnode.node.hardware import detect_gpus
from p2pnode.node.provider import ProviderService
from p2pnode.node.scoring import ScoringService
from p2pnode.node.telemetry import Telemetry
from p2pnode.power import PowerPolicy
from p2pnode.power.service import PowerService, run_power
from p2pnode.release import TRUST_STORE_FILE, SignedRelease, TrustStore, check_golden
from p2pnode.release.fetch import announce
from p2pnode.release.follow import Follower
from p2pnode.release.store import RELEASES_DIR, ReleaseStore
from p2pnode.release.swarm import ChunkServer, UploadLimits

__all__ = ["NodeSettings", "redeem_all", "run_node"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSettings:
    """Everything a node needs, resolved from ``hearth.toml`` (see :mod:`p2pnode.node.setup`)."""

    identity: Identity
    net: NetConfig
    rpc_url: str
    deployment: Deployment
    data_dir: Path
    model_path: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    region: str = ""
    policy: CostPlusPolicy = field(
        default_factory=lambda: CostPlusPolicy(electricity_per_kwh=300_000, power_draw_w=350.0)
    )
    capacity: int = 4
    # Offers and bids state what the engine measures (a warm-up before serving, then
    # live: see p2pnode.serving.meter); this is only the figure for the instant before
    # any measurement exists.
    tokens_per_s: float = 20.0
    device: str = "auto"
    kv_cache_mb: float | None = None
    pack_weights: bool = True
    offer_interval_s: float = 5.0
    offer_ttl_s: int = 30
    redeem_interval_s: float = 10.0
    redemption: RedemptionPolicy = field(default_factory=RedemptionPolicy)
    drain_timeout_s: float = 60.0
    drain_finish_s: float = 20.0  # on SIGTERM, jobs ending later than this are handed off
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    power: Mapping[str, Any] = field(default_factory=dict)  # [power] tables (p2pnode.power)
    dashboard_port: int = 0  # 0 = no dashboard
    dashboard_token: str = ""
    # Releases under data_dir/releases are served to the swarm (p2pnode.release): only
    # those of these publishers, within this share of the uplink.
    release_publishers: tuple[bytes, ...] = ()
    release_uploads: UploadLimits = field(default_factory=UploadLimits)
    # A model name to keep up to date: each newer release of it a trusted publisher
    # announces is fetched, checked and served in place of the running one ("" = none).
    release_follow: str = ""


@dataclass(eq=False)
class _Serving:
    """One model being served: its engine, provider service and scoring. A node has one;
    during an update the old one finishes its jobs while the new one takes new ones."""

    model_hex: str
    name: str  # what offers call it: the release's name, or the model's
    version: int  # the release version (0: a model not known as a release)
    engine: Any  # Engine
    rated_tokens_per_s: float | None  # a full batch's tokens/s at warm-up: what prices use
    service: Any = None  # ProviderService
    scoring: Any = None  # ScoringService
    retired: trio.Event = field(default_factory=trio.Event)


class _Node:
    """The running node's parts: what status.json, the dashboard and the drain look at.

    It is the dashboard's :class:`~p2pnode.node.dashboard.NodeControl`.
    """

    def __init__(self, settings: NodeSettings) -> None:
        self.s = settings
        self.started_at = time.time()
        self.net: NodeNet | None = None
        self.power: PowerService | None = None
        self.serving: _Serving | None = None  # the model new jobs go to
        self.releases: ReleaseStore | None = None  # data_dir/releases (fetched, served)
        self.state = "starting"
        self.offers_changed = trio.Event()
        self.telemetry = Telemetry(
            ledger_path=settings.data_dir / "ledger.sqlite",
            provider_address=settings.identity.eth_address,
            currency_symbol=settings.deployment.token_symbol,
            currency_decimals=settings.deployment.token_decimals,
        )

    def power_policy(self) -> PowerPolicy | None:
        return self.power.policy if self.power is not None else None

    @property
    def service(self) -> ProviderService | None:
        """The provider service new jobs go to (what the dashboard and status show)."""
        return self.serving.service if self.serving is not None else None

    @property
    def engine(self) -> Any:
        """The engine new jobs go to (its meter: measured speed), once built."""
        return self.serving.engine if self.serving is not None else None

    def active_jobs(self) -> int:
        """Jobs running now (the power governor's view)."""
        return self.service.active_jobs if self.service is not None else 0

    def status_of(self, serving: _Serving) -> ProviderStatus:
        """``serving`` as measured now: speed at the batch a new job would join, and TTFT."""
        s = self.s
        policy = self.power_policy()
        engine = serving.engine
        speed = engine.speed()
        return ProviderStatus(
            provider=s.identity.peer_id,
            provider_address=s.identity.eth_address_bytes,
            region=s.region,
            power_state=policy.state.wire if policy is not None else "normal",
            models=frozenset({serving.model_hex}),
            active_jobs=0,
            capacity=min(s.capacity, policy.max_concurrency) if policy else s.capacity,
            tokens_per_s=speed.tokens_per_s or s.tokens_per_s,
            price_multiplier=max(1.0, policy.price_multiplier) if policy else 1.0,
            ttft_ms=speed.ttft_ms,
            rated_tokens_per_s=serving.rated_tokens_per_s,
            dtype=engine.dtype if engine.plan is not None else "",
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything a person or a scraper wants to know (safe from a worker thread)."""
        svc = self.service
        policy = self.power_policy()
        doc = self.telemetry.snapshot(
            state=self.state,
            service=svc,
            net=self.net,
            power_state=policy.state.wire if policy is not None else "normal",
            price_floor_per_1k=svc.policy.floor_per_1k if svc is not None else None,  # type: ignore[attr-defined]
            started_at=self.started_at,
            peer_id=self.s.identity.peer_id,
        )
        if self.engine is not None:
            doc["measured"] = _measured(self.engine)
        doc["pid"] = os.getpid()
        doc["address"] = self.s.identity.eth_address
        doc["addrs"] = self.net.addrs if self.net is not None else []
        if policy is not None:
            doc["power_reasons"] = list(policy.reasons)
        return doc

    # -- NodeControl (the dashboard's buttons) ----------------------------------------
    def drain(self) -> None:
        if self.service is not None:
            self.service.accepting = False
            self.offers_changed.set()

    def resume(self) -> None:
        if self.service is not None and self.state == "serving":
            self.service.accepting = True
            self.offers_changed.set()

    def set_price_floor(self, price_per_1k: int) -> None:
        if self.service is None:
            raise ValueError("the node is still starting")
        if price_per_1k < 0:
            raise ValueError("a price floor is >= 0")
        self.service.policy = dataclasses.replace(self.service.policy, floor_per_1k=price_per_1k)  # type: ignore[type-var]
        self.offers_changed.set()

    async def write_status(self) -> None:
        """Keep ``status.json`` fresh (read by ``hearth node status`` and the local harness)."""
        path = self.s.data_dir / "status.json"
        while True:
            doc = await trio.to_thread.run_sync(self.snapshot)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2, default=str))
            tmp.replace(path)
            await trio.sleep(1.0)


async def run_node(
    settings: NodeSettings, *, task_status: trio.TaskStatus[_Node] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a provider node until cancelled or drained by SIGTERM/SIGINT."""
    from p2pnode.serving import Engine, LoadedModel, load_model

    s = settings
    node = _Node(s)
    s.data_dir.mkdir(parents=True, exist_ok=True)
    ident = s.identity
    chain = TrioChain()
    w3 = await chain.run(connect, s.rpc_url)
    client = ChainClient(w3, ident.eth_private_key)
    dep = s.deployment
    hub = dep.hub(client)
    token = bytes.fromhex(dep.token[2:])
    terms = ChannelTerms(
        token=token, chain_id=dep.chain_id, contract=bytes.fromhex(dep.payment_hub[2:])
    )
    covers = CoverCache(hub, chain, ident.eth_address_bytes, token)
    book = VoucherBook(
        provider_address=ident.eth_address_bytes,
        terms=terms,
        verifier=message_verifier(chain_id=dep.chain_id, contract=terms.contract),
        cover_of=covers.cover_of,
    )
    ledger = Ledger(s.data_dir / "ledger.sqlite")  # the redeemer's connection
    for held in ledger.vouchers(ident.eth_address_bytes):  # resume after a restart
        book.restore(from_stored(held))
    redeemer = Redeemer(ledger, hub, s.redemption)

    model = await trio.to_thread.run_sync(load_model, s.model_path)
    gpus = await trio.to_thread.run_sync(detect_gpus)
    node.releases = ReleaseStore(s.data_dir / RELEASES_DIR)

    async def serve_model(
        model: LoadedModel,
        release: SignedRelease | None,
        *,
        task_status: trio.TaskStatus[_Serving] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``model`` until retired, then finish its jobs and free it.

        Started once at boot, and again for each release the node updates to: the new
        one warms up (and, for a release, passes its golden outputs) before it is
        handed over; the old one takes no new job and ends when its last one does.
        """
        engine = Engine(
            model,
            device=s.device,
            kv_cache_mb=s.kv_cache_mb,
            max_batch=max(8, s.capacity),
            pack_weights=s.pack_weights,
        )
        async with engine:
            # A few throwaway generations first: the first buyer does not pay for the
            # warm-up, and the first offer states measured speed, not a guess.
            first = await engine.warm_up(batch=s.capacity)
            full = engine.meter.tokens_per_s(s.capacity)
            logger.info(
                "warm-up: %.1f tokens/s per job alone, TTFT %.0f ms; %s",
                first.tokens_per_s or 0.0,
                first.ttft_ms or 0.0,
                engine.meter.reading().step_ms,
            )
            if release is not None:
                await check_golden(engine, release.manifest)
            model_hex = model.model_id.removeprefix("sha256:")
            serving = _Serving(
                model_hex=model_hex,
                name=release.manifest.name if release is not None else model.name,
                version=release.manifest.version if release is not None else 0,
                engine=engine,
                rated_tokens_per_s=full * s.capacity if full else None,
            )
            service = ProviderService(
                net=net,
                key=ident.signing_key(),
                engine=engine,
                model_id=model_hex,
                # the dashboard's price floor carries over to a new release
                policy=node.service.policy if node.service is not None else s.policy,
                book=book,
                ledger=Ledger(s.data_dir / "ledger.sqlite"),  # its own connection
                status=lambda: node.status_of(serving),
                config=s.provider,
                covers=covers,
            )
            serving.service = service
            serving.scoring = ScoringService(  # verification jobs for buyers checking others
                engine=engine,
                key=ident.signing_key(),
                model_id=model_hex,
                book=book,
                price_per_1k=lambda: service.policy.price_per_1k(service.status()),
                in_ledger=service.in_ledger,
                fresh_cover=service.fresh_cover,
                limiter=PeerRateLimiter(),
            )
            async with trio.open_nursery() as jobs:
                await jobs.start(service.run)
                task_status.started(serving)
                await serving.retired.wait()
                service.accepting = False
                while service.busy:  # its jobs finish here; new ones went to the next
                    await trio.sleep(0.2)
                jobs.cancel_scope.cancel()
        logger.warning("stopped serving %s; its weights are freed", model_hex)

    async def switch(model: LoadedModel, release: SignedRelease) -> None:
        """Serve ``release`` (loaded as ``model``) from now on; the old model finishes."""
        old = node.serving
        new = await nursery.start(serve_model, model, release)
        node.serving = new
        net.set_handler(SCORE_PROTOCOL, new.scoring.handle)
        node.offers_changed.set()  # buyers hear of the new address at once
        logger.warning("now serving %s (%s)", release.manifest.label(), new.model_hex)
        if old is not None:
            old.retired.set()

    drain = trio.Event()
    async with open_node_host(ident.libp2p_keypair(), s.net) as net:
        node.net = net
        async with trio.open_nursery() as nursery:
            node.serving = await nursery.start(serve_model, model, None)
            node.power = await nursery.start(run_power, s.power, node.active_jobs)
            nursery.start_soon(_follow_power, node)
            nursery.start_soon(node.write_status)
            nursery.start_soon(covers.run)
            if s.dashboard_port:
                await nursery.start(
                    partial(serve_dashboard, node, token=s.dashboard_token, port=s.dashboard_port)
                )
            await nursery.start(
                partial(
                    run_redeemer,
                    redeemer,
                    chain,
                    interval_s=s.redeem_interval_s,
                    suspend=book.suspend,
                )
            )
            net.set_handler(OFFER_PROTOCOL, _offer_handler(node, gpus))
            assert node.serving is not None
            net.set_handler(SCORE_PROTOCOL, node.serving.scoring.handle)
            nursery.start_soon(_seed_releases, node, net)
            if s.release_follow:
                nursery.start_soon(_follow_releases, node, net, switch)
            nursery.start_soon(_publish_offers, node, net, gpus)
            nursery.start_soon(_watch_signals, drain)
            node.state = "serving"
            logger.info("node %s serving %s on %s", ident.peer_id, model.name, net.addrs)
            task_status.started(node)
            await drain.wait()
            node.state = "draining"
            service = node.service
            assert service is not None
            service.accepting = False
            await _publish_offer(node, net, gpus)  # tell buyers at once
            # Finish what ends soon; hand the rest to runner-ups (they resume from the
            # delivered tokens), so a shutdown never drops a buyer's job.
            service.hand_off(s.drain_finish_s)
            with trio.move_on_after(s.drain_timeout_s):
                while service.busy:
                    await trio.sleep(0.2)
            logger.info("drained; redeeming what is held")
            await chain.run(redeem_all, redeemer)
            node.state = "stopped"
            doc = await trio.to_thread.run_sync(node.snapshot)
            (s.data_dir / "status.json").write_text(json.dumps(doc, indent=2, default=str))
            node.telemetry.close()
            nursery.cancel_scope.cancel()


async def _seed_releases(node: _Node, net: NodeNet) -> None:
    """Serve the releases this node holds (``data_dir/releases``) to the swarm: those of
    a trusted publisher only, within the uplink share the config allows."""
    s = node.s
    store = node.releases
    assert store is not None
    server = ChunkServer(store, s.release_uploads, publishers=s.release_publishers)
    server.install(net)
    held = await trio.to_thread.run_sync(store.held)
    for local in held:
        if local.manifest.publisher in s.release_publishers:
            await announce(net, local.release)


async def _follow_releases(
    node: _Node, net: NodeNet, switch: Callable[[Any, SignedRelease], Awaitable[None]]
) -> None:
    """Update to each newer release of ``release.follow`` its publishers announce."""
    s = node.s
    assert node.releases is not None
    with TrustStore(s.data_dir / TRUST_STORE_FILE, trusted=s.release_publishers) as trust:
        follower = Follower(
            net=net,
            store=node.releases,
            trust=trust,
            name=s.release_follow,
            current=lambda: node.serving.version if node.serving is not None else 0,
            switch=switch,
        )
        await follower.run()


def _measured(engine: Any) -> dict[str, Any]:
    """What the engine measured (status.json's ``measured``; offers state the same)."""
    speed = engine.speed()
    reading = engine.meter.reading()
    return {
        "tokens_per_s": speed.tokens_per_s,  # per job, at the batch a new job would join
        "batch": speed.batch,
        "ttft_ms": speed.ttft_ms,  # median of recent requests
        "step_ms": {str(b): round(ms, 3) for b, ms in reading.step_ms.items()},
        "steps": reading.steps,
    }


def redeem_all(redeemer: Redeemer) -> int:
    """Redeem every held voucher with something accrued, worth the gas or not.

    Used on the way out (drain) and by ``hearth node redeem``; returns how many
    redemptions were settled (one still pending from before is not sent again, and
    not counted).
    """
    sent = 0
    for sv in redeemer.ledger.vouchers(redeemer.provider):
        if redeemer.accrued(sv) > 0 and redeemer.redeem(sv).status != PENDING:
            sent += 1
    redeemer.sync_earnings()
    return sent


def _offer(node: _Node, gpus: tuple[Any, ...]) -> Offer:
    serving = node.serving
    assert serving is not None
    svc = serving.service
    st = svc.status()
    # the service's policy: the dashboard's price floor replaces it there
    policy = svc.policy if isinstance(svc.policy, CostPlusPolicy) else node.s.policy
    ttft = policy.base_ttft_ms if st.ttft_ms is None else st.ttft_ms
    return Offer(
        provider=st.provider,
        provider_address=st.provider_address,
        region=st.region,
        power_state=st.power_state,
        load=min(1.0, st.active_jobs / max(1, st.capacity)),
        gpus=gpus,
        models=(
            ModelOffer(
                model_id=serving.model_hex,
                name=serving.name,
                version=serving.version,
                price_per_1k=policy.price_per_1k(st),
                max_context=serving.engine.max_len,  # what the engine really takes
            ),
        ),
        ttl_s=node.s.offer_ttl_s,
        free_slots=st.free_slots,
        tokens_per_s=policy.throughput(st),  # what a bid would state (throttling included)
        ttft_ms=min(round(ttft), 2**32 - 1),
    )


def _sealed_offer(node: _Node, gpus: Any) -> bytes:
    """This node's offer as of now, in an envelope signed by its identity."""
    return sealed(_offer(node, gpus), node.s.identity.signing_key())


async def _publish_offer(node: _Node, net: NodeNet, gpus: Any) -> None:
    try:
        await net.publish(offers_topic(), _sealed_offer(node, gpus))
    except Exception as exc:  # no peers yet: the next round will do
        logger.debug("offer not published: %r", exc)


def _offer_handler(node: _Node, gpus: Any) -> Any:
    """Serve ``/hearth/offer/1``: this node's offer as of now, signed, to whoever asks."""

    async def handler(fs: FramedStream) -> None:
        await fs.send(_sealed_offer(node, gpus))

    return handler


async def _publish_offers(node: _Node, net: NodeNet, gpus: Any) -> None:
    """Offer every ``offer_interval_s``, and at once when power or price changes."""
    while True:
        await _publish_offer(node, net, gpus)
        with trio.move_on_after(node.s.offer_interval_s):
            await node.offers_changed.wait()
        node.offers_changed = trio.Event()


async def _follow_power(node: _Node) -> None:
    """Act on the governor: re-offer on every change; hand off what cannot finish."""
    assert node.power is not None and node.service is not None
    policy = node.power.policy
    while True:
        policy = await node.power.wait_change(policy)
        node.telemetry.note_power(policy.state.wire, ", ".join(policy.reasons))
        node.offers_changed.set()
        if policy.drain:
            handed = node.service.hand_off(policy.drain_finish_s)
            logger.warning("power %s: handing %d job(s) to runner-ups", policy.state.wire, handed)


async def _watch_signals(drain: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            drain.set()
            return
