"""Many users at once through a real ``hearth gateway``, and users who leave early.

One market serves the module: anvil, a bootstrap, three homeowner nodes serving
SmolLM2 and a gateway process started the way a user starts it
(:class:`p2pnode.bench_gateway.GatewayProcess`). The nodes' price is pinned (a floor
of 2,000 base units per 1,000 tokens and no electricity cost), so what a provider
was paid for a job says exactly how many tokens the buyer paid for: 2 per token.

What a cancelled job did is read from the providers' own ledgers (``jobs``: the
tokens a provider sent, what it was paid, how the job ended), beside the nodes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from p2pnode.bench_gateway import MODEL, GatewayProcess
from p2pnode.localnet import LocalMarket

pytestmark = pytest.mark.slow

HOMEOWNERS = ("alice", "bob", "carol")
PRICE_PER_1K = 2000  # base units: each token costs exactly 2
CHUNK_TOKENS = 2
CREDIT_TOKENS = CHUNK_TOKENS  # [market] credit_chunks = 1: one chunk streamed ahead of pay
LONG_PROMPT = "Count from 1 to 1000, one number per line."
LONG_TOKENS = 200  # far more than is generated before the client leaves


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMarket]:
    m = LocalMarket(
        tmp_path_factory.mktemp("gateway-load"),
        node_extra=(
            f"[market]\nchunk_tokens = {CHUNK_TOKENS}\nprice_per_1k = {PRICE_PER_1K}\n"
            "electricity_price_per_kwh = 0.0\n"
        ),
    )
    try:
        m.stand_up(HOMEOWNERS)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def gateway(market: LocalMarket) -> Iterator[GatewayProcess]:
    g = GatewayProcess(market)
    try:
        yield g
    finally:
        g.stop()


def provider_jobs(market: LocalMarket) -> dict[str, dict[str, Any]]:
    """Every node's ledger of jobs, read beside it (read-only), by job id."""
    jobs: dict[str, dict[str, Any]] = {}
    for name in HOMEOWNERS:
        path = market.node(name).data_dir / "ledger.sqlite"
        if not path.exists():
            continue
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            db.row_factory = sqlite3.Row
            for row in db.execute("select * from jobs"):
                jobs[row["job_id"]] = {**dict(row), "node": name}
    return jobs


def new_job(market: LocalMarket, before: set[str], finished: bool) -> dict[str, Any]:
    """The one job the providers recorded since ``before`` (waiting for its end)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [j for k, j in provider_jobs(market).items() if k not in before]
        assert len(new) <= 1, f"expected one new job, the providers recorded {new}"
        if new and (not finished or new[0]["finished_at"]):
            return new[0]
        time.sleep(0.1)
    raise AssertionError("no provider recorded the job")


def wait_finished(market: LocalMarket, job_id: str) -> dict[str, Any]:
    """The job's row once its provider has recorded its end (a moment after the buyer's)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = provider_jobs(market)[job_id]
        if job["finished_at"]:
            return job
        time.sleep(0.1)
    raise AssertionError(f"the provider never recorded the end of job {job_id}")


def assert_cancelled_and_paid_for_what_it_sent(job: dict[str, Any]) -> None:
    """Generation stopped early, and the buyer paid for the tokens it was sent: never
    more, and less only by what the provider streams ahead of payment."""
    assert job["status"] == "cancelled", job
    assert 0 < job["tokens"] < LONG_TOKENS, job
    paid_tokens = int(job["amount"]) * 1000 // PRICE_PER_1K
    assert job["tokens"] - CREDIT_TOKENS <= paid_tokens <= job["tokens"], job


def chat_body(stream: bool, max_tokens: int = LONG_TOKENS) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": LONG_PROMPT}],
            "max_tokens": max_tokens,
            "stream": stream,
        }
    ).encode()


