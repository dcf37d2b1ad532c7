"""The simulated network: regions, latency, loss, partitions, per-link FIFO.

* **Latency**: one-way base latency between regions (a symmetric table, in ms) plus
  a fixed per-link offset (0–``link_spread_ms``, from a hash of the pair), so each
  link keeps its own, stable delay.
* **Direct streams** (bids, awards, chunks, vouchers…) behave like one TCP
  connection per peer pair: messages on a link arrive in the order sent (FIFO).
  With probability ``loss`` a message needs a retransmission (``rto_ms`` later), and
  because of head-of-line blocking everything behind it on that link waits too.
  Opening a stream (a bid or decline) fails outright with probability ``loss``.
* **Gossip** drops a delivery with probability ``loss`` (see :mod:`market.sim.gossip`).
* **Partitions**: during ``[start, end)`` every message between two listed regions
  is dropped (the streams would stall; the protocol's timeouts must cope).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["REGIONS", "NetworkModel", "Partition"]

REGIONS: tuple[str, ...] = ("us-east", "us-west", "eu-west", "ap-south")

# One-way base latency in ms between the REGIONS above.
_BASE_MS: tuple[tuple[float, ...], ...] = (
    (8.0, 35.0, 40.0, 110.0),
    (35.0, 8.0, 70.0, 90.0),
    (40.0, 70.0, 8.0, 75.0),
    (110.0, 90.0, 75.0, 8.0),
)


@dataclass(frozen=True, slots=True)
class Partition:
    """Regions ``a`` and ``b`` cannot reach each other during ``[start, end)``."""

    start: float
    end: float
    a: int
    b: int


@dataclass(slots=True)
class NetworkModel:
    """Delivery times for messages between nodes (each node has a region index)."""

    rng: random.Random
    loss: float = 0.0
    rto_ms: float = 200.0
    link_spread_ms: float = 10.0
    partitions: list[Partition] = field(default_factory=list)
    _fifo: dict[tuple[int, int], float] = field(default_factory=dict)
    _last_prune: float = 0.0

    def base_s(self, ra: int, rb: int) -> float:
        """Base one-way latency between two regions, in seconds."""
        return _BASE_MS[ra][rb] / 1000.0

    def link_s(self, a: int, b: int, ra: int, rb: int) -> float:
        """The stable one-way delay of link a→b (base + per-link offset)."""
        h = ((a * 2654435761) ^ (b * 40503)) & 0xFFFF
        return (_BASE_MS[ra][rb] + self.link_spread_ms * h / 0xFFFF) / 1000.0

    def cut(self, now: float, ra: int, rb: int) -> bool:
        """True when a partition separates the two regions at ``now``."""
        for p in self.partitions:
            if p.start <= now < p.end and ((p.a == ra and p.b == rb) or (p.a == rb and p.b == ra)):
                return True
        return False

    def stream_arrival(self, now: float, a: int, b: int, ra: int, rb: int) -> float | None:
        """When a direct-stream message a→b sent at ``now`` arrives (``None``: lost)."""
        if self.partitions and self.cut(now, ra, rb):
            return None
        t = now + self.link_s(a, b, ra, rb)
        if self.loss and self.rng.random() < self.loss:
            t += self.rto_ms / 1000.0
        key = (a, b)
        prev = self._fifo.get(key)
        if prev is not None and prev > t:
            t = prev
        self._fifo[key] = t
        if now - self._last_prune > 5.0:
            self._prune(now)
        return t

    def dial_arrival(self, now: float, a: int, b: int, ra: int, rb: int) -> float | None:
        """A message on a fresh stream (bid/decline): may fail outright with ``loss``."""
        if self.loss and self.rng.random() < self.loss:
            return None
        return self.stream_arrival(now, a, b, ra, rb)

    def _prune(self, now: float) -> None:
        """Forget FIFO state of links idle for a while (keeps memory O(active links))."""
        self._last_prune = now
        horizon = now - 1.0
        stale = [k for k, t in self._fifo.items() if t < horizon]
        for k in stale:
            del self._fifo[k]
