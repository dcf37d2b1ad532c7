"""Updates without downtime (issue 17), with real processes and the real model.

Three homeowner nodes serve release 1 of the model "smol" (two decoder layers of
SmolLM2 in bf16) and follow the name. While a buyer keeps jobs running on them, the
publisher seeds release 2 (other weights) and announces it on its topic. Each node
fetches it through the swarm (from the seed and from one another), checks it (every
chunk, the content address, the golden outputs), moves new jobs to it and lets the old
weights finish theirs: no job fails, every node offers release 2, and a greedy job
pinned to it gives its golden tokens.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from market.sdk import Result
from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import GenerationParams
from p2pnode.bench_distribute import ChildProc
from p2pnode.localnet import LocalMarket
from p2pnode.release import compute_golden, load_fresh
from p2pnode.release.files import RELEASE_SUFFIX
from tests.p2pnode.release.factory import ModelDirs, key, release_of

MiB = 1 << 20
NODES = ("uma", "ugo", "una")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, models: ModelDirs
) -> Iterator[tuple[LocalMarket, Path, Any]]:
    root = tmp_path_factory.mktemp("update")
    publisher, now = key(1), int(time.time())
    folders = {}
    for label, src in (("v1", models.v1), ("v2", models.v2)):
        folders[label] = root / label / "smol"  # the folder's name is the model's
        shutil.copytree(src, folders[label])
    v2 = folders["v2"]
    golden = trio.run(compute_golden, load_fresh(v2))
    release = release_of(v2, publisher, 2, address=models.address_v2, chunk_size=MiB,
                         created_at=now - 60, expires_at=now + 86_400, golden=golden)  # fmt: skip
    (v2 / f"smol-v2{RELEASE_SUFFIX}").write_bytes(release.encode())
    m = LocalMarket(
        root / "market",
        node_extra=f'\n[serving]\nmodel = "{folders["v1"]}"\n\n[release]\n'
        f'publishers = ["{publisher.public_bytes.hex()}"]\nfollow = "smol"\n',
    )
    try:
        m.stand_up(NODES)
        yield m, v2, release
    finally:
        m.stop()


async def test_a_node_updates_to_a_new_release_under_load_and_loses_no_job(
    setup: tuple[LocalMarket, Path, Any], models: ModelDirs, tmp_path: Path
) -> None:
    market, v2, release = setup
    v1_hex = models.address_v1.removeprefix("sha256:")
    v2_hex = models.address_v2.removeprefix("sha256:")
    results: list[Result] = []
    failures: list[BaseException] = []
    async with open_buyer_client(load_buyer(market.config_for("buyer"), market.env)) as client:

        def offering(model_hex: str) -> int:
            return sum(
                1
                for o in client.catalog.candidates(model_hex, trio.current_time())
                if o.provider in ids
            )

        ids = {market.node(n).peer_id for n in NODES}
        with trio.fail_after(90):
            while offering(v1_hex) < len(NODES):
                await trio.sleep(0.2)
        stop = trio.Event()

        async def load(i: int) -> None:
            while not stop.is_set():
                job = client.generate(
                    "smol",
                    messages=[{"role": "user", "content": f"Name a colour, please ({i})."}],
                    params=GenerationParams(max_tokens=24, temperature=0.0),
                    timeout_s=120,
                )
                try:
                    await job.text()
                    results.append(job.result)
                except Exception as e:  # counted: the test asserts there are none
                    failures.append(e)

        seed = ChildProc(
            ["model", "seed", str(v2), "--peer", market.bootstrap, "--data-dir",
             str(tmp_path / "seed"), "--listen", "/ip4/127.0.0.1/tcp/0", "--json"],
            tmp_path / "seed.log",
        )  # fmt: skip
        try:
            async with trio.open_nursery() as nursery:
                for i in range(2):
                    nursery.start_soon(load, i)
                await trio.to_thread.run_sync(seed.wait_event, "ready", 60)
                with trio.fail_after(240):  # every node moved to release 2
                    while offering(v2_hex) < len(NODES):
                        await trio.sleep(0.2)
                await trio.sleep(3)  # the load goes on on release 2
                stop.set()
            after = client.generate(
                "smol@2",  # pinned to release 2 (the offers state the version)
                prompt=release.manifest.golden[0].prompt,
                params=GenerationParams(max_tokens=16, temperature=0.0),
                timeout_s=60,
            )
            await after.text()
            origin = int(seed.last["stats"]["uploaded_bytes"])
        finally:
            seed.stop()
    assert failures == []
    served = {r.model_id.removeprefix("sha256:") for r in results}
    assert served == {v1_hex, v2_hex}, served  # jobs ran on both, none failed
    assert after.result.model_id.removeprefix("sha256:") == v2_hex
    assert after.result.token_ids == release.manifest.golden[0].token_ids
    for name in NODES:
        log = (market.dir / name / "node.log").read_text()
        assert f"stopped serving {v1_hex}" in log, name  # the old weights were let go
    size = release.manifest.total_size
    assert origin < len(NODES) * size, origin / size  # the nodes also fetched from one another
