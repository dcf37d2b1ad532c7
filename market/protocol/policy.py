"""Bid policy: whether and at what price a provider answers an RFQ.

A policy is a pure, replaceable strategy (:class:`BidPolicy`): it sees the RFQ and a
snapshot of the provider (:class:`ProviderStatus`: models held, slots in use,
queue, power state, throughput) and returns a :class:`Quote` or a
:class:`Refusal` with a :class:`~market.protocol.messages.DeclineReason`. The
provider job machine turns those into a ``Bid`` or a ``Decline``.

The default :class:`CostPlusPolicy` prices from the operator's real cost::

    cost per token   = electricity price [units/kWh] × power draw [kW] / 3600
                       / rated throughput [tok/s, a full batch, measured at warm-up]
    price_per_1k     = max(floor, ceil(1000 × cost per token × (1 + margin)))

Throughput and time to first token are the node's measurements (its serving meter),
not constants. The price comes from the rating (stable); the live per-job speed and
time to first token go into bids, where the buyer's ranking weighs them.

A throttled node runs slower (``throttle_factor`` × throughput), so the same
formula raises its price; a draining or off node declines (``power_shed``), as
does a node whose slots and queue are full (``busy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from market.protocol.errors import LocalProtocolError
from market.protocol.messages import Award, DeclineReason, PowerState, Rfq

__all__ = ["BidPolicy", "CostPlusPolicy", "ProviderStatus", "Quote", "Refusal"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderStatus:
    """A snapshot of a provider, as the node sees itself when an RFQ arrives."""

    provider: str
    provider_address: bytes
    region: str
    power_state: PowerState
    models: frozenset[str]  # model ids held (membership only)
    active_jobs: int
    capacity: int  # jobs served at once
    queued: int = 0
    max_queue: int = 0
    tokens_per_s: float  # per job, at normal power (measured by the node)
    price_multiplier: float = 1.0  # from the power governor (throttling, tariff peaks)
    ttft_ms: float | None = None  # measured time to first token (None: not measured yet)
    # the box's tokens/s over a full batch, measured once at warm-up (None: not yet)
    rated_tokens_per_s: float | None = None
    dtype: str = ""  # the precision its engine computes in (stated in bids)

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.active_jobs < 0 or self.queued < 0 or self.max_queue < 0:
            raise LocalProtocolError("ProviderStatus counts must be >= 0")
        if not self.tokens_per_s > 0:
            raise LocalProtocolError("tokens_per_s must be > 0")
        if not self.price_multiplier >= 1.0:
            raise LocalProtocolError("price_multiplier must be >= 1")

    @property
    def free_slots(self) -> int:
        """Slots neither serving a job nor held for an open bid."""
        return max(0, self.capacity - self.active_jobs)

    @property
    def full(self) -> bool:
        """No free slot and no room in the queue."""
        return self.active_jobs >= self.capacity and self.queued >= self.max_queue


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """The terms a provider offers (becomes a ``Bid``)."""

    price_per_1k: int
    est_ttft_ms: int
    est_tokens_per_s: float
    chunk_tokens: int
    credit_chunks: int
    free_slots: int = 0  # slots still free once this bid holds its own


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why not (becomes a ``Decline``, or an ``Error`` when refusing an award)."""

    reason: DeclineReason
    detail: str = ""


