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
    assert cfg.chain.rpc_url == ""  # the one key to fill in: see test_example_says_what_to_fill_in
    assert cfg.gateway.port == 8000  # the one default of `hearth gateway --port`
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
model = "~/models/smollm2.gguf"
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
    assert cfg.serving.model == "~/models/smollm2.gguf"
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
        ("[gateway]\nport = 70000", "gateway.port", "70000", "between 0 and 65535"),
        ('[chain]\nrpc_url = "ftp://x"', "chain.rpc_url", '"ftp://x"', "an http(s)://"),
        ('[chain]\nrpc_url = "embedded"', "chain.rpc_url", '"embedded"', "no node or buyer can"),
        ('[chain]\nrpc_url = "ws://h:8546"', "chain.rpc_url", '"ws://h:8546"', "HTTP(S) only"),
        (
            '[serving]\nmodels = ["a.gguf", "b.gguf"]',
            "serving.models",
            '["a.gguf", "b.gguf"]',
            'serving.model = "PATH" (one model per node',
        ),
        (
            '[market]\ncurrency_token = "0x12"',
            "market.currency_token",
            '"0x12"',
            "prices are in the deployment's token",
        ),
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


# ------------------------------------------- every key of the example is consumed
#
# Two checks, on the file `hearth config example` prints (filled in so that it starts):
#
# * read: every key is read by the code that starts things from the file, recorded by
#   wrapping the loaded config in a proxy that notes each attribute read (methods such
#   as `as_mapping` run against the proxy, so their reads count too);
# * consumed: changing any one key to another valid value changes what starts (the
#   node's settings, the buyer's setup, where the gateway binds, what `hearth node
#   status` shows). Reading a key and ignoring it fails this one.
#
# Neither can pass vacuously: the keys come from the example's text (parsed by tomllib,
# not from the schema), the set read must equal them exactly, a buyer must be seen
# *not* to read node-only keys, the baseline must be reproducible (so a difference is
# not noise), each changed file must still be valid and start (so a difference is not
# a refusal), and the table of changes must cover exactly the example's keys.

