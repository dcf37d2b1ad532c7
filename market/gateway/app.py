"""The ASGI app of ``hearth gateway``: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Requests are validated at the boundary and refused with OpenAI-style error bodies
(``{"error": {"message", "type", "param", "code"}}``); a refused request changes nothing.
Streaming answers are server-sent events ending with ``data: [DONE]``, like OpenAI's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from market.sdk.types import (
    Chunk,
    GenerationParams,
    HearthError,
    InsufficientFundsError,
    JobFailedError,
    NoBidsError,
    Result,
)

__all__ = ["Backend", "JobStream", "create_app"]

MAX_BODY_BYTES = 1 << 20


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


class BadRequest(Exception):
    """A request the gateway refuses, with the OpenAI error fields it answers with."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status


def _error(status: int, message: str, kind: str, param: str | None, code: str | None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


async def _read_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"request body over {MAX_BODY_BYTES} bytes", status=413)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def _opt(data: Mapping[str, Any], key: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"'{key}' has the wrong type (got a boolean)", key)
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BadRequest(f"'{key}' must be {names}, got {type(value).__name__}", key)
    return value


def _params(data: Mapping[str, Any]) -> GenerationParams:
    max_tokens = _opt(data, "max_completion_tokens", (int,), None)
    if max_tokens is None:
        max_tokens = _opt(data, "max_tokens", (int,), 128)
    stop = data.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise BadRequest("'stop' must be a string or a list of strings", "stop")
    n = _opt(data, "n", (int,), 1)
    if n != 1:
        raise BadRequest("only n=1 is supported", "n")
    top_logprobs = _opt(data, "top_logprobs", (int,), 0)
    if isinstance(data.get("logprobs"), int) and not isinstance(data.get("logprobs"), bool):
        top_logprobs = data["logprobs"]  # the legacy completions API gives a count here
    try:
        return GenerationParams(
            max_tokens=max_tokens,
            temperature=float(_opt(data, "temperature", (int, float), 0.0)),
            top_p=float(_opt(data, "top_p", (int, float), 1.0)),
            top_k=_opt(data, "top_k", (int,), 0),
            stop=stops,
            seed=_opt(data, "seed", (int,), None),
            logprobs_top_k=top_logprobs,
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _messages(data: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in {"system", "user", "assistant"}:
            raise BadRequest(
                f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}]"
            )
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(p, str) for p in parts):
                raise BadRequest(f"messages[{i}].content: only text parts are supported")
            content = "".join(parts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}]")
        out.append({"role": m["role"], "content": content})
    return out


def _model(data: Mapping[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required", "model")
    return model


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
            data = await _read_json(request)
            model = _model(data)
            params = _params(data)
            if chat:
                messages, prompt = _messages(data), None
            else:
                prompt = data.get("prompt")
                if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                    prompt = prompt[0]
                if not isinstance(prompt, str) or not prompt:
                    raise BadRequest("'prompt' must be a non-empty string", "prompt")
                messages = None
            stream = _opt(data, "stream", (bool,), False)
            want_logprobs = bool(data.get("logprobs"))
            options = _opt(data, "stream_options", (dict,), {})
        except BadRequest as exc:
            return _error(exc.status, exc.message, "invalid_request_error", exc.param, None)
        if not backend.knows_model(model):
            return _error(
                404,
                f"The model '{model}' is not offered by any provider on the network",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        job = backend.generate(model=model, messages=messages, prompt=prompt, params=params)
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        if stream:
            include_usage = bool(options.get("include_usage"))
            return StreamingResponse(
                _sse(job, ident, created, model, chat, want_logprobs, include_usage),
                media_type="text/event-stream",
            )
        chunks: list[Chunk] = []
        try:
            async for chunk in job:
                chunks.append(chunk)
        except HearthError as exc:
            return _market_error(exc)
        result = job.result
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": result.finish_reason,
            "logprobs": _logprobs(chunks, chat) if want_logprobs else None,
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


def _market_error(exc: HearthError) -> Response:
    if isinstance(exc, NoBidsError):
        return _error(503, str(exc), "service_unavailable", None, "no_bids")
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
        async for chunk in job:
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
    last.update({"delta": {}} if chat else {"text": ""})
    yield event(last, hearth=_hearth_fields(result))
    if include_usage:
        yield event(None, usage=_usage(result))
    yield b"data: [DONE]\n\n"
