"""Start a node built for a test (the real node with one change, e.g. ``cheating_node.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from p2pnode.localnet import LocalMarket, NodeProc


def start_patched_node(market: LocalMarket, name: str, script: str) -> NodeProc:
    """Run ``script`` (beside this module, taking a hearth.toml path) as ``name``'s node,
    wait until it serves, and leave it to ``market`` to stop."""
    market.add_identity(name, provider=True)
    cfg = market.config_for(name)
    log = open(market.dir / name / "node.log", "ab")  # noqa: SIM115 - lives with the process
    popen = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name(script)), str(cfg)],
        stdout=log,
        stderr=log,
        env=market.env,
    )
    proc = NodeProc(name, popen, market.dir / name)
    market.procs.append(proc)
    market.wait_serving([proc])
    return proc
