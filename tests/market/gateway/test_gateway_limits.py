"""Oversized and deep input is refused at the gateway's boundary, with the limit named.

Everything here is the caller's fault, so each answer is a 4xx that says which limit
was crossed, the body is bounded while it is read (never read whole first), and the
market never sees the request.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from market.gateway import create_app
from market.gateway.app import MAX_BODY_BYTES, MAX_JSON_DEPTH, json_depth
from tests.market.gateway.test_gateway_validation import RefusingBackend

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def backend() -> RefusingBackend:
    return RefusingBackend()


@pytest.fixture
def client(backend: RefusingBackend) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(backend))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


def _chat(**extra: object) -> dict[str, object]:
    return {"model": "smollm2", "messages": USER, **extra}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_chat(messages=[{"role": ["user"], "content": "x"}]), "messages[0]"),
        (_chat(messages=[{"role": {"a": 1}, "content": "x"}]), "messages[0]"),
        (_chat(messages=[{"role": "user", "content": [1, {"text": "a"}]}]), "messages[0]"),
        (_chat(stream_options={"include_usage": [[]]}), "include_usage"),
    ],
)
async def test_wrong_types_found_by_the_fuzzer_are_400s(
    client: httpx.AsyncClient, backend: RefusingBackend, body: dict[str, object], param: str
) -> None:
    response = await client.post(CHAT, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert backend.calls == 0


@pytest.mark.parametrize(
    ("path", "body", "param", "limit"),
    [
        # The market carries a prompt in one message of at most MAX_MESSAGE bytes.
        ("/v1/completions", {"model": "smollm2", "prompt": "x" * 1_000_000}, "prompt", "982016"),
        (CHAT, _chat(messages=[{"role": "user", "content": "é" * 500_000}]), "messages", "982016"),
        (CHAT, _chat(messages=USER * 5000), "messages", "4096"),
        (CHAT, _chat(max_tokens=2_000_000), "max_tokens", "1000000"),
        (CHAT, _chat(max_completion_tokens=10**30), "max_completion_tokens", "1000000"),
        (CHAT, _chat(max_tokens=0), "max_tokens", "1000000"),
        (CHAT, _chat(seed=2**64), "seed", str(2**64 - 1)),
        (CHAT, _chat(seed=-1), "seed", str(2**64 - 1)),
        (CHAT, _chat(top_k=10**6), "top_k", "100000"),
        (CHAT, _chat(stop=["x" * 300]), "stop", "256"),
        (CHAT, _chat(stop=["a", "b", "c", "d", "e"]), "stop", "4"),
        (CHAT, _chat(temperature=10**400), "temperature", "5"),
        (CHAT, _chat(top_logprobs=50), "top_logprobs", "20"),
        (CHAT, _chat(model="m" * 200), "model", "128"),
    ],
)
async def test_oversized_inputs_get_a_400_naming_the_limit(
    client: httpx.AsyncClient,
    backend: RefusingBackend,
    path: str,
    body: dict[str, object],
    param: str,
    limit: str,
) -> None:
    response = await client.post(path, content=json.dumps(body, ensure_ascii=False).encode())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert limit in error["message"].replace(",", ""), error["message"]
    assert backend.calls == 0


async def _trickle(total: int, counter: list[int], piece: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``total`` bytes of body, counting in ``counter[0]`` how much the app pulled."""
    while counter[0] < total:
        counter[0] += piece
        yield b" " * piece


async def test_a_declared_huge_body_is_refused_before_any_of_it_is_read(
    client: httpx.AsyncClient, backend: RefusingBackend
) -> None:
    pulled = [0]
    response = await client.post(
        CHAT,
        content=_trickle(256 << 20, pulled),
        headers={"content-length": str(256 << 20)},
    )
    assert response.status_code == 413
    assert str(MAX_BODY_BYTES) in response.json()["error"]["message"]
    assert pulled[0] <= 64 * 1024  # refused on the header, not after reading
    assert backend.calls == 0


