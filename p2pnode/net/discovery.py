"""Finding providers of a model: Kad-DHT provider records and rendezvous namespaces.

Both are keyed by model id (the hex sha256 content address of the weights):

* DHT: ``provide(model_id)`` stores a provider record on the peers closest to the key;
  ``find_providers`` walks the DHT. Bootstrap nodes run in server mode; py-libp2p does
  not add connected peers to the routing table by itself, so :class:`Discovery` does
  (every few seconds, for every connected peer that speaks the DHT protocol).
* Rendezvous: every bootstrap is a rendezvous point; a provider registers under
  ``hearth/model/<model_id>`` at each of them, a buyer asks each of them. Losing any one
  bootstrap loses nothing.

Results from both are merged and deduplicated (py-libp2p's DHT returns duplicates).
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service

from p2pnode.net.config import NetConfig

if TYPE_CHECKING:
    from p2pnode.net.host import NodeNet

__all__ = ["Discovery", "rendezvous_namespace"]

logger = logging.getLogger(__name__)

_RDV_TTL = 2 * 3600
_QUERY_TIMEOUT = 10.0
_LOCATE_TIMEOUT = 5.0


PEERS_NAMESPACE = "hearth/peers"


def rendezvous_namespace(model_id: str) -> str:
    """The rendezvous namespace of one model's providers."""
    return f"hearth/model/{model_id}"


