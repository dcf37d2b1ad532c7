"""`hearth identity …` and `hearth config …` end to end, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from p2pnode.cli.app import app

runner = CliRunner()
N = ["--scrypt-n", "1024"]


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, args, env=env)
    return result.exit_code, result.stdout, result.stderr


def test_init_show_export_import_round_trip(tmp_path: Path) -> None:
    env = {"HEARTH_PASSPHRASE": "pw one"}
    ks = str(tmp_path / "ks")
    code, out, _ = _run(["identity", "init", "--keystore", ks, *N], env)
    assert code == 0, out
    peer_id = out.split("peer id")[1].split()[0]
    address = out.split("eth address")[1].split()[0]
    assert peer_id.startswith("12D3KooW") and address.startswith("0x")

    code, out, _ = _run(["identity", "show", "--keystore", ks, "--unlock", "--json"], env)
    doc = json.loads(out)
    assert code == 0 and doc["binding_verified"] and doc["keys_unlocked"]
    assert (doc["peer_id"], doc["eth_address"]) == (peer_id, address)

    code, _, err = _run(["identity", "init", "--keystore", ks, *N], env)
    assert code == 2 and "already exists" in err and "--force" in err

    backup = str(tmp_path / "backup.json")
    code, out, _ = _run(["identity", "export", "--keystore", ks, "--out", backup, *N], env)
    assert code == 0 and os.path.exists(backup)

    restored = str(tmp_path / "restored")
    code, _, err = _run(
        ["identity", "import", backup, "--keystore", restored, *N], {"HEARTH_PASSPHRASE": "nope"}
    )
    assert code == 2 and "wrong passphrase" in err
    code, out, _ = _run(["identity", "import", backup, "--keystore", restored, *N], env)
    assert code == 0 and peer_id in out and address in out
    code, out, _ = _run(["identity", "show", "--keystore", restored, "--json"], env)
    assert json.loads(out)["peer_id"] == peer_id


def test_keystore_and_passphrase_env_from_config(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.toml"
    cfg.write_text(f'[identity]\nkeystore = "{tmp_path / "fromcfg"}"\npassphrase_env = "MY_PW"\n')
    code, out, _ = _run(["identity", "init", "--config", str(cfg), *N], {"MY_PW": "x"})
    assert code == 0, out
    assert (tmp_path / "fromcfg" / "binding.json").exists()


def test_clear_errors_without_tracebacks(tmp_path: Path) -> None:
    code, _, err = _run(["identity", "show", "--keystore", str(tmp_path / "none")])
    assert code == 2 and "no keystore" in err and "hearth identity init" in err
    code, _, err = _run(
        ["identity", "show", "--keystore", str(tmp_path / "none"), "--unlock"],
        {"HEARTH_PASSPHRASE": ""},
    )
    assert code == 2 and "Traceback" not in err
    # No env var and no terminal: a message, not a hang or a traceback.
    code, _, err = _run(
        ["identity", "init", "--keystore", str(tmp_path / "k"), *N], {"HEARTH_PASSPHRASE": ""}
    )
    assert code == 2 and "HEARTH_PASSPHRASE" in err
    code, _, err = _run(
        ["identity", "import", str(tmp_path / "absent.json"), "--keystore", str(tmp_path / "k2")]
    )
    assert code == 2 and "no backup file" in err


def test_config_example_and_check(tmp_path: Path) -> None:
    code, example, _ = _run(["config", "example"])
    assert code == 0 and "[market]" in example and "# Expected:" in example
    good = tmp_path / "hearth.toml"
    good.write_text(example)
    code, out, _ = _run(["config", "check", str(good)])
    assert code == 0 and "is valid" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[serving]\ndevice = "tpu"\nmax_bach = 4\n')
    code, _, err = _run(["config", "check", str(bad)])
    assert code == 2
    assert 'serving.device = "tpu": expected one of "auto", "cpu", "cuda"' in err
    assert "did you mean 'max_batch'" in err


def test_help_is_clear_and_cheap() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "p2pnode.cli.app", "identity", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for word in ("init", "show", "export", "import", "HEARTH_PASSPHRASE"):
        assert word in out
