"""Auction scoring: how a buyer ranks the bids it collected for one RFQ.

Scoring is a pure, replaceable strategy: anything with a ``score(bid, ctx)`` method
(see :class:`BidScorer`) can be handed to the buyer machine. Lower scores win. The
default :class:`WeightedScorer` blends four things a buyer cares about:

* **price** — the bid's ``price_per_1k`` relative to the RFQ's ceiling (0..1);
* **time to first token** — ``est_ttft_ms`` relative to a reference (``ttft_ref_ms``);
* **reputation** — from an injected :class:`ReputationSource` (1 = spotless); a
  peer's score goes down when it misbehaves, fails, or goes silent;
* **region** — a penalty when the provider is not in the RFQ's region.

Ties break on the provider id, so the ranking is a pure function of its inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Bid, Rfq

__all__ = [
    "BidContext",
    "BidScorer",
    "ReputationSource",
    "StaticReputation",
    "WeightedScorer",
    "rank_bids",
]


class ReputationSource(Protocol):
    """Where a buyer's view of a provider's track record comes from."""

    def reputation(self, provider: str) -> float:
        """0 (never again) .. 1 (spotless); unknown peers get a neutral prior."""
        ...


@dataclass(frozen=True, slots=True)
class StaticReputation:
    """A fixed table with a default for unknown peers (tests, simulator)."""

    table: Mapping[str, float] = field(default_factory=dict)
    default: float = 0.8

    def reputation(self, provider: str) -> float:
        return self.table.get(provider, self.default)


@dataclass(frozen=True, slots=True, kw_only=True)
class BidContext:
    """What a scorer may look at beside the bid itself."""

    rfq: Rfq
    region: str  # the bidder's region as its Offer states it ("" = unknown)
    reputation: float


class BidScorer(Protocol):
    """A ranking strategy: lower is better."""

    def score(self, bid: Bid, ctx: BidContext) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightedScorer:
    """``w_price·price + w_ttft·ttft + w_rep·(1 − reputation) + w_region·off_region``."""

    w_price: float = 1.0
    w_ttft: float = 0.5
    w_reputation: float = 1.0
    w_region: float = 0.25
    ttft_ref_ms: float = 1000.0

    def score(self, bid: Bid, ctx: BidContext) -> float:
        ceiling = max(ctx.rfq.max_price_per_1k, 1)
        price = bid.price_per_1k / ceiling
        ttft = bid.est_ttft_ms / self.ttft_ref_ms
        off_region = 1.0 if ctx.rfq.region and ctx.region != ctx.rfq.region else 0.0
        return (
            self.w_price * price
            + self.w_ttft * ttft
            + self.w_reputation * (1.0 - ctx.reputation)
            + self.w_region * off_region
        )


def rank_bids(
    bids: Iterable[tuple[Bid, str]],
    rfq: Rfq,
    scorer: BidScorer,
    reputation: ReputationSource,
) -> list[Bid]:
    """Admissible bids (right job, price within the ceiling), best first.

    ``bids`` are ``(bid, bidder_region)`` pairs. Ties break on the provider id.
    """
    scored: list[tuple[float, str, Bid]] = []
    for bid, region in bids:
        if bid.job_id != rfq.job_id:
            raise LocalProtocolError("rank_bids given a bid for another job")
        if bid.price_per_1k > rfq.max_price_per_1k:
            continue
        ctx = BidContext(rfq=rfq, region=region, reputation=reputation.reputation(bid.provider))
        scored.append((scorer.score(bid, ctx), bid.provider, bid))
    scored.sort(key=lambda t: (t[0], t[1]))
    return [b for _, _, b in scored]
