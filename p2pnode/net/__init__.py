"""The node's network layer: a hardened py-libp2p host behind a small async API.

Public API (see :mod:`p2pnode.net.host` for the guarantees)::

    async with open_node_host(key_pair, NetConfig(...)) as net:
        net.peer_id, net.addrs, net.connected_peers()
        rx = await net.subscribe(topic, check=decode)      # channel of GossipMessage
        await net.publish(topic, data)                     # PublishTooLarge over the guard
        net.set_handler(protocol, async_fn)                # async fn(FramedStream)
        async with net.open_stream(peer_id, protocol) as fs:   # FramedStream
            await fs.send(b"..."); await fs.receive(timeout=5); await fs.send_end()
        await net.provide(model_id); await net.find_providers(model_id)
"""

from p2pnode.net.config import NetConfig, RelayLimitsConfig
from p2pnode.net.errors import (
    DialFailed,
    FrameTooLarge,
    NetError,
    PeerTimeout,
    PublishTooLarge,
    RemoteStreamError,
    StreamBroken,
)
from p2pnode.net.framing import FramedStream, FrameKind, StreamLimits
from p2pnode.net.host import NodeNet, StreamHandler, open_node_host
from p2pnode.net.pubsub import GossipConfig, GossipMessage, offers_topic, rfq_topic

__all__ = [
    "DialFailed",
    "FrameKind",
    "FrameTooLarge",
    "FramedStream",
    "GossipConfig",
    "GossipMessage",
    "NetConfig",
    "NetError",
    "NodeNet",
    "PeerTimeout",
    "PublishTooLarge",
    "RelayLimitsConfig",
    "RemoteStreamError",
    "StreamBroken",
    "StreamHandler",
    "StreamLimits",
    "offers_topic",
    "open_node_host",
    "rfq_topic",
]
