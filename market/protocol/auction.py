"""Auction scoring: how a buyer ranks the bids it collected for one RFQ.

Scoring is a pure, replaceable strategy: anything with a ``score(bid, ctx)`` method
(see :class:`BidScorer`) can be handed to the buyer machine. Lower scores win. The
default :class:`WeightedScorer` asks first *when will the job be done*, then what it
costs and whom it trusts:

* **expected completion time** — ``T = TTFT + max_tokens / tokens_per_s``, from the
  bid's measured claims (the node measures them on its engine, at the batch this job
  would join), corrected by what this buyer saw of the provider in earlier jobs
  (:class:`PeerView`: observed ÷ claimed, so a provider that over-states its speed is
  judged at the speed it delivers, while the claim still carries today's load), plus
  the measured round trip to it. It enters as ``ln T``, so being 10 % slower costs the
  same whether the job takes one second or a minute;
* **price** — the bid's ``price_per_1k`` relative to the RFQ's ceiling (0..1);
* **reputation** — from an injected :class:`ReputationSource` (1 = spotless): it moves
  only on what the provider did (failures, protocol violations);
* **region** — a penalty when the provider is not in the RFQ's region;
* **congestion** — a little for each slot the provider has *not* left free, so equal
  providers fill evenly rather than one after the other;
* **exploration** — a bonus that shrinks as this buyer gives a provider more of its
  recent jobs, so a new or idle provider gets a share and equal providers share the
  work (an upper-confidence bonus: what was tried little is known little);
* **jitter** — a per-job draw in ``[0, 1)`` from a hash of the job id and the provider
  id, scaled small: near-equal bids win in turn, not by whose id sorts first.

Everything is a pure function of the inputs: no clock, no global random. The same
bids, RFQ and views give the same ranking; another job id reshuffles near ties.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Bid, Rfq

__all__ = [
    "BidContext",
    "BidScorer",
    "PeerView",
    "PeerViews",
    "ReputationSource",
    "StaticReputation",
    "WeightedScorer",
    "rank_bids",
    "tiebreak",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerView:
    """What a buyer knows of one provider from the jobs it ran with it.

    The defaults are the view of a stranger: its claims taken at face value, no
    round trip known, never used. ``speed_ratio`` and ``ttft_ratio`` are observed ÷
    claimed (geometric means, recent jobs weighing most): 0.5 means it delivered half
    the tokens/s it claimed, or answered in half the time. ``in_flight`` is how many of
    this buyer's jobs it is serving right now. ``recent_jobs`` is how many
    of this buyer's recent jobs it was given (a decayed count).
    """

    reputation: float = 1.0
    speed_ratio: float = 1.0
    ttft_ratio: float = 1.0
    rtt_ms: float | None = None
    recent_jobs: float = 0.0
    in_flight: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.reputation <= 1.0:
            raise LocalProtocolError(f"reputation must be within 0..1, got {self.reputation}")
        if not (self.speed_ratio > 0.0 and self.ttft_ratio > 0.0):
            raise LocalProtocolError("observed/claimed ratios must be > 0")
        if self.recent_jobs < 0.0 or (self.rtt_ms is not None and self.rtt_ms < 0.0):
            raise LocalProtocolError("recent_jobs and rtt_ms must be >= 0")
        if self.in_flight < 0:
            raise LocalProtocolError("in_flight must be >= 0")


class ReputationSource(Protocol):
    """Where a buyer's view of a provider's track record comes from."""

    def reputation(self, provider: str) -> float:
        """0 (never again) .. 1 (spotless); unknown peers get a neutral prior."""
        ...


@runtime_checkable
class PeerViews(Protocol):
    """A :class:`ReputationSource` that also remembers speed, round trip and use.

    :func:`rank_bids` asks it for a :class:`PeerView` of each bidder; a source that
    only knows reputation is seen as a stranger with that reputation.
    """

    def reputation(self, provider: str) -> float: ...

    def view(self, provider: str) -> PeerView: ...


@dataclass(frozen=True, slots=True)
class StaticReputation:
    """A fixed table with a default for unknown peers (tests, simulator)."""

    table: Mapping[str, float] = field(default_factory=dict)
    default: float = 0.8
    views: Mapping[str, PeerView] = field(default_factory=dict)  # beyond reputation

    def reputation(self, provider: str) -> float:
        return self.table.get(provider, self.default)

    def view(self, provider: str) -> PeerView:
        """``views[provider]`` (or a stranger's) with the table's reputation."""
        rep = min(1.0, max(0.0, self.reputation(provider)))
        return dataclasses.replace(self.views.get(provider, PeerView()), reputation=rep)


@dataclass(frozen=True, slots=True, kw_only=True)
class BidContext:
    """What a scorer may look at beside the bid itself."""

    rfq: Rfq
    region: str  # the bidder's region as its Offer states it ("" = unknown)
    reputation: float
    peer: PeerView = field(default_factory=PeerView)  # the buyer's own record of the bidder
    tiebreak: float = 0.0  # this job's draw for this bidder, in [0, 1): see tiebreak()


class BidScorer(Protocol):
    """A ranking strategy: lower is better."""

    def score(self, bid: Bid, ctx: BidContext) -> float: ...


def tiebreak(job_id: bytes, provider: str) -> float:
    """A draw in ``[0, 1)`` fixed by the job and the provider: fair, and reproducible."""
    digest = hashlib.blake2b(job_id + provider.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightedScorer:
    """``w_time·ln T + w_price·price + w_rep·(1 − rep) + w_region·off_region
    + w_congestion/(1 + free_slots) + w_load·in_flight − w_explore/√(1 + recent_jobs)
    + w_jitter·draw``.

    ``T`` (seconds) = expected time to first token (claimed × observed ratio, plus
    the round trip) + ``max_tokens`` / expected tokens/s (claimed × observed ratio).
    A bid that states no speed (``est_tokens_per_s`` 0, an old node) is taken at
    ``unknown_tokens_per_s``. Weights are in the units of ``ln T``. ``w_explore`` 1.0:
    a never-used provider wins against a well-used one (8 recent jobs: bonus 0.33)
    that claims to be up to ~2× faster, so one whose warm-up measured it slow on a
    busy moment is still tried, and the buyer's own observations (the speed ratios)
    then judge it; among equal providers the least used recently is preferred, so
    they share the work.
    """

    w_time: float = 1.0
    w_price: float = 1.0
    w_reputation: float = 1.0
    w_region: float = 0.25
    w_congestion: float = 0.2
    w_explore: float = 1.0
    # each of our own jobs already running there: it shares that box with them, and the
    # provider's measured figures lag (least outstanding requests, as load balancers do)
    w_load: float = 0.5
    w_jitter: float = 0.02
    unknown_tokens_per_s: float = 5.0
    min_seconds: float = 1e-3  # floor under T, so ln T stays finite

    def __post_init__(self) -> None:
        weights = (
            self.w_time,
            self.w_price,
            self.w_reputation,
            self.w_region,
            self.w_congestion,
            self.w_explore,
            self.w_load,
            self.w_jitter,
        )
        if any(w < 0.0 for w in weights):
            raise LocalProtocolError("scorer weights must be >= 0")
        if not (self.unknown_tokens_per_s > 0.0 and self.min_seconds > 0.0):
            raise LocalProtocolError("unknown_tokens_per_s and min_seconds must be > 0")

    def expected_ttft_s(self, bid: Bid, peer: PeerView) -> float:
        """When the first token should arrive: the claim, as this provider keeps it."""
        rtt = peer.rtt_ms or 0.0
        return (bid.est_ttft_ms + rtt) * peer.ttft_ratio / 1000.0

    def expected_tokens_per_s(self, bid: Bid, peer: PeerView) -> float:
        """The speed this job should get: the claim, as this provider keeps it."""
        claimed = bid.est_tokens_per_s if bid.est_tokens_per_s > 0 else self.unknown_tokens_per_s
        return claimed * peer.speed_ratio

    def completion_s(self, bid: Bid, ctx: BidContext) -> float:
        """Expected seconds from award to the last of ``max_tokens`` tokens."""
        ttft = self.expected_ttft_s(bid, ctx.peer)
        decode = ctx.rfq.max_tokens / self.expected_tokens_per_s(bid, ctx.peer)
        return max(self.min_seconds, ttft + decode)

    def score(self, bid: Bid, ctx: BidContext) -> float:
        ceiling = max(ctx.rfq.max_price_per_1k, 1)
        off_region = 1.0 if ctx.rfq.region and ctx.region != ctx.rfq.region else 0.0
        return (
            self.w_time * math.log(self.completion_s(bid, ctx))
            + self.w_price * bid.price_per_1k / ceiling
            + self.w_reputation * (1.0 - ctx.reputation)
            + self.w_region * off_region
            + self.w_congestion / (1.0 + bid.free_slots)
            + self.w_load * ctx.peer.in_flight
            - self.w_explore / math.sqrt(1.0 + ctx.peer.recent_jobs)
            + self.w_jitter * ctx.tiebreak
        )


def _view(source: ReputationSource, provider: str) -> PeerView:
    if isinstance(source, PeerViews):
        return source.view(provider)
    return PeerView(reputation=min(1.0, max(0.0, source.reputation(provider))))


def rank_bids(
    bids: Iterable[tuple[Bid, str]],
    rfq: Rfq,
    scorer: BidScorer,
    reputation: ReputationSource,
) -> list[Bid]:
    """Admissible bids (right job, price within the ceiling), best first.

    ``bids`` are ``(bid, bidder_region)`` pairs. Equal scores fall to the job's draw
    (:func:`tiebreak`), then to the provider id.
    """
    scored: list[tuple[float, float, str, Bid]] = []
    for bid, region in bids:
        if bid.job_id != rfq.job_id:
            raise LocalProtocolError("rank_bids given a bid for another job")
        if bid.price_per_1k > rfq.max_price_per_1k:
            continue
        peer = _view(reputation, bid.provider)
        draw = tiebreak(rfq.job_id, bid.provider)
        ctx = BidContext(
            rfq=rfq, region=region, reputation=peer.reputation, peer=peer, tiebreak=draw
        )
        scored.append((scorer.score(bid, ctx), draw, bid.provider, bid))
    scored.sort(key=lambda t: (t[0], t[1], t[2]))
    return [b for _, _, _, b in scored]
