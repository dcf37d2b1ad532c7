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
            assert self.net._nursery is not None
            self.net._nursery.start_soon(self._routing_table_loop)

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

    async def find_providers(self, model_id: str, limit: int = 20) -> list[str]:
        """Providers of ``model_id`` from the DHT and every rendezvous point, deduplicated.

        Their addresses are added to the peerstore, so ``open_stream`` can dial them.
        """
        found: dict[ID, PeerInfo] = {}
        store = self.net.host.get_peerstore()
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
                try:
                    store.add_addrs(pid, info.addrs, 3600)
                except Exception:
                    logger.debug("peerstore add failed", exc_info=True)
            out.append(pid.to_base58())
        return sorted(out)[:limit]
