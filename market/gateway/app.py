"""The ASGI app of ``hearth gateway``: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Requests are validated at the boundary (:mod:`market.gateway.request`: the body bounded
while it is read, its JSON's depth measured before it is parsed, every field checked
against the market's limits) and refused with OpenAI-style error bodies
(``{"error": {"message", "type", "param", "code"}}``); a refused request changes nothing.

Each request is one market job, and the job lives exactly as long as someone waits
for it:

* **The caller's deadline is the job's.** The official OpenAI clients state how long
  they wait (:func:`~market.gateway.request.job_timeout_s`); the job, its wait in the
  buyer's admission queue included, gets that long (else the gateway's default,
  else the buyer client's).
* **A saturated market says so.** Every provider busy until the deadline is
  ``429`` with ``Retry-After`` (the SDK's :class:`MarketBusyError`); nobody bidding is
  ``503`` with ``Retry-After``; each error body names its cause.
* **A caller that leaves ends its job, and only its job.** While a job runs the
  gateway watches the connection (``http.disconnect``): a client that hangs up or
  closes its stream, before or after the first token, cancels the job at once
  (``JobStream.cancel``), so the provider stops and is paid for what it delivered.
* **Streaming answers start with the first token.** Server-sent events, ending with
  ``data: [DONE]`` like OpenAI's, are opened only once the job has its provider, so an
  error before any text is still a real HTTP status and not a 200 with an error inside.

Who served a job and how long its auction took travel in ``x-hearth-*`` headers and in
the ``hearth`` field of the answer (see :func:`_hearth_fields`).
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from market.gateway.request import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    BadRequest,
    ClientGone,
    CompletionRequest,
    job_timeout_s,
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
    MarketBusyError,
    NoBidsError,
    Result,
)

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "NO_BIDS_RETRY_AFTER_S",
    "Backend",
    "JobStream",
    "create_app",
    "json_depth",
]

logger = logging.getLogger(__name__)

NO_BIDS_RETRY_AFTER_S = 2
"""``Retry-After`` of a 503 "no provider bid": about how often the buyer re-reads offers."""

_T = TypeVar("_T")


class JobStream(Protocol):
    """One running job: iterate for chunks; ``result`` holds the account once exhausted."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    @property
    def result(self) -> Result: ...

    def cancel(self) -> None:
        """Stop the job now; its providers are paid for what they already delivered."""
        ...


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
        timeout_s: float | None,
        first_token_timeout_s: float | None = None,
    ) -> JobStream: ...


