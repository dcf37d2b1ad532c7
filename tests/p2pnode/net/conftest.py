"""A module-scoped loopback swarm: one bootstrap and nine node processes.

Peers 0-2 provide model A, 3-5 provide model B, 6-8 provide nothing (buyers). All are
real scripted peer processes (:mod:`tests.p2pnode.net.scripted_peer`); every one is
stopped by PID in ``finally``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from p2pnode.bench_net.procs import PeerProcess, spawn_bootstrap, stop_all
from tests.p2pnode.net.scripted_peer import spawn_peer

MODEL_A = "a1" * 32
MODEL_B = "b2" * 32


@dataclass
class Swarm:
    boot: PeerProcess
    peers: list[PeerProcess]

    @property
    def providers_a(self) -> list[PeerProcess]:
        return self.peers[0:3]

    @property
    def providers_b(self) -> list[PeerProcess]:
        return self.peers[3:6]

    @property
    def buyers(self) -> list[PeerProcess]:
        return self.peers[6:9]


def wait_until(pred, timeout: float, interval: float = 0.25):  # type: ignore[no-untyped-def]
    """Poll ``pred`` until truthy (returns its value) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    boot = None
    peers: list[PeerProcess] = []
    try:
        boot = spawn_bootstrap("--http-port", "0")
        for i in range(9):
            extra: list[str] = []
            if i < 3:
                extra = ["--model", MODEL_A]
            elif i < 6:
                extra = ["--model", MODEL_B]
            peers.append(spawn_peer([boot.addr], *extra, wait=False))
        for p in peers:
            p.wait_ready()
        yield Swarm(boot, peers)
    finally:
        stop_all([*peers, boot])
