"""The node's network layer: one hardened libp2p host behind a small async API.

Use it as::

    async with open_node_host(key_pair, NetConfig(bootstrap=(...,))) as net:
        offers = net.subscribe(offers_topic(), check=decode_offer)
        await net.publish(offers_topic(), encoded_offer)
        net.set_handler("/hearth/bid/1", handle_bid)      # async fn(FramedStream)
        async with net.open_stream(peer_id, "/hearth/bid/1") as fs:
            await fs.send(rfq_bytes)
            reply = await fs.receive(timeout=5)

What it guarantees (each a py-libp2p 0.8.1 sharp edge, absorbed here):

* TCP + Noise + Yamux only: the upgrader knows no plaintext, secio, TLS or mplex, so a
  dialer offering only those fails negotiation.
* No exception from any inbound stream — protocol negotiation, identify, DHT, relay,
  rendezvous, ``/meshsub/*`` or our handlers — reaches the host: the swarm's common
  stream handler is wrapped (:func:`_guard_inbound`) and pubsub is
  :class:`~p2pnode.net.pubsub.HardenedPubsub`.
* Connection reuse: streams ride the existing connection; :meth:`NodeNet.protect`
  keeps (and re-dials) connections to peers in active trade.
* Peers that move stay reachable: every dial goes through
  :class:`~p2pnode.net.dialer.Dialer` — all known addresses at once, freshest (newest
  signed peer record) first, then a DHT lookup at once when they fail; py-libp2p alone
  dials one stale address and then blocks the peer for 60 s.
* Clean stop: on exit every listener and connection is closed explicitly — the port is
  free afterwards (tested with a probe).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from p2pnode.net.config import NetConfig
from p2pnode.net.dialer import Dialer
from p2pnode.net.discovery import Discovery
from p2pnode.net.errors import DialFailed, PublishTooLarge
from p2pnode.net.framing import FramedStream
from p2pnode.net.peercache import PeerCache
from p2pnode.net.pubsub import (
    GossipMessage,
    HardenedPubsub,
    PayloadCheck,
    build_gossipsub,
    make_validator,
)

__all__ = ["NodeNet", "StreamHandler", "open_node_host"]

logger = logging.getLogger(__name__)

# py-libp2p configures its own "libp2p" logger when imported (level WARNING, no
# handler, so Python's last-resort handler prints to stderr) and logs every failed
# dial of a dead peer at error level. This layer handles those failures itself; they
# are shown only when asked for with HEARTH_LOG (e.g. HEARTH_LOG=debug).
if not os.environ.get("HEARTH_LOG"):
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

StreamHandler = Callable[[FramedStream], Awaitable[None]]
"""An application stream handler: gets a running FramedStream, may raise anything."""


def build_host(key_pair: KeyPair, cfg: NetConfig) -> Any:
    """A BasicHost restricted to TCP + Noise + Yamux (no plaintext/secio/TLS/mplex)."""
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    return new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=[multiaddr.Multiaddr(a) for a in cfg.listen],
        announce_addrs=[multiaddr.Multiaddr(a) for a in cfg.announce] or None,
        enable_tcp=True,
    )


def _guard_inbound(host: Any, on_error: Callable[[ID, BaseException], None]) -> None:
    """Wrap the swarm's common stream handler: nothing inbound can stop the host."""
    network = host.get_network()
    inner = network.common_stream_handler

    async def guarded(stream: Any) -> None:
        try:
            await inner(stream)
        except Exception as e:
            try:
                peer = stream.muxed_conn.peer_id
            except Exception:
                peer = ID(b"unknown")
            on_error(peer, e)
            try:
                await stream.reset()
            except Exception:
                logger.debug("reset after handler error failed", exc_info=True)

    network.set_stream_handler(guarded)


