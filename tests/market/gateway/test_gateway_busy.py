"""A saturated market is a 429 with ``Retry-After``; the caller's deadline becomes the job's.

The market side is a stand-in here (the SDK's own errors, raised by a fake job), so
that each mapping is checked exactly and in milliseconds; the real market's queue and
deadline are exercised end to end in ``test_gateway_load.py`` and the SDK's tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from market.gateway import create_app
from market.gateway.request import (
    ANSWER_MARGIN_S,
    MAX_TIMEOUT_S,
    job_timeout_s,
)
from market.sdk.types import Chunk, HearthError, MarketBusyError, NoBidsError, Result

CHAT = "/v1/chat/completions"
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class FailingJob:
    """A job that fails before its first token with ``error``, as the SDK's would."""

    def __init__(self, error: HearthError) -> None:
        self.error = error
        self.cancelled = False

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        raise self.error
        yield  # (an async generator, like the SDK's JobHandle)

    @property
    def result(self) -> Result:
        raise AssertionError("a failed job has no result")

    def cancel(self) -> None:
        self.cancelled = True


class FailingBackend:
    """Records what the gateway asked for; every job fails with ``error``."""

    def __init__(self, error: HearthError) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def list_models(self) -> list[str]:
        return ["smollm2"]

    def knows_model(self, model: str) -> bool:
        return model == "smollm2"

    def generate(self, **kwargs: Any) -> FailingJob:
        self.calls.append(kwargs)
        return FailingJob(self.error)


def _client(backend: FailingBackend, **options: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(backend, **options))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_saturated_market_is_a_429_with_retry_after(stream: bool) -> None:
    busy = MarketBusyError("smollm2", "3 providers busy for 30 s; admission queue full", 2.2)
    backend = FailingBackend(busy)
    async with _client(backend) as client:
        response = await client.post(CHAT, json={**BODY, "stream": stream})
    # Streamed or not, nothing was sent before the job failed: a real status line.
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    error = response.json()["error"]
    assert error["code"] == "market_busy"
    assert "admission queue full" in error["message"] and "smollm2" in error["message"]


async def test_no_bids_is_a_503_that_names_each_decline_and_says_when_to_retry() -> None:
    backend = FailingBackend(NoBidsError("smollm2", {"12D3KooWpeerAAAAAAAA": "power_shed off"}))
    async with _client(backend) as client:
        response = await client.post(CHAT, json=BODY)
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert error["code"] == "no_bids" and "power_shed off" in error["message"]


async def test_the_openai_clients_timeout_header_becomes_the_jobs_deadline() -> None:
    backend = FailingBackend(MarketBusyError("smollm2", "busy", 1.0))
    async with _client(backend) as client:
        for headers in (
            {"x-stainless-read-timeout": "20.0"},  # what openai 3.x sends
            {"x-stainless-timeout": "20", "x-stainless-read-timeout": "600"},
            {"x-stainless-timeout": "nan"},
            {"x-stainless-timeout": "-5"},
            {},
        ):
            await client.post(CHAT, json=BODY, headers=headers)
    asked = [call["timeout_s"] for call in backend.calls]
    assert asked == [20.0 - ANSWER_MARGIN_S] * 2 + [None] * 3  # None: the client's default


async def test_for_a_stream_the_timeout_bounds_the_wait_for_the_first_token() -> None:
    """A stream's read timeout is between reads: it bounds the wait for the first token
    (queueing included), not the whole stream."""
    backend = FailingBackend(MarketBusyError("smollm2", "busy", 1.0))
    async with _client(backend) as client:
        await client.post(
            CHAT, json={**BODY, "stream": True}, headers={"x-stainless-read-timeout": "20"}
        )
    (call,) = backend.calls
    assert call["timeout_s"] is None
    assert call["first_token_timeout_s"] == 20.0 - ANSWER_MARGIN_S


async def test_the_gateways_default_deadline_serves_callers_that_state_none() -> None:
    backend = FailingBackend(MarketBusyError("smollm2", "busy", 1.0))
    async with _client(backend, default_timeout_s=42.0) as client:
        await client.post(CHAT, json=BODY)
        await client.post(CHAT, json=BODY, headers={"x-stainless-timeout": "10"})
    assert [call["timeout_s"] for call in backend.calls] == [42.0, 10 - ANSWER_MARGIN_S]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-stainless-timeout": "600"}, 600 - ANSWER_MARGIN_S),
        ({"x-stainless-timeout": "1.5"}, 0.75),  # short: half of it, never <= 0
        ({"x-stainless-timeout": "1e12"}, MAX_TIMEOUT_S - ANSWER_MARGIN_S),
        ({"x-stainless-timeout": "inf", "x-stainless-read-timeout": "30"}, 30 - ANSWER_MARGIN_S),
        ({"x-stainless-timeout": "0"}, 42.0),
        ({"x-stainless-timeout": "ten"}, 42.0),
        ({"x-stainless-timeout": "1" * 400}, 42.0),
    ],
)
def test_job_timeout_s_reads_the_header_and_ignores_bad_values(
    headers: dict[str, str], expected: float
) -> None:
    got = job_timeout_s(headers, default=42.0)
    assert math.isclose(got, expected), (headers, got)
