"""A synthetic household day and a simulated node, for the power benchmark.

The house: a 200 A / 240 V panel whose continuous limit is 80 % of its rating
(38.4 kW, the NEC rule for continuous loads). Appliances switch on and off on a
seeded schedule — base load and fridge, a water heater, two air-conditioning units
cycling through the afternoon, cooking at breakfast and dinner, a dryer and an 11.5 kW
(48 A) EV charger in the evening — chosen so that the house alone stays under the
limit (the sum of everything that can coincide is below it) but the house plus a
busy GPU node does not.

The node: ``idle_w`` plus ``job_w`` per running job (a few GPUs, one job per slot);
jobs are offered at a steady Poisson rate, last a lognormal time, and pay per
GPU-second; the node bids when its policy allows and it has a free slot, and wins
less often when its price is raised. Draining hands jobs that would not finish within
``drain_finish_s`` to a runner-up (counted, never lost). The real :class:`Governor`
runs on simulated time, seeing one panel sample per second.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from p2pnode.power.governor import (
    DemandResponse,
    Governor,
    GovernorConfig,
    PanelReading,
    PowerState,
    TariffReading,
)
from p2pnode.power.sources import TariffSchedule

__all__ = ["DayResult", "HouseholdDay", "NodeModel", "simulate_day"]

BOX_SLOTS = 4
"""Jobs the modelled box serves at once (its engine's slots; the governor caps it lower
when the house needs the power)."""

PANEL_A, VOLTS, CONTINUOUS = 200, 240.0, 0.8
LIMIT_W = PANEL_A * VOLTS * CONTINUOUS
TARIFF = TariffSchedule.from_mapping(
    {
        "default": 0.15,
        "periods": [
            {"start": 16, "end": 21, "price": 0.42},
            {"start": 23, "end": 6, "price": 0.09},
        ],
    }
)


@dataclass(frozen=True, slots=True)
class HouseholdDay:
    """Per-second household load (W, the node excluded) and a demand-response window."""

    load_w: tuple[float, ...]
    dr_window: tuple[int, int] | None  # [start, end) seconds, level 2

    @classmethod
    def synthesize(cls, seed: int, *, hours: float = 24.0) -> HouseholdDay:
        """A seeded day; ``hours`` < 24 keeps its first hours (the smoke test uses the evening)."""
        rng = random.Random(seed)
        n = 86_400
        load = [0.0] * n

        def on(start_s: float, dur_s: float, watts: float) -> None:
            a, b = max(0, int(start_s)), min(n, int(start_s + dur_s))
            for i in range(a, b):
                load[i] += watts

        h = 3600.0
        for i in range(n):  # base: lights, electronics, fridge compressor cycling
            load[i] = 450.0 + (150.0 if (i // 900) % 3 == 0 else 0.0)
        for start in (6.5 * h, 18.25 * h):  # water heater after showers and dishes
            on(start + rng.uniform(0, 900), rng.uniform(1800, 3000), 4500.0)
        for unit in range(2):  # two 3.5 kW AC units cycling 12:00–22:00
            t = 12.0 * h + rng.uniform(0, 600) + unit * 300
            while t < 22.0 * h:
                run = rng.uniform(900, 1500)
                on(t, run, 3500.0)
                t += run + rng.uniform(300, 700)
        on(7.0 * h + rng.uniform(0, 900), 1200, 3000.0)  # breakfast: range + kettle
        dinner = 17.75 * h + rng.uniform(0, 900)
        on(dinner, rng.uniform(3000, 4200), 3500.0)  # oven
        for burner in range(2):
            on(dinner + 600 + burner * rng.uniform(60, 400), rng.uniform(1200, 2400), 2200.0)
        on(18.0 * h + rng.uniform(0, 900), rng.uniform(3000, 4200), 5600.0)  # dryer
        ev_start = 17.75 * h + rng.uniform(0, 900)
        on(ev_start, rng.uniform(3 * h, 4.5 * h), 11_520.0)  # EV: 48 A × 240 V
        dr_start = int(15.0 * h + rng.uniform(0, 1800))
        first, last = (24.0 - hours) * h, 24.0 * h  # keep the *last* hours (the evening)
        a = int(first)
        dr = (dr_start - a, dr_start - a + 1800) if dr_start >= a else None
        return cls(load_w=tuple(load[a : int(last)]), dr_window=dr)

    @property
    def start_hour(self) -> float:
        return 24.0 - len(self.load_w) / 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeModel:
    """The simulated node: power per running job, job stream and pay."""

    idle_w: float = 200.0
    off_w: float = 40.0  # GPU memory released, GPUs in their lowest state
    job_w: float = 600.0
    job_rate_per_s: float = 1 / 15
    job_median_s: float = 60.0
    job_sigma: float = 0.8
    pay_per_job_s: float = 0.0006  # currency per GPU-second at price multiplier 1
    base_win_prob: float = 0.8


@dataclass(slots=True)
class DayResult:
    """What one simulated day measured."""

    governed: bool
    minutes_over_limit: int = 0
    seconds_over_limit: int = 0
    house_alone_minutes_over_limit: int = 0
    peak_main_w: float = 0.0
    shed_events: int = 0
    shed_to_stop_bidding_s: float | None = None  # worst over shed events
    shed_to_idle_s: float | None = None
    jobs_offered: int = 0
    jobs_accepted: int = 0
    jobs_completed: int = 0
    jobs_handed_off: int = 0
    jobs_lost: int = 0
    energy_kwh: float = 0.0
    energy_cost: float = 0.0
    earnings: float = 0.0
    state_seconds: dict[str, int] = field(default_factory=dict)


def simulate_day(
    day: HouseholdDay,
    *,
    seed: int,
    governed: bool,
    node: NodeModel | None = None,
    config: GovernorConfig | None = None,
) -> DayResult:
    """Replay ``day`` second by second with the node serving jobs; see the module doc."""
    node = node or NodeModel()
    config = config or GovernorConfig()
    rng = random.Random(seed + 1)
    gov = Governor(config, start=0.0)
    res = DayResult(governed=governed, state_seconds={s.wire: 0 for s in PowerState})
    running: dict[str, list[float]] = {}  # job id → [remaining s, total s, price multiplier]
    next_job, minute_energy, house_minute = 0, 0.0, 0.0
    shed_at: float | None = None
    stop_lat: list[float] = []
    idle_lat: list[float] = []
    policy = gov.step(0.0)
    node_w = node.idle_w
    for t, house_w in enumerate(day.load_w):
        now = float(t)
        hour = int(day.start_hour + t / 3600.0) % 24
        price = TARIFF.price_at_hour(hour)
        main_w = house_w + node_w
        if governed:
            gov.observe(PanelReading(at=now, limit_w=LIMIT_W, main_w=main_w, node_w=node_w))
            if t % 60 == 0:
                gov.observe(TariffReading(at=now, price_per_kwh=price))
                in_dr = day.dr_window is not None and day.dr_window[0] <= t < day.dr_window[1]
                gov.observe(DemandResponse(at=now, level=2 if in_dr else 0))
            was_bidding = policy.may_bid
            policy = gov.step(now, running_jobs=len(running))
            shed = gov.proposals(now).get("panel", PowerState.NORMAL) >= PowerState.DRAINING
            if shed and shed_at is None and was_bidding:
                shed_at = now
                res.shed_events += 1
            if shed_at is not None and not policy.may_bid and len(stop_lat) < res.shed_events:
                stop_lat.append(now - shed_at)
            for job in policy.jobs_to_hand_off({j: r[0] for j, r in running.items()}):
                del running[job]
                res.jobs_handed_off += 1
            if shed_at is not None and not running and len(stop_lat) == res.shed_events:
                idle_lat.append(now - shed_at)
                shed_at = None
        res.state_seconds[policy.state.wire] += 1
        # offers arrive; the node bids if allowed and a slot is free
        if rng.random() < node.job_rate_per_s:
            res.jobs_offered += 1
            cap = min(BOX_SLOTS, policy.max_concurrency) if governed else BOX_SLOTS
            mult = policy.price_multiplier if governed else 1.0
            free = (not governed or policy.may_bid) and len(running) < cap
            if free and rng.random() < node.base_win_prob / mult:
                dur = max(5.0, node.job_median_s * math.exp(rng.gauss(0, node.job_sigma)))
                running[f"job{next_job}"] = [dur, dur, mult]
                next_job += 1
                res.jobs_accepted += 1
        for job in list(running):
            running[job][0] -= 1.0
            if running[job][0] <= 0:
                total, mult = running[job][1], running[job][2]
                res.earnings += total * node.pay_per_job_s * mult
                res.jobs_completed += 1
                del running[job]
        off = governed and policy.release_gpu
        node_w = node.off_w if off else node.idle_w + node.job_w * len(running)
        # meter this second
        res.energy_kwh += node_w / 3.6e6
        res.energy_cost += node_w / 3.6e6 * price
        res.seconds_over_limit += main_w > LIMIT_W
        res.peak_main_w = max(res.peak_main_w, main_w)
        minute_energy += main_w
        house_minute += house_w
        if t % 60 == 59:
            res.minutes_over_limit += minute_energy / 60 > LIMIT_W
            res.house_alone_minutes_over_limit += house_minute / 60 > LIMIT_W
            minute_energy = house_minute = 0.0
    res.jobs_lost = res.jobs_accepted - res.jobs_completed - res.jobs_handed_off - len(running)
    res.shed_to_stop_bidding_s = max(stop_lat) if stop_lat else None
    res.shed_to_idle_s = max(idle_lat) if idle_lat else None
    return res