PASSPHRASE = "correct horse battery staple"
RPC = "http://127.0.0.1:8545"
PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def _deployment(path: Path, chain_id: int) -> None:
    from market.chain.deployment import Deployment

    addr = "0x" + "11" * 20
    Deployment(
        chain_id=chain_id,
        payment_hub=addr,
        provider_registry=addr,
        token=addr,
        token_symbol="hUSD",
        token_decimals=6,
        deployer=addr,
        treasury=addr,
        arbiter=addr,
        block_number=1,
        fee_bps=100,
        withdrawal_delay_s=3600,
        min_stake=1,
        unbonding_delay_s=60,
    ).save(path)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder with what the example's defaults point at: ~/.hearth/deployment.json
    and ~/.hearth/keystore (and a second deployment, keystore and model to switch to)."""
    from market.identity import init_keystore

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HEARTH_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("OTHER_PASSPHRASE", "not the passphrase")
    hearth = tmp_path / ".hearth"
    hearth.mkdir()
    _deployment(hearth / "deployment.json", chain_id=31337)
    _deployment(tmp_path / "other-deployment.json", chain_id=1)
    init_keystore(hearth / "keystore", PASSPHRASE, scrypt_n=2)
    init_keystore(tmp_path / "other-keystore", PASSPHRASE, scrypt_n=2)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "model.gguf").write_bytes(b"")
    return tmp_path


def _set(text: str, dotted: str, value: str) -> str:
    """``text`` with the line of ``dotted`` (in its section) set to the TOML ``value``."""
    import re

    section, key = dotted.split(".")
    head, body = text.split(f"\n[{section}]\n")
    body, n = re.subn(rf"(?m)^{key} = .*$", lambda _: f"{key} = {value}", body, count=1)
    assert n == 1, dotted
    return f"{head}\n[{section}]\n{body}"


def _ready_example() -> str:
    return _set(example_config(), "chain.rpc_url", f'"{RPC}"')


def _example_keys() -> set[str]:
    data = tomllib.loads(example_config())
    return {f"{section}.{key}" for section, table in data.items() for key in table}


def _plain(value: object) -> object:
    """Settings as plain data to compare (an identity by its peer id)."""
    from market.identity import Identity

    if isinstance(value, Identity):
        return value.peer_id
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, int | float | str | bool | None) else str(value)


def _starts(path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """What starts from the config at ``path``, seen by each consumer of hearth.toml:
    `hearth node` (up to run_node), the SDK's load_buyer (behind every buyer command),
    `hearth gateway` (up to binding) and `hearth node status`."""
    import json

    from typer.testing import CliRunner

    import market.gateway
    import p2pnode.node.runtime
    from market.sdk.connect import load_buyer
    from p2pnode.cli.app import app

    runner = CliRunner()
    out: dict[str, object] = {}
    started: list[object] = []

    async def run_node(settings: object) -> None:
        started.append(settings)

    monkeypatch.setattr(p2pnode.node.runtime, "run_node", run_node)
    result = runner.invoke(app, ["node", "--config", str(path)])
    out["node"] = _plain(started[0]) if started else f"refused: {result.output}"
    out["node output"] = result.output
    try:
        out["buyer"] = _plain(load_buyer(path))
    except Exception as exc:  # the refusal is the outcome
        out["buyer"] = f"refused: {exc}"
    bound: list[tuple[str, int]] = []

    def listen(host: str, port: int) -> object:
        bound.append((host, port))
        raise market.gateway.GatewayBindError("stop before serving")

    monkeypatch.setattr(market.gateway, "listen", listen)
    result = runner.invoke(app, ["gateway", "--config", str(path)])
    out["gateway"] = bound or f"refused: {result.output}"
    result = runner.invoke(app, ["node", "status", "--config", str(path), "--json"])
    out["status"] = json.loads(result.output)["name"] if result.exit_code == 0 else result.output
    return out


class _Reads:
    """A read-only view of a config (or one section) noting each key read into ``seen``."""

    def __init__(self, target: object, seen: set[str], prefix: str = "") -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> object:
        import types

        target = object.__getattribute__(self, "_target")
        seen = object.__getattribute__(self, "_seen")
        prefix = object.__getattribute__(self, "_prefix")
        fields = {f.name for f in dataclasses.fields(target)}  # type: ignore[arg-type]
        if name not in fields:  # a method: run it against this view, so its reads count
            attr = getattr(type(target), name)
            if not callable(attr):
                raise AttributeError(name)
            return types.MethodType(attr, self)
        value = getattr(target, name)
        if not prefix:  # HearthConfig: a section
            return _Reads(value, seen, name)
        seen.add(f"{prefix}.{name}")
        return value


def _recording(monkeypatch: pytest.MonkeyPatch, seen: set[str]) -> None:
    import market.config

    def recorded(path: object = None) -> object:
        return _Reads(load_config(path), seen)  # type: ignore[arg-type]

    monkeypatch.setattr(market.config, "load_config", recorded)


def test_every_key_of_the_example_is_read(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _example_keys()
    schema = {
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(HearthConfig)
        for f in dataclasses.fields(getattr(HearthConfig(), s.name))
    }
    assert keys == schema and len(keys) > 30
    path = tmp_path / "hearth.toml"
    path.write_text(_ready_example())

    from market.sdk.connect import load_buyer

    buyer: set[str] = set()
    _recording(monkeypatch, buyer)
    load_buyer(path)
    # The view records what is read, not everything: a buyer reads no engine or power key.
    assert buyer and not buyer & {"serving.device", "serving.max_batch", "power.governor"}
    assert "chain.rpc_url" in buyer and "market.bid_window_ms" in buyer

    seen: set[str] = set()
    _recording(monkeypatch, seen)
    starts = _starts(path, monkeypatch)
    assert all("refused" not in str(v) for v in starts.values()), starts
    assert sorted(keys - seen) == [], "documented in `hearth config example` but never read"
    assert seen <= keys


# Each key of the example, and another valid value for it (TOML), that must change what
# starts. A new key fails the coverage assertion below until it is given one here.
CHANGES = {
    "node.data_dir": '"{home}/elsewhere"',
    "node.name": '"attic"',
    "node.region": '"us-west"',
    "identity.keystore": '"{home}/other-keystore"',
    "identity.passphrase_env": '"OTHER_PASSPHRASE"',  # holds a wrong one: refused
    "network.listen": '["/ip4/127.0.0.1/tcp/4002"]',
    "network.announce": '["/ip4/203.0.113.5/tcp/4001"]',
    "network.bootstrap": f'["/ip4/198.51.100.1/tcp/4001/p2p/{PEER}"]',
    "network.peer_cache": '"{home}/peers-elsewhere.json"',
    "market.price_per_1k": "5",
    "market.margin": "0.5",
    "market.electricity_price_per_kwh": "0.5",
    "market.power_draw_w": "500",
    "market.chunk_tokens": "8",
    "market.credit_chunks": "2",
    "market.bid_window_ms": "500",
    "serving.model": '"{home}/model.gguf"',
    "serving.device": '"cpu"',
    "serving.max_batch": "4",
    "serving.kv_cache_mb": "512",
    "serving.pack_weights": "false",
    "chain.rpc_url": '"http://127.0.0.1:9545"',
    "chain.deployment": '"{home}/other-deployment.json"',
    "chain.redeem_min_gas_multiple": "20.0",
    "power.governor": "{ throttle_below_w = 4000 }",
    "power.tariff": "{ default = 0.3 }",
    "power.span": '{ host = "panel.local" }',
    "power.demand_response": '{ file = "/run/hearth/dr.json" }',
    "power.override": '{ file = "/run/hearth/override" }',
    "gateway.host": '"0.0.0.0"',
    "gateway.port": "8123",
    "dashboard.port": "0",
    "dashboard.token": '"a-token-of-16-chars"',
    "release.publishers": f'["{"ab" * 32}"]',
    "release.follow": '"smol"',
    "release.max_uploads": "2",
    "release.upload_mbps": "40.0",
}
REFUSES = {"identity.passphrase_env": "wrong passphrase for the keystore"}


def test_every_key_of_the_example_changes_what_starts(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(CHANGES) == _example_keys()
    path = tmp_path / "hearth.toml"
    path.write_text(_ready_example())
    baseline = _starts(path, monkeypatch)
    assert all("refused" not in str(v) for v in baseline.values()), baseline
    assert _starts(path, monkeypatch) == baseline  # reproducible: a difference is the key's
    unchanged = []
    for dotted, value in CHANGES.items():
        text = _set(_ready_example(), dotted, value.replace("{home}", str(home)))
        assert parse_config(text) != parse_config(_ready_example()), dotted  # valid, different
        path.write_text(text)
        now = _starts(path, monkeypatch)
        refused = {k: v for k, v in now.items() if "refused" in str(v)}
        if dotted in REFUSES:
            assert refused and all(REFUSES[dotted] in str(v) for v in refused.values()), now
        else:
            assert not refused, (dotted, refused)
        if now == baseline:
            unchanged.append(dotted)
    assert unchanged == [], "read, but changing it changes nothing that starts"


def test_the_example_says_what_to_fill_in_and_check_agrees_with_the_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As printed, the example cannot start a node, and says so the same way in the file,
    in `hearth config check` and in `hearth node` / buyer commands; filled in, it starts."""
    from typer.testing import CliRunner

    import p2pnode.node.runtime
    from market.identity import init_keystore
    from p2pnode.cli.app import app

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HEARTH_PASSPHRASE", PASSPHRASE)
    runner = CliRunner()
    path = tmp_path / "hearth.toml"
    path.write_text(runner.invoke(app, ["config", "example"]).output)
    text = path.read_text()
    assert "# FILL IN: the JSON-RPC URL of your market's chain" in text and 'rpc_url = ""' in text

    checked = runner.invoke(app, ["config", "check", str(path)])
    assert checked.exit_code == 0 and "is valid, but not ready yet" in checked.output
    todo = [ln for ln in checked.output.splitlines() if ln.startswith("  - ")]
    assert [ln.split()[1].rstrip(":") for ln in todo] == [
        "chain.rpc_url",
        "chain.deployment",
        "identity.keystore",
    ]
    assert "hearth chain deploy" in todo[1] and "hearth identity init" in todo[2]
    for command in (["node"], ["balance"], ["node", "redeem"], ["unlock"]):
        refused = runner.invoke(app, [*command, "--config", str(path)])
        assert refused.exit_code == 2, command
        assert [ln for ln in refused.output.splitlines() if ln.startswith("  - ")] == todo

    # Fill in what it asked for: the node starts (up to the point where it dials the chain).
    path.write_text(_set(text, "chain.rpc_url", f'"{RPC}"'))
    (tmp_path / ".hearth").mkdir()
    _deployment(tmp_path / ".hearth" / "deployment.json", chain_id=31337)
    init_keystore(tmp_path / ".hearth" / "keystore", PASSPHRASE, scrypt_n=2)
    checked = runner.invoke(app, ["config", "check", str(path)])
    assert checked.exit_code == 0 and "is valid and ready" in checked.output
    started: list[object] = []

    async def run_node(settings: object) -> None:
        started.append(settings)

    monkeypatch.setattr(p2pnode.node.runtime, "run_node", run_node)
    result = runner.invoke(app, ["node", "--config", str(path)])
    assert result.exit_code == 0, result.output
    (settings,) = started
    assert settings.rpc_url == RPC and settings.model_path is None  # type: ignore[attr-defined]


def test_a_model_file_that_is_not_there_is_named_before_the_node_starts(
    home: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from p2pnode.cli.app import app

    path = tmp_path / "hearth.toml"
    path.write_text(_set(_ready_example(), "serving.model", '"~/models/absent.gguf"'))
    runner = CliRunner()
    checked = runner.invoke(app, ["config", "check", str(path)])
    assert "serving.model" in checked.output and "buyer commands need none" in checked.output
    result = runner.invoke(app, ["node", "--config", str(path)])
    assert result.exit_code == 2
    assert f"nothing at {home}/models/absent.gguf" in result.output
    from market.sdk.connect import load_buyer

    assert load_buyer(path).rpc_url == RPC  # a buyer serves no model
