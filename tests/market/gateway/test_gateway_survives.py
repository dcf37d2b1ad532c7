"""Hostile HTTP against a real ``hearth gateway`` process backed by a real local market.

One market (anvil, a bootstrap, one homeowner node serving SmolLM2) and a gateway
started the way a user starts it (``hearth gateway --config … --port 0``, its own
process) serve the module. Each test attacks the gateway over raw sockets or the
official ``openai`` client on 127.0.0.1, then checks that the *same* process is
still up and still sells a real completion. A test that kills the gateway fails; the
next test gets a fresh one.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import select
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from p2pnode.localnet import LocalMarket, hearth_cmd

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
CHAT = b"/v1/chat/completions"
# Long enough that the job is still running when the client goes away.
LONG_PROMPT = "Count from 1 to 1000, one number per line."
LONG_TOKENS = 200


class Gateway:
    """A ``hearth gateway`` process and the port it listens on."""

    def __init__(self, market: LocalMarket, n: int) -> None:
        self.log_path = market.dir / f"gateway-{n}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - lives with the process
        cmd = hearth_cmd("gateway", "--config", str(market.config_for("buyer")), "--port", "0")
        self.popen = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=market.env)
        self.port = 0
        deadline = time.monotonic() + 90
        while not self.port:
            found = re.search(
                rb"gateway on http://127\.0\.0\.1:(\d+)/v1", self.log_path.read_bytes()
            )
            if found:
                self.port = int(found.group(1))
            elif not self.alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start:\n{self.log_path.read_text()}")
            else:
                time.sleep(0.1)
        # Ready once the buyer has heard the node's offer.
        while MODEL not in " ".join(m["id"] for m in self.get("/v1/models").json()["data"]):
            assert time.monotonic() < deadline, "the gateway never saw the node's offer"
            time.sleep(0.2)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def healthy(self) -> bool:
        try:
            return self.alive() and self.get("/v1/models").status_code == 200
        except httpx.HTTPError:
            return False

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base + path, timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.base + path, json=body, timeout=60)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    def assert_serves(self) -> None:
        """Still the same live process, and it still sells a real completion."""
        assert self.alive(), f"the gateway died (exit {self.popen.returncode}):\n{self.tail()}"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 3,
        }
        response = self.post("/v1/chat/completions", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["completion_tokens"] >= 1
        assert self.alive()

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(
        tmp_path_factory.mktemp("gateway-market"), node_extra="[market]\nchunk_tokens = 2\n"
    )
    try:
        m.stand_up(["alice"])
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def gateways(market: LocalMarket) -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()


@pytest.fixture
def gateway(market: LocalMarket, gateways: list[Gateway]) -> Gateway:
    """The module's gateway, or a fresh one when an earlier test broke it."""
    if not gateways or not gateways[-1].healthy():
        if gateways:
            gateways[-1].stop()
        gateways.append(Gateway(market, len(gateways)))
    return gateways[-1]


# ---------------------------------------------------------------- raw HTTP


def request(path: bytes, body: bytes, *, headers: bytes = b"", length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(size).encode() + b"\r\n" + headers + b"\r\n" + body
    )


def read_head(sock: socket.socket, timeout: float) -> tuple[int | None, bytes]:
    """The status code and what came with the head (``None``: closed or silent first)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except (TimeoutError, ConnectionError):
        pass
    found = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(found.group(1)) if found else None), data


def exchange(port: int, data: bytes, timeout: float = 10.0) -> int | None:
    """Send ``data`` on a fresh connection; the answer's status code (``None``: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)
        return read_head(sock, timeout)[0]


def provider_jobs(market: LocalMarket) -> dict[str, dict[str, Any]]:
    """The node's own ledger of jobs, read beside it (read-only)."""
    path = market.node("alice").data_dir / "ledger.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        return {r["job_id"]: dict(r) for r in db.execute("select * from jobs")}


def wait_new_job(market: LocalMarket, before: set[str], finished: bool) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [j for k, j in provider_jobs(market).items() if k not in before]
        if new and (not finished or new[0]["finished_at"]):
            return new[0]
        time.sleep(0.1)
    raise AssertionError("the node never recorded the job")


def long_chat(stream: bool, max_tokens: int = LONG_TOKENS) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


# ---------------------------------------------------------------- attacks


def test_deep_nesting_is_refused_and_the_gateway_lives(gateway: Gateway) -> None:
    # 200 KB: 100,000 nested '[' — the C json decoder recursed until the stack overflowed.
    body = b"[" * 100_000 + b"]" * 100_000
    assert exchange(gateway.port, request(CHAT, body)) == 400
    body = b'{"model": "' + MODEL.encode() + b'", "messages": ' + b"[" * 100_000
    assert exchange(gateway.port, request(CHAT, body)) == 400
    gateway.assert_serves()


