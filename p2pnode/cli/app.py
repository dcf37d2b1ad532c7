"""The ``hearth`` command line: one root app, one module per area.

Each area module exposes ``register(app, bench)`` and adds its commands to the root
app and its benchmarks to ``hearth bench``. Heavy imports (torch, web3, libp2p) stay
inside the command functions so that ``hearth --help`` answers at once.
"""

from __future__ import annotations

import typer

from bootstrap import cli as bootstrap_cli
from p2pnode.cli import (
    chain,
    collateral,
    identity,
    market,
    model,
    net,
    power,
    serving,
    sim,
    verify,
)

app = typer.Typer(
    name="hearth",
    help=(
        "Hearth: a peer-to-peer market for AI inference on home GPUs.\n\n"
        "Homeowners run `hearth node`; buyers use `hearth submit`, the Python SDK or "
        "`hearth gateway` (OpenAI-compatible); bootstrap operators run `hearth bootstrap`."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench = typer.Typer(
    help="Benchmarks: each prints a table, or one JSON object with --json.",
    no_args_is_help=True,
)
app.add_typer(bench, name="bench")

for _area in (
    identity,
    serving,
    chain,
    sim,
    bootstrap_cli,
    net,
    market,
    collateral,
    power,
    verify,
    model,
):
    _area.register(app, bench)


def main() -> None:
    """Console-script entry point."""
    _configure_logging()
    app()


def _configure_logging() -> None:
    """Warnings and up by default; ``HEARTH_LOG=debug|info|…`` for more.

    (py-libp2p's own logger is quieted where it is imported: :mod:`p2pnode.net.host`.)
    """
    import logging
    import os

    level = os.environ.get("HEARTH_LOG", "").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


if __name__ == "__main__":
    main()
