"""`hearth verify …` (checking providers' outputs) and `hearth bench verify`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from p2pnode.cli.errors import explained
from p2pnode.cli.market import ConfigOpt, _fail, _load


class _JobOrCommand(TyperGroup):
    """``hearth verify JOB_ID`` runs ``hearth verify job JOB_ID``; names of subcommands
    (``calibrate``) keep their meaning."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["job", *args]
        return super().resolve_command(ctx, args)


verify_app = typer.Typer(
    cls=_JobOrCommand,
    help="Verified inference: re-check a kept job (hearth verify JOB_ID), calibrate the "
    "rule's tolerances.",
    no_args_is_help=True,
)


@verify_app.command("job", hidden=True)
def verify_job(
    job_id: Annotated[
        str, typer.Argument(help="The job's id (hex), as results and the ledger show it.")
    ],
    config: ConfigOpt = Path("hearth.toml"),
) -> None:
    """Re-check a job this buyer kept evidence of: the provider's signature and hash
    chain, then a re-scoring by another provider of the model (a paid verification job),
    token by token."""
    import trio

    from market.ledger import Ledger
    from market.ledger.evidence import EvidenceStore
    from market.protocol.evidence import check_record
    from market.sdk.connect import open_buyer_client
    from market.sdk.verifier import VerifyError

    key = job_id.strip().lower().removeprefix("0x")
    if len(key) != 32 or any(c not in "0123456789abcdef" for c in key):
        _fail(f"a job id is 32 hex digits, got {job_id!r}")
    setup = _load("buyer", config)
    path = Path(setup.data_dir) / "buyer-ledger.sqlite"
    if not path.is_file():
        _fail(f"no buyer ledger at {path}: this buyer has bought nothing yet")
    ledger = Ledger(path)
    try:
        rows = EvidenceStore(ledger.db).for_job(key)
    finally:
        ledger.close()
    if not rows:
        _fail(f"no evidence kept for job {key} (kept for a window, see keep_evidence_s)")
    failed = False
    for row in rows:
        ev = row.evidence
        problems = check_record(ev)
        typer.echo(
            f"segment by {ev.provider}: {len(ev.token_ids)} tokens from position "
            f"{ev.resume_offset}, stated dtype {ev.claimed_dtype() or 'none'}; record {row.digest[:16]}…"
        )
        if problems:
            failed = True
            typer.echo("  signature / chain: FAILED: " + "; ".join(problems))
            continue
        typer.echo("  signature / chain: ok")

    async def rescore() -> bool:
        bad = False
        async with open_buyer_client(setup, verify_rate=0.0, verify_first=0) as client:
            with trio.move_on_after(30):
                while not client.catalog.provider_count(trio.current_time()):
                    await trio.sleep(0.2)
            for row in rows:
                try:
                    checked = await client.audit.verifier.check(row.evidence, avoid=set())
                except VerifyError as exc:
                    typer.echo(f"  {row.evidence.provider[-8:]}: not re-scored: {exc}")
                    bad = True
                    continue
                v = checked.verdict
                typer.echo(
                    f"  re-scored by {checked.verifier} (cost {checked.cost}): "
                    f"{'ok' if v.ok else 'FAILED'}: {v.detail}"
                )
                typer.echo("    pos   token  claimed_lp  verifier_lp  choice   margin  verdict")
                for t in v.tokens:
                    typer.echo(
                        f"    {t.position:>3} {t.token_id:>7} {t.claimed_logprob:>11.5f} "
                        f"{t.verifier_logprob:>12.5f} {t.choice:>7} {t.margin:>8.4f}  {t.reason}"
                    )
                bad = bad or not v.ok
        return bad

    with explained(rpc_url=setup.rpc_url):
        failed = trio.run(rescore) or failed
    raise typer.Exit(1 if failed else 0)


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
