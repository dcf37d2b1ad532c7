"""The buyer's memory of providers: what each one did in the jobs this buyer ran with it.

The auction (:mod:`market.protocol.auction`) ranks bids by expected completion time,
price and trust. Bids carry the provider's own measured figures; this module keeps
the buyer's side of the story, per provider, from the segments it ran:

* **failures** — of the segments that ended by the provider's doing, how many failed
  (decayed, about the last ten count), shrunk towards a small prior failure rate, so a
  stranger starts at ``1 − prior_failure`` (0.95), a reliable provider climbs towards
  1 and one failure in few jobs costs a lot;
* **penalties** — protocol violations the job machines score (``ScorePeer`` with a
  negative delta), fading as the buyer runs more jobs, so nobody is banned for good;
* **speed** — observed ÷ claimed tokens/s and time to first token (geometric means,
  recent segments weigh most). The scorer multiplies a new bid's claims by them: a
  provider that over-states is judged at what it delivers, and the claim still tells
  today's load;
* **round trip** — a decayed mean of measured RTTs;
* **use** — how many of the buyer's recent segments the provider served (decayed):
  the scorer's exploration bonus shrinks with it, so a new or idle provider gets a
  share and equal providers share the work.

Reputation moves only on what a provider did. A segment the buyer ended itself (its
caller cancelled, it raced itself, it handed the job on) is observed with ``ok=None``:
its speed counts, nothing else. Positive ``ScorePeer`` deltas are ignored: a success
is what :meth:`Reputation.observe` records, once.

Memory is bounded: at most ``max_peers`` providers are remembered, the least recently
seen forgotten first (a forgotten provider is a stranger again). No clock: time is
the number of segments observed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from market.protocol import Bid
from market.protocol.auction import PeerView

__all__ = ["ProviderRecord", "Reputation"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRecord:
    """What this buyer saw of one provider (for status pages and logs)."""

    reputation: float
    segments: float  # decayed count of segments with an outcome
    failures: float  # decayed count of those that failed
    ttft_s: float | None  # observed time to first token (decayed mean)
    tokens_per_s: float | None  # observed decode speed (decayed mean)
    rtt_s: float | None
    speed_ratio: float  # observed ÷ claimed tokens/s
    ttft_ratio: float  # observed ÷ claimed time to first token
    last_failure: str


@dataclass(slots=True)
class _Peer:
    segments: float = 0.0
    failures: float = 0.0
    log_speed: float = 0.0
    speed_n: int = 0
    log_ttft: float = 0.0
    ttft_n: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    rtt_s: float | None = None
    penalty: float = 0.0
    penalty_at: int = 0
    uses: float = 0.0
    uses_at: int = 0
    last_failure: str = ""


#: How many jobs' worth of weight the provider's own claims keep against the first
#: observations of it (the observed/claimed ratios start shrunk towards 1).
_PRIOR_JOBS = 2


def _mean(old: float | None, new: float, weight: float) -> float:
    return new if old is None else old + weight * (new - old)


class Reputation:
    """Per-provider statistics from this buyer's own jobs; see the module docstring.

    It implements :class:`market.protocol.auction.ReputationSource` and
    :class:`~market.protocol.auction.PeerViews`. The SDK client calls
    :meth:`observe` at the end of every provider segment, :meth:`observe_rtt` when it
    measures a round trip, :meth:`adjust` for the machines' ``ScorePeer`` actions and
    :meth:`note_failure` for transport failures.
    """

    def __init__(
        self,
        *,
        max_peers: int = 1024,
        prior_failure: float = 0.05,
        prior_weight: float = 2.0,
        memory: float = 0.9,
        speed_weight: float = 0.25,
        penalty_fade: float = 0.97,
        use_fade: float = 0.98,
    ) -> None:
        if max_peers < 1:
            raise ValueError(f"max_peers must be >= 1, got {max_peers}")
        if not 0.0 <= prior_failure < 1.0 or prior_weight <= 0.0:
            raise ValueError("need 0 <= prior_failure < 1 and prior_weight > 0")
        for name, v in (
            ("memory", memory),
            ("speed_weight", speed_weight),
            ("penalty_fade", penalty_fade),
            ("use_fade", use_fade),
        ):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        self.max_peers = max_peers
        self.prior_failure = prior_failure
        self.prior_weight = prior_weight
        self.memory = memory  # per segment of that provider: how much of the past stays
        self.speed_weight = speed_weight  # the newest segment's weight in the speed means
        self.penalty_fade = penalty_fade  # per segment observed (any provider)
        self.use_fade = use_fade  # per segment observed (any provider)
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        # our jobs each provider serves right now (bounded by our open jobs)
        self._in_flight: dict[str, int] = {}
        self._clock = 0  # segments observed

    # ------------------------------------------------------------------ bookkeeping
    def _peer(self, provider: str) -> _Peer:
        rec = self._peers.get(provider)
        if rec is None:
            rec = self._peers[provider] = _Peer(penalty_at=self._clock, uses_at=self._clock)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(provider)
        return rec

    def _penalty(self, rec: _Peer) -> float:
        return rec.penalty * self.penalty_fade ** (self._clock - rec.penalty_at)

    def _uses(self, rec: _Peer) -> float:
        return rec.uses * self.use_fade ** (self._clock - rec.uses_at)

    def _reputation(self, rec: _Peer) -> float:
        fail = (rec.failures + self.prior_weight * self.prior_failure) / (
            rec.segments + self.prior_weight
        )
        return min(1.0, max(0.0, 1.0 - fail - self._penalty(rec)))

    def __len__(self) -> int:
        """How many providers are remembered."""
        return len(self._peers)

    # ------------------------------------------------------------------ what the auction asks
    def reputation(self, provider: str) -> float:
        """0 (never again) .. 1 (spotless); a stranger gets ``1 − prior_failure``."""
        rec = self._peers.get(provider)
        return 1.0 - self.prior_failure if rec is None else self._reputation(rec)

    def view(self, provider: str) -> PeerView:
        """The auction's view of ``provider`` (a stranger's when it is not remembered)."""
        rec = self._peers.get(provider)
        if rec is None:
            return PeerView(
                reputation=1.0 - self.prior_failure, in_flight=self._in_flight.get(provider, 0)
            )
        return PeerView(
            reputation=self._reputation(rec),
            speed_ratio=math.exp(rec.log_speed),
            ttft_ratio=math.exp(rec.log_ttft),
            rtt_ms=None if rec.rtt_s is None else 1000.0 * rec.rtt_s,
            recent_jobs=self._uses(rec),
            in_flight=self._in_flight.get(provider, 0),
        )

    def record(self, provider: str) -> ProviderRecord | None:
        """Everything remembered of ``provider`` (None: a stranger)."""
        rec = self._peers.get(provider)
        if rec is None:
            return None
        return ProviderRecord(
            reputation=self._reputation(rec),
            segments=rec.segments,
            failures=rec.failures,
            ttft_s=rec.ttft_s,
            tokens_per_s=rec.tokens_per_s,
            rtt_s=rec.rtt_s,
            speed_ratio=math.exp(rec.log_speed),
            ttft_ratio=math.exp(rec.log_ttft),
            last_failure=rec.last_failure,
        )

    # ------------------------------------------------------------------ what the client tells
    def observe(
        self,
        provider: str,
        *,
        ok: bool | None,
        tokens: int = 0,
        seconds: float = 0.0,
        ttft_s: float | None = None,
        first_tokens: int = 1,
        bid: Bid | None = None,
    ) -> None:
        """One provider segment of a job has ended.

        ``ok``: True when the provider finished its part (end of stream), False when it
        failed (went silent, dropped the stream, broke the protocol, refused an award
        its bid held a slot for), None when the buyer ended the segment itself (its
        caller cancelled, its own race, a hand-off): then only the speed counts.
        ``tokens``: tokens received in the segment; ``seconds``: from sending the
        award to the last token; ``ttft_s``: from the award to the first chunk (None:
        none came), which held ``first_tokens`` tokens; ``bid``: the bid that won the
        award, whose claims the observed speed is compared with.
        """
        if tokens < 0 or seconds < 0.0 or first_tokens < 1:
            raise ValueError("tokens and seconds must be >= 0, first_tokens >= 1")
        self._clock += 1  # every remembered use and penalty is one segment older
        rec = self._peer(provider)
        rec.uses = self._uses(rec) + 1.0
        rec.uses_at = self._clock
        if ok is not None:
            rec.segments = rec.segments * self.memory + 1.0
            rec.failures = rec.failures * self.memory + (0.0 if ok else 1.0)
        if ttft_s is None or ttft_s < 0.0:
            return
        rec.ttft_s = _mean(rec.ttft_s, ttft_s, self.speed_weight)
        decode_s = seconds - ttft_s
        rate = (
            (tokens - first_tokens) / decode_s if tokens > first_tokens and decode_s > 0 else None
        )
        if rate is not None:
            rec.tokens_per_s = _mean(rec.tokens_per_s, rate, self.speed_weight)
        if bid is None or bid.est_tokens_per_s <= 0.0:
            return
        claimed_tps = bid.est_tokens_per_s
        if rate is not None:
            ratio = min(4.0, max(1 / 64, rate / claimed_tps))
            rec.speed_n += 1
            # shrunk towards the claim while observations are few: one unlucky job (a
            # moment the box was busy) must not lock a provider out of our routing
            w = max(self.speed_weight, 1.0 / (rec.speed_n + _PRIOR_JOBS))
            rec.log_speed += w * (math.log(ratio) - rec.log_speed)
        rtt = rec.rtt_s or 0.0
        claimed_first = bid.est_ttft_ms / 1000.0 + rtt + (first_tokens - 1) / claimed_tps
        if claimed_first > 0.0 and ttft_s > 0.0:
            ratio = min(64.0, max(1 / 4, ttft_s / claimed_first))
            rec.ttft_n += 1
            w = max(self.speed_weight, 1.0 / (rec.ttft_n + _PRIOR_JOBS))
            rec.log_ttft += w * (math.log(ratio) - rec.log_ttft)

    def started(self, provider: str) -> None:
        """One of our jobs was awarded to ``provider`` (it is serving it now)."""
        self._in_flight[provider] = self._in_flight.get(provider, 0) + 1

    def stopped(self, provider: str) -> None:
        """One of our jobs left ``provider`` (finished, failed over, or cancelled)."""
        left = self._in_flight.get(provider, 0) - 1
        if left > 0:
            self._in_flight[provider] = left
        else:
            self._in_flight.pop(provider, None)

    def observe_rtt(self, provider: str, rtt_s: float) -> None:
        """A measured round trip to ``provider`` (for example a ping, or RFQ → bid)."""
        if not rtt_s >= 0.0:
            raise ValueError(f"a round trip is >= 0 s, got {rtt_s}")
        rec = self._peer(provider)
        rec.rtt_s = _mean(rec.rtt_s, rtt_s, self.speed_weight)

    def adjust(self, provider: str, delta: float) -> None:
        """A job machine's ``ScorePeer``: a negative ``delta`` is a penalty that fades.

        Positive deltas (a completed job) change nothing here: :meth:`observe` counts
        successes, once.
        """
        if delta >= 0.0:
            return
        rec = self._peer(provider)
        rec.penalty = min(1.0, self._penalty(rec) - delta)
        rec.penalty_at = self._clock

    def note_failure(self, provider: str, why: str) -> None:
        """Remember the last transport or protocol failure seen with ``provider``."""
        self._peer(provider).last_failure = why[:200]
