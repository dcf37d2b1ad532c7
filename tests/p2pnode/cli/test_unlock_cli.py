"""`hearth unlock` on a real chain: a buyer gets back what it locked for a provider."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.localnet import LocalMarket

runner = CliRunner()
PROVIDER = "0x" + "ab" * 20


@pytest.fixture
def buyer(tmp_path: Path) -> Iterator[tuple[LocalMarket, Path]]:
    m = LocalMarket(tmp_path, deposit=50 * 10**6)  # 50 hUSD, notice 1 h
    try:
        m.start_chain()
        m.add_identity("buyer", provider=False)
        m.bootstrap = f"/ip4/127.0.0.1/tcp/9/p2p/{m.ids['buyer'].peer_id}"  # never dialled
        yield m, m.config_for("buyer")
    finally:
        m.stop()


def run(m: LocalMarket, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=m.env)
    return result.exit_code, result.output


def test_notice_then_execute_gives_the_lock_back(buyer: tuple[LocalMarket, Path]) -> None:
    m, cfg = buyer
    c = str(cfg)
    ident = m.ids["buyer"]
    hub = m.deployment.hub(m.admin.with_key(ident.eth_private_key))
    hub.lock(PROVIDER, m.deployment.token, 20 * 10**6)  # what the SDK does before an award
    code, out = run(m, "balance", "--config", c, "--json")
    assert code == 0 and json.loads(out)["deposit"] == "30.000000"
    code, out = run(m, "unlock", "--provider", PROVIDER, "--config", c, "--json")
    assert code == 0, out
    row = json.loads(out)["providers"][0]
    assert row["locked"] == "20.000000" and "notice given" in row["action"]
    code, out = run(m, "unlock", "--execute", "--provider", PROVIDER, "--config", c)
    assert code == 0 and "notice ends in" in out
    assert hub.collateral(ident.eth_address, PROVIDER, m.deployment.token).locked == 20 * 10**6
    m.admin.w3.provider.make_request("evm_increaseTime", [3601])  # anvil: an hour later
    m.admin.w3.provider.make_request("evm_mine", [])
    code, out = run(m, "unlock", "--execute", "--provider", PROVIDER, "--config", c)
    assert code == 0 and "released" in out
    assert hub.collateral(ident.eth_address, PROVIDER, m.deployment.token).locked == 0
    assert hub.balance_of(ident.eth_address, m.deployment.token) == 50 * 10**6


def test_a_bad_provider_address_is_refused(buyer: tuple[LocalMarket, Path]) -> None:
    m, cfg = buyer
    code, out = run(m, "unlock", "--provider", "0x12", "--config", str(cfg))
    assert code == 2 and "20-byte address" in out
