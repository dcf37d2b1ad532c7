"""A buyer's money through the CLI on a real chain: deposit, notice, execute, cancel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.localnet import LocalMarket

runner = CliRunner()


@pytest.fixture
def buyer(tmp_path: Path) -> Iterator[tuple[LocalMarket, Path]]:
    m = LocalMarket(tmp_path, deposit=50 * 10**6)  # 50 hUSD, withdrawal notice 1 h
    try:
        m.start_chain()
        ident = m.add_identity("buyer", provider=False)
        m.bootstrap = f"/ip4/127.0.0.1/tcp/9/p2p/{ident.peer_id}"  # never dialled here
        yield m, m.config_for("buyer")
    finally:
        m.stop()


def run(m: LocalMarket, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=m.env)
    return result.exit_code, result.output


def balance(m: LocalMarket, cfg: Path) -> dict[str, Decimal]:
    code, out = run(m, "balance", "--config", str(cfg), "--json")
    assert code == 0, out
    doc = json.loads(out)
    return {k: Decimal(doc[k]) for k in ("wallet", "deposit", "pending_withdrawal")}


def test_notice_then_execute_after_the_delay_and_cancel(buyer: tuple[LocalMarket, Path]) -> None:
    m, cfg = buyer
    c = str(cfg)
    assert balance(m, cfg)["deposit"] == 50
    code, out = run(m, "withdraw", "--execute", "--config", c)
    assert code == 2 and "no withdrawal notice is pending" in out

    code, out = run(m, "withdraw", "5", "--config", c)
    assert code == 0 and "--execute" in out
    assert balance(m, cfg)["pending_withdrawal"] == 5
    code, out = run(m, "withdraw", "--execute", "--config", c)
    assert code == 2 and "the notice ends in" in out  # an hour's notice: nothing moved
    assert balance(m, cfg)["deposit"] == 50

    m.admin.w3.provider.make_request("evm_increaseTime", [3601])  # anvil: an hour later
    m.admin.w3.provider.make_request("evm_mine", [])
    wallet = balance(m, cfg)["wallet"]
    code, out = run(m, "withdraw", "--execute", "--config", c)
    assert code == 0 and "withdrew 5.000000 hUSD" in out
    after = balance(m, cfg)
    assert after["deposit"] == 45 and after["pending_withdrawal"] == 0
    assert after["wallet"] == wallet + 5

    assert run(m, "withdraw", "2", "--config", c)[0] == 0
    code, out = run(m, "withdraw", "--cancel", "--config", c)
    assert code == 0 and "cancelled" in out
    assert balance(m, cfg)["pending_withdrawal"] == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "give an AMOUNT"),
        (("3", "--execute"), "give an AMOUNT"),
        (("--execute", "--cancel"), "not both"),
    ],
)
def test_withdraw_flags_are_checked_before_anything_loads(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["withdraw", *args, "--config", str(tmp_path / "no.toml")])
    assert result.exit_code == 2 and says in result.output


def test_a_deposit_larger_than_the_wallet_says_so_once(buyer: tuple[LocalMarket, Path]) -> None:
    m, cfg = buyer
    held = balance(m, cfg)["wallet"]
    code, out = run(m, "deposit", str(held + 1), "--config", str(cfg))
    assert code == 2 and f"holds only {held}" in out
    assert len(out.strip().splitlines()) == 1, out  # not followed by a second, garbled error
