"""Bad input to the market commands: a clear message, exit 2, nothing changed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2pnode.cli.app import app

runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "args",
    [
        ("node", "--config", "missing.toml"),
        ("node", "status", "--config", "missing.toml"),
        ("node", "redeem", "--config", "missing.toml"),
        ("submit", "hello", "--config", "missing.toml"),
        ("balance", "--config", "missing.toml"),
        ("gateway", "--config", "missing.toml"),
    ],
)
def test_missing_config_is_named(args: tuple[str, ...], tmp_path: Path) -> None:
    code, out = run(*args[:-1], str(tmp_path / args[-1]))
    assert code == 2
    assert "no config file" in out and "hearth config example" in out


def test_invalid_config_names_key_value_and_expectation(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    cfg.write_text('[market]\nmargin = -1\n[chain]\nrpc_uri = "x"\n')
    code, out = run("balance", "--config", str(cfg))
    assert code == 2
    assert "market.margin" in out and "-1" in out
    assert "rpc_uri" in out and "rpc_url" in out  # did-you-mean


def test_embedded_chain_is_refused_by_check_and_commands_alike(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    cfg.write_text('[chain]\nrpc_url = "embedded"\n[identity]\nkeystore = "/nonexistent"\n')
    code, checked = run("config", "check", str(cfg))
    assert code == 2 and 'chain.rpc_url = "embedded"' in checked and "no node or buyer" in checked
    for command in (("submit", "hi"), ("node",), ("balance",)):
        code, out = run(*command, "--config", str(cfg))
        assert code == 2 and out == checked, command  # the same words as `config check`


@pytest.mark.parametrize("amount", ["abc", "-3", "0", "nan", "inf"])
def test_bad_amounts_are_refused_before_anything_loads(amount: str, tmp_path: Path) -> None:
    for command in ("deposit", "withdraw"):
        code, out = run(command, amount, "--config", str(tmp_path / "missing.toml"))
        assert code == 2
        assert "amount" in out
        assert "no config file" not in out  # refused before the config was even read


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "hi", "--max-tokens", "0"),
        ("generate", "hi", "--max-tokens", "0"),
        ("generate", "hi", "--max-tokens", "-5"),
        ("generate", "hi", "--top-p", "1.5"),
        ("generate", "hi", "--temperature", "-1"),
        ("submit", "hi", "--temperature", "-1"),
        ("gateway", "--port", "70000"),
        ("bench", "market", "--nodes", "0"),
        ("demo", "--max-tokens", "1"),
    ],
)
def test_out_of_range_flags_are_refused(args: tuple[str, ...]) -> None:
    code, out = run(*args)
    assert code == 2
    assert "Invalid value" in out or "not in the range" in out


def test_gateway_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    cfg.write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = run("gateway", "--config", str(cfg), "--port", str(port))
    assert code == 2
    assert len(out.strip().splitlines()) == 1, out
    assert f"127.0.0.1:{port}" in out and "in use" in out


def test_gateway_binds_where_the_config_says_unless_flags_say_otherwise(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg.write_text(f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n')
        code, out = run("gateway", "--config", str(cfg))  # no --port: [gateway] port
        assert code == 2 and f"127.0.0.1:{port}" in out and "in use" in out
        cfg.write_text(f'[gateway]\nhost = "no-such-host.invalid"\nport = {port}\n')
        code, out = run("gateway", "--config", str(cfg), "--host", "127.0.0.1")
        assert code == 2 and f"127.0.0.1:{port}" in out  # --host wins over the file
    cfg.write_text('[gateway]\nhost = "no-such-host.invalid"\n')
    code, out = run("gateway", "--config", str(cfg))
    assert code == 2 and "no-such-host.invalid:8000" in out  # the one default port: 8000


def test_gateway_help_names_the_config_as_the_default() -> None:
    code, out = run("gateway", "--help")
    assert code == 0 and "gateway.port" in out and "gateway.host" in out


def test_power_status_reads_the_config_as_every_command_does(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    cfg.write_text("[power]\ntarif = { default = 0.3 }\n")
    code, out = run("power", "status", "--config", str(cfg))
    assert code == 2 and "power.tarif" in out and "did you mean 'tariff'" in out
    cfg.write_text('[power]\noverride = { file = "/nonexistent/override" }\n')
    code, out = run("power", "status", "--config", str(cfg), "--json")
    assert code == 0 and '"state": "normal"' in out
