"""Smoke test of the household-day benchmark: invariants, not timings."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.power.household import LIMIT_W, HouseholdDay, simulate_day


def test_governed_evening_stays_under_the_limit_and_loses_no_job() -> None:
    day = HouseholdDay.synthesize(1, hours=8)  # 16:00–24:00: the dinner/EV/dryer peak
    assert max(day.load_w) < LIMIT_W  # the house alone fits; the node is what tips it over
    gov = simulate_day(day, seed=1, governed=True)
    base = simulate_day(day, seed=1, governed=False)
    assert base.minutes_over_limit > 0
    assert gov.minutes_over_limit == 0 and gov.seconds_over_limit == 0
    assert gov.shed_events >= 1
    assert gov.jobs_lost == 0 and base.jobs_lost == 0
    # jobs_lost = accepted − completed − handed off − still running: every job accounted for
    assert gov.shed_to_stop_bidding_s is not None and gov.shed_to_idle_s is not None
    assert gov.shed_to_idle_s <= 30.0  # bounded by drain_timeout_s in the model
    assert 0 < gov.energy_kwh < base.energy_kwh
    assert gov.state_seconds["off"] > 0 and gov.state_seconds["throttled"] > 0


def test_bench_cli_json_with_live_round() -> None:
    """One JSON object with the required keys; the live round runs the real MQTT pipeline."""
    result = CliRunner().invoke(
        app, ["bench", "power", "--json", "--hours", "6", "--live-rounds", "1"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in (
        "minutes_over_limit",
        "shed_to_stop_bidding_s",
        "shed_to_idle_s",
        "jobs_lost",
        "energy_kwh",
        "earnings",
    ):
        assert key in data
    assert data["minutes_over_limit"] == 0 and data["jobs_lost"] == 0
    assert data["live_error"] is None and data["shed_to_stop_bidding_source"] == "live"
    assert data["live_shed_to_stop_bidding_s"]["rounds"] == 1
    assert data["baseline"]["minutes_over_limit"] >= data["minutes_over_limit"]


def test_bench_cli_rejects_bad_input() -> None:
    result = CliRunner().invoke(app, ["bench", "power", "--hours", "30"])
    assert result.exit_code == 2
    assert "--hours" in result.output


def test_power_status_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    override = tmp_path / "override"
    override.write_text("draining")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[power.tariff]\ndefault = 0.1\n[power.override]\nfile = "{override}"\n')
    result = CliRunner().invoke(app, ["power", "status", "--config", str(cfg), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (
        out["state"] == "draining"
        and out["may_bid"] is False
        and "override=draining" in out["reasons"]
    )
    cfg.write_text("[power.governor]\nmax_concurrency = 0\n")
    bad = CliRunner().invoke(app, ["power", "status", "--config", str(cfg)])
    assert bad.exit_code == 2 and "concurrency" in bad.output
