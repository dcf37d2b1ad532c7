"""hearth.toml: defaults, the example file, and error messages naming key, value, expectation."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from market.config import ConfigError, HearthConfig, example_config, load_config, parse_config


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(p) for p in info.value.problems]


def test_defaults_and_empty_file() -> None:
    cfg = parse_config("")
    assert cfg == HearthConfig() == load_config(None)
    assert cfg.serving.device == "auto"
    assert cfg.chain.rpc_url == "embedded"
    assert cfg.gateway.host == "127.0.0.1"
    assert cfg.identity.passphrase_env == "HEARTH_PASSPHRASE"
    assert cfg.path(cfg.identity.keystore).is_absolute()


def test_example_documents_every_key_and_parses_to_defaults() -> None:
    text = example_config()
    assert parse_config(text) == HearthConfig()
    data = tomllib.loads(text)
    for section in dataclasses.fields(HearthConfig):
        keys = {f.name for f in dataclasses.fields(getattr(HearthConfig(), section.name))}
        assert set(data[section.name]) == keys
        for key in keys:
            # Each key is preceded by its documentation and expectation.
            block = text.split(f"\n{key} = ")[0].rsplit("\n\n", 1)[-1]
            assert block.startswith("# ") and "# Expected:" in block, key


def test_a_full_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "hearth.toml"
    path.write_text(
        """
[node]
name = "attic"
region = "us-west"
[network]
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001"]
bootstrap = ["/ip4/198.51.100.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]
[market]
price_per_1k = 120000000000000000000000
margin = 1
electricity_price_per_kwh = 0.31
[serving]
models = ["~/models/smollm2.gguf"]
device = "cpu"
[chain]
rpc_url = "http://127.0.0.1:8545"
[power]
demand_response = { file = "/run/hearth/dr.json" }
tariff = { default = 0.3 }
"""
    )
    cfg = load_config(path)
    assert cfg.node.name == "attic"
    assert cfg.network.listen[1] == "/ip6/::/tcp/4001"
    assert cfg.market.margin == 1.0 and isinstance(cfg.market.margin, float)
    assert cfg.market.price_per_1k == 120000000000000000000000
    assert cfg.serving.models == ("~/models/smollm2.gguf",)
    assert cfg.power.demand_response == {"file": "/run/hearth/dr.json"}
    assert cfg.power.as_mapping() == {
        "tariff": {"default": 0.3},
        "demand_response": {"file": "/run/hearth/dr.json"},
    }


@pytest.mark.parametrize(
    ("text", "key", "value", "expected"),
    [
        ("[market]\nmargin = -1", "market.margin", "-1", "a number between 0.0 and 100.0"),
        ('[market]\nchunk_tokens = "16"', "market.chunk_tokens", '"16"', "an integer between 1"),
        ("[market]\nchunk_tokens = 2000", "market.chunk_tokens", "2000", "between 1 and 1024"),
        ("[market]\nbid_window_ms = 1.5", "market.bid_window_ms", "1.5", "an integer"),
        ('[serving]\ndevice = "tpu"', "serving.device", '"tpu"', 'one of "auto", "cpu", "cuda"'),
        ("[serving]\nmax_batch = true", "serving.max_batch", "true", "an integer"),
        ("[gateway]\nport = 70000", "gateway.port", "70000", "between 1 and 65535"),
        ('[chain]\nrpc_url = "ftp://x"', "chain.rpc_url", '"ftp://x"', "an http(s)://"),
        ('[market]\ncurrency_token = "0x12"', "market.currency_token", '"0x12"', "20-byte hex"),
        (
            '[network]\nbootstrap = ["/ip4/1.2.3.4/tcp/4001"]',
            "network.bootstrap",
            '["/ip4/1.2.3.4/tcp/4001"]',
            "/p2p/<peer id>",
        ),
        (
            '[network]\nlisten = "/ip4/0.0.0.0/tcp/1"',
            "network.listen",
            '"/ip4/',
            "a list of strings",
        ),
        (
            '[identity]\npassphrase_env = "MY-VAR"',
            "identity.passphrase_env",
            '"MY-VAR"',
            "variable name",
        ),
        ("[power]\ntariff = 3", "power.tariff", "3", "a table"),
        ("node = 3", "node", "3", "a [node] table"),
    ],
)
def test_error_names_key_value_and_expectation(
    text: str, key: str, value: str, expected: str
) -> None:
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].startswith(f"{key} = {value}")
    assert expected in problems[0]


def test_unknown_keys_and_sections_get_did_you_mean() -> None:
    problems = _problems('[node]\ndta_dir = "x"\n[netwrk]\nlisten = []')
    assert problems[0].startswith('node.dta_dir = "x": expected a known key')
    assert "did you mean 'data_dir'" in problems[0]
    assert problems[1].startswith("netwrk = ")
    assert "did you mean 'network'" in problems[1]


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[market]\nmargin = -1\ncredit_chunks = 0\n[serving]\ndevice = "gpu"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "3 problem(s)" in message
    for needle in ("market.margin = -1", "market.credit_chunks = 0", 'serving.device = "gpu"'):
        assert needle in message


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    problems = _problems("[node\nname = 1")
    assert "valid TOML" in problems[0] and "line 1" in problems[0]
    with pytest.raises(ConfigError, match="an existing file"):
        load_config(tmp_path / "absent.toml")


def test_the_price_floor_has_one_limit_shared_with_the_dashboard() -> None:
    from market.config import MAX_PRICE_PER_1K
    from p2pnode.node import dashboard

    assert dashboard.MAX_PRICE_PER_1K is MAX_PRICE_PER_1K  # the same constant, not a copy
    ok = parse_config(f"[market]\nprice_per_1k = {MAX_PRICE_PER_1K}\n")
    assert ok.market.price_per_1k == MAX_PRICE_PER_1K
    (problem,) = _problems(f"[market]\nprice_per_1k = {10**30}\n")
    assert "market.price_per_1k" in problem and str(MAX_PRICE_PER_1K) in problem
