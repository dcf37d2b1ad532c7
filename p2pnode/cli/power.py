"""``hearth power status`` and ``hearth bench power``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add this area's commands to `app` and its benchmarks to `bench`."""
    power = typer.Typer(
        help="The power governor: what the house lets the node do.", no_args_is_help=True
    )
    app.add_typer(power, name="power")

    @power.command("status")
    def status(
        config: Path = typer.Option(
            ..., "--config", help="Node config (hearth.toml) with a \\[power] section."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Read the \\[power] section and print the policy its file/tariff inputs give now."""
        import datetime as dt
        import time

        from market.config import ConfigError, load_config
        from p2pnode.power.governor import Governor, GovernorConfig, TariffReading
        from p2pnode.power.sources import (
            TariffSchedule,
            read_demand_response_file,
            read_override_file,
        )

        try:
            section = load_config(config).power.as_mapping()
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        try:
            gov = Governor(GovernorConfig.from_mapping(section.get("governor", {})))
            if "tariff" in section:
                price = TariffSchedule.from_mapping(section["tariff"]).price_at(dt.datetime.now())
                gov.observe(TariffReading(at=0.0, price_per_kwh=price))
            if "file" in section.get("demand_response", {}):
                gov.observe(
                    read_demand_response_file(Path(section["demand_response"]["file"]), at=0.0)
                )
            if "file" in section.get("override", {}):
                gov.observe(read_override_file(Path(section["override"]["file"]), at=0.0))
        except (OSError, ValueError, TypeError) as exc:
            typer.echo(f"error: {config}: [power]: {exc}", err=True)
            raise typer.Exit(2) from None
        p = gov.step(0.0, running_jobs=1)
        out = {
            "state": p.state.wire,
            "may_bid": p.may_bid,
            "max_concurrency": p.max_concurrency,
            "price_multiplier": round(p.price_multiplier, 4),
            "reasons": list(p.reasons),
            "note": "panel not read by this command (live only in the node)"
            if "span" in section
            else None,
            "at_unix": time.time(),
        }
        typer.echo(json.dumps(out) if json_out else "\n".join(f"{k}: {v}" for k, v in out.items()))

    @bench.command("power")
    def bench_power(
        json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
        seed: int = typer.Option(1, help="Seed of the synthetic household day."),
        hours: float = typer.Option(24.0, help="Replay the last HOURS of the day (1..24)."),
        live_rounds: int = typer.Option(5, help="Live MQTT shed→stop-bidding rounds (0 = skip)."),
    ) -> None:
        """A household day on a 200 A panel, with and without the governor."""
        if not 1.0 <= hours <= 24.0 or live_rounds < 0:
            typer.echo("error: --hours must be in 1..24 and --live-rounds >= 0", err=True)
            raise typer.Exit(2)
        from p2pnode.power.bench import run_power_bench

        r = run_power_bench(seed=seed, hours=hours, live_rounds=live_rounds)
        if json_out:
            typer.echo(json.dumps(r))
            return
        from rich.console import Console
        from rich.table import Table

        g, b = r["governed"], r["baseline"]
        t = Table(
            title=f"household day (seed {seed}, {hours:g} h, limit {r['panel_limit_w'] / 1000:.1f} kW)"
        )
        for col in ("metric", "governor", "no governor", "target"):
            t.add_column(col)
        rows = [
            ("minutes over limit", g["minutes_over_limit"], b["minutes_over_limit"], "0"),
            ("seconds over limit", g["seconds_over_limit"], b["seconds_over_limit"], ""),
            (
                "house alone: minutes over",
                g["house_alone_minutes_over_limit"],
                b["house_alone_minutes_over_limit"],
                "",
            ),
            (
                "peak main (kW)",
                f"{g['peak_main_w'] / 1000:.2f}",
                f"{b['peak_main_w'] / 1000:.2f}",
                "",
            ),
            ("shed events", g["shed_events"], "-", ""),
            ("shed → stop bidding (s, sim)", g["shed_to_stop_bidding_s"], "-", "< 2"),
            (
                "shed → stop bidding (s, live max)",
                r["live_shed_to_stop_bidding_s"]["max"],
                "-",
                "< 2",
            ),
            ("shed → GPU idle (s)", g["shed_to_idle_s"], "-", "< 30"),
            ("jobs accepted", g["jobs_accepted"], b["jobs_accepted"], ""),
            ("jobs handed off", g["jobs_handed_off"], b["jobs_handed_off"], ""),
            ("jobs lost", g["jobs_lost"], b["jobs_lost"], "0"),
            ("energy (kWh)", f"{g['energy_kwh']:.2f}", f"{b['energy_kwh']:.2f}", ""),
            ("energy cost", f"{g['energy_cost']:.2f}", f"{b['energy_cost']:.2f}", ""),
            ("earnings", f"{g['earnings']:.2f}", f"{b['earnings']:.2f}", ""),
        ]
        for row in rows:
            t.add_row(*(f"{x:.4f}" if isinstance(x, float) else str(x) for x in row))
        Console().print(t)
        if r["live_error"]:
            typer.echo(f"live latency not measured: {r['live_error']}")
