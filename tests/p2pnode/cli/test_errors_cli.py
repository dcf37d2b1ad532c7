"""Failures speak to a person: what went wrong and what to do, never a Python class name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.cli.errors import explain

runner = CliRunner()
PASSPHRASE = "correct horse battery staple"
CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(?:Error|Exception|Unavailable)\b")


def run(*args: str, passphrase: str = PASSPHRASE) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"HEARTH_PASSPHRASE": passphrase})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def _person(out: str) -> str:
    assert out.startswith("error: ") and "Traceback" not in out, out
    assert not CLASS_NAME.search(out), out
    return out


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    """A buyer's and node's config, ready but for a chain: nothing listens on its URL."""
    from market.chain.deployment import Deployment
    from market.identity import init_keystore

    addr = "0x" + "11" * 20
    Deployment(
        chain_id=31337, payment_hub=addr, provider_registry=addr, token=addr,
        token_symbol="hUSD", token_decimals=6, deployer=addr, treasury=addr, arbiter=addr,
        block_number=1, fee_bps=100, withdrawal_delay_s=3600, min_stake=1, unbonding_delay_s=60,
    ).save(tmp_path / "deployment.json")  # fmt: skip
    init_keystore(tmp_path / "keystore", PASSPHRASE, scrypt_n=2)
    path = tmp_path / "hearth.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path}"\n'
        f'[identity]\nkeystore = "{tmp_path / "keystore"}"\n'
        f'[chain]\nrpc_url = "http://127.0.0.1:9"\ndeployment = "{tmp_path / "deployment.json"}"\n'
    )
    return path


def test_a_wrong_passphrase_names_the_keystore_and_where_the_passphrase_came_from(
    cfg: Path,
) -> None:
    for command in (("balance",), ("node",), ("deposit", "1"), ("unlock",)):
        code, out = run(*command, "--config", str(cfg), passphrase="not it")
        assert code == 2, command
        assert "wrong passphrase for the keystore at" in _person(out)
        assert "$HEARTH_PASSPHRASE" in out and str(cfg.parent / "keystore") in out


@pytest.mark.parametrize(
    "command",
    [("balance",), ("deposit", "1"), ("withdraw", "1"), ("node", "redeem"), ("unlock",)],
)
def test_an_unreachable_chain_is_named_with_its_url(cfg: Path, command: tuple[str, ...]) -> None:
    code, out = run(*command, "--config", str(cfg))
    assert code == 2
    assert "cannot reach the chain at http://127.0.0.1:9" in _person(out)
    assert "chain.rpc_url" in out
    assert len(out.strip().splitlines()) == 1, out


def test_a_missing_deployment_file_says_how_to_get_one(cfg: Path) -> None:
    (cfg.parent / "deployment.json").unlink()
    code, out = run("balance", "--config", str(cfg))
    assert code == 2 and "chain.deployment" in _person(out)
    assert "hearth chain deploy" in out and "market's operator" in out


def test_a_broken_deployment_file_says_what_is_wrong_with_it(cfg: Path) -> None:
    (cfg.parent / "deployment.json").write_text('{"chain_id": 1}')
    code, out = run("balance", "--config", str(cfg))
    assert code == 2 and "not a usable deployment file" in _person(out)
    assert "payment_hub" in out  # the fields it lacks


def test_a_missing_keystore_says_how_to_make_one(cfg: Path) -> None:
    import shutil

    shutil.rmtree(cfg.parent / "keystore")
    code, out = run("node", "--config", str(cfg))
    assert code == 2 and "hearth identity init" in _person(out)


def test_explain_speaks_for_the_chain_and_leaves_bugs_their_traceback() -> None:
    from market.chain.errors import ChainUnavailable, ContractReverted, TransactionDropped

    reverted = ContractReverted("PaymentHubWithdrawalNotReady", (100, 42), b"")
    assert explain(reverted) == "the PaymentHub refused: withdrawal not ready (100, 42)"
    assert "may still be mined" in (explain(TransactionDropped(b"\x01" * 32, "late")) or "")
    down = ChainUnavailable(
        "cannot reach http://h:1: HTTPConnectionPool(host='h', port=1): Max retries exceeded "
        "(Caused by NewConnectionError('<urllib3.connection.HTTPConnection object at 0x7f>: "
        "Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    said = explain(down, rpc_url="http://h:1")
    assert said == (
        "cannot reach the chain at http://h:1 (Connection refused): is it running, "
        "and is chain.rpc_url right?"
    )
    grouped = ExceptionGroup("trio", [ExceptionGroup("inner", [down])])
    assert explain(grouped, rpc_url="http://h:1") == said  # trio's nurseries wrap failures
    assert explain(FileNotFoundError(2, "No such file or directory", "/x")) == (
        "/x: No such file or directory"
    )
    assert explain(KeyError("bug")) is None  # not a failure we expect: keep the traceback
    assert explain(ExceptionGroup("trio", [down, KeyError("bug")])) is None