class NodeNet:
    """A running node host: gossip, framed streams, discovery. Made by open_node_host."""

    def __init__(self, host: Any, pubsub: HardenedPubsub, cfg: NetConfig) -> None:
        self.host = host
        self.pubsub = pubsub
        self.cfg = cfg
        self.discovery: Discovery | None = None
        self.errors: Counter[str] = Counter()
        self._protected: set[ID] = set()
        self._peer_cache = PeerCache.load(cfg.peer_cache) if cfg.peer_cache else None
        self.dialer = Dialer(self)
        self._nursery: trio.Nursery | None = None
        self._relay_addrs: list[str] = []
        self.relay: Any = None

    # -- identity ----------------------------------------------------------------------
    @property
    def peer_id(self) -> str:
        """Our peer id, base58 (``12D3Koo…`` for ed25519)."""
        return str(self.host.get_id().to_base58())

    @property
    def addrs(self) -> list[str]:
        """Our dialable addresses, each ending in ``/p2p/<peer id>`` (relayed ones too)."""
        own = [str(a) for a in self.host.get_addrs()]
        suffix = f"/p2p/{self.peer_id}"
        out = [a if a.endswith(suffix) else a + suffix for a in own]
        return out + [a for a in self._relay_addrs if a not in out]

    def add_relay_addr(self, addr: str) -> None:
        """Advertise ``addr`` (``<relay>/p2p-circuit/p2p/<us>``) among :attr:`addrs`."""
        if addr not in self._relay_addrs:
            self._relay_addrs.append(addr)

    def connected_peers(self) -> list[str]:
        """Peer ids with at least one open connection."""
        return sorted(p.to_base58() for p in self.host.get_network().connections)

    # -- connections -------------------------------------------------------------------
    async def connect(self, addr: str, timeout: float | None = None) -> str:
        """Dial ``addr`` (``…/p2p/<id>``) unless already connected; returns the peer id.

        A relayed address (``<relay>/p2p-circuit/p2p/<id>``) is dialled through the relay.
        """
        if "/p2p-circuit" in addr:
            target = addr.rsplit("/p2p/", 1)[1]
            if self.host.get_network().connections.get(ID.from_base58(target)):
                return target
            with trio.fail_after(timeout or self.cfg.dial_timeout):
                await self.relay.dial(addr)
            return target
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as e:
            raise DialFailed(f"not a dialable peer address: {addr!r} ({e})") from e
        await self.connect_info(info, timeout)
        return str(info.peer_id.to_base58())

    async def reach(self, peer_id: str, timeout: float | None = None) -> None:
        """Be connected to ``peer_id`` wherever it is now (its addresses may have changed).

        Known addresses are dialled at once, freshest first; when they fail the DHT is
        asked at once. Raises :class:`DialFailed`.
        """
        try:
            pid = ID.from_base58(peer_id)
        except Exception as e:
            raise DialFailed(f"not a peer id: {peer_id!r}") from e
        await self.dialer.dial(pid, timeout=timeout or self.cfg.dial_timeout)

    async def connect_info(
        self, info: PeerInfo, timeout: float | None = None, *, discover: bool = True
    ) -> None:
        """Connect to ``info.peer_id``; ``info.addrs`` are hints tried with what we know."""
        await self.dialer.dial(
            info.peer_id, info.addrs, timeout=timeout or self.cfg.dial_timeout, discover=discover
        )

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` as a background task of this node, until the node stops."""
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        self._nursery.start_soon(fn, *args)

    def remember_peer(self, peer_id: str, addrs: list[str]) -> None:
        """Cache ``addrs`` as where ``peer_id`` is reachable now (no-op without a cache)."""
        if self._peer_cache is not None:
            self._peer_cache.remember(peer_id, addrs)

    def protect(self, peer_id: str) -> None:
        """Keep a connection to ``peer_id`` open (re-dialled if lost) while trading."""
        self._protected.add(ID.from_base58(peer_id))

    def unprotect(self, peer_id: str) -> None:
        """Stop keeping ``peer_id``'s connection alive."""
        self._protected.discard(ID.from_base58(peer_id))

    # -- gossip ------------------------------------------------------------------------
    def set_topic_check(self, topic: str, check: PayloadCheck | None) -> None:
        """Validate every message on ``topic`` (also those we only forward) with ``check``."""
        validator = make_validator(check, self.pubsub.cfg, self.pubsub.stats)
        self.pubsub.set_topic_validator(topic, validator, is_async_validator=False)

    async def subscribe(
        self, topic: str, check: PayloadCheck | None = None
    ) -> trio.MemoryReceiveChannel[GossipMessage]:
        """Join ``topic``; returns a channel of validated messages from other peers.

        ``check(data, origin)`` should decode with the wire format and raise on anything invalid;
        invalid messages are never delivered or forwarded and their sender loses score.
        The channel buffers ``GossipConfig.subscription_buffer`` messages; overflow is
        counted in ``stats()["pubsub"]["dropped_full"]``, never silent.
        """
        self.set_topic_check(topic, check)
        receive = self.pubsub.open_channel(topic)
        await self.pubsub.subscribe(topic)
        return receive

    async def unsubscribe(self, topic: str) -> None:
        """Leave ``topic``; its channels are closed."""
        await self.pubsub.close_channels(topic)
        await self.pubsub.unsubscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data``; raises PublishTooLarge over the size guard."""
        limit = self.pubsub.cfg.max_message_bytes
        if len(data) > limit:
            raise PublishTooLarge(
                f"gossip payload of {len(data)} bytes exceeds the {limit}-byte limit "
                f"on {topic!r}; send large data over a stream instead"
            )
        await self.pubsub.publish(topic, data)

    def mesh_size(self, topic: str) -> int:
        """Number of mesh peers on ``topic`` (0 before the first heartbeat)."""
        return len(getattr(self.pubsub.router, "mesh", {}).get(topic, ()))

    def topic_peers(self, topic: str) -> int:
        """Number of connected peers known to be subscribed to ``topic``."""
        return len(self.pubsub.peer_topics.get(topic, ()))

    # -- streams -----------------------------------------------------------------------
    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: each inbound stream runs ``handler(FramedStream)``.

        Heartbeats run for the handler's lifetime; any exception it raises is logged,
        counted in ``stats()["handler_errors"]``, answered with an ERROR frame when
        the stream still works, and never reaches the host.
        """

        async def raw_handler(stream: Any) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            fs = FramedStream(stream, limits=self.cfg.stream, peer_id=peer, protocol=protocol)
            try:
                async with fs:
                    await handler(fs)
            except Exception as e:
                self.errors[f"handler:{protocol}:{type(e).__name__}"] += 1
                logger.info("handler for %s from %s failed: %r", protocol, peer, e)
                await fs.reset()

        self.host.set_stream_handler(TProtocol(protocol), raw_handler)

    @asynccontextmanager
    async def open_stream(
        self, peer_id: str, protocol: str, timeout: float | None = None
    ) -> AsyncIterator[FramedStream]:
        """Open a framed stream to ``peer_id`` (reusing the connection if one exists).

        Yields a running :class:`FramedStream` (heartbeats on); on exit the stream is
        closed, or reset if the block raised. Raises :class:`DialFailed` when no stream
        could be opened within ``timeout`` (default ``NetConfig.dial_timeout``).
        """
        pid = ID.from_base58(peer_id)
        try:
            with trio.fail_after(timeout or self.cfg.dial_timeout):
                if not self.host.get_network().connections.get(pid):
                    await self.dialer.dial(pid, timeout=timeout or self.cfg.dial_timeout)
                raw = await self.host.new_stream(pid, [TProtocol(protocol)])
        except trio.TooSlowError as e:
            raise DialFailed(f"opening {protocol} to {peer_id} timed out") from e
        except Exception as e:
            raise DialFailed(f"opening {protocol} to {peer_id} failed: {e!r}") from e
        async with FramedStream(
            raw, limits=self.cfg.stream, peer_id=peer_id, protocol=protocol
        ) as fs:
            yield fs

    # -- discovery (delegates) ---------------------------------------------------------
    async def provide(self, model_id: str) -> None:
        """Announce that we serve ``model_id`` (DHT provider record + rendezvous)."""
        if self.discovery is not None:
            await self.discovery.provide(model_id)

    async def find_providers(self, model_id: str, limit: int = 20) -> list[str]:
        """Peer ids that announced ``model_id`` (DHT and rendezvous, merged)."""
        if self.discovery is None:
            return []
        return await self.discovery.find_providers(model_id, limit)

    async def connect_providers(self, model_id: str, count: int = 6) -> int:
        """Dial up to ``count`` providers of ``model_id`` so an RFQ publish reaches them."""
        if self.discovery is None:
            return 0
        return await self.discovery.connect_providers(model_id, count)

    # -- metrics -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and the benchmarks."""
        ps = self.pubsub.stats
        return {
            "peers": len(self.host.get_network().connections),
            "pubsub": {
                "delivered": ps.delivered,
                "dropped_full": ps.dropped_full,
                "invalid": ps.invalid,
                "malformed_frames": ps.malformed_frames,
                "handler_errors": ps.handler_errors,
                "blacklisted": ps.blacklisted,
                "offences": dict(ps.offences),
            },
            "errors": dict(self.errors),
            "dials": dict(self.dialer.stats),
            "protected": len(self._protected),
            "relay": self.relay.stats() if self.relay is not None else {},
            "rendezvous": self.discovery.rendezvous_stats() if self.discovery else {},
        }

    # -- background loops --------------------------------------------------------------
    async def _join(self, bootstrap: Sequence[str]) -> int:
        """Dial bootstraps (and cached peers) concurrently; returns how many answered."""
        targets: list[PeerInfo] = []
        for addr in bootstrap:
            try:
                targets.append(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as e:
                logger.warning("ignoring bad bootstrap address %r: %r", addr, e)
        if self._peer_cache is not None:
            for pid, addrs in self._peer_cache.most_recent(16):
                try:
                    maddrs = [multiaddr.Multiaddr(a) for a in addrs]
                    targets.append(PeerInfo(ID.from_base58(pid), maddrs))
                except Exception:
                    continue
        ok = 0

        async def dial(info: PeerInfo) -> None:
            nonlocal ok
            try:
                # no DHT lookup here: we are joining, nobody is there to ask yet
                await self.connect_info(info, discover=False)
                ok += 1
            except DialFailed as e:
                logger.info("join: %s", e)

        async with trio.open_nursery() as n:
            for info in targets:
                n.start_soon(dial, info)
        return ok

    async def _keepalive_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.keepalive_interval)
            for pid in list(self._protected):
                if not self.host.get_network().connections.get(pid):
                    try:
                        await self.dialer.dial(pid, timeout=self.cfg.dial_timeout)
                    except Exception as e:
                        logger.info("keepalive redial of %s failed: %r", pid, e)

    def _remember_connected(self) -> None:
        if self._peer_cache is None:
            return
        store = self.host.get_peerstore()
        me = self.host.get_id()
        for pid in list(self.host.get_network().connections):
            if pid == me:
                continue
            try:
                addrs = [str(a) for a in store.addrs(pid)]
            except Exception:
                continue
            self._peer_cache.remember(pid.to_base58(), addrs, time.time())

    async def _cache_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.cache_save_interval)
            self.save_peer_cache()

    def save_peer_cache(self) -> None:
        """Persist the currently connected peers (called periodically and at stop)."""
        if self._peer_cache is None:
            return
        self._remember_connected()
        try:
            self._peer_cache.save()
        except OSError as e:
            logger.warning("could not save peer cache: %r", e)


async def _close_network(host: Any, conns: Sequence[Any] = ()) -> None:
    """Close every connection and listener explicitly (py-libp2p may leave them open).

    ``conns`` are the connections open when the node began to stop: py-libp2p's own
    close runs inside a cancelled scope when ``host.run()`` exits, marks each connection
    closed at its first line and is cancelled before it reaches the socket — the TCP
    connection stayed established, and the peer kept the dead connection (and, for
    gossip, the dead stream) of a node that had stopped: the same node coming back
    under the same peer id then got no gossip from it at all.
    """
    network = host.get_network()
    with trio.move_on_after(5):
        try:
            await network.close()
        except Exception:
            logger.debug("swarm close failed", exc_info=True)
    left = [c for cs in list(getattr(network, "connections", {}).values()) for c in cs]
    for conn in [*conns, *left]:
        muxed = getattr(conn, "muxed_conn", None)
        with trio.move_on_after(1):
            try:
                if muxed is not None:
                    await muxed.close()  # GO_AWAY, then the secured (and TCP) connection
            except Exception:
                logger.debug("connection close failed", exc_info=True)
    for listener in list(getattr(network, "listeners", {}).values()):
        try:
            await listener.close()
        except Exception:
            logger.debug("listener close failed", exc_info=True)


_TRANSPORT_WORDS = ("Reset", "EOF", "Closed", "Timeout", "TooSlow", "Broken", "Connection")


def _is_transport_failure(e: BaseException) -> bool:
    """True for a peer going away (reset, EOF, closed, timed out) rather than misbehaving.

    Home nodes restart and lose connections all the time; only protocol violations
    (undecodable frames, forged messages) may cost a peer its score, or after repeated
    offences its place (a blacklist is for the life of the process).
    """
    if isinstance(e, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
        return True
    names = [cls.__name__ for cls in type(e).__mro__]
    return any(word in name for name in names for word in _TRANSPORT_WORDS)


@asynccontextmanager
async def open_node_host(
    key_pair: KeyPair, config: NetConfig | None = None, *, bootstrap_services: bool = False
) -> AsyncIterator[NodeNet]:
    """Start a hardened host, join the network, yield a :class:`NodeNet`; stop cleanly.

    ``bootstrap_services`` also runs the server side of rendezvous and (with
    ``config.relay == "hop"``) circuit relay — used by :mod:`bootstrap`.
    """
    cfg = config or NetConfig()
    host = build_host(key_pair, cfg)
    router = build_gossipsub(cfg.gossip)
    pubsub = HardenedPubsub(host, router, cfg.gossip)
    net = NodeNet(host, pubsub, cfg)

    def on_inbound_error(peer: ID, e: BaseException) -> None:
        net.errors[f"inbound:{type(e).__name__}"] += 1
        logger.info("inbound stream from %s failed: %r", peer, e)
        if _is_transport_failure(e):
            return  # a dropped or reset connection is bad luck, not misbehaviour
        try:
            pubsub.penalise(peer, f"stream:{type(e).__name__}", 5.0)
        except Exception:
            logger.debug("penalise failed", exc_info=True)

    discovery = Discovery(net, cfg, serve_rendezvous=bootstrap_services or cfg.rendezvous_server)
    net.discovery = discovery
    from p2pnode.net.relay import RelaySetup

    relay = RelaySetup(net, cfg)
    net.relay = relay
    relay.install()
    _guard_inbound(host, on_inbound_error)

    # py-libp2p's service managers (DHT, relay) can swallow an exception raised in the
    # caller's block while they shut down; remember it and raise it after cleanup.
    body_error: BaseException | None = None
    conns: list[Any] = []
    try:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run([multiaddr.Multiaddr(a) for a in cfg.listen]))
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(router))
            await pubsub.wait_until_ready()
            nursery = await stack.enter_async_context(trio.open_nursery())
            net._nursery = nursery
            await discovery.start(stack)
            await relay.start(stack, nursery)
            await net._join(cfg.bootstrap)
            await discovery.after_join(cfg.bootstrap)
            await relay.after_join(cfg.bootstrap)
            nursery.start_soon(net._keepalive_loop)
            nursery.start_soon(net._cache_loop)
            try:
                yield net
            except BaseException as e:
                body_error = e
                raise
            finally:
                net.save_peer_cache()
                conns = [c for cs in list(host.get_network().connections.values()) for c in cs]
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await _close_network(host, conns)
    if body_error is not None:
        raise body_error