def _error(
    status: int,
    message: str,
    kind: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _hearth_fields(result: Result) -> dict[str, Any]:
    """Extra, non-OpenAI fields: what the job cost, who served it, and how fast.

    ``award_ms`` is the auction that placed the job (its wait in the admission queue,
    ``queued_ms``, not counted); ``ttft_ms`` runs from the request to the first token,
    queueing included. ``shares`` says what each provider delivered and was paid.
    """
    return {
        "job_id": result.job_id,
        "cost": str(result.cost),
        "providers": [s.peer_id for s in result.shares],
        "shares": [
            {
                "provider": s.peer_id,
                "tokens": s.tokens,
                "amount": str(s.amount),
                "price_per_1k": str(s.price_per_1k),
            }
            for s in result.shares
        ],
        "failovers": result.failovers,
        "award_ms": round(result.award_ms, 1),
        "queued_ms": round(result.queued_ms, 1),
        "ttft_ms": round(result.ttft_ms, 1),
    }


def _hearth_headers(result: Result) -> dict[str, str]:
    """The same figures as headers (``x-hearth-provider``: who delivered the last tokens)."""
    return {
        "x-hearth-provider": result.provider,
        "x-hearth-award-ms": f"{result.award_ms:.1f}",
        "x-hearth-queued-ms": f"{result.queued_ms:.1f}",
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


def create_app(backend: Backend, *, default_timeout_s: float | None = None) -> Starlette:
    """Build the gateway's ASGI app over a market ``backend``.

    ``default_timeout_s``: a job's deadline, queueing included, when the caller's
    client states none (see :func:`~market.gateway.request.job_timeout_s`; ``None``:
    the backend's own default).
    """

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
        if not backend.knows_model(req.model):
            return _error(
                404,
                f"The model '{req.model}' is not offered by any provider on the network",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        # The caller's timeout bounds a plain request whole; for a stream it is a read
        # timeout, so it bounds the wait for the first token (then the gaps, which the
        # provider's heartbeats keep short).
        deadline = job_timeout_s(request.headers, default_timeout_s)
        job = _HeldJob(
            backend.generate(
                model=req.model,
                messages=req.messages,
                prompt=req.prompt,
                params=req.params,
                timeout_s=None if req.stream else deadline,
                first_token_timeout_s=deadline if req.stream else None,
            )
        )
        answer = _Answer(req, chat)
        handed_over = False
        try:
            if req.stream:
                # Wait for the first text (or the error) before answering: the status
                # line then says how the job went, and the headers who serves it.
                first = await _while_connected(request, job, job.first)
                if isinstance(first, _Gone):
                    return _nobody_listens()
                handed_over = True
                return _EventStream(answer.events(job, first), job, first)
            chunks = await _while_connected(request, job, job.rest)
            if isinstance(chunks, _Gone):
                return _nobody_listens()
            return answer.whole(chunks, job.result)
        except HearthError as exc:
            return _market_error(exc)
        except Exception as exc:  # a bug here ends this request, named, and nothing else
            logger.exception("request failed inside the gateway")
            return _internal_error(exc)
        finally:
            if not handed_over:
                await job.close()

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


# ----------------------------------------------------------------- one job's life


class _Gone:
    """The marker :func:`_while_connected` returns when the client hung up."""


def _nobody_listens() -> Response:
    return Response(status_code=499)  # (nginx's "client closed request": never read)


class _HeldJob:
    """A job as the gateway holds it: its chunk iterator, and one way to end it.

    :meth:`close` cancels the job in the market (the provider stops and is paid for
    what it delivered; a job still queued or in its auction just ends) and closes the
    iterator. It runs exactly once, whichever way the request ends, and is harmless
    on a job that already finished.
    """

    def __init__(self, job: JobStream) -> None:
        self.job = job
        self.chunks = aiter(job)
        self._closed = False

    @property
    def result(self) -> Result:
        return self.job.result

    async def first(self) -> Chunk | None:
        """The first chunk (``None``: the job ended without any text)."""
        return await anext(self.chunks, None)

    async def rest(self) -> list[Chunk]:
        """Every remaining chunk, once the job has ended."""
        return [chunk async for chunk in self.chunks]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.job.cancel()
        aclose = getattr(self.chunks, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True):  # even in a request being torn down
                await aclose()


async def _while_connected(
    request: Request, job: _HeldJob, work: Callable[[], Awaitable[_T]]
) -> _T | _Gone:
    """``await work()``, unless the client hangs up first: then the job is cancelled.

    The HTTP server goes on reading a connection while its request is answered, and
    tells the app of a hang-up as an ``http.disconnect`` message; nothing else would
    notice a non-streaming caller that left (it is never written to before its
    answer). A watcher task waits for that message beside ``work``. Errors of
    ``work`` propagate as they are.
    """
    gone = False
    done: list[_T] = []
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            job.job.cancel()  # the market hears at once; the iterator closes after
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        try:
            done.append(await work())
        except Exception as exc:  # re-raised below, outside the nursery (no group)
            failed.append(exc)
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if gone or not done:
        return _Gone()
    return done[0]


class _EventStream(StreamingResponse):
    """Server-sent events that end their job however the response ends.

    Starlette stops iterating when the client disconnects (or the server shuts
    down); the job is then closed here, even if not one event was sent.
    """

    def __init__(self, events: AsyncIterator[bytes], job: _HeldJob, first: Chunk | None) -> None:
        headers = {"cache-control": "no-cache"}
        if first is not None:
            headers["x-hearth-provider"] = first.provider
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._job.close()


# ----------------------------------------------------------------- answers


def _market_error(exc: HearthError) -> Response:
    """The HTTP answer to a job the market could not do: the status says whose fault,
    the message says why (the SDK's words), ``Retry-After`` says when to try again."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, MarketBusyError):
        wait = str(max(1, math.ceil(exc.retry_after_s)))
        return _error(
            429, message, "rate_limit_exceeded", None, "market_busy", {"retry-after": wait}
        )
    if isinstance(exc, NoBidsError):
        wait = str(NO_BIDS_RETRY_AFTER_S)
        return _error(503, message, "service_unavailable", None, "no_bids", {"retry-after": wait})
    if isinstance(exc, BadRequestError):
        return _error(400, message, "invalid_request_error", None, "bad_request")
    if isinstance(exc, InsufficientFundsError):
        return _error(402, message, "insufficient_quota", None, "insufficient_funds")
    if isinstance(exc, JobFailedError):
        return _error(502, message, "api_error", None, "job_failed")
    return _error(500, message, "api_error", None, type(exc).__name__)


def _internal_error(exc: Exception) -> Response:
    message = f"gateway internal error: {type(exc).__name__}: {exc}"
    return _error(500, message, "api_error", None, "internal_error")


def _error_event(exc: Exception) -> bytes:
    """A failure after the stream began: one error event (the status line is long sent)."""
    if isinstance(exc, HearthError):
        body = {"message": str(exc) or type(exc).__name__, "type": "api_error"}
    else:
        body = {"message": f"gateway internal error: {type(exc).__name__}: {exc}"}
        body["type"] = "api_error"
    err = {"error": {**body, "param": None, "code": None}}
    return f"data: {json.dumps(err)}\n\n".encode()


class _Answer:
    """How one request wants its answer: chat or text completion, whole or streamed."""

    def __init__(self, req: CompletionRequest, chat: bool) -> None:
        self.req = req
        self.chat = chat
        self.ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def whole(self, chunks: list[Chunk], result: Result) -> Response:
        chat = self.chat
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": result.finish_reason,
            "logprobs": _logprobs(chunks, chat) if self.req.want_logprobs else None,
        }
        if chat:
            choice["message"] = {"role": "assistant", "content": result.text}
        else:
            choice["text"] = result.text
        body = {
            "id": self.ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": self.created,
            "model": self.req.model,
            "choices": [choice],
            "usage": _usage(result),
            "hearth": _hearth_fields(result),
        }
        return JSONResponse(body, headers=_hearth_headers(result))

    def _event(self, choice: dict[str, Any] | None, **extra: Any) -> bytes:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        body = {"id": self.ident, "object": kind, "created": self.created, "model": self.req.model}
        body["choices"] = [choice] if choice is not None else []
        body.update(extra)
        return f"data: {json.dumps(body)}\n\n".encode()

    def _delta(self, chunk: Chunk) -> bytes:
        lp = _logprobs([chunk], self.chat) if self.req.want_logprobs else None
        if self.chat:
            choice = {"index": 0, "delta": {"content": chunk.text}, "logprobs": lp}
        else:
            choice = {"index": 0, "text": chunk.text, "logprobs": lp}
        choice["finish_reason"] = None
        return self._event(choice)

    async def events(self, job: _HeldJob, first: Chunk | None) -> AsyncIterator[bytes]:
        """The SSE body: the role, ``first``, every later chunk, the end, ``[DONE]``.

        (No clean-up here: :class:`_EventStream` closes the job, even when this
        generator is abandoned at a ``yield`` by a client that left.)
        """
        if self.chat:
            role = {"role": "assistant", "content": ""}
            yield self._event({"index": 0, "delta": role, "finish_reason": None})
        try:
            if first is not None:
                yield self._delta(first)
                async for chunk in job.chunks:
                    yield self._delta(chunk)
            result = job.result
        except Exception as exc:
            if not isinstance(exc, HearthError):
                logger.exception("stream failed inside the gateway")
            yield _error_event(exc)
            yield b"data: [DONE]\n\n"
            return
        last: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason}
        if self.chat:
            last["delta"] = {}
        else:
            last["text"] = ""
        yield self._event(last, hearth=_hearth_fields(result))
        if self.req.include_usage:
            yield self._event(None, usage=_usage(result))
        yield b"data: [DONE]\n\n"
