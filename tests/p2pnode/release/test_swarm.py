"""The release swarm in one process: real libp2p hosts on 127.0.0.1, real files."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from market.protocol import SigningKey
from p2pnode.net import NetConfig, open_node_host
from p2pnode.net.framing import FramedStream
from p2pnode.net.host import NodeNet
from p2pnode.release.fetch import Fetcher, FetchStats
from p2pnode.release.manifest import check_chunk
from p2pnode.release.store import LocalRelease, ReleaseStore
from p2pnode.release.swarm import (
    RELEASE_PROTOCOL,
    ChunkServer,
    SwarmError,
    UploadLimits,
    receive_payload,
    request,
)
from tests.p2pnode.release.factory import file_tree, release_of

CHUNK = 4096
SIZES = {"model.safetensors": 60 * CHUNK + 123, "tokenizer.json": 3 * CHUNK}
TOTAL = sum(SIZES.values())


def _cfg(**kw: object) -> NetConfig:
    base: dict[str, object] = {"dht": "off", "relay": "off", "target_peers": 0}
    base.update(kw)
    return NetConfig(**base)  # type: ignore[arg-type]


def _same(a: Path, b: Path) -> bool:
    return all((a / rel).read_bytes() == (b / rel).read_bytes() for rel in SIZES)


async def test_two_peers_fetch_from_one_seed_and_trade(
    tmp_path: Path, publisher: SigningKey
) -> None:
    src = file_tree(tmp_path / "src", 7, SIZES)
    release = release_of(src, publisher, 1)
    seed_store = ReleaseStore(tmp_path / "seed")
    seed_store.seed(release, src)
    server = ChunkServer(seed_store, UploadLimits(max_uploads=2))
    async with open_node_host(create_new_key_pair(), _cfg()) as a:
        server.install(a)
        async with (
            open_node_host(create_new_key_pair(), _cfg(bootstrap=(a.addrs[0],))) as b,
            open_node_host(create_new_key_pair(), _cfg(bootstrap=(a.addrs[0],))) as c,
        ):
            fetchers = []
            for net, name in ((b, "b"), (c, "c")):
                store = ReleaseStore(tmp_path / name)
                ChunkServer(store).install(net)
                f = Fetcher(net, store.open(release), refresh_s=0.1)
                f.add_peer(a.peer_id)
                fetchers.append((f, store))
            await b.connect(c.addrs[0])
            fetchers[0][0].add_peer(c.peer_id)
            fetchers[1][0].add_peer(b.peer_id)
            with trio.fail_after(60):
                async with trio.open_nursery() as n:
                    for f, _ in fetchers:
                        n.start_soon(f.run)
    for _, store in fetchers:
        local = store.get(release.digest)
        assert local is not None and local.complete
        assert _same(src, local.files)
    origin = server.stats["uploaded_bytes"]
    assert origin < 1.6 * TOTAL


# ---------------------------------------------------------------------- attacks and limits
PER_PEER = 2


def _seed(tmp_path: Path, publisher: SigningKey) -> tuple[Path, LocalRelease, ReleaseStore]:
    """The release of a random file tree, and a store seeding it from that tree."""
    src = file_tree(tmp_path / "src", 7, SIZES)
    store = ReleaseStore(tmp_path / "seed")
    return src, store.seed(release_of(src, publisher, 1), src), store


@asynccontextmanager
async def _hosts(n: int) -> AsyncIterator[list[NodeNet]]:
    """``n`` hosts on 127.0.0.1, each connected to the first (the fetcher's, usually)."""
    try:
        async with open_node_host(create_new_key_pair(), _cfg()) as first, AsyncExitStack() as st:
            nets = [first]
            for _ in range(n - 1):
                cfg = _cfg(bootstrap=(first.addrs[0],))
                nets.append(
                    await st.enter_async_context(open_node_host(create_new_key_pair(), cfg))
                )
            yield nets
    except BaseExceptionGroup as group:  # the hosts' nurseries wrap a failure many times over
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if leaf is group:
            raise
        raise leaf from None


def _fetcher(net: NodeNet, local: LocalRelease, peers: list[NodeNet], **kw: Any) -> Fetcher:
    f = Fetcher(net, local, per_peer=PER_PEER, refresh_s=0.1, rest_s=0.3, **kw)
    for p in peers:
        f.add_peer(p.peer_id)
    return f


def _pack(obj: object) -> bytes:
    raw: bytes = msgpack.packb(obj, use_bin_type=True)
    return raw


class Hostile:
    """A peer on ``/hearth/release/1`` that claims the chunks ``claims`` of a release of
    chunk lengths ``lengths`` and answers every chunk request with random bytes of the
    right length (``chunk="garbage"``), ``not_held`` or ``busy`` (``chunk=`` those), after
    ``chunk_delay`` s; have-maps after the first wait ``later_have_delay`` s."""

    def __init__(
        self,
        lengths: list[int],
        claims: set[int],
        *,
        chunk: str = "garbage",
        chunk_delay: float = 0.0,
        later_have_delay: float = 0.0,
    ) -> None:
        self.lengths, self.chunk = lengths, chunk
        self.chunk_delay, self.later_have_delay = chunk_delay, later_have_delay
        bits = bytearray((len(lengths) + 7) // 8)
        for i in claims:
            bits[i >> 3] |= 0x80 >> (i & 7)
        self.bits, self.held = bytes(bits), len(claims)
        self.have_requests = 0
        self.chunk_requests = 0

    async def serve(self, fs: FramedStream) -> None:
        async for raw in fs:
            req = msgpack.unpackb(raw)
            if req["op"] == "have":
                self.have_requests += 1
                if self.have_requests > 1:
                    await trio.sleep(self.later_have_delay)
                await fs.send(_pack({"ok": True, "have": self.bits, "held": self.held}))
            elif req["op"] == "chunk":
                self.chunk_requests += 1
                await trio.sleep(self.chunk_delay)
                if self.chunk in ("not_held", "busy"):
                    await fs.send(_pack({"ok": False, "error": self.chunk, "detail": "no"}))
                    continue
                size = self.lengths[req["i"]]
                await fs.send(_pack({"ok": True, "size": size}))
                await fs.send(os.urandom(size))
            else:
                await fs.send(_pack({"ok": False, "error": "bad_request"}))


def _lengths(local: LocalRelease) -> list[int]:
    return [local.length(i) for i in range(local.total)]


@pytest.mark.parametrize("slow_have_maps", [False, True])
async def test_a_peer_sending_wrong_chunks_is_dropped_and_the_seed_completes_the_fetch(
    tmp_path: Path, publisher: SigningKey, slow_have_maps: bool
) -> None:
    """The hostile peer claims every chunk but the first, as a partial holder: the
    fetcher asks it (not the seed) for those, gets random bytes, drops it and turns to
    the seed. With ``slow_have_maps`` a have-map of the hostile peer's is on its way
    when it is dropped: arriving afterwards, it must not count again (or the seed is
    never asked for the chunks the hostile peer claimed)."""
    src, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    server = ChunkServer(seed_store, UploadLimits(upload_bytes_per_s=150_000))  # ~1.7 s in all
    store = ReleaseStore(tmp_path / "me")
    local = store.open(release)
    hostile = Hostile(
        _lengths(local),
        set(range(1, local.total)),
        chunk_delay=0.15 if slow_have_maps else 0.0,
        later_have_delay=0.6 if slow_have_maps else 0.0,
    )
    async with _hosts(3) as (me, seed, bad):
        server.install(seed)
        bad.set_handler(RELEASE_PROTOCOL, hostile.serve)
        f = _fetcher(me, local, [bad, seed])
        with trio.fail_after(10):
            stats = await f.run()
        await trio.sleep(0.3)  # a while longer: the dropped peer is asked nothing more
    assert local.complete and _same(src, local.files)
    assert 1 <= stats.rejected_chunks == hostile.chunk_requests <= PER_PEER
    assert set(stats.by_peer) == {seed.peer_id}
    assert stats.fetched_bytes == TOTAL == sum(stats.by_peer.values())
    assert f.peers[bad.peer_id].bad
    reopened = ReleaseStore(tmp_path / "me").get(release.digest)
    assert reopened is not None and reopened.complete


async def test_a_peer_holding_nothing_answers_not_held_and_the_fetch_goes_elsewhere(
    tmp_path: Path, publisher: SigningKey
) -> None:
    """An empty peer says ``not_held``; a liar advertising chunks it then says it does
    not hold must not keep them from being asked of the seed."""
    src, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    local = ReleaseStore(tmp_path / "me").open(release)
    liar = Hostile(_lengths(local), set(range(1, local.total)), chunk="not_held")
    async with _hosts(4) as (me, seed, empty, lying):
        ChunkServer(seed_store).install(seed)
        ChunkServer(ReleaseStore(tmp_path / "empty")).install(empty)
        lying.set_handler(RELEASE_PROTOCOL, liar.serve)
        async with me.open_stream(empty.peer_id, RELEASE_PROTOCOL, timeout=5) as fs:
            for req in ({"op": "have"}, {"op": "chunk", "i": 0}, {"op": "manifest"}):
                with pytest.raises(SwarmError) as e:
                    await request(fs, {**req, "digest": release.digest})
                assert e.value.code == "not_held"
        f = _fetcher(me, local, [empty, lying, seed])
        with trio.fail_after(10):
            stats = await f.run()
    assert local.complete and _same(src, local.files)
    assert set(stats.by_peer) == {seed.peer_id} and stats.rejected_chunks == 0
    assert 1 <= liar.chunk_requests <= PER_PEER


async def test_a_fetch_cut_short_resumes_with_only_the_missing_chunks(
    tmp_path: Path, publisher: SigningKey
) -> None:
    """A fetcher cancelled after 20 chunks (from a 200 kB/s seed, so the other stream
    is mid-chunk); a new store and fetcher on its folder fetch exactly the rest."""
    src, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    server = ChunkServer(seed_store, UploadLimits(upload_bytes_per_s=200_000))
    scope = trio.CancelScope()

    def stop_after_20_chunks(stats: FetchStats, local: LocalRelease) -> None:
        if stats.fetched_bytes >= 20 * CHUNK:
            scope.cancel()

    async with _hosts(2) as (me, seed):
        server.install(seed)
        first = _fetcher(me, ReleaseStore(tmp_path / "me").open(release), [seed])
        first.progress = stop_after_20_chunks
        with trio.fail_after(10), scope:
            await first.run()
        assert scope.cancelled_caught
        await trio.sleep(0.3)  # what the seed was still sending has gone (or failed)
        sent_first = server.stats["uploaded_bytes"]

        store = ReleaseStore(tmp_path / "me")  # as after kill -9: a new store, a new fetcher
        local = store.get(release.digest)
        assert local is not None
        held_before = local.held_bytes
        assert held_before == first.stats.fetched_bytes  # nothing written was lost
        assert 20 * CHUNK <= held_before < TOTAL
        assert sent_first - held_before <= PER_PEER * CHUNK  # lost in flight, at most
        second = _fetcher(me, local, [seed])
        t0 = time.monotonic()
        with trio.fail_after(10):
            stats = await second.run()
        elapsed = time.monotonic() - t0
    assert local.complete and _same(src, local.files)
    assert stats.fetched_bytes == TOTAL - held_before
    assert server.stats["uploaded_bytes"] - sent_first == TOTAL - held_before  # no held chunk
    assert server.stats["uploaded_bytes"] <= TOTAL + PER_PEER * CHUNK
    # A chunk lost in flight was given out by the seed moments ago: it answers "spread"
    # until its round is done. The fetcher asks it for the others meanwhile, and for
    # that chunk again only after half a second (it used to ask every 0.1 s or so and
    # fetch nothing else: 40 refusals and a 5 s stall for a 1 s fetch).
    assert server.stats["spread"] <= PER_PEER * (1 + elapsed / 0.5), (server.stats, elapsed)


async def _chunk_ok(fs: FramedStream, seed: LocalRelease, i: int) -> None:
    """Ask for chunk ``i`` on ``fs`` and check it against the manifest."""
    head = await request(fs, {"op": "chunk", "digest": seed.digest, "i": i})
    data = await receive_payload(fs, head)
    slot = seed.slots[i]
    check_chunk(seed.manifest, slot.entry.path, slot.index, data)


async def test_bad_requests_get_an_error_and_the_stream_goes_on_serving(
    tmp_path: Path, publisher: SigningKey
) -> None:
    _, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    server = ChunkServer(seed_store, UploadLimits(spread_s=0))
    d = release.digest
    other_src = file_tree(tmp_path / "v2", 8, SIZES)
    partial = seed_store.open(release_of(other_src, publisher, 2))  # v2: chunk 0 so far
    partial.write(0, (other_src / "model.safetensors").read_bytes()[:CHUNK])
    bad: list[tuple[bytes, str]] = [
        (b"\xc1garbage", "bad_request"),  # 0xc1 is never valid msgpack
        (b"", "bad_request"),
        (_pack([1, 2, 3]), "bad_request"),
        (_pack("have"), "bad_request"),
        (_pack({"digest": d}), "bad_request"),  # no op
        (_pack({"op": 7, "digest": d}), "bad_request"),
        (_pack({1: "have"}), "bad_request"),  # a map key that is not a string
        (_pack({"op": "steal", "digest": d}), "bad_request"),
        (_pack({"op": "have", "digest": d, "pad": "x" * 2000}), "bad_request"),  # oversize
        (_pack({"op": "have", "digest": d[:-1]}), "bad_request"),
        (_pack({"op": "have", "digest": d.encode()}), "bad_request"),
        (_pack({"op": "have", "digest": "0" * 64}), "not_held"),
        (_pack({"op": "have", "digest": "../" + d[3:]}), "not_held"),
        (_pack({"op": "chunk", "digest": d, "i": held.total}), "bad_request"),
        (_pack({"op": "chunk", "digest": d, "i": -1}), "bad_request"),
        (_pack({"op": "chunk", "digest": d, "i": "3"}), "bad_request"),
        (_pack({"op": "chunk", "digest": d, "i": 2**64 - 1}), "bad_request"),
        (_pack({"op": "chunk", "digest": d}), "bad_request"),
        (_pack({"op": "chunk", "digest": partial.digest, "i": 1}), "not_held"),
        (_pack({"op": "find", "name": ""}), "bad_request"),
        (_pack({"op": "find"}), "bad_request"),
    ]
    async with _hosts(2) as (me, seed):
        server.install(seed)
        async with me.open_stream(seed.peer_id, RELEASE_PROTOCOL, timeout=5) as fs:
            with trio.fail_after(10):
                for k, (raw, code) in enumerate(bad):
                    await fs.send(raw)
                    answer = msgpack.unpackb(await fs.receive(timeout=5))
                    assert answer["ok"] is False and answer["error"] == code, (raw[:40], answer)
                    await _chunk_ok(fs, held, k % 3)
                await _chunk_ok(fs, partial, 0)
                head = await request(fs, {"op": "find", "name": release.manifest.name})
                assert sorted(head["digests"]) == sorted([d, partial.digest])
    assert server.stats["bad_requests"] == sum(code == "bad_request" for _, code in bad)
    assert server.stats["chunks_sent"] == len(bad) + 1


async def test_every_upload_slot_taken_answers_busy(tmp_path: Path, publisher: SigningKey) -> None:
    """One slot, 8 KiB/s: while chunk 0 goes out (half a second), a request for chunk 1
    is answered ``busy``; asked again afterwards, it is served (a refusal for want of a
    slot does not count as a chunk handed out)."""
    _, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    server = ChunkServer(seed_store, UploadLimits(max_uploads=1, upload_bytes_per_s=8192))
    async with _hosts(2) as (me, seed):
        server.install(seed)
        async with (
            me.open_stream(seed.peer_id, RELEASE_PROTOCOL, timeout=5) as a,
            me.open_stream(seed.peer_id, RELEASE_PROTOCOL, timeout=5) as b,
        ):
            with trio.fail_after(10):
                head = await request(a, {"op": "chunk", "digest": release.digest, "i": 0})
                with pytest.raises(SwarmError) as e:  # chunk 0 is still on its way
                    await request(b, {"op": "chunk", "digest": release.digest, "i": 1})
                assert e.value.code == "busy"
                assert len(await receive_payload(a, head)) == CHUNK
                while True:  # the slot comes free as the last frame leaves
                    try:
                        await _chunk_ok(b, held, 1)
                        break
                    except SwarmError as e:
                        assert e.code == "busy"
                        await trio.sleep(0.05)
    assert server.stats["chunks_sent"] == 2 and server.stats["spread"] == 0
    assert server.stats["busy"] >= 1


async def test_uploads_keep_to_the_rate_cap(tmp_path: Path, publisher: SigningKey) -> None:
    """40 kB/s for about a second: the bucket starts empty, so what went out is at most
    rate × the time since the server was made (one chunk of slack), far from all."""
    _, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    rate = 40_000.0
    async with _hosts(2) as (me, seed):
        started = time.monotonic()
        server = ChunkServer(seed_store, UploadLimits(upload_bytes_per_s=rate))
        server.install(seed)
        local = ReleaseStore(tmp_path / "me").open(release)
        with trio.move_on_after(1.0):
            await _fetcher(me, local, [seed]).run()
        sent = server.stats["uploaded_bytes"]
        elapsed = time.monotonic() - started
    assert CHUNK <= sent <= rate * elapsed + CHUNK, (sent, elapsed)
    assert not local.complete and local.held_bytes <= sent


async def test_a_seed_gives_a_chunk_out_twice_only_after_giving_out_all(
    tmp_path: Path, publisher: SigningKey
) -> None:
    _, held, seed_store = _seed(tmp_path, publisher)
    server = ChunkServer(seed_store, UploadLimits(spread_s=30))
    async with _hosts(3) as (me, seed, other):
        server.install(seed)
        await other.connect(seed.addrs[0])
        async with (
            me.open_stream(seed.peer_id, RELEASE_PROTOCOL, timeout=5) as fs,
            other.open_stream(seed.peer_id, RELEASE_PROTOCOL, timeout=5) as fs2,
        ):
            with trio.fail_after(10):
                await _chunk_ok(fs, held, 0)
                for stream in (fs, fs2):  # to anyone, while the others were never given
                    with pytest.raises(SwarmError) as e:
                        await _chunk_ok(stream, held, 0)
                    assert e.value.code == "spread"
                for i in range(1, held.total):  # every chunk out once: a new round
                    await _chunk_ok(fs2, held, i)
                await _chunk_ok(fs, held, 0)
    assert server.stats["spread"] == 2


async def test_a_seed_is_asked_only_for_the_chunks_no_partial_holder_has(
    tmp_path: Path, publisher: SigningKey
) -> None:
    """A partial holder (every other chunk, at 100 kB/s) known before the seed: the
    seed, fast and handing out anything here (``spread_s=0``), gives exactly what the
    partial holder lacks, and waits for the swarm to copy the rest."""
    src, held, seed_store = _seed(tmp_path, publisher)
    part_store = ReleaseStore(tmp_path / "part")
    part = part_store.open(held.release)
    for i in range(0, held.total, 2):
        part.write(i, held.read(i))
    server = ChunkServer(seed_store, UploadLimits(spread_s=0))
    local = ReleaseStore(tmp_path / "me").open(held.release)
    async with _hosts(3) as (me, seed, partial):
        server.install(seed)
        ChunkServer(part_store, UploadLimits(upload_bytes_per_s=100_000)).install(partial)
        f = _fetcher(me, local, [partial])
        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(f.run)
                while f.peers[partial.peer_id].have is None:
                    await trio.sleep(0.01)
                f.add_peer(seed.peer_id)
    lacking = sum(held.length(i) for i in range(1, held.total, 2))
    assert local.complete and _same(src, local.files)
    assert f.stats.by_peer == {seed.peer_id: lacking, partial.peer_id: TOTAL - lacking}
    assert server.stats["uploaded_bytes"] == lacking


async def test_a_partial_holder_that_is_always_busy_cannot_starve_the_fetch(
    tmp_path: Path, publisher: SigningKey
) -> None:
    """A peer advertising all but one chunk, then answering ``busy`` forever: the seed
    is asked for its chunks only while a partial holder is available, so this peer would
    keep the seed from ever being asked (a stall any stranger could cause). A busy peer
    rests longer each time it is busy again, and while it rests the seed serves."""
    src, held, seed_store = _seed(tmp_path, publisher)
    release = held.release
    local = ReleaseStore(tmp_path / "me").open(release)
    wall = Hostile(_lengths(local), set(range(1, local.total)), chunk="busy")
    async with _hosts(3) as (me, seed, stonewall):
        ChunkServer(seed_store).install(seed)
        stonewall.set_handler(RELEASE_PROTOCOL, wall.serve)
        f = _fetcher(me, local, [stonewall, seed])
        with trio.fail_after(20):
            stats = await f.run()
    assert local.complete and _same(src, local.files)
    assert set(stats.by_peer) == {seed.peer_id}
    assert wall.chunk_requests < 4 * PER_PEER  # asked again ever more rarely


async def test_a_fetch_nobody_can_serve_stops_as_stalled_and_keeps_what_it_has(
    tmp_path: Path, publisher: SigningKey
) -> None:
    """The only peer holds a few chunks: those come, then nothing for ``stall_s``; the
    fetch says so (``stalled``) instead of waiting forever, and keeps what it wrote."""
    _, held, _ = _seed(tmp_path, publisher)
    release = held.release
    few = ReleaseStore(tmp_path / "few").open(release)
    for i in range(5):
        assert few.write(i, held.read(i))
    local = ReleaseStore(tmp_path / "me").open(release)
    async with _hosts(2) as (me, partial):
        ChunkServer(ReleaseStore(tmp_path / "few")).install(partial)
        f = _fetcher(me, local, [partial])
        with trio.fail_after(10), pytest.raises(SwarmError) as e:
            await f.run(stall_s=1.0)
    assert e.value.code == "stalled" and "5 of" in e.value.detail
    assert local.held == 5 and ReleaseStore(tmp_path / "me").open(release).held == 5
