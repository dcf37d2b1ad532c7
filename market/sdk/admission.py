"""The buyer's admission queue: jobs that found every provider busy wait their turn.

A job whose auction reached every provider of its model and found the busy ones full
does not fail (see :class:`~market.protocol.buyer.BuyerJob`): its machine asks to wait
(``AwaitCapacity``), and this queue lets it try again (``CapacityFreed``) when a slot
is likely free, first come first served, per model:

* one of our own jobs of that model ended (its slot is free now);
* one of our jobs of that model was placed: its award released the slots the other
  bidders held for it, and a job let out before may have found room for another;
* an offer of that model states free slots;
* otherwise every ``retry_s``, unless a job let out earlier is still looking.

A job that tried its turn and found no slot goes back to the front. The queue is
bounded (``max_queued`` per model): past it a job fails at once as ``saturated``
(``QueueFull``), and so does one still waiting at its own deadline.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable
from typing import Protocol

import trio

from market.protocol.buyer import BuyerJob, BuyerState
from market.protocol.events import CapacityFreed, Event, QueueFull
from market.protocol.outcomes import BuyerOutcome

__all__ = ["AdmissionQueue", "Waiter"]


class Waiter(Protocol):
    """What the queue needs of a job's driver (the SDK's ``_JobRun``)."""

    job: BuyerJob
    outcome: BuyerOutcome | None
    events_in: trio.MemorySendChannel[Event]
    queued_before: bool  # has waited before: goes back to the front
    woken: bool  # let out of the queue and not placed yet


class AdmissionQueue:
    """FIFO per model of jobs waiting for a free provider (see the module docstring)."""

    def __init__(self, *, max_queued: int = 256, retry_s: float = 0.5) -> None:
        if max_queued < 1 or not retry_s > 0:
            raise ValueError("max_queued must be >= 1 and retry_s > 0")
        self.max_queued = max_queued
        self.retry_s = retry_s
        self._queues: dict[str, deque[Waiter]] = {}
        self._recent_s: deque[float] = deque(maxlen=64)  # how long recent jobs took

    def waiting(self, model_id: str) -> int:
        """Jobs of ``model_id`` waiting right now."""
        q = self._queues.get(model_id)
        return 0 if q is None else sum(1 for w in q if w.job.state is BuyerState.QUEUED)

    def has(self, model_id: str) -> bool:
        """True while some job of ``model_id`` may be waiting."""
        return model_id in self._queues

    def put(self, w: Waiter) -> None:
        """``w``'s machine asked to wait: queue it, or tell it the queue is full."""
        model_id = w.job.rfq.model_id
        waiting = self.waiting(model_id)
        if waiting >= self.max_queued:
            detail = f"{waiting} jobs already wait for this model (max_queued)"
            w.events_in.send_nowait(QueueFull(detail=detail))
            return
        q = self._queues.setdefault(model_id, deque())
        if w.queued_before:
            q.appendleft(w)  # tried its turn and found no slot: still first in line
        else:
            q.append(w)
        w.queued_before = True
        w.woken = False

    def wake(self, model_id: str) -> None:
        """Let the first job still waiting for ``model_id`` run a fresh auction."""
        q = self._queues.get(model_id)
        while q:
            w = q.popleft()
            if w.job.state is BuyerState.QUEUED and w.outcome is None:
                w.woken = True
                w.events_in.send_nowait(CapacityFreed())
                return
        self._queues.pop(model_id, None)

    def placed(self, w: Waiter) -> None:
        """``w`` was awarded: the slots the other bidders held for it are free again, so
        the next in line may find room."""
        w.woken = False
        if self.has(w.job.rfq.model_id):
            self.wake(w.job.rfq.model_id)

    def finished(self, model_id: str, seconds: float | None) -> None:
        """A job of ``model_id`` ended (``seconds``: how long it ran, if it completed)."""
        if seconds is not None:
            self._recent_s.append(seconds)
        self.wake(model_id)

    def retry_after_s(self, model_id: str) -> float:
        """A fair guess of when capacity frees, for ``Retry-After``: how long recent
        jobs took, once per batch of eight waiters ahead, within 1..60 s."""
        typical = statistics.median(self._recent_s) if self._recent_s else 5.0
        return float(min(60, max(1, math.ceil(typical * (1 + self.waiting(model_id) // 8)))))

    async def run(self, looking: Callable[[str], bool]) -> None:
        """Every ``retry_s``, the head of each queue tries again, unless ``looking(model)``
        (a job let out before it is still running its auction)."""
        while True:
            await trio.sleep(self.retry_s)
            for model_id in list(self._queues):
                if not looking(model_id):
                    self.wake(model_id)
