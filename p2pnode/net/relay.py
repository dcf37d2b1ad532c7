"""Circuit relay v2: bootstrap nodes relay (with limits) for peers that cannot be dialled.

Roles (``NetConfig.relay``):

* ``"hop"`` — a bootstrap node: runs :class:`~libp2p.relay.circuit_v2.CircuitV2Protocol`
  with ``allow_hop=True`` and the operator's :class:`~p2pnode.net.config.RelayLimitsConfig`
  (reservations, concurrent circuits, circuit duration and bytes).
* ``"client"`` — dial ``…/p2p-circuit/p2p/<id>`` addresses through a relay and accept
  relayed connections (STOP side).
* ``"reserve"`` — as client, and also reserve a slot on every bootstrap relay at start
  and advertise ``<relay addr>/p2p-circuit/p2p/<our id>`` in :attr:`NodeNet.addrs`.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import trio

from p2pnode.net.config import NetConfig
from p2pnode.net.errors import DialFailed

if TYPE_CHECKING:
    from p2pnode.net.host import NodeNet

__all__ = ["RelaySetup"]

logger = logging.getLogger(__name__)


class RelaySetup:
    """Installs and drives circuit relay v2 for one node (used by open_node_host)."""

    def __init__(self, net: NodeNet, cfg: NetConfig) -> None:
        self.net = net
        self.cfg = cfg
        self.protocol: Any = None
        self.transport: Any = None
        self.discovery: Any = None
        self._nursery: trio.Nursery | None = None

    def install(self) -> None:
        if self.cfg.relay == "off":
            return
        from libp2p.relay.circuit_v2 import CircuitV2Protocol, RelayLimits

        lim = self.cfg.relay_limits
        limits = RelayLimits(
            duration=lim.circuit_duration_s,
            data=lim.circuit_bytes,
            max_circuit_conns=lim.max_circuits,
            max_reservations=lim.max_reservations,
            reservation_ttl=lim.reservation_ttl_s,
        )
        self.protocol = CircuitV2Protocol(
            self.net.host, limits=limits, allow_hop=self.cfg.relay == "hop"
        )

    async def start(self, stack: AsyncExitStack, nursery: trio.Nursery) -> None:
        if self.protocol is None:
            return
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.discovery import RelayDiscovery
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport
        from libp2p.tools.anyio_service import background_trio_service

        await stack.enter_async_context(background_trio_service(self.protocol))
        if self.cfg.relay == "hop":
            return
        config = RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT)
        self.transport = CircuitV2Transport(self.net.host, self.protocol, config)
        # discovery without its 300 s background rescans: we reserve explicitly
        self.discovery = RelayDiscovery(self.net.host, auto_reserve=False)
        self.transport.discovery = self.discovery
        self._nursery = nursery

    async def after_join(self, bootstrap: tuple[str, ...]) -> None:
        """In ``reserve`` mode: reserve a slot on every reachable bootstrap relay."""
        if self.cfg.relay != "reserve" or self.discovery is None:
            return
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        me = self.net.peer_id
        for addr in bootstrap:
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception:
                continue
            if not self.net.host.get_network().connections.get(info.peer_id):
                continue
            ok = False
            with trio.move_on_after(10):
                try:
                    await self.discovery._add_relay(info.peer_id)
                    ok = await self.discovery.make_reservation(info.peer_id)
                except Exception as e:
                    logger.info("relay reservation at %s failed: %r", info.peer_id, e)
            if ok:
                base = addr.rsplit("/p2p/", 1)[0]
                circuit = f"{base}/p2p/{info.peer_id.to_base58()}/p2p-circuit/p2p/{me}"
                self.net.add_relay_addr(circuit)

    async def dial(self, addr: str) -> None:
        """Connect to a peer through a relay (``…/p2p-circuit/p2p/<id>``)."""
        import multiaddr

        if self.transport is None:
            raise DialFailed("circuit relay is off on this node")
        try:
            await self.transport.dial(multiaddr.Multiaddr(addr))
        except Exception as e:
            raise DialFailed(f"relayed dial {addr} failed: {e!r}") from e

    def stats(self) -> dict[str, int]:
        """Reservations held and circuits relayed (hop side), for /metrics."""
        if self.protocol is None:
            return {}
        rm = getattr(self.protocol, "resource_manager", None)
        return {
            "reservations": len(getattr(rm, "_reservations", {}) or {}),
            "circuits": len(getattr(self.protocol, "_active_relays", {}) or {}),
        }
