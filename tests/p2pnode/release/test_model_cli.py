"""`hearth model key new | publish | list` end to end on a small real model."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from p2pnode.cli.app import app
from p2pnode.release import (
    TRUST_STORE_FILE,
    TrustStore,
    check_directory,
    read_key_file,
    read_release,
)
from tests.p2pnode.release.factory import TREE, ModelDirs, file_tree

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "publisher.key"
    code, out, _ = run("model", "key", "new", str(path))
    assert code == 0, out
    return path


def test_key_new_writes_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    code, out, _ = run("model", "key", "new", str(path))
    assert code == 0 and path.stat().st_mode & 0o777 == 0o600
    assert f"public key  {read_key_file(path).public_bytes.hex()}" in out
    before = path.read_bytes()
    code, _, err = run("model", "key", "new", str(path))
    assert code == 2 and err.startswith("error: ") and "never overwritten" in err
    assert len(err.strip().splitlines()) == 1 and path.read_bytes() == before


def test_publish_then_list(models: ModelDirs, key_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "smol"
    shutil.copytree(models.v1, folder)
    start = time.time()
    code, out, err = run(
        "model", "publish", str(folder), "--key", str(key_file), "--name", "smol",
        "--version", "3", "--expires-days", "7",
    )  # fmt: skip
    assert code == 0, err
    path = folder / "smol-v3.hearth-release"
    release = read_release(path)
    m = release.manifest
    assert (m.name, m.version, m.dtype) == ("smol", 3, "bfloat16")
    assert m.content_address == models.address_v1  # the serving loader's address
    assert m.publisher == read_key_file(key_file).public_bytes
    assert start - 1 <= m.created_at <= time.time() and m.expires_at == m.created_at + 7 * 86_400
    assert [g.prompt for g in m.golden] and all(len(g.token_ids) == 16 for g in m.golden)
    assert [f.path for f in m.files] == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    check_directory(m, folder)  # every byte and the address, as a node checks it
    assert f"published smol v3 → {path}" in out
    assert f"content address  {models.address_v1}" in out
    assert (
        f"files            4, {m.total_size / 2**20:.1f} MiB in {m.chunk_count} chunks of 1.0 MiB"
        in out
    )
    assert "hashing 4 files" in err  # progress goes to stderr

    # The same version again, or a lower one, is refused before any work.
    code, _, err = run(
        "model", "publish", str(folder), "--key", str(key_file), "--name", "smol",
        "--version", "3", "--out", str(tmp_path / "again.hearth-release"),
    )  # fmt: skip
    assert code == 2 and "publish a version above 3" in err
    assert not (tmp_path / "again.hearth-release").exists()

    code, out, _ = run("model", "list", "--dir", str(tmp_path), "--json")
    assert code == 0
    (row,) = json.loads(out)["releases"]
    assert (row["name"], row["version"], row["content_address"]) == ("smol", 3, m.content_address)
    code, out, _ = run("model", "list", "--dir", str(tmp_path))
    assert code == 0 and "smol" in out and "bfloat16" in out

    # A node's trust store, found through its config.
    config = tmp_path / "hearth.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    code, out, _ = run("model", "list", "--config", str(config))
    assert code == 0 and "no releases in" in out
    (tmp_path / "data").mkdir()
    with TrustStore(tmp_path / "data" / TRUST_STORE_FILE, trusted=[m.publisher]) as store:
        store.accept(path.read_bytes(), directory=folder)
    code, out, _ = run("model", "list", "--config", str(config), "--json")
    assert code == 0
    (row,) = json.loads(out)["releases"]
    assert (row["name"], row["version"], row["publisher"]) == ("smol", 3, m.publisher.hex())


def test_list_shows_a_bad_manifest_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "broken.hearth-release").write_bytes(b"\x93\x01")
    code, out, _ = run("model", "list", "--dir", str(tmp_path), "--json")
    assert code == 0
    (row,) = json.loads(out)["releases"]
    assert row["error"].startswith("not a release manifest: ")


def _publish(folder: str, key: str, name: str = "smol") -> list[str]:
    return ["model", "publish", folder, "--key", key, "--name", name, "--version", "1"]


# (case, arguments from the tmp folder and a good key file, what the one error line says)
ERRORS: list[tuple[str, Callable[[Path, Path], list[str]], str]] = [
    (
        "a name a release cannot have",
        lambda t, k: _publish(f"{t}/model", str(k), name="../x"),
        "--name '../x': expected letters, digits and ._-",
    ),
    (
        "no key file",
        lambda t, k: _publish(f"{t}/model", f"{t}/missing.key"),
        "cannot read {t}/missing.key: No such file or directory",
    ),
    (
        "a key file others can read",
        lambda t, k: _publish(f"{t}/model", f"{t}/open.key"),
        "may be read by others (mode 644)",
    ),
    (
        "no such folder",
        lambda t, k: _publish(f"{t}/nowhere", str(k)),
        "{t}/nowhere is not a folder",
    ),
    (
        "a folder that is not a model",
        lambda t, k: _publish(f"{t}/files", str(k)),
        "{t}/files is not a model folder: no config.json",
    ),
    (
        "random bytes as weights",
        lambda t, k: _publish(f"{t}/model", str(k)),
        "{t}/model/model.safetensors is not a readable safetensors file",
    ),
]


@pytest.mark.parametrize(("case", "argv", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_publish_errors_are_one_line(
    tmp_path: Path,
    key_file: Path,
    case: str,
    argv: Callable[[Path, Path], list[str]],
    message: str,
) -> None:
    file_tree(tmp_path / "files", 1, TREE)
    file_tree(tmp_path / "model", 1, {**TREE, "config.json": 100})
    shutil.copy(key_file, tmp_path / "open.key")
    (tmp_path / "open.key").chmod(0o644)
    code, out, err = run(*argv(tmp_path, key_file))
    assert code == 2 and out == "", out
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert message.format(t=tmp_path) in err, err
    assert not list(tmp_path.rglob("*.hearth-release"))


def test_bad_flags_and_a_missing_config_are_refused(tmp_path: Path) -> None:
    for flag, value, message in (
        ("--version", "0", "--version 0: expected a whole number of 1 or more"),
        ("--expires-days", "0", "--expires-days 0: expected 1 to 3650"),
        ("--version", "x", "Invalid value for '--version'"),  # typer's own
    ):
        code, _, err = run(*_publish(str(tmp_path), "k"), flag, value)
        assert code == 2 and message in err, err
    code, _, err = run("model", "list", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and f"no config file at {tmp_path / 'none.toml'}" in err
    code, _, err = run("model", "list", "--dir", str(tmp_path / "none"))
    assert code == 2 and "is not a folder" in err
