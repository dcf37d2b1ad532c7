"""`hearth model seed` and `hearth model fetch` as real processes on 127.0.0.1."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from market.protocol import SigningKey
from p2pnode.bench_distribute import ChildProc
from p2pnode.release import TRUST_STORE_FILE, TrustStore
from p2pnode.release.files import RELEASE_SUFFIX
from tests.p2pnode.release.factory import ModelDirs, key, release_of

MiB = 1 << 20
LOCAL = ("--listen", "/ip4/127.0.0.1/tcp/0", "--json")
RATE = "200"  # Mbit/s out of the seed: 25 MB/s, so a 71 MB fetch takes a few seconds


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, models: ModelDirs) -> tuple[Path, bytes]:
    """The 71 MB two-layer model, published in 1 MiB chunks; (folder, its bytes' owner)."""
    import shutil

    folder = tmp_path_factory.mktemp("pub") / "smol"
    shutil.copytree(models.v1, folder)
    now = int(time.time())
    release = release_of(
        folder,
        key(1),
        1,
        address=models.address_v1,
        chunk_size=MiB,
        created_at=now - 60,
        expires_at=now + 86_400,
    )
    (folder / f"smol-v1{RELEASE_SUFFIX}").write_bytes(release.encode())
    return folder, key(1).public_bytes


@pytest.fixture
def procs() -> Iterator[list[ChildProc]]:
    out: list[ChildProc] = []
    yield out
    for p in out:
        p.stop()


def _seed(procs: list[ChildProc], folder: Path, tmp: Path) -> tuple[ChildProc, str]:
    seed = ChildProc(
        ["model", "seed", str(folder), "--data-dir", str(tmp / "seed"), "--upload-mbps", RATE,
         *LOCAL],
        tmp / "seed.log",
    )  # fmt: skip
    procs.append(seed)
    _, ready = seed.wait_event("ready", 60)
    return seed, ready["addrs"][0]


def _fetch(procs: list[ChildProc], tmp: Path, name: str, addr: str, pub: bytes) -> ChildProc:
    p = ChildProc(
        ["model", "fetch", "smol", "--publisher", pub.hex(), "--peer", addr, "--data-dir",
         str(tmp / name), *LOCAL],
        tmp / f"{name}.log",
    )  # fmt: skip
    procs.append(p)
    return p


def _uploaded(seed: ChildProc) -> int:
    time.sleep(1.5)  # the seed prints its counters every second
    return int(seed.last["stats"]["uploaded_bytes"])


def _same_files(a: Path, b: Path) -> None:
    for f in sorted(p for p in a.iterdir() if p.suffix != RELEASE_SUFFIX):
        if f.name != "hearth-manifest.json":
            assert (b / f.name).read_bytes() == f.read_bytes(), f.name


def test_kill_9_mid_fetch_then_restart_refetches_at_most_the_chunks_in_flight(
    published: tuple[Path, bytes], tmp_path: Path, procs: list[ChildProc]
) -> None:
    folder, pub = published
    seed, addr = _seed(procs, folder, tmp_path)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.name != "hearth-manifest.json"
               and f.suffix != RELEASE_SUFFIX)  # fmt: skip
    victim = _fetch(procs, tmp_path, "node", addr, pub)
    while True:
        _, prog = victim.wait_event("progress", 120)
        if prog["held_bytes"] >= 0.3 * size:
            break
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait()
    again = _fetch(procs, tmp_path, "node", addr, pub)
    _, resumed = again.wait_event("release", 60)
    assert resumed["held"] >= 0.3 * resumed["chunks"]  # what was written survived
    assert resumed["held"] < resumed["chunks"]  # killed mid-way: the rest comes now
    _, done = again.wait_event("done", 120)
    assert done["fetched_bytes"] + resumed["held_bytes"] == size  # only what was missing
    refetched = _uploaded(seed) - size
    assert 0 <= refetched <= 2 * MiB  # one chunk per request stream, two streams
    _same_files(folder, Path(done["path"]))
    with TrustStore(tmp_path / "node" / TRUST_STORE_FILE, trusted=[pub]) as trust:
        latest = trust.latest(pub, "smol")
        assert latest is not None and latest.digest == done["digest"]  # checked, then trusted


def test_three_nodes_fetch_at_once_and_the_seed_sends_each_chunk_about_once(
    published: tuple[Path, bytes], tmp_path: Path, procs: list[ChildProc]
) -> None:
    folder, pub = published
    seed, addr = _seed(procs, folder, tmp_path)
    nodes = [_fetch(procs, tmp_path, f"n{i}", addr, pub) for i in range(3)]
    dones = [p.wait_event("done", 180)[1] for p in nodes]
    size = dones[0]["bytes"]
    origin = _uploaded(seed)
    assert origin <= 1.5 * size, (origin / size, [d["by_peer"] for d in dones])
    assert any(len(d["by_peer"]) > 1 for d in dones)  # the nodes traded chunks
    for d in dones:
        _same_files(folder, Path(d["path"]))


def test_a_release_by_an_untrusted_publisher_is_refused_and_nothing_is_fetched(
    published: tuple[Path, bytes], tmp_path: Path, procs: list[ChildProc]
) -> None:
    folder, _ = published
    _, addr = _seed(procs, folder, tmp_path)
    other: SigningKey = key(2)
    p = _fetch(procs, tmp_path, "wary", addr, other.public_bytes)
    assert p.popen.wait(60) == 2
    log = (tmp_path / "wary.log").read_text()
    assert "no acceptable release of smol" in log and "not a trusted publisher" in log
    assert not any((tmp_path / "wary" / "releases").glob("*/have.bin"))