def test_huge_bodies_are_refused_while_they_are_read(gateway: Gateway) -> None:
    rss_before = gateway.rss_mib()
    # A declared 256 MiB body: refused on the header, before the client sends it.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request(CHAT, b"{" + b" " * 65535, length=256 << 20))
        status, _ = read_head(sock, timeout=10)
    assert status == 413
    # A chunked body with no length: refused once it passes the limit.
    sent = 0
    status = None
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"10000\r\n" + b" " * 0x10000 + b"\r\n"  # 64 KiB chunks
        while sent < 64 << 20:
            if select.select([sock], [], [], 0.02)[0]:
                status, _ = read_head(sock, timeout=10)
                break
            try:
                sock.sendall(piece)
            except ConnectionError:
                status, _ = read_head(sock, timeout=10)
                break
            sent += 0x10000
    assert status == 413
    assert sent <= 4 << 20  # answered within a few chunks of the 1 MiB limit
    assert gateway.rss_mib() - rss_before < 64
    gateway.assert_serves()


def test_a_prompt_over_the_market_message_limit_is_a_400(gateway: Gateway) -> None:
    body = {"model": MODEL, "prompt": "x" * 1_000_000, "max_tokens": 2}
    response = gateway.post("/v1/completions", body)
    assert response.status_code == 400, response.text
    assert "982016" in response.json()["error"]["message"].replace(",", "")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}] * 5000}
    response = gateway.post("/v1/chat/completions", body)
    assert response.status_code == 400, response.text
    assert "4096" in response.json()["error"]["message"]
    gateway.assert_serves()


def test_a_prompt_longer_than_the_engines_context_is_a_400(gateway: Gateway) -> None:
    """Under the wire limit but over what the provider's engine takes: the node refuses
    it as a bad request, and the buyer reports that (it was a 502
    `providers_exhausted` before)."""
    body = {"model": MODEL, "prompt": "the cat sat " * 4_000, "max_tokens": 2}
    response = gateway.post("/v1/completions", body)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "context is" in message and "refused" in message, message
    gateway.assert_serves()


def test_an_openai_client_closing_a_stream_after_three_deltas(
    gateway: Gateway, market: LocalMarket
) -> None:
    import openai

    before = set(provider_jobs(market))
    oc = openai.OpenAI(base_url=gateway.base + "/v1", api_key="unused", max_retries=0)
    stream = oc.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=LONG_TOKENS,
        stream=True,
    )
    deltas = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas += 1
        if deltas == 3:
            break
    stream.close()
    # That job alone ends: the node stops short and is paid only for what it sent.
    job = wait_new_job(market, before, finished=True)
    assert job["status"] != "done", job
    assert job["tokens"] < LONG_TOKENS, job
    gateway.assert_serves()


def test_clients_that_vanish_at_any_point(gateway: Gateway, market: LocalMarket) -> None:
    port = gateway.port
    good = long_chat(stream=False)
    whole = request(CHAT, good)
    head_end = whole.index(b"\r\n\r\n") + 4
    # Mid request line, mid headers, after the headers, mid body: hang up.
    for cut in (5, 40, head_end, head_end + 10, len(whole) - 1):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(whole[:cut])
    # A whole non-streaming request, then gone while its job runs. Nothing is written
    # to it before its answer, but the gateway watches the connection meanwhile
    # (http.disconnect) and cancels the job: it stops short of its max_tokens.
    before = set(provider_jobs(market))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request(CHAT, long_chat(stream=False, max_tokens=24)))
        wait_new_job(market, before, finished=False)
    job = wait_new_job(market, before, finished=True)
    assert job["status"] != "done" and job["tokens"] < 24, job
    assert gateway.alive()
    # A streaming request, gone after its first text (no clean close: a reset).
    before = set(provider_jobs(market))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request(CHAT, long_chat(stream=True)))
        data = b""
        while data.count(b"data: ") < 3:  # the role, then two pieces of text
            piece = sock.recv(65536)
            assert piece, "the stream ended before any text"
            data += piece
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    job = wait_new_job(market, before, finished=True)
    assert job["status"] != "done" and job["tokens"] < LONG_TOKENS, job
    gateway.assert_serves()


