"""One homeowner node, wired: identity → chain → model → network → market → ledger.

:func:`run_node` starts every service of a node in one trio nursery and runs until
cancelled or told to drain (SIGTERM): then it stops bidding at once, lets running
jobs finish (up to ``drain_timeout_s``), redeems everything it holds, and exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
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
from market.protocol import ModelOffer, Offer
from market.protocol.payments import ChannelTerms, VoucherBook
from market.protocol.policy import CostPlusPolicy, ProviderStatus
from market.protocol.provider import ProviderConfig
from market.streams import sealed
from market.vouchers import from_stored
from p2pnode.net import NetConfig, NodeNet, open_node_host
from p2pnode.net.pubsub import offers_topic
from p2pnode.node.deposits import DepositCache
from p2pnode.node.hardware import detect_gpus
from p2pnode.node.provider import ProviderService

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
    tokens_per_s: float = 20.0
    device: str = "auto"
    kv_cache_mb: float | None = None
    offer_interval_s: float = 5.0
    offer_ttl_s: int = 30
    redeem_interval_s: float = 10.0
    redemption: RedemptionPolicy = field(default_factory=RedemptionPolicy)
    drain_timeout_s: float = 60.0
    provider: ProviderConfig = field(default_factory=ProviderConfig)


class _Node:
    """The running node's parts, so the status writer and the drain can see them."""

    def __init__(self, settings: NodeSettings) -> None:
        self.s = settings
        self.started_at = time.time()
        self.service: ProviderService | None = None
        self.net: NodeNet | None = None
        self.ledger: Ledger | None = None
        self.state = "starting"

    def status_doc(self) -> dict[str, Any]:
        svc, net, ledger = self.service, self.net, self.ledger
        doc: dict[str, Any] = {
            "state": self.state,
            "pid": os.getpid(),
            "peer_id": self.s.identity.peer_id,
            "address": self.s.identity.eth_address,
            "uptime_s": round(time.time() - self.started_at, 1),
            "updated_at": time.time(),
        }
        if net is not None:
            doc["addrs"] = net.addrs
            doc["peers"] = net.connected_peers()
        if svc is not None:
            doc["stats"] = vars(svc.stats).copy()
            doc["active_jobs"] = svc.active_jobs
        if ledger is not None:
            doc["redemptions"] = {
                st: len(ledger.redemptions(st)) for st in ("pending", "confirmed", "failed")
            }
        return doc

    async def write_status(self) -> None:
        path = self.s.data_dir / "status.json"
        while True:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status_doc(), indent=2))
            tmp.replace(path)
            await trio.sleep(1.0)


async def run_node(
    settings: NodeSettings, *, task_status: trio.TaskStatus[_Node] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a provider node until cancelled or drained by SIGTERM/SIGINT."""
    from p2pnode.serving import Engine, GenerationRequest, load_model

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
    deposits = DepositCache(hub, chain, ident.eth_address_bytes, token)
    book = VoucherBook(
        provider_address=ident.eth_address_bytes,
        terms=terms,
        verifier=message_verifier(chain_id=dep.chain_id, contract=terms.contract),
        deposit_of=deposits.deposit_of,
    )
    ledger = Ledger(s.data_dir / "ledger.sqlite")
    node.ledger = ledger
    for held in ledger.vouchers(ident.eth_address_bytes):  # resume after a restart
        book.restore(from_stored(held))
    redeemer = Redeemer(ledger, hub, s.redemption)

    model = await trio.to_thread.run_sync(load_model, s.model_path)
    model_hex = model.model_id.removeprefix("sha256:")
    gpus = await trio.to_thread.run_sync(detect_gpus)
    engine = Engine(model, device=s.device, kv_cache_mb=s.kv_cache_mb, max_batch=max(8, s.capacity))

    def status() -> ProviderStatus:
        return ProviderStatus(
            provider=ident.peer_id,
            provider_address=ident.eth_address_bytes,
            region=s.region,
            power_state="normal",
            models=frozenset({model_hex}),
            active_jobs=0,
            capacity=s.capacity,
            tokens_per_s=s.tokens_per_s,
        )

    drain = trio.Event()
    async with engine, open_node_host(ident.libp2p_keypair(), s.net) as net:
        node.net = net
        service = ProviderService(
            net=net,
            key=ident.signing_key(),
            engine=engine,
            model_id=model_hex,
            policy=s.policy,
            book=book,
            ledger=Ledger(s.data_dir / "ledger.sqlite"),  # its own connection (see in_ledger)
            status=status,
            config=s.provider,
            refresh_deposit=deposits.ensure,
        )
        node.service = service
        # One tiny generation first, so the first buyer does not pay for the warm-up.
        await engine.complete(GenerationRequest(prompt="Hello", max_tokens=2, temperature=0.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.write_status)
            await nursery.start(
                partial(run_redeemer, redeemer, chain, interval_s=s.redeem_interval_s)
            )
            await nursery.start(service.run)
            nursery.start_soon(_publish_offers, node, net, model, model_hex, gpus)
            nursery.start_soon(_watch_signals, drain)
            node.state = "serving"
            logger.info("node %s serving %s on %s", ident.peer_id, model.name, net.addrs)
            task_status.started(node)
            await drain.wait()
            node.state = "draining"
            service.accepting = False
            await _publish_offer(node, net, model, model_hex, gpus)  # tell buyers at once
            with trio.move_on_after(s.drain_timeout_s):
                while service.busy:
                    await trio.sleep(0.2)
            logger.info("drained; redeeming what is held")
            await chain.run(redeem_all, redeemer)
            node.state = "stopped"
            (s.data_dir / "status.json").write_text(json.dumps(node.status_doc(), indent=2))
            nursery.cancel_scope.cancel()


def redeem_all(redeemer: Redeemer) -> int:
    """Redeem every held voucher with something accrued, worth the gas or not.

    Used on the way out (drain) and by ``hearth node redeem``; returns how many
    redemptions were sent.
    """
    sent = 0
    for sv in redeemer.ledger.vouchers(redeemer.provider):
        if redeemer.accrued(sv) > 0:
            redeemer.redeem(sv)
            sent += 1
    redeemer.sync_earnings()
    return sent


def _offer(node: _Node, model: Any, model_hex: str, gpus: tuple[Any, ...]) -> Offer:
    svc = node.service
    assert svc is not None
    st = svc.status()
    return Offer(
        provider=st.provider,
        provider_address=st.provider_address,
        region=st.region,
        power_state=st.power_state,
        load=min(1.0, st.active_jobs / max(1, st.capacity)),
        gpus=gpus,
        models=(
            ModelOffer(
                model_id=model_hex,
                name=model.name,
                price_per_1k=node.s.policy.price_per_1k(st),
                max_context=model.config.max_position_embeddings,
            ),
        ),
        ttl_s=node.s.offer_ttl_s,
    )


async def _publish_offer(node: _Node, net: NodeNet, model: Any, model_hex: str, gpus: Any) -> None:
    try:
        await net.publish(
            offers_topic(),
            sealed(_offer(node, model, model_hex, gpus), node.s.identity.signing_key()),
        )
    except Exception as exc:  # no peers yet: the next round will do
        logger.debug("offer not published: %r", exc)


async def _publish_offers(node: _Node, net: NodeNet, model: Any, model_hex: str, gpus: Any) -> None:
    while True:
        await _publish_offer(node, net, model, model_hex, gpus)
        await trio.sleep(node.s.offer_interval_s)


async def _watch_signals(drain: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            drain.set()
            return
