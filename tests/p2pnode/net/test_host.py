"""In-process tests of the host API: framing rules, handler isolation, size guards,
counted drops, clean stop (port probe) and the persisted peer cache."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.net import (
    FrameTooLarge,
    GossipConfig,
    NetConfig,
    PeerTimeout,
    PublishTooLarge,
    RemoteStreamError,
    StreamLimits,
    open_node_host,
)
from p2pnode.net.peercache import PeerCache


def _cfg(**kw: object) -> NetConfig:
    base: dict[str, object] = {"dht": "off", "relay": "off", "target_peers": 0}
    base.update(kw)
    return NetConfig(**base)  # type: ignore[arg-type]


async def test_framed_streams_errors_deadlines_and_isolated_handlers() -> None:
    limits = StreamLimits(max_frame=4096, heartbeat_interval=0.5, idle_timeout=4.0)
    async with open_node_host(create_new_key_pair(), _cfg(stream=limits)) as a:

        async def boom(fs):  # type: ignore[no-untyped-def]
            await fs.receive(timeout=5)
            raise ValueError("handler bug")

        async def silent(fs):  # type: ignore[no-untyped-def]
            await trio.sleep(30)  # alive (heartbeats flow) but never answers

        async def echo(fs):  # type: ignore[no-untyped-def]
            async for payload in fs:
                await fs.send(payload)
            await fs.send_end()

        a.set_handler("/t/boom/1", boom)
        a.set_handler("/t/silent/1", silent)
        a.set_handler("/t/echo/1", echo)
        async with open_node_host(
            create_new_key_pair(), _cfg(stream=limits, bootstrap=(a.addrs[0],))
        ) as b:
            assert a.peer_id in b.connected_peers()
            # a handler exception becomes an ERROR frame, and the host keeps serving
            async with b.open_stream(a.peer_id, "/t/boom/1") as fs:
                await fs.send(b"x")
                with pytest.raises(RemoteStreamError, match="ValueError"):
                    await fs.receive(timeout=5)
            assert a.stats()["errors"] == {"handler:/t/boom/1:ValueError": 1}
            # a live but silent peer hits the per-read deadline, not a hang
            async with b.open_stream(a.peer_id, "/t/silent/1") as fs:
                with pytest.raises(PeerTimeout):
                    await fs.receive(timeout=1.5)
            # oversize frames are refused before sending; normal ones round-trip; END is clean
            async with b.open_stream(a.peer_id, "/t/echo/1") as fs:
                with pytest.raises(FrameTooLarge):
                    await fs.send(b"z" * 5000)
                await fs.send(b"hello")
                assert await fs.receive(timeout=5) == b"hello"
                await fs.send_end()
                assert await fs.receive(timeout=5) is None
            # the connection was reused for all three streams
            assert len(b.host.get_network().connections[a.host.get_id()]) == 1


async def test_peer_announcing_an_oversize_frame_is_cut_off() -> None:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    got: list[BaseException] = []

    async def reader(fs):  # type: ignore[no-untyped-def]
        try:
            await fs.receive(timeout=5)
        except Exception as e:
            got.append(e)
            raise

    async with open_node_host(create_new_key_pair(), _cfg()) as a:
        a.set_handler("/t/read/1", reader)
        async with open_node_host(create_new_key_pair(), _cfg(bootstrap=(a.addrs[0],))) as b:
            raw = await b.host.new_stream(ID.from_base58(a.peer_id), [TProtocol("/t/read/1")])
            await raw.write(b"\x00\x7f\xff\xff\xff" + b"x" * 100)  # DATA, 2 GiB announced
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.05)
            assert isinstance(got[0], FrameTooLarge)


async def test_publish_size_guard_and_counted_subscription_drops() -> None:
    gossip = GossipConfig(max_message_bytes=1000, subscription_buffer=3)
    async with (
        open_node_host(create_new_key_pair(), _cfg(gossip=gossip)) as a,
        open_node_host(create_new_key_pair(), _cfg(gossip=gossip, bootstrap=(a.addrs[0],))) as b,
    ):
        rx = await b.subscribe("/t/topic")
        await a.subscribe("/t/topic")
        with pytest.raises(PublishTooLarge, match="exceeds the 1000-byte limit"):
            await a.publish("/t/topic", b"x" * 1001)
        with trio.fail_after(15):
            while b.topic_peers("/t/topic") < 1 or a.mesh_size("/t/topic") < 1:
                await trio.sleep(0.1)
        for i in range(10):
            await a.publish("/t/topic", b"m%d" % i)
        with trio.fail_after(10):
            while sum(b.stats()["pubsub"][k] for k in ("delivered", "dropped_full")) < 10:
                await trio.sleep(0.05)
        stats = b.stats()["pubsub"]
        assert stats["delivered"] == 3 and stats["dropped_full"] == 7
        assert [(await rx.receive()).data for _ in range(3)] == [b"m0", b"m1", b"m2"]


def _port_accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_clean_stop_leaves_no_listener() -> None:
    async with open_node_host(create_new_key_pair(), _cfg()) as a:
        port = int(a.addrs[0].split("/tcp/")[1].split("/")[0])
        async with open_node_host(create_new_key_pair(), _cfg(bootstrap=(a.addrs[0],))) as b:
            assert b.connected_peers() == [a.peer_id]
        assert _port_accepts(port)
    assert not _port_accepts(port)


async def test_stopped_node_closes_its_connections_and_rejoins_gossip_under_its_id() -> None:
    """A node that stops closes its TCP connections (py-libp2p's own close is cancelled
    before it reaches the socket): its peers see it gone at once, and the same identity
    coming back gets gossip again. Before, the peer kept the dead connection and the
    dead gossip stream, and never sent the returning node a thing."""
    key = create_new_key_pair()
    async with open_node_host(create_new_key_pair(), _cfg()) as seed:
        await seed.subscribe("/t/offers")
        for round_ in range(2):
            async with open_node_host(key, _cfg(bootstrap=(seed.addrs[0],))) as b:
                rx = await b.subscribe("/t/offers")
                with trio.fail_after(10):
                    while b.topic_peers("/t/offers") < 1 or seed.mesh_size("/t/offers") < 1:
                        await trio.sleep(0.05)
                await seed.publish("/t/offers", b"offer %d" % round_)
                with trio.fail_after(10):
                    assert (await rx.receive()).data == b"offer %d" % round_
            with trio.fail_after(5):
                while b.peer_id in seed.connected_peers():
                    await trio.sleep(0.05)


async def test_peer_cache_rejoins_when_every_bootstrap_is_down(tmp_path: Path) -> None:
    cache_file = tmp_path / "peers.json"
    key_b = create_new_key_pair()
    async with open_node_host(
        create_new_key_pair(), _cfg(rendezvous_server=True), bootstrap_services=True
    ) as boot:
        boot_addr = boot.addrs[0]
        async with open_node_host(
            create_new_key_pair(), _cfg(bootstrap=(boot_addr,), target_peers=4)
        ) as c:
            async with open_node_host(
                key_b, _cfg(bootstrap=(boot_addr,), target_peers=4, peer_cache=cache_file)
            ) as b:
                with trio.fail_after(20):
                    while c.peer_id not in b.connected_peers():
                        await trio.sleep(0.1)
            assert c.peer_id in PeerCache.load(cache_file).peers
            await boot_down(boot)
            # bootstrap gone: B restarts with only the (dead) bootstrap and its cache
            async with open_node_host(
                key_b, _cfg(bootstrap=(boot_addr,), peer_cache=cache_file)
            ) as b2:
                assert c.peer_id in b2.connected_peers()
                assert boot.peer_id not in b2.connected_peers()


async def boot_down(boot) -> None:  # type: ignore[no-untyped-def]
    """Close the bootstrap's listener and connections (as if its machine went away)."""
    from p2pnode.net.host import _close_network

    await _close_network(boot.host)


def test_peer_cache_ignores_corrupt_files(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text("{not json")
    cache = PeerCache.load(f)
    assert cache.peers == {}
    cache.remember("12D3KooWabc", ["/ip4/127.0.0.1/tcp/1"], 5.0)
    cache.save()
    assert PeerCache.load(f).most_recent() == [("12D3KooWabc", ["/ip4/127.0.0.1/tcp/1"])]
