"""Requests, streamed chunks and errors shared by every serving backend.

The local :class:`~p2pnode.serving.engine.Engine` and the
:class:`~p2pnode.serving.openai_http.OpenAIHTTPBackend` accept the same
:class:`GenerationRequest` and yield the same :class:`GenerationChunk` objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "BadRequestError",
    "EngineClosedError",
    "EngineError",
    "FinishReason",
    "GenerationChunk",
    "GenerationRequest",
    "Rescore",
    "ServingBackend",
    "TokenLogprob",
]

FinishReason = Literal["stop", "length", "cancelled", "error"]


class EngineError(RuntimeError):
    """The engine failed while running a request (our fault, not the caller's)."""


class EngineClosedError(EngineError):
    """The engine is not running (not started yet, or shut down)."""


class BadRequestError(ValueError):
    """The request is invalid (the caller's fault); nothing was run, others unaffected."""


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationRequest:
    """One generation job. Exactly one of ``messages``, ``prompt``, ``prompt_token_ids``.

    ``resume_token_ids`` are completion tokens already delivered (by a provider that
    failed mid-stream): the engine treats them as generated, continues after them, and
    counts them against ``max_tokens``. Sampling continues as if uninterrupted: the
    sampler's noise depends only on (seed, position in the completion, token id), and
    resumed tokens count as positions (:mod:`p2pnode.serving.sampler`).

    ``logprobs`` is always reported for the chosen token when True; ``top_logprobs``
    adds that many alternatives. Logprobs are the raw model log-softmax, before
    temperature, top-k or top-p touch the logits.
    """

    messages: Sequence[dict[str, str]] | None = None
    prompt: str | None = None
    prompt_token_ids: Sequence[int] | None = None
    resume_token_ids: Sequence[int] = ()
    model: str | None = None
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: Sequence[str] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False
    request_id: str | None = None

    def validate(self) -> None:
        """Raise :class:`BadRequestError` for a malformed request."""
        given = sum(x is not None for x in (self.messages, self.prompt, self.prompt_token_ids))
        if given != 1:
            raise BadRequestError("give exactly one of messages, prompt, prompt_token_ids")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise BadRequestError("max_tokens must be an integer")
        if self.max_tokens < 0:
            raise BadRequestError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise BadRequestError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise BadRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise BadRequestError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.top_logprobs <= 20:
            raise BadRequestError(f"top_logprobs must be in [0, 20], got {self.top_logprobs}")
        if isinstance(self.stop, str):
            raise BadRequestError("stop must be a list of strings")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise BadRequestError("stop strings must be non-empty strings")
        if self.messages is not None:
            for m in self.messages:
                if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                    raise BadRequestError("each message needs a string 'content'")
                if not isinstance(m.get("role"), str):
                    raise BadRequestError("each message needs a string 'role'")


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Raw log-probability of the chosen token and the top alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationChunk:
    """What one engine step produced for one request (only the new part).

    The last chunk of a request has ``finish_reason`` set; ``prompt_tokens`` and
    ``completion_tokens`` are filled in on it.
    """

    request_id: str
    token_ids: tuple[int, ...] = ()
    text: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Rescore:
    """A verifier's teacher-forced pass over a claimed completion (``Engine.rescore``).

    Plain numbers, one entry per completion position ``i`` (resumed tokens included),
    with the same fields as :class:`market.protocol.verify.Rescore`, the rule's input
    (``verify.Rescore(**dataclasses.asdict(r))``):

    * ``logprobs[i]``: raw logprob (log-softmax of the raw logits, before temperature or
      masks) of the claimed ``token_ids[i]``;
    * ``top_ids[i]`` / ``top_logprobs[i]``: this engine's top-n at ``i``, raw;
    * ``choice[i]``: the token :mod:`~p2pnode.serving.sampler` yields from this
      engine's logits with the job's parameters and seed;
    * ``margin[i]``: how far the claimed token is from being that choice, in raw
      logit nats (0 when it is; greedy: the logit gap below the top);
    * ``outside_k[i]`` (nats) / ``outside_p[i]`` (probability mass): how far the
      claimed token lies outside this engine's top-k / top-p set (0 inside).
    """

    model_id: str
    dtype: str
    sampler: str
    prompt_tokens: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_ids: tuple[tuple[int, ...], ...]
    top_logprobs: tuple[tuple[float, ...], ...]
    choice: tuple[int, ...]
    margin: tuple[float, ...]
    outside_k: tuple[float, ...]
    outside_p: tuple[float, ...]


class ServingBackend(Protocol):
    """What the node calls: the local engine or an OpenAI-compatible server."""

    @property
    def model_id(self) -> str: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...

    def pause(self, request_id: str) -> bool:
        """Stop computing a running request until :meth:`resume`; False if it cannot."""
        ...

    def resume(self, request_id: str) -> bool: ...
