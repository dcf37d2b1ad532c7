"""A frozen (SIGSTOP) peer is detected within 10 s; a killed (SIGKILL) peer mid-stream
is an error, never a clean end. The peer is a real separate process."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.bench_net.procs import PeerProcess
from p2pnode.net import NetConfig, PeerTimeout, StreamBroken, open_node_host
from tests.p2pnode.net.scripted_peer import spawn_peer

DRIP = "/hearth/test/drip/1"


@pytest.fixture
def dripper() -> Iterator[PeerProcess]:
    p = spawn_peer([], "--dht", "off", "--relay", "off")
    try:
        yield p
    finally:
        p.stop()


def _cfg(addr: str) -> NetConfig:
    return NetConfig(dht="off", relay="off", target_peers=0, bootstrap=(addr,))


async def test_sigstopped_peer_detected_within_10s(dripper: PeerProcess) -> None:
    async with (
        open_node_host(create_new_key_pair(), _cfg(dripper.addr)) as net,
        net.open_stream(dripper.peer_id, DRIP) as fs,
    ):
        await fs.send(b"go")
        for _ in range(3):
            assert await fs.receive(timeout=10) is not None
        dripper.signal(signal.SIGSTOP)
        try:
            t0 = trio.current_time()
            with pytest.raises(PeerTimeout, match="silent"):
                while True:  # drain what was in flight, then silence
                    await fs.receive(timeout=60)
            detected = trio.current_time() - t0
        finally:
            dripper.signal(signal.SIGCONT)
    assert detected < 10.0


async def test_sigkilled_peer_is_an_error_not_a_clean_end(dripper: PeerProcess) -> None:
    async with (
        open_node_host(create_new_key_pair(), _cfg(dripper.addr)) as net,
        net.open_stream(dripper.peer_id, DRIP) as fs,
    ):
        await fs.send(b"go")
        assert await fs.receive(timeout=10) is not None
        dripper.signal(signal.SIGKILL)
        with pytest.raises((StreamBroken, PeerTimeout)):
            while True:
                payload = await fs.receive(timeout=30)
                assert payload is not None, "a killed peer must not look like END"
