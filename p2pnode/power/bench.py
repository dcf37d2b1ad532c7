"""``hearth bench power``: the household day with and without the governor, plus live latency.

Two measurements in one run:

* **Simulated day** (:mod:`p2pnode.power.household`): the real governor on simulated
  time against a seeded household day, and the same day with no governor (baseline).
* **Live shed latency**: the real pipeline — simulated SPAN panel → mosquitto →
  ``span-panel-api`` (asyncio thread) → trio → :class:`PowerService` — timed from the
  moment the panel publishes a reading across the drain threshold until ``may_bid``
  turns false, repeated ``live_rounds`` times. Needs the ``mosquitto`` binary; without
  it the live figures are ``None`` and ``live_error`` says why.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

from p2pnode.power.household import LIMIT_W, HouseholdDay, simulate_day

__all__ = ["measure_live_latency", "run_power_bench"]


def measure_live_latency(rounds: int = 5) -> list[float]:
    """Seconds from a shed reading published on the broker to ``may_bid`` false, per round."""
    import trio

    from p2pnode.power.governor import Governor, GovernorConfig, PowerState
    from p2pnode.power.service import PowerService
    from p2pnode.power.simpanel import Mosquitto, SimulatedSpanPanel
    from p2pnode.power.span import SpanPanelSource

    results: list[float] = []

    async def main(sim: SimulatedSpanPanel) -> None:
        cfg = GovernorConfig(min_dwell_s=0, recover_after_s=0)
        service = PowerService(
            Governor(cfg, start=trio.current_time()), running_jobs=lambda: 1, tick_s=0.25
        )
        source = SpanPanelSource(
            host="127.0.0.1",
            serial=sim.serial,
            broker_port=sim.broker_port,
            use_tls=False,
            http_port=sim.http_port,
            node_circuit=sim.node_circuit_name,
        )
        node_w = 2000.0
        with trio.fail_after(60 + 10 * rounds):
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                await nursery.start(source.run, service.readings())
                for _ in range(rounds):
                    await trio.to_thread.run_sync(
                        lambda: sim.set_power(main_w=10_000.0, node_w=node_w)
                    )
                    while service.policy.state != PowerState.NORMAL:
                        await service.wait_change(service.policy)
                    shed_main = (
                        LIMIT_W - cfg.drain_enter_w + node_w + 500.0
                    )  # house headroom 1.5 kW
                    t0 = time.perf_counter()
                    await trio.to_thread.run_sync(lambda m=shed_main: sim.set_power(main_w=m))
                    while service.policy.may_bid:
                        await service.wait_change(service.policy)
                    results.append(time.perf_counter() - t0)
                nursery.cancel_scope.cancel()

    with Mosquitto() as broker, SimulatedSpanPanel(broker.port) as sim:
        trio.run(main, sim)
    return results


def run_power_bench(*, seed: int = 1, hours: float = 24.0, live_rounds: int = 5) -> dict[str, Any]:
    """Run both measurements; returns the JSON object ``--json`` prints."""
    day = HouseholdDay.synthesize(seed, hours=hours)
    t0 = time.perf_counter()
    gov = simulate_day(day, seed=seed, governed=True)
    base = simulate_day(day, seed=seed, governed=False)
    sim_s = time.perf_counter() - t0
    live: list[float] = []
    live_error = None
    if live_rounds > 0:
        try:
            live = measure_live_latency(live_rounds)
        except (FileNotFoundError, RuntimeError, TimeoutError, OSError) as exc:
            live_error = f"{type(exc).__name__}: {exc}"
    return {
        "seed": seed,
        "hours": hours,
        "panel_limit_w": LIMIT_W,
        "minutes_over_limit": gov.minutes_over_limit,
        "shed_to_stop_bidding_s": max(live) if live else gov.shed_to_stop_bidding_s,
        "shed_to_stop_bidding_source": "live" if live else "simulated",
        "shed_to_idle_s": gov.shed_to_idle_s,
        "jobs_lost": gov.jobs_lost,
        "energy_kwh": round(gov.energy_kwh, 3),
        "earnings": round(gov.earnings, 4),
        "live_shed_to_stop_bidding_s": {
            "rounds": len(live),
            "median": statistics.median(live) if live else None,
            "max": max(live) if live else None,
        },
        "live_error": live_error,
        "governed": _rounded(asdict(gov)),
        "baseline": _rounded(asdict(base)),
        "simulation_wall_s": round(sim_s, 2),
    }


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}