async def test_a_chunked_body_is_cut_off_at_the_limit(
    client: httpx.AsyncClient, backend: RefusingBackend
) -> None:
    pulled = [0]
    response = await client.post(CHAT, content=_trickle(16 << 20, pulled))  # no length
    assert response.status_code == 413
    assert pulled[0] <= MAX_BODY_BYTES + 64 * 1024  # counted while streaming
    assert backend.calls == 0


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000])
async def test_nesting_deeper_than_the_limit_is_refused_before_parsing(
    client: httpx.AsyncClient, backend: RefusingBackend, depth: int
) -> None:
    body = b'{"model": "smollm2", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    response = await client.post(CHAT, content=body)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "nest" in message and str(MAX_JSON_DEPTH) in message
    assert backend.calls == 0


async def test_a_non_utf8_body_is_refused(client: httpx.AsyncClient) -> None:
    body = json.dumps(_chat()).encode("utf-16")
    response = await client.post(CHAT, content=body)
    assert response.status_code == 400
    assert "UTF-8" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'["[[[[", "\\"[[[[", "\\\\", [[]]]', 3),  # brackets and escapes inside strings
        (b'"[[[[', 0),  # an unterminated string runs to the end
        (b'"\\', 0),  # ... even one ending in a lone backslash
        (b"[" * 100_000, 100_000),
        (b"[]" * 1000, 1),
        (b"", 0),
    ],
)
def test_json_depth_reads_strings_and_escapes(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth


def test_json_depth_is_linear_on_unterminated_escaped_quotes() -> None:
    # A regex that retried each quote as a string start would take minutes here.
    text = b'"' + b'\\"' * 400_000 + b"[[["
    assert json_depth(text) == 0
    assert json_depth(b'["' + b'\\"' * 400_000 + b'", [[[]]]]') == 4


def test_the_gateway_checks_the_markets_own_limits() -> None:
    """The limits named in 400s are the wire's: at the limit a job's messages build."""
    from market.gateway import request as r
    from market.protocol import ChatMessage, LocalProtocolError, Prompt, SamplingParams
    from market.sdk.types import GenerationParams

    one = ChatMessage(role="user", content="x")
    Prompt(job_id=bytes(16), messages=(one,) * r.MAX_MESSAGES)
    with pytest.raises(LocalProtocolError):
        Prompt(job_id=bytes(16), messages=(one,) * (r.MAX_MESSAGES + 1))
    SamplingParams(
        temperature=r.MAX_TEMPERATURE,
        top_k=r.MAX_TOP_K,
        seed=r.MAX_SEED,
        stop=("x" * r.MAX_STOP_CHARS,) * r.MAX_STOPS,
        logprobs_top_k=r.MAX_TOP_LOGPROBS,
    )
    for over in (
        {"top_k": r.MAX_TOP_K + 1},
        {"seed": r.MAX_SEED + 1},
        {"stop": ("x" * (r.MAX_STOP_CHARS + 1),)},
        {"logprobs_top_k": r.MAX_TOP_LOGPROBS + 1},
    ):
        with pytest.raises(LocalProtocolError):
            SamplingParams(**over)  # type: ignore[arg-type]
    GenerationParams(max_tokens=r.MAX_TOKENS, temperature=r.MAX_TEMPERATURE)
    with pytest.raises(ValueError):
        GenerationParams(max_tokens=r.MAX_TOKENS + 1)
    with pytest.raises(ValueError):
        GenerationParams(stop=("x",) * (r.MAX_STOPS + 1))


def test_the_gateway_process_parses_with_pythons_recursion_limit() -> None:
    """web3's imports raise the limit to 100,000, where deep JSON kills the process."""
    script = """
import json, sys
from market.sdk.connect import load_buyer  # web3, eth-account: py_ecc raises the limit
from market.gateway import restore_recursion_limit
raised = sys.getrecursionlimit()
restore_recursion_limit()
import py_ecc.optimized_bn128, web3.middleware  # later imports do not raise it again
try:
    json.loads("[" * 100_000 + "]" * 100_000)
except RecursionError:
    print(raised, sys.getrecursionlimit(), "RecursionError")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr  # -11: the C decoder overflowed the stack
    assert done.stdout.split() == ["100000", "1000", "RecursionError"]
