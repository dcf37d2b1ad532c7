"""What a buyer gets back: generation parameters, streamed chunks, the final result, errors.

These types are shared by the SDK client, the ``hearth submit`` CLI and the
OpenAI-compatible gateway, so that all three speak about a job the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from market.protocol import ChatMessage, Prompt, SamplingParams

__all__ = [
    "BadRequestError",
    "Chunk",
    "GenerationParams",
    "HearthError",
    "InsufficientFundsError",
    "JobFailedError",
    "NoBidsError",
    "ProviderShare",
    "Result",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """Sampling parameters for one job; the defaults give greedy, reproducible text."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs_top_k: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.max_tokens <= 1_000_000:
            problems.append(f"max_tokens must be in 1..1000000, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(f"temperature must be in 0..5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            problems.append("stop takes at most 4 non-empty strings")
        if not 0 <= self.logprobs_top_k <= 20:
            problems.append(f"logprobs_top_k must be in 0..20, got {self.logprobs_top_k}")
        if problems:
            raise ValueError("; ".join(problems))

    def prompt_message(
        self, job_id: bytes, messages: list[dict[str, str]] | None, prompt: str | None
    ) -> Prompt:
        """The wire :class:`~market.protocol.Prompt` that carries a job's input and these
        parameters (the one way the SDK and the gateway build it)."""
        return Prompt(
            job_id=job_id,
            messages=None
            if messages is None
            else tuple(ChatMessage(role=m["role"], content=m["content"]) for m in messages),
            prompt=prompt,
            params=SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                seed=self.seed,
                stop=self.stop,
                logprobs_top_k=self.logprobs_top_k,
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """A piece of streamed output, as it arrived from the provider serving the job."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    provider: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderShare:
    """What one provider delivered for a job and what it was paid (token base units)."""

    peer_id: str
    address: str
    tokens: int
    amount: int
    price_per_1k: int
    result_commitment: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """The final account of a job: text, token counts, cost and who was paid what."""

    job_id: str
    model_id: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cost: int
    shares: tuple[ProviderShare, ...] = field(default_factory=tuple)
    failovers: int = 0
    award_ms: float = 0.0  # the auction that placed it, queueing not counted
    ttft_ms: float = 0.0  # from the call, queueing included
    queued_ms: float = 0.0  # waiting in the admission queue for a free provider

    @property
    def provider(self) -> str:
        """The peer that delivered the last tokens (the one that finished the job)."""
        return self.shares[-1].peer_id if self.shares else ""


class HearthError(Exception):
    """Base class of every error the buyer-side API raises on purpose."""


class NoBidsError(HearthError):
    """Nobody bid: ``reasons`` maps each provider that answered to why it declined."""

    def __init__(self, model: str, reasons: dict[str, str]) -> None:
        self.model = model
        self.reasons = dict(reasons)
        if reasons:
            detail = "; ".join(f"{peer[-8:]}: {why}" for peer, why in sorted(reasons.items()))
            msg = f"no provider bid for model {model!r} ({detail})"
        else:
            msg = f"no provider bid for model {model!r}: no provider of it answered"
        super().__init__(msg)


class JobFailedError(HearthError):
    """The job started but could not be finished by any provider."""

    def __init__(self, reason: str, partial: Result | None = None) -> None:
        self.reason = reason
        self.partial = partial
        super().__init__(f"job failed: {reason}")


class MarketBusyError(HearthError):
    """Every provider of the model stayed busy until the job's deadline, or the admission
    queue was full: the market is saturated. Retry after ``retry_after_s`` seconds."""

    def __init__(self, model: str, detail: str, retry_after_s: float) -> None:
        self.model = model
        self.detail = detail
        self.retry_after_s = retry_after_s
        super().__init__(
            f"market busy for model {model!r}: {detail}; retry after {retry_after_s:.0f} s"
        )


class BadRequestError(HearthError):
    """The providers refused the request itself (for example a prompt longer than their
    context): retrying it unchanged will not help."""


class InsufficientFundsError(HearthError):
    """The buyer's deposit cannot cover the job's worst-case cost."""
