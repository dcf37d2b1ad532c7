"""NAT traversal for real: a provider in its own network namespace that nobody can dial.

The test creates a namespace (unique name per run, always deleted) joined to the host by
a veth pair. The provider inside listens only on the namespace's own loopback, so it has
outbound connectivity (to the bootstrap on the veth address) and no inbound reachability
at all — the situation of a box behind a home router. It reserves a slot on the bootstrap
relay and advertises its ``/p2p-circuit`` address; a buyer outside reaches it only through
the relay and completes a bid/award/stream round trip. Needs root and ``ip netns``; when
unavailable the test says so and skips.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from p2pnode.bench_net.procs import PeerProcess, spawn_bootstrap, stop_all
from tests.p2pnode.net.scripted_peer import child_env, peer_argv, spawn_peer

MODEL = "d4" * 32


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """(netns name, host-side address, namespace-side address); torn down always."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("NAT test needs root and iproute2 (ip netns) — not available here")
    tag = secrets.token_hex(3)
    ns, veth_host, veth_ns = f"hearth-nat-{tag}", f"hh{tag}", f"hn{tag}"
    octet = 16 + secrets.randbelow(200)
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        _ip("netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot create network namespaces here: {e}")
    try:
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_ns)
        _ip("link", "set", veth_ns, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", veth_host)
        _ip("link", "set", veth_host, "up")
        _ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", veth_ns)
        _ip("-n", ns, "link", "set", veth_ns, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", veth_host], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_provider_behind_nat_reachable_only_through_relay(
    namespace: tuple[str, str, str],
) -> None:
    ns, host_ip, _ns_ip = namespace
    procs: list[PeerProcess | None] = []
    try:
        boot = spawn_bootstrap("--listen", f"/ip4/{host_ip}/tcp/0")
        procs.append(boot)
        boot_veth = next(a for a in boot.addrs if host_ip in a)
        provider = PeerProcess(
            [
                "ip", "netns", "exec", ns,
                *peer_argv(),
                "--listen", "/ip4/127.0.0.1/tcp/0",  # the namespace's own loopback
                "--bootstrap", boot_veth,
                "--relay", "reserve", "--model", MODEL, "--target-peers", "0",
            ],
            env=child_env(),
        )  # fmt: skip
        procs.append(provider)
        buyer = spawn_peer([boot.addr], "--target-peers", "0")
        procs.append(buyer)

        relayed = [a for a in provider.addrs if "/p2p-circuit/" in a]
        assert relayed, f"provider advertised no relayed address: {provider.addrs}"
        direct = [a for a in provider.addrs if "/p2p-circuit/" not in a]
        # the provider's own address is not reachable from outside its namespace
        bad = buyer.call_raw("connect", addr=direct[0], timeout=30)
        assert not bad["ok"]
        # …but through the relay the buyer gets a bid, an award and the token stream
        assert buyer.call("connect", addr=relayed[0], timeout=30)["peer"] == provider.peer_id
        r = buyer.call("trade", peer=provider.peer_id, model=MODEL, chunks=20, timeout=60)
        assert r["chunks"] == 20 and r["eos_tokens"] == 80
        assert boot.alive()
    finally:
        stop_all(procs)