def _fuzz_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Malformed HTTP: hand-written attacks, then seeded mutations of a valid request."""
    # An unknown model: every validation path runs, but no job is ever started.
    valid = json.dumps(
        {"model": "fuzz-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    ).encode()
    yield "garbage request line", b"\x00\xff\xfe GARBAGE\r\n\r\n"
    yield "no version", b"GET /v1/models\r\n\r\n"
    yield "bad method", b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    yield "http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    yield (
        "huge header",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\n",
    )
    yield "many headers", b"GET /v1/models HTTP/1.1\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n"
    yield "huge path", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    yield "negative length", request(CHAT, valid, length=-5)
    yield "non-numeric length", request(CHAT, valid, headers=b"Content-Length: abc\r\n")
    yield "two lengths", request(CHAT, valid, headers=b"Content-Length: 3\r\n")
    yield "length and chunked", request(CHAT, valid, headers=b"Transfer-Encoding: chunked\r\n")
    yield (
        "bad chunk size",
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n"
        ),
    )
    yield (
        "huge chunk size",
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffffffff\r\nabc"
        ),
    )
    yield "truncated body", request(CHAT, valid[:20], length=len(valid))
    yield "length over the limit", request(CHAT, b"{}", length=10**30)
    yield "deep object", request(CHAT, b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    # An escaped backslash ends the string: what follows nests, whatever a naive
    # scanner ("a quote after a backslash is escaped") would think.
    yield "deep after an escaped backslash", request(CHAT, b'["\\\\", ' + b"[" * 100_000)
    yield "brackets inside a string", request(CHAT, b'["\\"' + b"[" * 100_000)
    yield "utf-16", request(CHAT, valid.decode().encode("utf-16"))
    yield "invalid utf-8", request(CHAT, b'{"model": "\xff\xfe"}')
    yield "nan", request(CHAT, valid.replace(b'"max_tokens": 2', b'"temperature": NaN'))
    yield "big int", request(CHAT, valid.replace(b"2}", b"9" * 5000 + b"}"))
    yield "big float", request(CHAT, valid.replace(b"2}", b"1e999}"))
    yield "null body", request(CHAT, b"null")
    yield "array body", request(CHAT, b"[]")
    yield "empty body", request(CHAT, b"")
    for key, value in [
        ("messages", "hi"),
        ("messages", [None]),
        ("messages", [{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        ("messages", [{"role": "user", "content": [1, "a"]}]),
        ("messages", [{"role": ["user"], "content": "x"}]),
        ("max_tokens", [2]),
        ("max_tokens", 2.5),
        ("temperature", "hot"),
        ("top_p", {}),
        ("stop", {"a": 1}),
        ("stream", 1),
        ("stream_options", "yes"),
        ("stream_options", {"include_usage": [[[]]]}),
        ("logprobs", 10**6),
        ("n", None),
        ("model", 7),
        ("model", ""),
    ]:
        base = json.loads(valid)
        base[key] = value
        yield f"{key}={value!r}"[:60], request(CHAT, json.dumps(base).encode())
    yield (
        "completions with a list prompt",
        request(b"/v1/completions", json.dumps({"model": "x", "prompt": [[1, 2], 3]}).encode()),
    )
    yield "pipelined garbage", request(CHAT, valid) + b"\x00" * 1000 + request(CHAT, b"{")
    for i in range(120):
        data = bytearray(request(CHAT, valid))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos : pos + rng.randint(1, 20)]
            else:
                data[pos:pos] = rng.choice([b"[", b"{", b'"', b"\\", b"\r\n", b"\x00", b"9" * 30])
        yield f"mutation {i}", bytes(data)


def test_fuzzed_http_never_takes_the_gateway_down(gateway: Gateway) -> None:
    rng = random.Random(13)
    answers: dict[str, int | None] = {}
    for i, (name, data) in enumerate(_fuzz_cases(rng)):
        hang_up = rng.random() < 0.25  # a quarter of them: gone mid-send, no answer read
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            try:
                sock.sendall(data[: rng.randrange(1, len(data) + 1)] if hang_up else data)
            except ConnectionError:
                continue
            if hang_up:
                continue
            with contextlib.suppress(OSError):  # (the gateway may have hung up already)
                sock.shutdown(socket.SHUT_WR)  # all sent: a short body ends here, not in a timeout
            status, _ = read_head(sock, timeout=5)
        answers[name] = status
        # The caller's fault is never answered as the gateway's (5xx).
        assert status is None or status < 500, (name, status)
        if i % 25 == 0:
            assert gateway.alive(), f"died at {name!r}:\n{gateway.tail()}"
    assert sum(s is not None and 400 <= s < 500 for s in answers.values()) >= 50, answers
    gateway.assert_serves()


def test_a_second_gateway_on_a_taken_port_says_so_in_one_line(
    gateway: Gateway, market: LocalMarket
) -> None:
    cmd = hearth_cmd(
        "gateway", "--config", str(market.config_for("buyer")), "--port", str(gateway.port)
    )
    done = subprocess.run(cmd, capture_output=True, text=True, env=market.env, timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{gateway.port}" in lines[0] and "in use" in lines[0]
    gateway.assert_serves()