class Discovery:
    """DHT + rendezvous for one node; created and driven by ``open_node_host``."""

    def __init__(self, net: NodeNet, cfg: NetConfig, *, serve_rendezvous: bool) -> None:
        self.net = net
        self.cfg = cfg
        self.serve_rendezvous = serve_rendezvous
        self.dht: Any = None
        self.rendezvous_service: Any = None
        self._rdv_clients: dict[ID, Any] = {}
        self._provided: set[str] = set()

    async def start(self, stack: AsyncExitStack) -> None:
        host = self.net.host
        if self.serve_rendezvous:
            from libp2p.discovery.rendezvous import RendezvousService

            self.rendezvous_service = RendezvousService(host)
        if self.cfg.dht != "off":
            from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

            mode = DHTMode.SERVER if self.cfg.dht == "server" else DHTMode.CLIENT
            self.dht = KadDHT(host, mode, enable_random_walk=False)
            await stack.enter_async_context(background_trio_service(self.dht))
            self.net.start_soon(self._routing_table_loop)

    async def after_join(self, bootstrap: tuple[str, ...]) -> None:
        from libp2p.discovery.rendezvous import RendezvousClient

        for addr in bootstrap:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception:
                continue
            if info.peer_id != self.net.host.get_id():
                self._rdv_clients[info.peer_id] = RendezvousClient(
                    self.net.host, info.peer_id, False
                )
        await self._fill_routing_table()
        if self._rdv_clients and self.cfg.target_peers > 0:
            await self.meet_peers()
            self.net.start_soon(self._meet_loop)

    def _ordinary_peers(self) -> int:
        """Connected peers that are not our rendezvous points (bootstraps)."""
        conns = self.net.host.get_network().connections
        return sum(1 for p in conns if p not in self._rdv_clients)

    async def meet_peers(self) -> int:
        """Register in ``hearth/peers`` and dial peers found there, up to target_peers.

        The discover query (every registration in the namespace, parsed and stored) is
        skipped while we already hold ``target_peers`` ordinary connections: its answer
        would dial nobody, and on a busy machine those rounds — all peers at once, every
        period of the meet loop — cost more CPU than the gossip they would help.
        """
        found: dict[ID, PeerInfo] = {}
        full = self._ordinary_peers() >= self.cfg.target_peers
        for pid, client in list(self._rdv_clients.items()):
            with trio.move_on_after(_QUERY_TIMEOUT):
                try:
                    await client.register(PEERS_NAMESPACE, _RDV_TTL)
                    if full:
                        continue
                    infos, _ = await client.discover(PEERS_NAMESPACE, 100)
                    for info in infos:
                        found.setdefault(info.peer_id, info)
                except Exception as e:
                    logger.info("rendezvous at %s failed: %r", pid, e)
        want = self.cfg.target_peers - self._ordinary_peers()
        return await self._dial_some(list(found.values()), want)

    async def _dial_some(self, infos: list[PeerInfo], max_new: int) -> int:
        """Dial up to ``max_new`` of ``infos`` not yet connected; returns successes.

        Each node starts at a different offset of the sorted list, so peers spread
        their connections instead of all dialling the same few.
        """
        conns = self.net.host.get_network().connections
        me = self.net.host.get_id()
        want = [i for i in infos if i.peer_id != me and not conns.get(i.peer_id) and i.addrs]
        if not want or max_new <= 0:
            return 0
        want.sort(key=lambda i: i.peer_id.to_bytes())
        start = int.from_bytes(me.to_bytes()[-2:], "big") % len(want)
        picks = (want[start:] + want[:start])[:max_new]
        ok = 0

        async def dial(info: PeerInfo) -> None:
            nonlocal ok
            try:
                await self.net.connect_info(info)
                ok += 1
            except Exception as e:
                logger.info("dial %s failed: %r", info.peer_id, e)

        async with trio.open_nursery() as n:
            for info in picks:
                n.start_soon(dial, info)
        return ok

    async def _meet_loop(self) -> None:
        delay = 1.0
        while True:
            await trio.sleep(delay)
            await self.meet_peers()
            delay = min(delay * 2, 30.0)

    async def connect_providers(self, model_id: str, count: int = 6) -> int:
        """Be connected to ``count`` providers of ``model_id`` (before publishing an RFQ).

        Returns how many providers we are connected to afterwards.
        """
        infos = []
        for pid_str in await self.find_providers(model_id, 50):
            pid = ID.from_base58(pid_str)
            addrs = [multiaddr.Multiaddr(a) for a in self.net.dialer.candidates(pid)]
            infos.append(PeerInfo(pid, addrs))
        conns = self.net.host.get_network().connections
        have = sum(1 for i in infos if conns.get(i.peer_id))
        return have + await self._dial_some(infos, count - have)

    async def _fill_routing_table(self) -> None:
        if self.dht is None:
            return
        for pid in list(self.net.host.get_network().connections):
            try:
                await self.dht.add_peer(pid)
            except Exception:
                logger.debug("routing table add failed for %s", pid, exc_info=True)

    async def _routing_table_loop(self) -> None:
        while True:
            await trio.sleep(3)
            await self._fill_routing_table()

    def rendezvous_stats(self) -> dict[str, int]:
        """Registrations per namespace held by our rendezvous service (bootstraps)."""
        if self.rendezvous_service is None:
            return {}
        try:
            return dict(self.rendezvous_service.get_namespace_stats())
        except Exception:
            return {}

    async def provide(self, model_id: str) -> None:
        """Announce ``model_id`` on the DHT and at every reachable rendezvous point."""
        self._provided.add(model_id)
        if self.dht is not None:
            with trio.move_on_after(_QUERY_TIMEOUT):
                try:
                    await self.dht.provide(model_id)
                except Exception as e:
                    logger.info("DHT provide of %s failed: %r", model_id, e)
        for pid, client in list(self._rdv_clients.items()):
            with trio.move_on_after(_QUERY_TIMEOUT):
                try:
                    await client.register(rendezvous_namespace(model_id), _RDV_TTL)
                except Exception as e:
                    logger.info("rendezvous register at %s failed: %r", pid, e)

    async def locate(self, peer_id: ID) -> list[Any]:
        """Ask the DHT where ``peer_id`` is now; the addresses its answer gave.

        A network lookup, never the local shortcut (py-libp2p's ``find_peer`` answers
        from the routing table or peerstore first: the very addresses that just failed).
        The closest peers (the bootstraps, which the peer re-identified with when it came
        back) name it with its signed peer record, which replaces the stale addresses in
        our peerstore; what it names is returned, newest record first.
        """
        if self.dht is None:
            return []
        store = self.net.host.get_peerstore()

        def known() -> list[Any]:
            try:
                return list(store.addrs(peer_id))
            except Exception:
                return []

        before = {str(a) for a in known()}
        with trio.move_on_after(_LOCATE_TIMEOUT):
            try:
                await self.dht.peer_routing.find_closest_peers_network(peer_id.to_bytes())
            except Exception as e:
                logger.info("DHT lookup of %s failed: %r", peer_id, e)
        signed: list[Any] = []
        try:
            envelope = store.get_peer_record(peer_id)
            if envelope is not None:
                signed = list(envelope.record().addrs)
        except Exception:
            logger.debug("no signed record for %s", peer_id, exc_info=True)
        return signed + [a for a in known() if str(a) not in before]

    async def find_providers(self, model_id: str, limit: int = 20) -> list[str]:
        """Providers of ``model_id`` from the DHT and every rendezvous point, deduplicated.

        Their addresses are added to the peerstore, so ``open_stream`` can dial them.
        """
        found: dict[ID, PeerInfo] = {}
        if self.dht is not None:
            with trio.move_on_after(_QUERY_TIMEOUT):
                try:
                    for info in await self.dht.find_providers(model_id, limit):
                        found.setdefault(info.peer_id, info)
                except Exception as e:
                    logger.info("DHT find_providers failed: %r", e)
        for pid, client in list(self._rdv_clients.items()):
            with trio.move_on_after(_QUERY_TIMEOUT):
                try:
                    infos, _cookie = await client.discover(rendezvous_namespace(model_id), limit)
                    for info in infos:
                        found.setdefault(info.peer_id, info)
                except Exception as e:
                    logger.info("rendezvous discover at %s failed: %r", pid, e)
        me = self.net.host.get_id()
        out: list[str] = []
        for pid, info in found.items():
            if pid == me:
                continue
            if info.addrs:
                try:  # an answer is newer than what we knew: in front, not merged behind
                    self.net.dialer.learn(pid, info.addrs)
                except Exception:
                    logger.debug("peerstore add failed", exc_info=True)
            out.append(pid.to_base58())
        return sorted(out)[:limit]
