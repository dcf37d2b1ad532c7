"""Invariants the simulator checks after every event, and what a violation looks like.

The checker watches the actions the machines emit (it sees exactly what a driver
sees) and the shared wallets and voucher books. Each check touches only the job or
channel the event concerned, so the cost per event is O(1).

1. **One active provider per job** — the buyer accepts tokens only from the provider
   it awarded last, and each provider's tokens continue exactly where the previous
   provider's stopped (no gap, no overlap: offsets are contiguous).
2. **Never pay for more than was delivered** — for every (job, provider), what the
   buyer signed never exceeds ``cost_of(tokens delivered, agreed price)``.
3. **Every delivered chunk paid within the credit bound** — on the provider side, sent
   but unpaid chunks never exceed the award's ``credit_chunks``; at the end of a job
   every provider was paid exactly ``cost_of`` its own tokens.
4. **Funds conserved** — per buyer, ``deposit = spent + reserved + available``, the
   channels' cumulative amounts sum to ``spent``; no provider's book credits more on a
   channel than the buyer signed on it.
5. **Every job ends** — completed, or failed with a reason; a failure for want of
   providers while a live provider of that model had a free slot counts as *lost*.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from market.protocol.messages import cost_of

__all__ = ["InvariantChecker", "Violation"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant, with where and when."""

    invariant: str
    detail: str
    time: float
    event_index: int


@dataclass(slots=True)
class _JobWatch:
    awarded: str = ""  # provider of the last award
    price: int = 0
    delivered: int = 0  # tokens over all providers
    tokens: dict[str, int] = field(default_factory=dict)  # provider → tokens delivered
    paid: dict[str, int] = field(default_factory=dict)  # provider → amount signed


class InvariantChecker:
    """Collects violations; the simulation stops at the first one."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self._jobs: dict[bytes, _JobWatch] = {}
        self.now = 0.0
        self.event_index = 0

    def _fail(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, detail, self.now, self.event_index))

    # -- buyer-side observations (called by the simulation as it executes actions)

    def job_started(self, job_id: bytes) -> None:
        self._jobs[job_id] = _JobWatch()

    def awarded(self, job_id: bytes, provider: str, price: int, resume_offset: int) -> None:
        w = self._jobs[job_id]
        if resume_offset != w.delivered:
            self._fail(
                "one_active_provider",
                f"job {job_id.hex()} awarded at offset {resume_offset}, delivered {w.delivered}",
            )
        w.awarded = provider
        w.price = price

    def delivered(self, job_id: bytes, provider: str, offset: int, n: int) -> None:
        w = self._jobs[job_id]
        if provider != w.awarded:
            self._fail(
                "one_active_provider",
                f"job {job_id.hex()} took tokens from {provider}, awarded {w.awarded}",
            )
        if offset != w.delivered:
            self._fail(
                "one_active_provider",
                f"job {job_id.hex()} tokens at offset {offset}, expected {w.delivered}",
            )
        w.delivered += n
        w.tokens[provider] = w.tokens.get(provider, 0) + n

    def paid(self, job_id: bytes, provider: str, amount: int) -> None:
        w = self._jobs[job_id]
        total = w.paid.get(provider, 0) + amount
        w.paid[provider] = total
        owed = cost_of(w.tokens.get(provider, 0), w.price)
        if total > owed:
            self._fail(
                "pay_at_most_delivered",
                f"job {job_id.hex()} paid {provider} {total} for tokens worth {owed}",
            )

    def job_finished(
        self,
        job_id: bytes,
        completed: bool,
        reason: str,
        segments: list[tuple[str, int, int, int]],
        lost: bool,
    ) -> None:
        """``segments``: (provider, price, tokens, paid) from the buyer's outcome."""
        w = self._jobs.pop(job_id)
        if not completed and not reason:
            self._fail("job_ends", f"job {job_id.hex()} failed without a reason")
        if lost:
            self._fail(
                "job_ends", f"job {job_id.hex()} failed ({reason}) while a provider was free"
            )
        for provider, price, tokens, paid in segments:
            if paid != cost_of(tokens, price):
                self._fail(
                    "paid_within_credit",
                    f"job {job_id.hex()}: {provider} delivered {tokens} at {price}/1k, paid {paid}",
                )
            if tokens != w.tokens.get(provider, 0) or paid != w.paid.get(provider, 0):
                self._fail(
                    "pay_at_most_delivered",
                    f"job {job_id.hex()}: outcome disagrees with observed tokens/payments",
                )

    # -- provider side

    def provider_credit(self, job_id: bytes, unpaid_chunks: int, credit: int) -> None:
        if unpaid_chunks > credit:
            self._fail(
                "paid_within_credit",
                f"job {job_id.hex()}: provider has {unpaid_chunks} unpaid chunks, credit {credit}",
            )

    # -- funds

    def wallet(
        self, name: str, deposit: int, spent: int, available: int, channels_sum: int
    ) -> None:
        # reserved = deposit - spent - available must be >= 0, and nothing negative
        if available < 0 or spent + available > deposit or channels_sum != spent:
            self._fail(
                "funds_conserved",
                f"buyer {name}: deposit {deposit}, spent {spent}, available {available}, "
                f"channels {channels_sum}",
            )

    def channel(self, buyer: str, provider: str, signed: int, credited: int) -> None:
        if credited > signed:
            self._fail(
                "funds_conserved",
                f"provider {provider} credits {credited} from {buyer}, who signed {signed}",
            )

    def unfinished(self, job_id: bytes) -> None:
        self._fail("job_ends", f"job {job_id.hex()} never ended")

    @property
    def open_jobs(self) -> list[bytes]:
        return list(self._jobs)
