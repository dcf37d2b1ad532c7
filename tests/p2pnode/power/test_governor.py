"""Governor transitions and hysteresis, table-driven, on simulated time (pure)."""

from __future__ import annotations

import pytest

from p2pnode.power.governor import (
    DemandResponse,
    Governor,
    GovernorConfig,
    Override,
    PanelReading,
    PowerState,
    TariffReading,
    select_handoffs,
)

N, T, D, OFF = PowerState.NORMAL, PowerState.THROTTLED, PowerState.DRAINING, PowerState.OFF
LIMIT = 38_400.0
CFG = GovernorConfig(min_dwell_s=10, recover_after_s=5, drain_timeout_s=30)


def panel(at: float, house_headroom_w: float, node_w: float = 1500.0) -> PanelReading:
    """A reading whose house headroom (limit − (main − node)) is the given figure."""
    return PanelReading(
        at=at, limit_w=LIMIT, main_w=LIMIT - house_headroom_w + node_w, node_w=node_w
    )


# (time, house headroom W, running jobs, expected state)
HYSTERESIS = [
    (0, 9000, 2, N),
    (1, 4500, 2, N),  # above throttle_enter (4000)
    (2, 3900, 2, T),  # enters THROTTLED at once
    (3, 5000, 2, T),  # below throttle_leave (5500): stays
    (20, 5000, 2, T),  # dwell long enough but target still THROTTLED
    (21, 6000, 2, T),  # target NORMAL, relaxed for 0 s
    (25, 6000, 2, T),  # relaxed 4 s < recover_after 5 s
    (26, 6000, 2, N),  # relaxed 5 s, dwelt ≥ 10 s: back to NORMAL
    (27, 1900, 2, D),  # below drain_enter: straight to DRAINING
    (28, 3000, 1, D),  # below drain_leave (3500): still draining, jobs running
    (29, 3000, 0, OFF),  # node idle → OFF
    (45, 3400, 0, OFF),  # still below drain_leave
    (46, 4000, 0, OFF),  # target THROTTLED: relaxed 0 s
    (51, 4000, 0, T),  # relaxed 5 s, dwelt 22 s: OFF → THROTTLED (one step)
    (60, 9000, 0, T),  # dwell in THROTTLED: 9 s < 10 s
    (66, 9000, 0, N),
]


def test_panel_hysteresis_table() -> None:
    gov = Governor(CFG)
    for at, headroom, jobs, expected in HYSTERESIS:
        gov.observe(panel(at, headroom))
        policy = gov.step(at, running_jobs=jobs)
        assert policy.state == expected, f"t={at} headroom={headroom}: {policy.state} != {expected}"


def test_oscillating_load_does_not_flap() -> None:
    """A load that hovers around the threshold moves the governor once, not every sample."""
    gov = Governor(CFG)
    for i in range(200):
        gov.observe(panel(i, 3800 if i % 2 else 4200))  # ±200 W around throttle_enter
        gov.step(i, running_jobs=1)
    assert [s for _, s in gov.history] == [N, T]


def test_drain_timeout_forces_off_even_with_jobs() -> None:
    gov = Governor(CFG)
    gov.observe(panel(0, 1000))
    assert gov.step(0, running_jobs=3).state == D
    assert gov.step(29, running_jobs=3).state == D
    assert gov.step(30, running_jobs=3).state == OFF


@pytest.mark.parametrize(
    ("readings", "expected", "reason"),
    [
        ([TariffReading(at=0, price_per_kwh=0.10)], N, None),
        ([TariffReading(at=0, price_per_kwh=0.45)], T, "tariff=throttled"),
        ([TariffReading(at=0, price_per_kwh=0.70)], D, "tariff=draining"),
        ([DemandResponse(at=0, level=1)], T, "demand_response=throttled"),
        ([DemandResponse(at=0, level=2)], D, "demand_response=draining"),
        ([DemandResponse(at=0, level=3)], D, "demand_response=off"),  # drains first
        ([Override(at=0, state=T)], T, "override=throttled"),
        ([Override(at=0, state=OFF)], D, "override=off"),
        # most restrictive wins: the override cannot lift a panel shed
        ([panel(0, 1000), Override(at=0, state=N)], D, "panel=draining"),
        (
            [panel(0, 9000), DemandResponse(at=0, level=1), TariffReading(at=0, price_per_kwh=0.7)],
            D,
            "tariff=draining",
        ),
        ([Override(at=0, state=T), Override(at=0, state=None)], N, None),  # auto clears
    ],
)
def test_combination_most_restrictive_wins(
    readings: list, expected: PowerState, reason: str | None
) -> None:
    gov = Governor(CFG)
    for r in readings:
        gov.observe(r)
    policy = gov.step(0, running_jobs=1)
    assert policy.state == expected
    if reason is not None:
        assert reason in policy.reasons
    else:
        assert policy.reasons == ()


def test_policy_per_state() -> None:
    cfg = GovernorConfig(max_concurrency=4, throttled_concurrency=1, throttled_price_multiplier=1.5)
    gov = Governor(cfg)
    p = gov.step(0)
    assert (p.state, p.may_bid, p.max_concurrency, p.price_multiplier, p.drain, p.release_gpu) == (
        N,
        True,
        4,
        1.0,
        False,
        False,
    )
    gov.observe(TariffReading(at=1, price_per_kwh=0.45))
    p = gov.step(1)
    assert (p.state, p.may_bid, p.max_concurrency, p.drain) == (T, True, 1, False)
    assert p.price_multiplier == pytest.approx(1.5 * 0.45 / 0.15)  # throttle × tariff
    gov.observe(DemandResponse(at=2, level=3))
    p = gov.step(2, running_jobs=2)
    assert (p.state, p.may_bid, p.max_concurrency, p.drain, p.release_gpu) == (
        D,
        False,
        0,
        True,
        False,
    )
    assert p.jobs_to_hand_off({"a": 5.0, "b": 25.0, "c": 90.0}) == ["b", "c"]
    p = gov.step(3, running_jobs=0)
    assert (p.state, p.may_bid, p.release_gpu, p.state.wire) == (OFF, False, True, "off")


def test_stale_panel_fails_safe() -> None:
    gov = Governor(GovernorConfig(panel_stale_s=30))
    gov.observe(panel(0, 9000))
    assert gov.step(30).state == N
    assert gov.step(31, running_jobs=1).state == D


def test_older_panel_reading_is_ignored() -> None:
    gov = Governor(CFG)
    gov.observe(panel(10, 9000))
    gov.observe(panel(5, 500))
    assert gov.step(10).state == N


def test_select_handoffs() -> None:
    assert select_handoffs({"x": 20.0, "y": 20.1, "z": 0.0}, 20.0) == ["y"]


@pytest.mark.parametrize(
    "section",
    [
        {"drain_enter_w": 5000, "drain_leave_w": 4000},
        {"throttle_enter_w": 6000, "throttle_leave_w": 5000},
        {"max_concurrency": 0},
        {"max_concurrency": 1.5},
        {"min_dwell_s": "long"},
        {"no_such_key": 1},
    ],
)
def test_bad_config_is_refused(section: dict) -> None:
    with pytest.raises(ValueError):
        GovernorConfig.from_mapping(section)


def test_config_from_mapping() -> None:
    cfg = GovernorConfig.from_mapping({"drain_enter_w": 1500, "max_concurrency": 8})
    assert cfg.drain_enter_w == 1500.0 and cfg.max_concurrency == 8


def test_parse_state() -> None:
    assert PowerState.parse(" Draining ") == D
    with pytest.raises(ValueError):
        PowerState.parse("melting")