def raw_post(body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def test_clients_that_leave_cancel_their_own_job_and_no_other(
    market: LocalMarket, gateway: GatewayProcess
) -> None:
    import openai

    # A bystander: a long non-streaming request in flight through both departures.
    bystander: dict[str, Any] = {}

    def ask() -> None:
        bystander["response"] = httpx.post(
            gateway.base_url + "/chat/completions",
            content=chat_body(stream=False, max_tokens=120),
            headers={"content-type": "application/json"},
            timeout=120,
        )

    before = set(provider_jobs(market))
    thread = threading.Thread(target=ask)
    thread.start()
    bystander_job = new_job(market, before, finished=False)

    # 1. A non-streaming client hangs up while its job runs. It is never written to
    # before its answer, so only the gateway's watch on the connection can notice.
    before = set(provider_jobs(market))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(raw_post(chat_body(stream=False)))
        new_job(market, before, finished=False)
        time.sleep(1.0)  # tokens flow meanwhile
    left_at = time.time()
    plain = new_job(market, before, finished=True)
    assert_cancelled_and_paid_for_what_it_sent(plain)
    assert plain["finished_at"] - left_at < 10, "the job outlived its client by far"

    # 2. An openai client closes its stream after three pieces of text.
    before = set(provider_jobs(market))
    oc = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    stream = oc.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": LONG_PROMPT}],
        max_tokens=LONG_TOKENS,
        stream=True,
    )
    deltas = 0
    for chunk in stream:
        deltas += bool(chunk.choices and chunk.choices[0].delta.content)
        if deltas == 3:
            break
    stream.close()
    streamed = new_job(market, before, finished=True)
    assert_cancelled_and_paid_for_what_it_sent(streamed)
    assert streamed["tokens"] >= 3  # at least what the client read

    # The bystander was running all along and got its whole answer.
    thread.join(timeout=120)
    response = bystander["response"]
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == 120, answer
    assert answer["hearth"]["job_id"] == bystander_job["job_id"]
    finished = wait_finished(market, bystander_job["job_id"])
    assert finished["status"] == "done" and finished["finished_at"] > plain["finished_at"]
    assert gateway.alive()


async def _many(base_url: str, n: int) -> list[tuple[int, str, Any]]:
    """``n`` chat completions at once: plain, streamed, and streams closed early (every
    fourth streamed one, after its first text). Each: (index, kind, tokens or error)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=90)

    async def one(i: int) -> tuple[int, str, Any]:
        kind = ("plain", "stream", "plain", "closed")[i % 4]
        args: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Write a short line about the number {i}."}],
            "max_tokens": 16 + i % 9,
            "temperature": 0.0,
        }
        try:
            if kind == "plain":
                done = await client.chat.completions.create(**args)
                return i, kind, done.usage.completion_tokens if done.usage else -1
            stream = await client.chat.completions.create(
                **args, stream=True, stream_options={"include_usage": True}
            )
            tokens = -1
            async with stream:
                async for chunk in stream:
                    if kind == "closed" and chunk.choices and chunk.choices[0].delta.content:
                        return i, kind, 0  # closed here, by the `async with`
                    if chunk.usage is not None:
                        tokens = chunk.usage.completion_tokens
            return i, kind, tokens
        except openai.APIError as exc:
            return i, kind, f"{type(exc).__name__}: {exc}"

    async with client:
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_32_concurrent_openai_requests_on_3_nodes_all_complete(
    market: LocalMarket, gateway: GatewayProcess
) -> None:
    results = asyncio.run(_many(gateway.base_url, 32))
    failed = {i: (kind, r) for i, kind, r in results if isinstance(r, str)}
    assert not failed, f"{len(failed)} of 32 failed: {failed}"
    for i, kind, tokens in results:
        if kind != "closed":  # greedy text may stop early, never late
            assert 1 <= tokens <= 16 + i % 9, (i, kind, tokens)
    assert gateway.alive()
    # Still the same process, and it still sells.
    response = httpx.post(
        gateway.base_url + "/chat/completions",
        content=chat_body(stream=False, max_tokens=4),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
