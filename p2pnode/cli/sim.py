"""`hearth sim`: the deterministic market simulator, and `hearth bench sim-scaling`.

    hearth sim --providers 1000 --jobs 10000 --seed 7 --crash-rate 0.1 --freeze-rate 0.05
    hearth sim --providers 10000 --jobs 100000 --json
    hearth bench sim-scaling --json          # messages per job from 100 to 10,000 providers

A run that breaks an invariant stops, prints the violation and the exact command that
reproduces it, and exits with status 1.
"""

from __future__ import annotations

import json
from typing import Any

import typer


def _table(j: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"hearth sim — {j['providers']} providers, {j['buyers']} buyers, seed {j['seed']}"
    )
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("jobs completed", str(j["jobs_completed"]))
    t.add_row("jobs failed", str(j["jobs_failed"]))
    for reason, n in j["failed_by_reason"].items():
        t.add_row(f"  failed: {reason}", str(n))
    t.add_row("jobs lost (failed while a provider was free)", str(j["jobs_lost"]))
    t.add_row("award latency p50 / p95 (ms)", f"{j['award_ms']['p50']} / {j['award_ms']['p95']}")
    t.add_row(
        "messages per job (direct + gossip)",
        f"{j['messages_per_job']} ({j['direct_messages_per_job']} + {j['gossip_messages_per_job']})",
    )
    t.add_row("bids per job", str(j["bids_per_job"]))
    t.add_row("failovers", str(j["failovers"]))
    t.add_row("crashes / freezes", f"{j['crashes']} / {j['freezes']}")
    t.add_row("simulated events", str(j["events"]))
    t.add_row("simulated time (s)", str(j["sim_time_s"]))
    t.add_row("simulated events per second (wall)", str(j["events_per_s"]))
    t.add_row("wall time (s)", str(j["wall_s"]))
    t.add_row("invariant violations", str(j["invariant_violations"]))
    Console().print(t)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth sim` and `hearth bench sim-scaling`."""

    @app.command("sim")
    def sim(
        providers: int = typer.Option(1000, help="Number of provider nodes."),
        buyers: int = typer.Option(0, help="Number of buyers (0 = providers / 10, at least 4)."),
        jobs: int = typer.Option(10000, help="Jobs to run to completion."),
        seed: int = typer.Option(1, help="The one seed that drives every random choice."),
        crash_rate: float = typer.Option(0.0, help="Fraction of providers that crash (0..1)."),
        freeze_rate: float = typer.Option(0.0, help="Fraction of providers that freeze (0..1)."),
        loss: float = typer.Option(0.0, help="Message loss probability (0..0.5)."),
        partitions: int = typer.Option(0, help="Random region-pair partitions during the run."),
        rate: float = typer.Option(
            0.12, help="Job arrivals per provider per second (raise it to overload the market)."
        ),
        inject: str = typer.Option(
            "", help="Deliberate bug to test the checker: overpay, lose_outcome."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    ) -> None:
        """Simulate the market with the node's real job machines; check invariants every event."""
        from market.sim import SimConfig, run

        try:
            cfg = SimConfig(
                providers=providers,
                buyers=buyers,
                jobs=jobs,
                seed=seed,
                crash_rate=crash_rate,
                freeze_rate=freeze_rate,
                loss=loss,
                partitions=partitions,
                jobs_per_provider_s=rate,
                inject=inject,
            )
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        if partitions < 0:
            typer.echo("error: --partitions must be >= 0", err=True)
            raise typer.Exit(2)
        report = run(cfg)
        j = report.as_json()
        if as_json:
            typer.echo(json.dumps(j))
        else:
            _table(j)
        if report.violations:
            v = report.violations[0]
            typer.echo(
                f"INVARIANT VIOLATED: {v.invariant} at t={v.time:.6f}s (event {v.event_index}): "
                f"{v.detail}\nreproduce with: {cfg.command()}",
                err=True,
            )
            raise typer.Exit(1)

    @bench.command("sim-scaling")
    def sim_scaling(
        sizes: str = typer.Option(
            "100,300,1000,3000,10000", help="Provider counts, comma-separated."
        ),
        jobs_per_provider: float = typer.Option(2.0, help="Jobs per provider in each run."),
        seed: int = typer.Option(1),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Messages per job as the network grows (should stay flat)."""
        from market.sim import SimConfig, run

        try:
            ns = [int(x) for x in sizes.split(",") if x.strip()]
            if not ns or min(ns) < 1:
                raise ValueError
        except ValueError:
            typer.echo("error: --sizes must be positive integers, e.g. 100,1000", err=True)
            raise typer.Exit(2) from None
        rows = []
        for n in ns:
            r = run(SimConfig(providers=n, jobs=max(100, int(n * jobs_per_provider)), seed=seed))
            j = r.as_json()
            rows.append(
                {
                    "providers": n,
                    "jobs": j["jobs"],
                    "messages_per_job": j["messages_per_job"],
                    "direct_messages_per_job": j["direct_messages_per_job"],
                    "gossip_messages_per_job": j["gossip_messages_per_job"],
                    "bids_per_job": j["bids_per_job"],
                    "award_ms_p50": j["award_ms"]["p50"],
                    "invariant_violations": j["invariant_violations"],
                    "wall_s": j["wall_s"],
                }
            )
        first, last = rows[0]["messages_per_job"], rows[-1]["messages_per_job"]
        out = {"rows": rows, "growth_ratio": round(last / first, 3) if first else None}
        if as_json:
            typer.echo(json.dumps(out))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title="messages per job vs providers")
        for col in rows[0]:
            t.add_column(col, justify="right")
        for row in rows:
            t.add_row(*(str(v) for v in row.values()))
        Console().print(t)
        Console().print(f"growth ratio (last/first): {out['growth_ratio']}")
