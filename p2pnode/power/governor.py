"""The power governor: a sans-IO state machine that keeps the house first.

The node runs in someone's home, on the same panel as the dryer, the EV charger and
the air conditioner. The governor turns what the house tells us (panel headroom, the
tariff, a utility demand-response event, the homeowner's override) into a
:class:`PowerPolicy` the node applies: whether to bid, how many jobs to run at once,
how to price, whether to drain and whether to let go of the GPU.

No clocks, no I/O: every call takes ``now`` (seconds, any monotonic origin), so the
same code runs on trio's clock in the node and on simulated time in the benchmark.

States and moves::

    NORMAL ──▶ THROTTLED ──▶ DRAINING ──(node idle or drain timeout)──▶ OFF
       ▲           │ ▲            │                                      │
       └───────────┘ └────────────┴──────────── recovery ◀──────────────┘

* Towards more restriction the governor moves **at once** (no dwell): the house's
  safety never waits. NORMAL/THROTTLED jump straight to DRAINING when the target is
  DRAINING or OFF; DRAINING becomes OFF once the node reports no running jobs (or
  ``drain_timeout_s`` passed — by then the node has handed every job off).
* Towards less restriction it moves one step at a time (OFF/DRAINING → THROTTLED →
  NORMAL), and only after the current state has lasted ``min_dwell_s`` *and* the
  target has stayed less restrictive for ``recover_after_s`` without a break.

Combination rule — **most restrictive wins**: each input proposes a state on its own
and the target is the most restrictive of the proposals. In particular the local
override can only *restrict* (force throttled/draining/off); it can never push the
node to NORMAL against the panel or the utility ("auto" clears it).

Panel hysteresis is on the *house headroom*: panel limit − (main-meter power − the
node's own circuit draw). Leaving the node's own draw out keeps the node's shedding
from looking like recovery (which would make it oscillate). Enter and leave thresholds
differ (``*_enter_w`` < ``*_leave_w``). A panel reading older than ``panel_stale_s``
counts as "unknown" and proposes DRAINING (fail safe: we cannot see the house).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

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


class PowerState(enum.IntEnum):
    """Governor states, ordered by restriction (higher = more restrictive)."""

    NORMAL = 0
    THROTTLED = 1
    DRAINING = 2
    OFF = 3

    @property
    def wire(self) -> str:
        """The name offers carry: ``"normal" | "throttled" | "draining" | "off"``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> PowerState:
        """``"draining"`` → :attr:`DRAINING`; ValueError for anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown power state {text!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class PanelReading:
    """One panel sample: the limit, the main meter and the node's own circuit, in W."""

    at: float
    limit_w: float
    main_w: float
    node_w: float = 0.0

    def __post_init__(self) -> None:
        if self.limit_w <= 0:
            raise ValueError(f"panel limit must be > 0 W, got {self.limit_w}")

    @property
    def headroom_w(self) -> float:
        """Limit − main meter: what is left right now (negative = over the limit)."""
        return self.limit_w - self.main_w

    @property
    def house_headroom_w(self) -> float:
        """Headroom if the node drew nothing: the figure hysteresis is applied to."""
        return self.limit_w - (self.main_w - self.node_w)


@dataclass(frozen=True, slots=True, kw_only=True)
class TariffReading:
    """The energy price now (currency units per kWh)."""

    at: float
    price_per_kwh: float