class BidPolicy(Protocol):
    """Decides bids and whether to take an award."""

    def quote(self, rfq: Rfq, status: ProviderStatus) -> Quote | Refusal:
        """Answer an RFQ."""
        ...

    def admit(self, award: Award, status: ProviderStatus, *, held: bool) -> Refusal | None:
        """Take an award (``None``) or refuse it. ``held``: the bid still holds a slot
        for it (only power can refuse it then); else capacity changed since the bid."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class CostPlusPolicy:
    """Price = electricity cost of the tokens plus a margin; decline when unable."""

    electricity_per_kwh: int  # payment-token base units per kWh
    power_draw_w: float
    margin: float = 0.2
    floor_per_1k: int = 0
    chunk_tokens: int = 16
    credit_chunks: int = 1
    throttle_factor: float = 0.5
    base_ttft_ms: int = 150
    strict_region: bool = False  # decline RFQs that ask for another region

    def __post_init__(self) -> None:
        if self.electricity_per_kwh < 0 or self.power_draw_w < 0 or self.margin < 0:
            raise LocalProtocolError("cost inputs must be >= 0")
        if not 0 < self.throttle_factor <= 1:
            raise LocalProtocolError("throttle_factor must be in (0, 1]")

    def throughput(self, status: ProviderStatus) -> float:
        """Tokens per second per job at the current power state."""
        if status.power_state == "throttled":
            return status.tokens_per_s * self.throttle_factor
        return status.tokens_per_s

    def price_per_1k(self, status: ProviderStatus) -> int:
        """The cost-plus price per 1,000 tokens for this node right now.

        The box draws ``power_draw_w`` for a whole batch, so a token's share of it is
        the power over what the batch makes: the box's rated throughput (a full batch,
        measured at warm-up), slowed by throttling. The price does not follow the live
        load: a buyer's ceiling, set from offers, must still hold a moment later, and
        load already counts in the buyer's ranking through the measured speed. Before
        any rating, the per-job rate alone (``tokens_per_s``) stands in.
        """
        rated = status.rated_tokens_per_s
        if rated is not None and rated > 0:
            tps = rated * (self.throttle_factor if status.power_state == "throttled" else 1.0)
        else:
            tps = self.throughput(status)
        per_token = self.electricity_per_kwh * (self.power_draw_w / 1000.0) / 3600.0 / tps
        cost_plus = 1000.0 * per_token * (1.0 + self.margin) * status.price_multiplier
        return max(self.floor_per_1k, math.ceil(cost_plus))

    def _unable(self, model_id: str, region: str, status: ProviderStatus) -> Refusal | None:
        if model_id not in status.models:
            return Refusal(reason=DeclineReason.MODEL_NOT_HELD)
        if status.power_state in ("draining", "off"):
            return Refusal(reason=DeclineReason.POWER_SHED, detail=status.power_state)
        if self.strict_region and region and region != status.region:
            return Refusal(reason=DeclineReason.REGION, detail=status.region)
        if status.full:
            return Refusal(
                reason=DeclineReason.BUSY, detail=f"{status.active_jobs}/{status.capacity} slots"
            )
        return None

    def quote(self, rfq: Rfq, status: ProviderStatus) -> Quote | Refusal:
        refusal = self._unable(rfq.model_id, rfq.region, status)
        if refusal is not None:
            return refusal
        price = self.price_per_1k(status)
        if price > rfq.max_price_per_1k:
            return Refusal(
                reason=DeclineReason.PRICE_BELOW_FLOOR,
                detail=f"floor {price} > ceiling {rfq.max_price_per_1k}",
            )
        tps = self.throughput(status)
        base = self.base_ttft_ms if status.ttft_ms is None else status.ttft_ms
        waiting = max(0, status.active_jobs + 1 - status.capacity)
        ttft = int(base) + waiting * int(1000 * rfq.max_tokens / tps)
        return Quote(
            price_per_1k=price,
            est_ttft_ms=min(ttft, 2**32 - 1),
            est_tokens_per_s=tps,
            chunk_tokens=self.chunk_tokens,
            credit_chunks=self.credit_chunks,
            free_slots=max(0, status.free_slots - 1),
        )

    def admit(self, award: Award, status: ProviderStatus, *, held: bool) -> Refusal | None:
        if status.power_state in ("draining", "off"):
            return Refusal(reason=DeclineReason.POWER_SHED, detail=status.power_state)
        if not held and status.full:
            return Refusal(reason=DeclineReason.BUSY, detail="no free slot")
        return None
