"""The bootstrap's /health and /metrics server (hypercorn + Starlette), on a real socket."""

from __future__ import annotations

import json
import socket
from typing import Any, ClassVar

import httpx
import pytest
import trio

import bootstrap.http
from bootstrap.http import serve_http


class _FakeNet:
    """What the server reads from a ``NodeNet``: identity, peers and counters."""

    peer_id = "12D3KooWBootstrapUnderTest"
    addrs: ClassVar[list[str]] = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWBootstrapUnderTest"]

    def connected_peers(self) -> list[str]:
        return ["peer-a", "peer-b"]

    def stats(self) -> dict[str, Any]:
        return {
            "peers": 2,
            "pubsub": {
                "delivered": 40,
                "dropped_full": 1,
                "invalid": 3,
                "malformed_frames": 2,
                "blacklisted": 1,
            },
            "errors": {"timeout": 4, "reset": 1},
            "relay": {"reservations": 5, "circuits": 2},
            "rendezvous": {"hearth/peers": 3, "hearth/model/ab": 4},
        }


async def _raw(port: int, data: bytes, *, wait_s: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server says before it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    got = b""
    with trio.move_on_after(wait_s):
        if data:
            await stream.send_all(data)
        while chunk := await stream.receive_some(65536):
            got += chunk
    await stream.aclose()
    return got


async def test_health_and_metrics_answer_get_only(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, _FakeNet(), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"{base}/health")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        h = r.json()
        assert h["status"] == "ok" and h["peer_id"] == _FakeNet.peer_id and h["peers"] == 2
        assert h["addrs"] == _FakeNet.addrs and 0 <= h["uptime_s"] < 60

        m = await http.get(f"{base}/metrics")
        assert m.status_code == 200
        assert m.headers["content-type"].startswith("text/plain; version=0.0.4")
        for line in (
            "hearth_peers 2.0",
            "hearth_pubsub_delivered_total 40.0",
            "hearth_pubsub_malformed_frames_total 2.0",
            'hearth_inbound_errors_total{kind="timeout"} 4.0',
            "hearth_relay_reservations 5.0",
            "hearth_relay_circuits 2.0",
            "hearth_rendezvous_registrations 7.0",
        ):
            assert line in m.text.splitlines(), line
        assert "hearth_uptime_seconds" in m.text

        assert (await http.head(f"{base}/health")).status_code == 200
        assert (await http.post(f"{base}/health", content=b"x" * 1000)).status_code == 405
        assert (await http.delete(f"{base}/metrics")).status_code == 405
        assert (await http.get(f"{base}/")).status_code == 404
        assert (await http.get(f"{base}/health/../admin")).status_code == 404
    # plain HTTP/1.0, as a shell probe (curl -0, nc) would speak it
    reply = await _raw(port, b"GET /health HTTP/1.0\r\n\r\n")
    status, _, body = reply.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.0 200") or status.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["status"] == "ok"


async def test_a_huge_head_is_refused(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, _FakeNet(), "127.0.0.1", 0)
    # past one 64 KiB read, h11 refuses any head still incomplete beyond 8 KiB
    huge = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200_000 + b"\r\n\r\n"
    reply = await _raw(port, huge)
    assert reply.startswith(b"HTTP/1.1 431")  # Request Header Fields Too Large
    # and the server still answers the next client
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200


async def test_a_silent_client_is_dropped_and_blocks_no_one(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bootstrap.http, "READ_TIMEOUT_S", 0.5)
    port = await nursery.start(serve_http, _FakeNet(), "127.0.0.1", 0)
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    half = await trio.open_tcp_stream("127.0.0.1", port)
    await half.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    async with httpx.AsyncClient(timeout=10) as http:  # others are served meanwhile
        assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 200
    with trio.fail_after(5):  # both are closed by the server, well before this
        assert await silent.receive_some(1024) == b""
        rest = b""
        while chunk := await half.receive_some(1024):
            rest += chunk
    assert b"200" not in rest
    await silent.aclose()
    await half.aclose()


async def test_a_port_in_use_fails_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await serve_http(_FakeNet(), "127.0.0.1", port)  # before anything else starts


async def test_stopping_closes_the_port() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, _FakeNet(), "127.0.0.1", 0)
        nursery.cancel_scope.cancel()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