@dataclass(frozen=True, slots=True, kw_only=True)
class DemandResponse:
    """A utility demand-response signal: level 0 none, 1 moderate, 2 high, 3 emergency."""

    at: float
    level: int
    event_id: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 3:
            raise ValueError(f"demand-response level must be 0..3, got {self.level}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """The homeowner's override: a state to force, or None for automatic."""

    at: float
    state: PowerState | None
    source: str = "local"


Reading = PanelReading | TariffReading | DemandResponse | Override


@dataclass(frozen=True, slots=True, kw_only=True)
class GovernorConfig:
    """Thresholds and caps; built from the node config's ``[power]`` section.

    Defaults suit a ~2 kW node (a few GPUs) on a 200 A / 240 V panel.
    """

    throttle_enter_w: float = 4000.0  # house headroom below this → THROTTLED
    throttle_leave_w: float = 5500.0  # … back to NORMAL only above this
    drain_enter_w: float = 2000.0  # house headroom below this → DRAINING
    drain_leave_w: float = 3500.0  # … back to THROTTLED only above this
    panel_stale_s: float = 30.0
    min_dwell_s: float = 60.0  # a state lasts at least this before relaxing
    recover_after_s: float = 120.0  # target must stay relaxed this long
    drain_finish_s: float = 20.0  # jobs ending within this finish; the rest hand off
    drain_timeout_s: float = 30.0  # DRAINING → OFF at the latest after this
    max_concurrency: int = (
        256  # normal power: the engine's own slots ([serving] max_batch) cap first
    )
    throttled_concurrency: int = 1
    max_batch: int = 8
    throttled_batch: int = 2
    throttled_price_multiplier: float = 1.5
    tariff_throttle_price: float = 0.40  # price/kWh at or above → THROTTLED
    tariff_stop_price: float = 0.60  # price/kWh at or above → DRAINING (no bids)
    tariff_base_price: float = 0.15  # bid prices scale with price/base above this

    def __post_init__(self) -> None:
        if not self.drain_enter_w < self.drain_leave_w:
            raise ValueError("drain_enter_w must be < drain_leave_w (hysteresis)")
        if not self.throttle_enter_w < self.throttle_leave_w:
            raise ValueError("throttle_enter_w must be < throttle_leave_w (hysteresis)")
        if not self.drain_enter_w <= self.throttle_enter_w:
            raise ValueError("drain_enter_w must be <= throttle_enter_w")
        if self.tariff_throttle_price > self.tariff_stop_price:
            raise ValueError("tariff_throttle_price must be <= tariff_stop_price")
        for name in ("min_dwell_s", "recover_after_s", "drain_finish_s", "drain_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_concurrency < 1 or self.throttled_concurrency < 1:
            raise ValueError("concurrency caps must be >= 1")

    @classmethod
    def from_mapping(cls, section: Mapping[str, object]) -> GovernorConfig:
        """Build from a config section (e.g. TOML ``[power.governor]``); unknown keys fail."""
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"unknown power governor settings: {sorted(unknown)}")
        kwargs: dict[str, object] = {}
        for key, value in section.items():
            default = getattr(cls(), key)
            if (
                isinstance(default, int)
                and not isinstance(default, bool)
                and not isinstance(default, float)
            ):
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ValueError(f"{key} must be an integer, got {value!r}")
                kwargs[key] = value
            else:
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ValueError(f"{key} must be a number, got {value!r}")
                kwargs[key] = float(value)
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerPolicy:
    """What the node does now. Offers carry ``state.wire``."""

    state: PowerState
    since: float
    may_bid: bool
    max_concurrency: int  # new jobs may start while running < this (0 = none)
    max_batch: int
    price_multiplier: float
    drain: bool
    drain_finish_s: float
    release_gpu: bool
    reasons: tuple[str, ...] = ()

    def jobs_to_hand_off(self, remaining_s: Mapping[str, float]) -> list[str]:
        """Jobs the node must hand to runner-ups now (empty unless draining)."""
        if not self.drain:
            return []
        return select_handoffs(remaining_s, self.drain_finish_s)


def select_handoffs(remaining_s: Mapping[str, float], finish_within_s: float) -> list[str]:
    """Job ids whose expected remaining time exceeds ``finish_within_s``, sorted.

    Those that end sooner are finished locally; the rest go to runner-ups through the
    market protocol's failover, so no job is ever dropped.
    """
    return sorted(job for job, left in remaining_s.items() if left > finish_within_s)


@dataclass(slots=True)
class Governor:
    """The state machine. Feed readings with :meth:`observe`, ask with :meth:`step`."""

    config: GovernorConfig = field(default_factory=GovernorConfig)
    start: float = 0.0
    state: PowerState = PowerState.NORMAL
    since: float = 0.0
    panel: PanelReading | None = None
    tariff: TariffReading | None = None
    demand: DemandResponse | None = None
    override: Override | None = None
    _panel_level: PowerState = PowerState.NORMAL
    _relaxed_since: float | None = None
    _history: list[tuple[float, PowerState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.since = self.start
        self._history.append((self.start, self.state))

    @property
    def history(self) -> list[tuple[float, PowerState]]:
        """(time, state entered) pairs, oldest first."""
        return list(self._history)

    def observe(self, reading: Reading) -> None:
        """Remember the latest reading of its kind (older readings are ignored)."""
        if isinstance(reading, PanelReading):
            if self.panel is None or reading.at >= self.panel.at:
                self.panel = reading
                self._panel_level = self._panel_hysteresis(reading.house_headroom_w)
        elif isinstance(reading, TariffReading):
            self.tariff = reading
        elif isinstance(reading, DemandResponse):
            self.demand = reading
        elif isinstance(reading, Override):
            self.override = reading
        else:  # pragma: no cover - typing guards this
            raise TypeError(f"not a power reading: {reading!r}")

    def _panel_hysteresis(self, house_w: float) -> PowerState:
        c, level = self.config, self._panel_level
        if house_w < c.drain_enter_w:
            return PowerState.DRAINING
        if level >= PowerState.DRAINING and house_w < c.drain_leave_w:
            return PowerState.DRAINING
        if house_w < c.throttle_enter_w:
            return PowerState.THROTTLED
        if level >= PowerState.THROTTLED and house_w < c.throttle_leave_w:
            return PowerState.THROTTLED
        return PowerState.NORMAL

    def proposals(self, now: float) -> dict[str, PowerState]:
        """Each input's proposed state (the target is their maximum)."""
        c = self.config
        out: dict[str, PowerState] = {}
        if self.panel is not None:
            stale = now - self.panel.at > c.panel_stale_s
            out["panel"] = PowerState.DRAINING if stale else self._panel_level
        if self.tariff is not None:
            price = self.tariff.price_per_kwh
            out["tariff"] = (
                PowerState.DRAINING
                if price >= c.tariff_stop_price
                else PowerState.THROTTLED
                if price >= c.tariff_throttle_price
                else PowerState.NORMAL
            )
        if self.demand is not None:
            out["demand_response"] = {
                0: PowerState.NORMAL,
                1: PowerState.THROTTLED,
                2: PowerState.DRAINING,
                3: PowerState.OFF,
            }[self.demand.level]
        if self.override is not None and self.override.state is not None:
            out["override"] = self.override.state
        return out

    def step(self, now: float, *, running_jobs: int = 0) -> PowerPolicy:
        """Advance to ``now`` and return the policy. ``running_jobs``: jobs still on the GPU."""
        c = self.config
        props = self.proposals(now)
        target = max(props.values(), default=PowerState.NORMAL)
        state = self.state
        if target > state:
            self._relaxed_since = None
            if state < PowerState.DRAINING and target >= PowerState.DRAINING:
                self._enter(PowerState.DRAINING, now)
            elif state < PowerState.DRAINING:
                self._enter(target, now)
        elif target < state:
            if self._relaxed_since is None:
                self._relaxed_since = now
            dwelt = now - self.since >= c.min_dwell_s
            settled = now - self._relaxed_since >= c.recover_after_s
            if dwelt and settled:
                nxt = PowerState.THROTTLED if state >= PowerState.DRAINING else PowerState.NORMAL
                self._enter(max(nxt, target), now)
                self._relaxed_since = now if self.state > target else None
        else:
            self._relaxed_since = None
        drained = running_jobs == 0 or now - self.since >= c.drain_timeout_s
        if self.state == PowerState.DRAINING and target >= PowerState.DRAINING and drained:
            self._enter(PowerState.OFF, now)
        return self._policy(props)

    def _enter(self, state: PowerState, now: float) -> None:
        if state != self.state:
            self.state, self.since = state, now
            self._history.append((now, state))

    def _policy(self, props: Mapping[str, PowerState]) -> PowerPolicy:
        c, s = self.config, self.state
        reasons = tuple(sorted(f"{k}={v.wire}" for k, v in props.items() if v > PowerState.NORMAL))
        tariff_mult = 1.0
        if self.tariff is not None and c.tariff_base_price > 0:
            tariff_mult = max(1.0, self.tariff.price_per_kwh / c.tariff_base_price)
        throttled = s == PowerState.THROTTLED
        return PowerPolicy(
            state=s,
            since=self.since,
            may_bid=s <= PowerState.THROTTLED,
            max_concurrency=(
                c.max_concurrency
                if s == PowerState.NORMAL
                else c.throttled_concurrency
                if throttled
                else 0
            ),
            max_batch=c.max_batch
            if s == PowerState.NORMAL
            else c.throttled_batch
            if throttled
            else 0,
            price_multiplier=tariff_mult * (c.throttled_price_multiplier if throttled else 1.0),
            drain=s == PowerState.DRAINING,
            drain_finish_s=c.drain_finish_s,
            release_gpu=s == PowerState.OFF,
            reasons=reasons,
        )
