"""A deterministic simulator of the Hearth market, driving the real job machines.

    from market.sim import SimConfig, run
    report = run(SimConfig(providers=1000, jobs=10_000, seed=7, crash_rate=0.1))
    report.as_json()["invariant_violations"]   # 0

See :mod:`market.sim.simulation` for what is modelled, :mod:`market.sim.gossip` for
why messages per job stay flat as N grows, and :mod:`market.sim.invariants` for what
is checked after every event.
"""

from market.sim.invariants import InvariantChecker, Violation
from market.sim.simulation import SimReport, Simulation, run
from market.sim.world import SimConfig

__all__ = ["InvariantChecker", "SimConfig", "SimReport", "Simulation", "Violation", "run"]
