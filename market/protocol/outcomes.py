"""How a job ended, as each side's machine reports it (``ReportOutcome``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from market.protocol.messages import DeclineReason

__all__ = ["BuyerFailure", "BuyerOutcome", "DeclineNote", "ProviderOutcome", "Segment"]


class BuyerFailure(enum.StrEnum):
    """Why a buyer's job failed (``""`` reason = completed)."""

    NO_BIDS = "no_bids"  # every round ended without an admissible bid (see declines)
    PROVIDERS_EXHAUSTED = "providers_exhausted"  # bids came, but every awardee failed
    INSUFFICIENT_DEPOSIT = "insufficient_deposit"
    CANCELLED = "cancelled"  # our own user cancelled
    DEADLINE = "deadline"  # the job's overall deadline passed
    BAD_REQUEST = "bad_request"  # every provider awarded it refused the request itself
    SATURATED = "saturated"  # every provider stayed busy past the deadline, or no queue room


@dataclass(frozen=True, slots=True, kw_only=True)
class DeclineNote:
    """One provider's reason for not bidding."""

    provider: str
    reason: DeclineReason
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """What one provider delivered for a job and what it was paid."""

    provider: str
    provider_address: bytes
    price_per_1k: int
    resume_offset: int
    tokens: int
    paid: int
    commitment: bytes | None  # verified EndOfStream commitment; None if it never ended cleanly


@dataclass(frozen=True, slots=True, kw_only=True)
class BuyerOutcome:
    """The buyer's view of a finished job."""

    job_id: bytes
    completed: bool
    reason: str  # "" when completed, else a BuyerFailure value
    detail: str
    token_ids: tuple[int, ...]
    segments: tuple[Segment, ...]
    declines: tuple[DeclineNote, ...]
    bids: int
    rounds: int
    failovers: int
    awarded_at: float | None  # `now` when the first provider accepted
    finished_at: float
    finish_reason: str = ""
    prompt_tokens: int = 0  # the prompt in the model's tokens, from the final EndOfStream
    queued_s: float = 0.0  # time spent waiting in the buyer's admission queue
    award_s: float | None = None  # submit → first accept, time queued before it not counted

    @property
    def paid(self) -> int:
        """Total paid over every provider of the job."""
        return sum(s.paid for s in self.segments)

    def why(self) -> str:
        """One line for a human: what happened, with every decline reason counted."""
        if self.completed:
            return f"completed: {len(self.token_ids)} tokens from {len(self.segments)} provider(s)"
        counts: dict[str, int] = {}
        for d in self.declines:
            counts[d.reason.value] = counts.get(d.reason.value, 0) + 1
        tail = ", ".join(f"{k}×{v}" for k, v in sorted(counts.items()))
        return f"{self.reason}: {self.detail}" + (f" (declines: {tail})" if tail else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderOutcome:
    """The provider's view of a finished job."""

    job_id: bytes
    buyer: str
    completed: bool
    reason: str  # "" when completed; e.g. "declined", "not_awarded", "cancelled", "payment_behind"
    tokens_sent: int
    paid: int
    commitment: bytes | None
