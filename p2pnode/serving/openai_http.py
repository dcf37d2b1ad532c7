"""Front an OpenAI-compatible server (vLLM, SGLang, llama.cpp server, or Hearth's own).

:class:`OpenAIHTTPBackend` forwards a :class:`GenerationRequest` over HTTP (httpx,
streaming server-sent events) and yields the same :class:`GenerationChunk` objects as
the local engine, so the node does not care which one serves. ``messages`` go to
``/v1/chat/completions``; ``prompt``/``prompt_token_ids`` go to ``/v1/completions``.
Logprobs come back when the server supports them; servers that return token ids
(``token_ids`` in a choice, as Hearth's server and vLLM with ``return_token_ids`` do)
fill ``token_ids``, others leave it empty and report ids as -1.

:func:`openai_app` is the reverse: a minimal OpenAI-compatible Starlette app over an
:class:`~p2pnode.serving.engine.Engine` (completions and chat, streaming, logprobs).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from p2pnode.serving.api import (
    BadRequestError,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
)

__all__ = ["OpenAIHTTPBackend", "openai_app"]


class OpenAIHTTPBackend:
    """A :class:`~p2pnode.serving.api.ServingBackend` that calls an OpenAI-compatible URL."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    @property
    def model_id(self) -> str:
        return self.model

    async def aclose(self) -> None:
        await self._client.aclose()

    def pause(self, request_id: str) -> bool:
        """A remote server cannot be paused: False (the node holds the chunks back)."""
        return False

    def resume(self, request_id: str) -> bool:
        return False

    def _body(self, r: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "stream": True,
        }
        if r.top_k:
            body["top_k"] = r.top_k
        if r.seed is not None:
            body["seed"] = r.seed
        if r.stop:
            body["stop"] = list(r.stop)
        if r.ignore_eos:
            body["ignore_eos"] = True
        if r.messages is not None:
            body["messages"] = list(r.messages)
            if r.logprobs or r.top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = r.top_logprobs
            return "/v1/chat/completions", body
        body["prompt"] = list(r.prompt_token_ids) if r.prompt_token_ids is not None else r.prompt
        if r.logprobs or r.top_logprobs:
            body["logprobs"] = max(r.top_logprobs, 0) if r.top_logprobs else 0
        return "/v1/completions", body

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream chunks from the remote server."""
        request.validate()
        if request.resume_token_ids:
            raise BadRequestError("resume_token_ids is not supported by the openai-http backend")
        path, body = self._body(request)
        rid = request.request_id or uuid.uuid4().hex
        async with self._client.stream("POST", path, json=body) as resp:
            if resp.status_code >= 400:
                detail = (await resp.aread()).decode(errors="replace")[:500]
                if 400 <= resp.status_code < 500:
                    raise BadRequestError(
                        f"server refused the request ({resp.status_code}): {detail}"
                    )
                raise EngineError(f"server error {resp.status_code}: {detail}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = _parse_choice(rid, json.loads(data))
                if chunk is not None:
                    yield chunk


def _parse_choice(rid: str, event: dict[str, Any]) -> GenerationChunk | None:
    choices = event.get("choices") or []
    if not choices:
        return None
    c = choices[0]
    ids = tuple(int(t) for t in c.get("token_ids") or ())
    lps: list[TokenLogprob] = []
    lp = c.get("logprobs")
    if isinstance(lp, dict) and "token_logprobs" in lp:  # completions format
        tops = lp.get("top_logprobs") or [None] * len(lp["token_logprobs"])
        for j, v in enumerate(lp["token_logprobs"]):
            tid = ids[j] if j < len(ids) else -1
            top = tuple((-1, float(x)) for x in (tops[j] or {}).values())
            lps.append(TokenLogprob(tid, float(v), top))
    elif isinstance(lp, dict) and "content" in lp:  # chat format
        for j, item in enumerate(lp["content"] or []):
            tid = ids[j] if j < len(ids) else -1
            top = tuple((-1, float(t["logprob"])) for t in item.get("top_logprobs") or [])
            lps.append(TokenLogprob(tid, float(item["logprob"]), top))
    text = c.get("text")
    if text is None:
        text = (c.get("delta") or {}).get("content") or ""
    usage = event.get("usage") or {}
    return GenerationChunk(
        request_id=rid,
        token_ids=ids,
        text=text,
        logprobs=tuple(lps),
        finish_reason=c.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
    )


def openai_app(engine: Any) -> Any:
    """A Starlette app serving ``engine`` at ``/v1/completions`` and ``/v1/chat/completions``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    async def handle(request: Request) -> Any:
        chat = request.url.path.endswith("/chat/completions")
        try:
            body = await request.json()
            lp = body.get("logprobs")
            top = int(body.get("top_logprobs", 0) if chat else (lp or 0))
            prompt = body.get("prompt")
            req = GenerationRequest(
                messages=body.get("messages") if chat else None,
                prompt=prompt if isinstance(prompt, str) and not chat else None,
                prompt_token_ids=prompt if isinstance(prompt, list) and not chat else None,
                model=body.get("model"),
                max_tokens=int(body.get("max_tokens", 256)),
                temperature=float(body.get("temperature", 1.0)),
                top_p=float(body.get("top_p", 1.0)),
                top_k=int(body.get("top_k", 0)),
                stop=[body["stop"]]
                if isinstance(body.get("stop"), str)
                else list(body.get("stop") or []),
                seed=body.get("seed"),
                logprobs=lp is not None and lp is not False,
                top_logprobs=top,
                ignore_eos=bool(body.get("ignore_eos", False)),
            )
            stream = engine.generate(req)
            first = await stream.__anext__()
        except (BadRequestError, ValueError, TypeError, KeyError) as e:
            return JSONResponse(
                {"error": {"message": str(e), "type": "invalid_request_error"}}, status_code=400
            )
        cid = f"cmpl-{uuid.uuid4().hex}"
        tok = engine.tokenizer

        def event(ch: GenerationChunk) -> str:
            choice: dict[str, Any] = {
                "index": 0,
                "finish_reason": ch.finish_reason,
                "token_ids": list(ch.token_ids),
            }
            if chat:
                choice["delta"] = {"content": ch.text}
                if req.logprobs:
                    choice["logprobs"] = {
                        "content": [
                            {
                                "token": tok.token_text(x.token_id),
                                "logprob": x.logprob,
                                "top_logprobs": [
                                    {"token": tok.token_text(i), "logprob": v} for i, v in x.top
                                ],
                            }
                            for x in ch.logprobs
                        ]
                    }
            else:
                choice["text"] = ch.text
                if req.logprobs:
                    choice["logprobs"] = {
                        "tokens": [tok.token_text(x.token_id) for x in ch.logprobs],
                        "token_logprobs": [x.logprob for x in ch.logprobs],
                        "top_logprobs": [
                            {tok.token_text(i): v for i, v in x.top} for x in ch.logprobs
                        ],
                    }
            ev: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": engine.model_id,
                "choices": [choice],
            }
            if ch.finish_reason is not None:
                ev["usage"] = {
                    "prompt_tokens": ch.prompt_tokens,
                    "completion_tokens": ch.completion_tokens,
                }
            return f"data: {json.dumps(ev)}\n\n"

        async def body_iter() -> AsyncIterator[str]:
            yield event(first)
            if first.finish_reason is None:
                async for ch in stream:
                    yield event(ch)
            yield "data: [DONE]\n\n"

        return StreamingResponse(body_iter(), media_type="text/event-stream")

    async def models(_request: Request) -> Any:
        return JSONResponse(
            {"object": "list", "data": [{"id": engine.model_id, "object": "model"}]}
        )

    return Starlette(
        routes=[
            Route("/v1/completions", handle, methods=["POST"]),
            Route("/v1/chat/completions", handle, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
        ]
    )
