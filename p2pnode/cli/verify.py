"""`hearth verify …` (checking providers' outputs) and `hearth bench verify`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer

verify_app = typer.Typer(
    help="Verified inference: calibrate the rule's tolerances, check kept jobs.",
    no_args_is_help=True,
)


@verify_app.command("calibrate")
def calibrate(
    out: Annotated[
        Path,
        typer.Option(help="Where to write the tolerances (JSON)."),
    ] = Path("tolerances.json"),
    jobs: Annotated[int, typer.Option(min=2, max=1000, help="Jobs per honest set-up.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the job set.")] = 16,
    safety: Annotated[
        float, typer.Option(min=1.0, max=100.0, help="Factor over the largest honest value.")
    ] = 2.0,
) -> None:
    """Measure honest variation (fp32/bf16, threads, batch mix, attention path) on the
    bundled SmolLM2 and write the tolerances of the verification rule."""
    from p2pnode.bench_verify import calibrate as run

    table = run(jobs=jobs, seed=seed, safety=safety, log=lambda line: typer.echo(line, err=True))
    out.write_text(table.to_json() + "\n", encoding="utf-8")
    for t in table.entries:
        bounds = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("model_id", "dtype")}
        typer.echo(f"{t.dtype}: {json.dumps(bounds)}")
    typer.echo(f"wrote {out}")


def bench_verify(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    jobs: Annotated[int, typer.Option(min=2, max=10_000, help="Jobs per row.")] = 24,
    seed: Annotated[int, typer.Option(help="Seed of the job set.")] = 1616,
    tolerances: Annotated[
        str | None, typer.Option(help="Tolerances file; default: the shipped one.")
    ] = None,
) -> None:
    """Detection matrix of the verification rule on SmolLM2: honest set-ups vs cheaters."""
    from p2pnode.bench_verify import run_bench_verify

    log = (lambda _line: None) if as_json else (lambda line: typer.echo(line, err=True))
    try:
        figures = run_bench_verify(jobs=jobs, seed=seed, tolerances=tolerances, log=log)
    except (OSError, ValueError, RuntimeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hearth bench verify — {jobs} jobs per row, {figures['model']}")
    for col in ("variant", "honest", "jobs", "flagged", "rate", "why"):
        table.add_column(col)
    for r in figures["rows"]:
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items()))
        table.add_row(
            r["variant"],
            str(r["honest"]),
            str(r["jobs"]),
            str(r["flagged"]),
            f"{r['rate']:.1%}",
            why,
        )
    Console().print(table)
    typer.echo(
        f"verify_cost_ratio {figures['verify_cost_ratio']:.3f} "
        f"(rescoring {figures['verify_s']:.1f} s / generating {figures['generate_s']:.1f} s)"
    )
    typer.echo(f"evidence_bytes_per_token {figures['evidence_bytes_per_token']:.2f}")
    typer.echo("cheater_jobs_served: null (measured in the local market, not here)")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth verify` (its subcommands) and `hearth bench verify`."""
    app.add_typer(verify_app, name="verify")
    bench.command("verify")(bench_verify)
