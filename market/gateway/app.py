"""The ASGI app of ``hearth gateway``: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Requests are validated at the boundary (:mod:`market.gateway.request`: the body bounded
while it is read, its JSON's depth measured before it is parsed, every field checked
against the market's limits) and refused with OpenAI-style error bodies
(``{"error": {"message", "type", "param", "code"}}``); a refused request changes nothing.
Streaming answers are server-sent events ending with ``data: [DONE]``, like OpenAI's; a
client that hangs up mid-stream ends its own job (the market is told at once) and
nothing else.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from market.gateway.request import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    BadRequest,
    ClientGone,
    json_depth,
    parse_json,
    parse_request,
    read_body,
)
from market.sdk.types import (
    BadRequestError,
    Chunk,
    GenerationParams,
    HearthError,
    InsufficientFundsError,
    JobFailedError,
    NoBidsError,
    Result,
)

__all__ = ["MAX_BODY_BYTES", "MAX_JSON_DEPTH", "Backend", "JobStream", "create_app", "json_depth"]


class JobStream(Protocol):
    """One running job: iterate for chunks; ``result`` holds the account once exhausted."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    @property
    def result(self) -> Result: ...


class Backend(Protocol):
    """What the gateway needs from the market (the SDK ``Client`` provides it)."""

    async def list_models(self) -> list[str]: ...

    def knows_model(self, model: str) -> bool:
        """True when some provider offers ``model`` (a name, a short name or an id)."""
        ...

    def generate(
        self,
        *,
        model: str,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        params: GenerationParams,
    ) -> JobStream: ...


def _error(status: int, message: str, kind: str, param: str | None, code: str | None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _hearth_fields(result: Result) -> dict[str, Any]:
    """Extra, non-OpenAI fields: what the job cost and who served it."""
    return {
        "job_id": result.job_id,
        "cost": str(result.cost),
        "providers": [s.peer_id for s in result.shares],
        "failovers": result.failovers,
    }


def _logprobs(chunks: list[Chunk], chat: bool) -> dict[str, Any] | None:
    if not chunks:
        return None
    if chat:
        return {
            "content": [
                {"token": str(tid), "logprob": lp, "bytes": None, "top_logprobs": []}
                for c in chunks
                for tid, lp in zip(c.token_ids, c.logprobs, strict=True)
            ]
        }
    return {
        "tokens": [str(t) for c in chunks for t in c.token_ids],
        "token_logprobs": [lp for c in chunks for lp in c.logprobs],
    }


def create_app(backend: Backend) -> Starlette:
    """Build the gateway's ASGI app over a market ``backend``."""

    async def list_models(request: Request) -> Response:
        models = await backend.list_models()
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "hearth"} for m in models]
        return JSONResponse({"object": "list", "data": data})

    async def run(request: Request, chat: bool) -> Response:
        try:
            req = parse_request(parse_json(await read_body(request)), chat)
        except BadRequest as exc:
            return _error(exc.status, exc.message, "invalid_request_error", exc.param, None)
        except ClientGone:
            return Response(status_code=400)  # nobody is left to read it
        model = req.model
        if not backend.knows_model(model):
            return _error(
                404,
                f"The model '{model}' is not offered by any provider on the network",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        job = backend.generate(
            model=model, messages=req.messages, prompt=req.prompt, params=req.params
        )
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if req.stream:
            return StreamingResponse(
                _sse(job, ident, created, model, chat, req.want_logprobs, req.include_usage),
                media_type="text/event-stream",
            )
        chunks: list[Chunk] = []
        try:
            async with _iterate(job) as job_chunks:
                async for chunk in job_chunks:
                    chunks.append(chunk)
        except HearthError as exc:
            return _market_error(exc)
        result = job.result
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": result.finish_reason,
            "logprobs": _logprobs(chunks, chat) if req.want_logprobs else None,
        }
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        body = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": _usage(result),
            "hearth": _hearth_fields(result),
        }
        return JSONResponse(body)

    async def chat_completions(request: Request) -> Response:
        return await run(request, chat=True)

    async def completions(request: Request) -> Response:
        return await run(request, chat=False)

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.url.path}", "invalid_request_error", None, None)

    async def bad_method(request: Request, exc: Exception) -> Response:
        return _error(
            405, f"method {request.method} not allowed", "invalid_request_error", None, None
        )

    routes = [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: bad_method})


@asynccontextmanager
async def _iterate(job: JobStream) -> AsyncIterator[AsyncIterator[Chunk]]:
    """Iterate ``job`` and close its iterator on the way out, however the way out is.

    A client that hangs up mid-stream closes the response (an exception or a
    cancellation at a ``yield``); closing the job's iterator at once tells the market
    the job is over, so the provider stops and is paid for what it delivered.
    """
    chunks = aiter(job)
    try:
        yield chunks
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _market_error(exc: HearthError) -> Response:
    if isinstance(exc, NoBidsError):
        return _error(503, str(exc), "service_unavailable", None, "no_bids")
    if isinstance(exc, BadRequestError):
        return _error(400, str(exc), "invalid_request_error", None, "bad_request")
    if isinstance(exc, InsufficientFundsError):
        return _error(402, str(exc), "insufficient_quota", None, "insufficient_funds")
    if isinstance(exc, JobFailedError):
        return _error(502, str(exc), "api_error", None, "job_failed")
    return _error(500, str(exc), "api_error", None, None)


async def _sse(
    job: JobStream,
    ident: str,
    created: int,
    model: str,
    chat: bool,
    want_logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any] | None, **extra: Any) -> bytes:
        body = {"id": ident, "object": kind, "created": created, "model": model}
        body["choices"] = [choice] if choice is not None else []
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n".encode()

    if chat:
        yield event(
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        )
    try:
        async with _iterate(job) as job_chunks:
            async for chunk in job_chunks:
                lp = _logprobs([chunk], chat) if want_logprobs else None
                if chat:
                    choice = {"index": 0, "delta": {"content": chunk.text}, "logprobs": lp}
                else:
                    choice = {"index": 0, "text": chunk.text, "logprobs": lp}
                choice["finish_reason"] = None
                yield event(choice)
    except HearthError as exc:
        err = {"error": {"message": str(exc), "type": "api_error", "param": None, "code": None}}
        yield f"data: {json.dumps(err)}\n\n".encode()
        yield b"data: [DONE]\n\n"
        return
    result = job.result
    last: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason}
    if chat:
        last["delta"] = {}
    else:
        last["text"] = ""
    yield event(last, hearth=_hearth_fields(result))
    if include_usage:
        yield event(None, usage=_usage(result))
    yield b"data: [DONE]\n\n"
