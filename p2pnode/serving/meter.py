"""What an engine really does: per-job decode speed by batch size, and time to first token.

A node advertises its speed in offers and bids, and buyers route by it, so the figures
must be measured, not configured. The :class:`ServingMeter` is fed from two places:

* the engine core, after every decode step (:meth:`ServingMeter.note_step`): how many
  sequences the step ran and how long it took. Every sequence in a decode step gets one
  token, so a job in a batch of ``b`` runs at ``1 / step_time(b)`` tokens/s. Step times
  are kept per batch size as an exponentially weighted mean (recent steps count most;
  the first few are a plain mean, so one early outlier does not linger). Steps that
  prefill a prompt are left out: their cost is the new request's time to first token;
* the engine's async side, once per request (:meth:`ServingMeter.note_ttft`): the time
  from ``generate`` to the first token (tokenising, waiting for a place, prefill, and
  the steps of the other requests it shares). The figure is the median of a window of
  recent requests, so one long prompt does not move it much.

:meth:`ServingMeter.tokens_per_s` answers for any batch size: a size that was measured
answers from its mean; one between two measured sizes from the straight line through
them; one beyond every measured size never better than what was measured (above the
largest, from the line through the two largest, or, with a single size known, as if
batching gained nothing: step time grows with the batch). So a node can under-state its
speed but does not over-state it.

Torch-free (an import contract in ``pyproject.toml``): the core calls it with plain
numbers, and it is safe to call from any thread.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass

__all__ = ["MeterReading", "ServingMeter"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterReading:
    """A snapshot of the meter (for status pages and benchmarks)."""

    step_ms: dict[int, float]  # batch size → mean step time (ms), sizes measured so far
    steps: int  # steps measured since the last reset
    ttft_ms: float | None  # median of the recent window (None: no request yet)
    ttft_samples: int


class ServingMeter:
    """Live step times by batch size and a window of recent times to first token.

    ``alpha`` is the weight of the newest step in its batch size's mean (0.1: about the
    last 10 steps count); ``ttft_window`` how many recent requests the median spans.
    """

    def __init__(self, *, alpha: float = 0.1, ttft_window: int = 32) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if ttft_window < 1:
            raise ValueError(f"ttft_window must be >= 1, got {ttft_window}")
        self._alpha = alpha
        self._lock = threading.Lock()
        self._step_s: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._steps = 0
        self._ttft: deque[float] = deque(maxlen=ttft_window)

    def reset(self) -> None:
        """Forget everything (after a first run that paid one-off costs)."""
        with self._lock:
            self._step_s.clear()
            self._count.clear()
            self._steps = 0
            self._ttft.clear()

    def reset_ttft(self) -> None:
        """Forget the times to first token only."""
        with self._lock:
            self._ttft.clear()

    # ------------------------------------------------------------------ feeding
    def note_step(self, *, batch: int, seconds: float) -> None:
        """One decode step that ran ``batch`` sequences and gave each a token."""
        if batch < 1 or not seconds > 0.0:
            return
        with self._lock:
            n = self._count.get(batch, 0) + 1
            self._count[batch] = n
            old = self._step_s.get(batch, seconds)
            self._step_s[batch] = old + max(self._alpha, 1.0 / n) * (seconds - old)
            self._steps += 1

    def note_ttft(self, seconds: float) -> None:
        """A request's first token came ``seconds`` after it was submitted."""
        if seconds >= 0.0:
            with self._lock:
                self._ttft.append(seconds)

    # ------------------------------------------------------------------ reading
    def step_s(self, batch: int) -> float | None:
        """Expected step time with ``batch`` sequences (None: nothing measured yet)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        with self._lock:
            known = sorted(self._step_s.items())
        if not known:
            return None
        exact = dict(known).get(batch)
        if exact is not None:
            return exact
        below = [(b, t) for b, t in known if b < batch]
        above = [(b, t) for b, t in known if b > batch]
        if below and above:  # between two measured sizes: the line through them
            (b0, t0), (b1, t1) = below[-1], above[0]
            return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)
        if above:  # smaller than anything measured: no faster than the smallest
            return above[0][1]
        if len(below) == 1:  # one size known: assume batching gains nothing
            b0, t0 = below[0]
            return t0 * batch / b0
        (b0, t0), (b1, t1) = below[-2], below[-1]
        slope = max(0.0, (t1 - t0) / (b1 - b0))
        return t1 + slope * (batch - b1)

    def tokens_per_s(self, batch: int) -> float | None:
        """Tokens/s one job gets in a batch of ``batch`` (None: nothing measured yet)."""
        step = self.step_s(batch)
        return None if step is None else 1.0 / step

    def ttft_ms(self) -> float | None:
        """Median time to first token of the recent requests, in ms (None: none yet)."""
        with self._lock:
            window = list(self._ttft)
        return 1000.0 * statistics.median(window) if window else None

    def reading(self) -> MeterReading:
        with self._lock:
            step_ms = {b: 1000.0 * t for b, t in sorted(self._step_s.items())}
            steps, samples = self._steps, len(self._ttft)
        return MeterReading(
            step_ms=step_ms, steps=steps, ttft_ms=self.ttft_ms(), ttft_samples=samples
        )
