"""Bootstrap node: HTTP endpoints, operator identity, CLI input errors, and several
bootstraps with no single point of failure (in-process hosts, real sockets)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from bootstrap.node import BootstrapConfig, load_or_create_seed, run_bootstrap
from p2pnode.net import NetConfig, open_node_host


def _boot_cfg(**kw: object) -> BootstrapConfig:
    base: dict[str, object] = {"listen": ("/ip4/127.0.0.1/tcp/0",), "http_port": 0}
    base.update(kw)
    return BootstrapConfig(**base)  # type: ignore[arg-type]


async def test_two_bootstraps_no_single_point_of_failure(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        one = await nursery.start(run_bootstrap, _boot_cfg(key_file=tmp_path / "one.key"))
        two_scope = trio.CancelScope()

        async def run_two(task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
            with two_scope:
                await run_bootstrap(_boot_cfg(peers=(one["addrs"][0],)), task_status=task_status)

        two = await nursery.start(run_two)
        # health and metrics over HTTP
        async with httpx.AsyncClient() as http:
            h = (await http.get(f"http://127.0.0.1:{two['http_port']}/health")).json()
            assert h["status"] == "ok" and h["peers"] == 1  # it joined the first bootstrap
            m = (await http.get(f"http://127.0.0.1:{one['http_port']}/metrics")).text
            assert "hearth_peers 1.0" in m and "hearth_relay_reservations" in m
            bad = await http.post(f"http://127.0.0.1:{one['http_port']}/health")
            assert bad.status_code == 405
        # a node lists both; with the second one down it still joins through the first
        two_scope.cancel()
        await trio.sleep(0.5)
        cfg = NetConfig(bootstrap=(two["addrs"][0], one["addrs"][0]), relay="off")
        async with open_node_host(create_new_key_pair(), cfg) as node:
            assert node.connected_peers() == [one["peer_id"]]
            assert await node.find_providers("e5" * 32) == []
        nursery.cancel_scope.cancel()


def test_identity_seed_is_stable_and_private(tmp_path: Path) -> None:
    key = tmp_path / "boot.key"
    seed = load_or_create_seed(key)
    assert load_or_create_seed(key) == seed
    assert key.stat().st_mode & 0o777 == 0o600
    key.write_bytes(b"short")
    with pytest.raises(ValueError, match="32-byte"):
        load_or_create_seed(key)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "not-a-multiaddr"], "is not a multiaddr"),
        (["--listen", "/ip4/127.0.0.1/tcp/0", "--http-port", "70000"], "http-port"),
    ],
)
def test_cli_rejects_bad_input_without_traceback(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "p2pnode.cli.app", "bootstrap", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
