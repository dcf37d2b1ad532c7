"""The house comes first: the power governor and the sources that drive it.

* :mod:`p2pnode.power.governor` — the sans-IO state machine (no trio, no torch, no
  clock): readings in, :class:`PowerPolicy` out. Re-exported here.
* :mod:`p2pnode.power.service` — the governor on trio (:func:`run_power` builds it
  and its sources from the node config's ``[power]`` section).
* :mod:`p2pnode.power.span` — the SPAN panel through ``span-panel-api`` (MQTT/Homie).
* :mod:`p2pnode.power.sources` — tariff schedule, demand-response and override files.
* :mod:`p2pnode.power.override_http` — the token-guarded HTTP override.
* :mod:`p2pnode.power.household`, :mod:`p2pnode.power.bench` — ``hearth bench power``.
* :mod:`p2pnode.power.simpanel` — mosquitto + a simulated SPAN panel (tests, bench).

Only the governor is imported here, so ``import p2pnode.power`` stays trio-free.
"""

from p2pnode.power.governor import (
    DemandResponse,
    Governor,
    GovernorConfig,
    Override,
    PanelReading,
    PowerPolicy,
    PowerState,
    Reading,
    TariffReading,
    select_handoffs,
)

__all__ = [
    "DemandResponse",
    "Governor",
    "GovernorConfig",
    "Override",
    "PanelReading",
    "PowerPolicy",
    "PowerState",
    "Reading",
    "TariffReading",
    "select_handoffs",
]
