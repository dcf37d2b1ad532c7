"""`hearth chain deploy/info` against anvil, and the gas benchmark's shape and target."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from market.chain.gasbench import measure_gas


def _hearth(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pnode.cli.app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_deploy_then_info_on_anvil(anvil_rpc_url: str, tmp_path: Path) -> None:
    out = tmp_path / "deployment.json"
    done = _hearth(
        "chain", "deploy", "--rpc-url", anvil_rpc_url, "--out", str(out), "--fee-bps", "50"
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert data["chain_id"] == 31337 and data["fee_bps"] == 50 and data["token_decimals"] == 6
    info = _hearth("chain", "info", "--deployment", str(out), "--rpc-url", anvil_rpc_url, "--json")
    assert info.returncode == 0, info.stderr
    live = json.loads(info.stdout)["live"]
    assert live["fee_bps"] == 50 and live["accrued_fees"] == 0


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    both = _hearth("chain", "deploy", "--out", str(tmp_path / "x.json"))
    assert (
        both.returncode == 2 and "exactly one of" in both.stderr and "Traceback" not in both.stderr
    )
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    info = _hearth("chain", "info", "--deployment", str(bad))
    assert (
        info.returncode == 2
        and "not a JSON object" in info.stderr
        and "Traceback" not in info.stderr
    )
    unreachable = _hearth(
        "chain", "deploy", "--rpc-url", "http://127.0.0.1:9", "--out", str(tmp_path / "y.json")
    )
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


def test_gas_benchmark_small_run_beats_naive() -> None:
    result = measure_gas(jobs=(1, 10, 100), buyers=(3,), naive_samples=3)
    assert set(result["gas_per_job"]) == {"1", "10", "100"}
    # one redemption costs the same whatever the number of jobs it settles
    assert max(result["redeem_gas"].values()) - min(result["redeem_gas"].values()) < 1_000
    assert result["gas_per_job"]["100"] <= 1_000  # the target
    assert result["gas_per_job"]["10"] < result["naive_gas_per_job"] / 5
    assert 0 < result["redeem_many_gas_per_buyer"]["3"] < result["naive_gas_per_job"]
