"""Bad HTTP bodies get OpenAI-style errors and never reach the market."""

from __future__ import annotations

import httpx
import pytest

from market.gateway import create_app
from market.sdk.types import GenerationParams


class RefusingBackend:
    """A backend that fails the test if the gateway ever forwards a bad request."""

    def __init__(self) -> None:
        self.calls = 0

    async def list_models(self) -> list[str]:
        return ["smollm2"]

    def knows_model(self, model: str) -> bool:
        return model == "smollm2"

    def generate(self, **kwargs: object) -> object:
        self.calls += 1
        raise AssertionError(f"a refused request reached the market: {kwargs}")


@pytest.fixture
def backend() -> RefusingBackend:
    return RefusingBackend()


@pytest.fixture
def client(backend: RefusingBackend) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(backend))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None),
        (
            "/v1/chat/completions",
            b'{"messages": [{"role": "user", "content": "hi"}]}',
            400,
            "model",
        ),
        ("/v1/chat/completions", b'{"model": "smollm2", "messages": []}', 400, "messages"),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "robot", "content": "x"}]}',
            400,
            "messages[0]",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": 5}]}',
            400,
            "messages[0]",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}',
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}',
            400,
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "temperature": true}',
            400,
            "temperature",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "n": 3}',
            400,
            "n",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], "stop": [1]}',
            400,
            "stop",
        ),
        ("/v1/completions", b'{"model": "smollm2"}', 400, "prompt"),
        ("/v1/completions", b'{"model": "smollm2", "prompt": ""}', 400, "prompt"),
        ("/v1/completions", b'{"model": "smollm2", "prompt": "x", "stream": "yes"}', 400, "stream"),
    ],
)
async def test_bad_bodies_are_refused(
    client: httpx.AsyncClient,
    backend: RefusingBackend,
    path: str,
    body: bytes,
    status: int,
    param: str | None,
) -> None:
    response = await client.post(path, content=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert backend.calls == 0


async def test_unknown_model_is_404(client: httpx.AsyncClient, backend: RefusingBackend) -> None:
    body = {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert backend.calls == 0


async def test_oversize_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/completions", content=b"x" * ((1 << 20) + 1))
    assert response.status_code == 413


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/nothing")).status_code == 404
    assert (await client.get("/v1/chat/completions")).status_code == 405
    listing = (await client.get("/v1/models")).json()
    assert [m["id"] for m in listing["data"]] == ["smollm2"]


def test_params_validate_themselves() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        GenerationParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationParams(top_p=0.0)
