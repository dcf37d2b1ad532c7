"""The release swarm in one process: real libp2p hosts on 127.0.0.1, real files."""

from __future__ import annotations

from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from market.protocol import SigningKey
from p2pnode.net import NetConfig, open_node_host
from p2pnode.release.fetch import Fetcher
from p2pnode.release.store import ReleaseStore
from p2pnode.release.swarm import ChunkServer, UploadLimits
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
