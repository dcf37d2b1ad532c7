"""Configuration of one node's network layer (plain frozen dataclasses, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from p2pnode.net.framing import StreamLimits
from p2pnode.net.pubsub import GossipConfig

__all__ = ["NetConfig", "RelayLimitsConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimitsConfig:
    """Operator limits of a relay (bootstrap) node: how much it gives to others."""

    max_reservations: int = 128
    max_circuits: int = 64
    reservation_ttl_s: int = 3600
    circuit_duration_s: int = 600
    circuit_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConfig:
    """Everything :func:`p2pnode.net.open_node_host` needs besides the key pair.

    ``listen``/``announce``/``bootstrap`` are multiaddr strings; ``bootstrap`` entries
    must end in ``/p2p/<peer id>``. ``relay`` says what this node does with circuit relay
    v2: ``"off"``; ``"client"`` (dial through relays, accept relayed streams);
    ``"reserve"`` (a node that cannot accept inbound connections: reserve a slot on the
    bootstrap relays and advertise the ``/p2p-circuit`` address); ``"hop"`` (be a relay,
    used by bootstrap nodes, limited by ``relay_limits``). ``target_peers``: how many
    ordinary peers to find (rendezvous namespace ``hearth/peers``) and stay connected to
    besides the bootstraps, so gossip meshes form between nodes, not only through seeds.
    """

    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    announce: tuple[str, ...] = ()
    bootstrap: tuple[str, ...] = ()
    gossip: GossipConfig = field(default_factory=GossipConfig)
    stream: StreamLimits = field(default_factory=StreamLimits)
    peer_cache: Path | None = None
    dht: Literal["off", "client", "server"] = "server"
    rendezvous_server: bool = False
    relay: Literal["off", "client", "reserve", "hop"] = "client"
    relay_limits: RelayLimitsConfig = field(default_factory=RelayLimitsConfig)
    target_peers: int = 8
    dial_timeout: float = 10.0
    keepalive_interval: float = 5.0
    cache_save_interval: float = 30.0
