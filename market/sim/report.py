"""What a simulation run measured (:class:`SimReport`; ``as_json()`` is ``--json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from market.sim.invariants import Violation
from market.sim.world import SimConfig
from market.stats import percentile

__all__ = ["SimReport"]


@dataclass(slots=True)
class SimReport:
    """Figures of one run (``as_json()`` is the CLI's ``--json`` object)."""

    config: SimConfig
    jobs_completed: int = 0
    jobs_failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    jobs_lost: int = 0
    award_ms: list[float] = field(default_factory=list)  # auction time, queueing excluded
    queued_s: list[float] = field(default_factory=list)  # per job, time in the admission queue
    queued: int = 0  # times a job entered a buyer's admission queue
    direct_messages: int = 0
    gossip_messages: int = 0
    bids: int = 0
    failovers: int = 0
    tokens: int = 0
    paid: int = 0
    events: int = 0
    sim_time_s: float = 0.0
    wall_s: float = 0.0
    crashes: int = 0
    freezes: int = 0
    violations: list[Violation] = field(default_factory=list)

    @staticmethod
    def _pct(xs: list[float], q: float) -> float:
        """:func:`market.stats.percentile`, 0.0 for a run that awarded nothing."""
        return percentile(xs, q) if xs else 0.0

    @property
    def jobs(self) -> int:
        return self.jobs_completed + self.jobs_failed

    def as_json(self) -> dict[str, Any]:
        jobs = max(self.jobs, 1)
        v = self.violations[0] if self.violations else None
        return {
            "providers": self.config.providers,
            "buyers": self.config.n_buyers,
            "seed": self.config.seed,
            "jobs": self.jobs,
            "jobs_completed": self.jobs_completed,
            "jobs_failed": self.jobs_failed,
            "failed_by_reason": dict(sorted(self.failed_by_reason.items())),
            "jobs_lost": self.jobs_lost,
            "invariant_violations": len(self.violations),
            "violation": None
            if v is None
            else {
                "invariant": v.invariant,
                "detail": v.detail,
                "time": v.time,
                "event": v.event_index,
            },
            "repro": self.config.command() if v is not None else None,
            "messages_per_job": round((self.direct_messages + self.gossip_messages) / jobs, 2),
            "direct_messages_per_job": round(self.direct_messages / jobs, 2),
            "gossip_messages_per_job": round(self.gossip_messages / jobs, 2),
            "bids_per_job": round(self.bids / jobs, 2),
            "award_ms": {
                "p50": round(1000 * self._pct(self.award_ms, 0.5), 1),
                "p95": round(1000 * self._pct(self.award_ms, 0.95), 1),
            },
            "queued": self.queued,
            "queued_s": {
                "p50": round(self._pct(self.queued_s, 0.5), 2),
                "p95": round(self._pct(self.queued_s, 0.95), 2),
            },
            "failovers": self.failovers,
            "crashes": self.crashes,
            "freezes": self.freezes,
            "tokens": self.tokens,
            "events": self.events,
            "sim_time_s": round(self.sim_time_s, 2),
            "events_per_s": round(self.events / self.wall_s) if self.wall_s > 0 else 0,
            "wall_s": round(self.wall_s, 2),
        }
