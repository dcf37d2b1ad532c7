"""Per-peer token buckets in bounded memory: what a peer may make this node do per second.

A request that costs the receiver more than the sender (an RFQ costs a provider a chain
read and a connection back to the buyer) needs a price at the door. :class:`PeerRateLimiter`
admits a peer's request while the peer's bucket holds a token, and answers ``False``
(drop it, before any work) otherwise. Three bounds, each counted in :attr:`stats`:

* **per peer** — ``rate_per_s`` sustained, ``burst`` at once, for each peer id;
* **newcomers** — a peer id not tracked yet is admitted to the table at most
  ``newcomer_rate_per_s`` times per second: fresh identities are free to make, so
  without this gate each one would bring a full bucket of its own;
* **all peers together** — at most ``total_rate_per_s`` admitted per second, so a flood
  spread over many identities still costs the node a bounded amount of work
  (honest peers may lose requests to it while it lasts; they retry, the node stays up).

At most ``max_peers`` buckets are kept; the least recently used is forgotten first (a
forgotten peer comes back as a newcomer, through the gate). Pure: the caller passes
``now`` (any monotonic clock), so the limiter is tested without waiting.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

__all__ = ["PeerRateLimiter", "RateLimit"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """Token-bucket settings (see the module docstring)."""

    rate_per_s: float = 10.0
    burst: float = 20.0
    newcomer_rate_per_s: float = 20.0
    newcomer_burst: float = 40.0
    total_rate_per_s: float = 200.0
    total_burst: float = 400.0
    max_peers: int = 4096

    def __post_init__(self) -> None:
        for name in ("rate_per_s", "newcomer_rate_per_s", "total_rate_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("burst", "newcomer_burst", "total_burst"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_peers < 1:
            raise ValueError("max_peers must be >= 1")


class _Bucket:
    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PeerRateLimiter:
    """Admit or drop one request per call (see the module docstring)."""

    def __init__(self, limit: RateLimit | None = None) -> None:
        self.limit = limit or RateLimit()
        self.stats: Counter[str] = Counter()
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()
        self._newcomers: _Bucket | None = None
        self._total: _Bucket | None = None

    def __len__(self) -> int:
        """Peers tracked now (never more than ``limit.max_peers``)."""
        return len(self._peers)

    def allow(self, peer: str, now: float) -> bool:
        """True: serve ``peer``'s request; False: drop it (counted in :attr:`stats`)."""
        lim = self.limit
        if self._total is None:
            self._total = _Bucket(lim.total_rate_per_s, lim.total_burst, now)
            self._newcomers = _Bucket(lim.newcomer_rate_per_s, lim.newcomer_burst, now)
        bucket = self._peers.get(peer)
        if bucket is None:
            assert self._newcomers is not None
            if not self._newcomers.take(now):
                self.stats["dropped_newcomer"] += 1
                return False
            bucket = self._peers[peer] = _Bucket(lim.rate_per_s, lim.burst, now)
            while len(self._peers) > lim.max_peers:
                self._peers.popitem(last=False)
                self.stats["forgotten"] += 1
        else:
            self._peers.move_to_end(peer)
        if not bucket.take(now):
            self.stats["dropped_peer"] += 1
            return False
        if not self._total.take(now):
            bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)  # not this peer's fault
            self.stats["dropped_total"] += 1
            return False
        self.stats["allowed"] += 1
        return True

    @property
    def dropped(self) -> int:
        """Requests dropped so far, for every reason."""
        return sum(v for k, v in self.stats.items() if k.startswith("dropped_"))
