"""A running homeowner node serves the releases it holds, of its trusted publishers only.

A real node process (chain, bootstrap, `hearth node`) whose data dir already holds two
complete releases: one by the publisher its config trusts, one by a stranger. A
`hearth model fetch` that knows only the bootstrap finds the trusted one through the
swarm and fetches it from the node; the stranger's is never offered.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pnode.bench_distribute import ChildProc
from p2pnode.localnet import LocalMarket
from p2pnode.release.store import RELEASES_DIR, ReleaseStore
from tests.p2pnode.release.factory import ModelDirs, key, release_of

MiB = 1 << 20


def _held(store: ReleaseStore, folder: Path, release: object) -> None:
    """Put a complete copy of ``release`` (published from ``folder``) into ``store``."""
    local = store.open(release)  # type: ignore[arg-type]
    for i, s in enumerate(local.slots):
        with (folder / s.entry.path).open("rb") as f:
            f.seek(s.offset)
            assert local.write(i, f.read(s.length))


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory, models: ModelDirs) -> Iterator[LocalMarket]:
    trusted, stranger = key(1), key(2)
    now = int(time.time())
    m = LocalMarket(
        tmp_path_factory.mktemp("seeds"),
        node_extra=f'\n[release]\npublishers = ["{trusted.public_bytes.hex()}"]\n',
    )
    try:
        m.start_chain()
        m.start_bootstrap()
        m.add_identity("nora", provider=True)
        store = ReleaseStore(m.dir / "nora" / RELEASES_DIR)
        for signer, name in ((trusted, "smol"), (stranger, "other")):
            folder = m.dir / name
            shutil.copytree(models.v1, folder)
            release = release_of(folder, signer, 1, name=name, address=models.address_v1,
                                 chunk_size=MiB, created_at=now - 60, expires_at=now + 86_400)  # fmt: skip
            _held(store, folder, release)
        m.wait_serving([m.start_node("nora")])
        yield m
    finally:
        m.stop()


def _fetch(market: LocalMarket, name: str, publisher: bytes, out: Path) -> ChildProc:
    return ChildProc(
        ["model", "fetch", name, "--publisher", publisher.hex(), "--peer", market.bootstrap,
         "--data-dir", str(out), "--listen", "/ip4/127.0.0.1/tcp/0", "--no-verify", "--json"],
        out.with_suffix(".log"),
    )  # fmt: skip


def test_a_node_serves_its_trusted_publishers_releases_to_the_swarm(
    market: LocalMarket, tmp_path: Path
) -> None:
    p = _fetch(market, "smol", key(1).public_bytes, tmp_path / "a")
    try:
        _, done = p.wait_event("done", 120)
    finally:
        p.stop()
    assert done["fetched_bytes"] == done["bytes"]
    assert list(done["by_peer"]) == [market.node("nora").peer_id]


def test_a_node_does_not_spread_a_release_it_does_not_trust(
    market: LocalMarket, tmp_path: Path
) -> None:
    p = _fetch(market, "other", key(2).public_bytes, tmp_path / "b")
    try:
        assert p.popen.wait(120) == 2
    finally:
        p.stop()
    assert "no peer offers a release of other" in (tmp_path / "b.log").read_text()
