"""``hearth.toml``: the one configuration file of a node, buyer or gateway.

Every key lives in a section dataclass below, declared in one line with
:func:`setting` — its default, its documentation and its rules::

    max_batch: int = setting(8, "Most requests decoded together in one step.", lo=1, hi=256)

:func:`load_config` reads the file with ``tomllib`` and validates *everything*
before returning: unknown sections or keys (with a did-you-mean), wrong types,
numbers out of range, values outside a fixed set, malformed addresses. A bad file
raises one :class:`ConfigError` listing each problem as ``dotted.key = value:
expected …``. ``hearth config example`` prints :func:`example_config` — every key
with its documentation and default — and ``hearth config check FILE`` validates.

Missing keys take their defaults, chosen for a home node: data under
``~/.hearth``, CPU/GPU chosen automatically, gateway and dashboard on loopback only.
One key has no useful default: ``chain.rpc_url`` (the market's chain) must be filled
in. :func:`unready` lists what a valid file still lacks before ``hearth node`` or a
buyer command can start (the URL, the deployment file, the keystore, the model file);
those commands and ``hearth config check`` use the same list, so they agree.

Every key is read by the code that starts a node, buyer or gateway
(:func:`p2pnode.node.setup.load_node_settings`, :func:`market.sdk.connect.load_buyer`,
``hearth gateway``, ``hearth node status``); ``tests/market/test_config.py`` checks
that each key of the example is read and that changing it changes what starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import textwrap
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_PRICE_PER_1K",
    "ConfigError",
    "ConfigProblem",
    "HearthConfig",
    "check_ready",
    "config_from_dict",
    "example_config",
    "load_config",
    "parse_config",
    "setting",
    "unready",
]

Check = Callable[[Any], str | None]


def setting(
    default: Any,
    doc: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] | None = None,
    check: Check | None = None,
    expect: str | None = None,
    fill_in: str | None = None,
) -> Any:
    """Declare one config key: default, documentation, and validation rules.

    ``lo``/``hi`` bound numbers (inclusive); ``choices`` fixes the allowed strings;
    ``check(value)`` returns an error text or ``None`` and ``expect`` describes what
    it wants (shown in error messages and in the example file). ``fill_in`` marks a
    key whose default cannot run a node: it says what to write there (the example
    file shows it, and :func:`unready` asks for it while the key keeps its default).
    """
    meta = {
        "doc": doc,
        "lo": lo,
        "hi": hi,
        "choices": choices,
        "check": check,
        "expect": expect,
        "fill_in": fill_in,
    }
    if isinstance(default, dict):
        frozen = dict(default)
        return field(default_factory=lambda: dict(frozen), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------ validators


def _multiaddr(v: Any) -> str | None:
    for item in v:
        if not re.fullmatch(r"(/[^/\s]+)+", item) or item.count("/") < 4:
            return f"{item!r} is not a multiaddr"
    return None


def _bootstrap(v: Any) -> str | None:
    err = _multiaddr(v)
    if err:
        return err
    for item in v:
        if "/p2p/" not in item:
            return f"{item!r} lacks the /p2p/<peer id> part"
    return None


def _rpc(v: Any) -> str | None:
    if v == "" or re.match(r"https?://\S+$", v):
        return None
    if v == "embedded":
        return (
            "the embedded chain lives inside one process, so no node or buyer can share it "
            "(it serves tests and `hearth chain deploy --embedded`); run a chain such as "
            "anvil and give its URL"
        )
    if re.match(r"wss?://", v):
        return "Hearth talks to the chain over HTTP(S) only"
    return "not a URL"


def _nonempty(v: Any) -> str | None:
    return None if v.strip() else "empty"


def _env_name(v: Any) -> str | None:
    return None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) else "not a variable name"


# -------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class NodeSection:
    """Who and where this node is."""

    data_dir: str = setting(
        "~/.hearth",
        "Folder for the ledgers, the node's status file and (by default) the peer cache.",
        check=_nonempty,
    )
    name: str = setting(
        "",
        "A name for this box, shown by `hearth node` as it starts and by `hearth node status` "
        '("" = none; peers see only the peer id).',
    )
    region: str = setting(
        "", 'Region label used by buyers to prefer nearby nodes, e.g. "us-west" ("" = unset).'
    )


@dataclass(frozen=True, slots=True)
class IdentitySection:
    """The node's keystore (see `hearth identity --help`)."""

    keystore: str = setting(
        "~/.hearth/keystore",
        "Keystore folder holding the libp2p and Ethereum keys (encrypted).",
        check=_nonempty,
    )
    passphrase_env: str = setting(
        "HEARTH_PASSPHRASE",
        "Environment variable holding the keystore passphrase; unset = ask on the terminal.",
        check=_env_name,
        expect="an environment variable name",
    )


@dataclass(frozen=True, slots=True)
class NetworkSection:
    """libp2p networking: where to listen and whom to meet first."""

    listen: tuple[str, ...] = setting(
        ("/ip4/0.0.0.0/tcp/4001",),
        "Multiaddrs to listen on.",
        check=_multiaddr,
        expect="multiaddrs like /ip4/0.0.0.0/tcp/4001",
    )
    announce: tuple[str, ...] = setting(
        (),
        "Public multiaddrs to advertise instead of the listen ones (port forwards); [] = auto.",
        check=_multiaddr,
        expect="multiaddrs like /ip4/203.0.113.5/tcp/4001",
    )
    bootstrap: tuple[str, ...] = setting(
        (),
        "Bootstrap peers to dial at start.",
        check=_bootstrap,
        expect="multiaddrs ending in /p2p/<peer id>",
    )
    peer_cache: str = setting(
        "",
        "File remembering peers seen, to rejoin when every bootstrap is down "
        '("" = peers.json in node.data_dir).',
    )


MAX_PRICE_PER_1K = 10**24
"""Largest price floor accepted, here and on the dashboard (token base units per 1,000
tokens; a million whole tokens of 18 decimals): anything above is a typo."""


@dataclass(frozen=True, slots=True)
class MarketSection:
    """How the node prices and streams work."""

    price_per_1k: int = setting(
        0,
        "Price floor, in token base units per 1,000 tokens; never bid below it.",
        lo=0,
        hi=MAX_PRICE_PER_1K,
    )
    margin: float = setting(
        0.2, "Markup over the electricity cost when bidding (0.2 = +20 %).", lo=0.0, hi=100.0
    )
    electricity_price_per_kwh: float = setting(
        0.30, "Electricity price, in token units (not base units) per kWh.", lo=0.0, hi=1e6
    )
    power_draw_w: int = setting(
        350, "Typical power draw of the box while generating, in watts.", lo=1, hi=100_000
    )
    chunk_tokens: int = setting(16, "Tokens per streamed chunk.", lo=1, hi=1024)
    credit_chunks: int = setting(
        1, "Chunks streamed ahead of payment (1 = risk bounded to one chunk).", lo=1, hi=1024
    )
    bid_window_ms: int = setting(
        300, "How long a buyer collects bids before awarding, in ms.", lo=1, hi=600_000
    )


@dataclass(frozen=True, slots=True)
class ServingSection:
    """The inference engine."""

    model: str = setting(
        "",
        "The model this node serves: a .gguf file or a Hugging Face folder (with config.json); "
        '"" = the bundled SmolLM2-135M-Instruct. One model per node: run a node per model.',
    )
    device: str = setting(
        "auto", 'Where to run: "auto" (CUDA if present), "cpu" or "cuda".',
        choices=("auto", "cpu", "cuda"),
    )  # fmt: skip
    max_batch: int = setting(8, "Most requests decoded together in one step.", lo=1, hi=1024)
    kv_cache_mb: int = setting(
        1024, "Memory reserved for the KV cache, in MiB.", lo=16, hi=1_048_576
    )
    pack_weights: bool = setting(
        True,
        "CPU: keep a copy of the weights packed for oneDNN (faster matrix products, "
        "about the model's size again in memory); false saves that memory.",
    )


@dataclass(frozen=True, slots=True)
class ChainSection:
    """Settlement on an EVM chain."""

    rpc_url: str = setting(
        "",
        "JSON-RPC URL of the chain the market settles on, the same for every node and buyer.",
        check=_rpc,
        expect='an http(s):// URL, or "" while not filled in',
        fill_in="the JSON-RPC URL of your market's chain, e.g. "
        '"http://127.0.0.1:8545" for an anvil on this machine',
    )
    deployment: str = setting(
        "~/.hearth/deployment.json",
        "JSON file naming the contracts and the token that prices are in (written by "
        "`hearth chain deploy`, or given by your market's operator).",
        check=_nonempty,
    )
    redeem_min_gas_multiple: float = setting(
        10.0,
        "Redeem a voucher once its value is at least this many times the gas cost.",
        lo=1.0,
        hi=1e9,
    )


@dataclass(frozen=True, slots=True)
class PowerSection:
    """What tells the node to throttle or stop for the house (see p2pnode/power).

    Every table is optional; with none the node always runs at full power. The most
    restrictive input wins, and the node relaxes one step at a time with hysteresis.
    """

    governor: dict[str, Any] = setting(  # noqa: RUF009 (setting() returns a field)
        {},
        "Governor thresholds and dwell times, e.g. { throttle_below_w = 4000, min_dwell_s = 60 }.",
    )
    tariff: dict[str, Any] = setting(  # noqa: RUF009
        {},
        'Time-of-use price per kWh: { default = 0.3, periods = [{ start = "17:00", '
        'end = "21:00", price = 0.55 }] } or { hourly = [24 prices] }.',
    )
    span: dict[str, Any] = setting(  # noqa: RUF009
        {},
        "SPAN smart panel: { host, serial, broker_host, username, password, node_circuit }.",
    )
    demand_response: dict[str, Any] = setting(  # noqa: RUF009
        {},
        'Utility demand-response events from a JSON file: { file = "/run/hearth/dr.json" }.',
    )
    override: dict[str, Any] = setting(  # noqa: RUF009
        {},
        "Local override: { file = PATH } and/or { http_port = N, token = 16+ chars }.",
    )

    def as_mapping(self) -> dict[str, Any]:
        """The tables that are set, as ``p2pnode.power.service.run_power`` takes them."""
        return {
            name: value
            for name in ("governor", "tariff", "span", "demand_response", "override")
            if (value := getattr(self, name))
        }


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """The OpenAI-compatible HTTP gateway (`hearth gateway`)."""

    host: str = setting(
        "127.0.0.1",
        "Interface to bind (127.0.0.1 = this machine only); --host overrides it.",
        check=_nonempty,
    )
    port: int = setting(
        8000, "TCP port (0 = any free one, printed at start); --port overrides it.", lo=0, hi=65535
    )


def _release_name(v: Any) -> str | None:
    if v == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v):
        return None
    return "not a release name"


def _publisher_keys(v: Any) -> str | None:
    for item in v:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", item):
            return f"{item!r} is not a 64-hex-digit ed25519 public key"
    return None


@dataclass(frozen=True, slots=True)
class ReleaseSection:
    """Model releases: whose signatures to trust, and what the swarm may take of the uplink."""

    publishers: tuple[str, ...] = setting(
        (),
        "Trusted release publishers (their public keys, from `hearth model key new`): the "
        "node serves and `hearth model fetch` takes only their releases.",
        check=_publisher_keys,
        expect="64-hex-digit ed25519 public keys",
    )
    follow: str = setting(
        "",
        "A model name to keep up to date: the node fetches each newer release of it that "
        'a trusted publisher announces and serves it in place of the running one ("" = '
        "serve serving.model only).",
        check=_release_name,
        expect='a release name (letters, digits and ._-, up to 64) or ""',
    )
    max_uploads: int = setting(4, "Release chunks sent to other nodes at once.", lo=1, hi=64)
    upload_mbps: float = setting(
        0.0, "Cap on release uploads, megabits per second (0 = none).", lo=0, hi=1e6
    )


@dataclass(frozen=True, slots=True)
class DashboardSection:
    """The node's local web dashboard."""

    port: int = setting(8090, "TCP port on 127.0.0.1 (0 = no dashboard).", lo=0, hi=65535)
    token: str = setting("", 'Access token the dashboard asks for ("" = none; loopback only).')


@dataclass(frozen=True, slots=True)
class HearthConfig:
    """The whole file: one attribute per ``[section]``."""

    node: NodeSection = field(default_factory=NodeSection)
    identity: IdentitySection = field(default_factory=IdentitySection)
    network: NetworkSection = field(default_factory=NetworkSection)
    market: MarketSection = field(default_factory=MarketSection)
    serving: ServingSection = field(default_factory=ServingSection)
    chain: ChainSection = field(default_factory=ChainSection)
    power: PowerSection = field(default_factory=PowerSection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    release: ReleaseSection = field(default_factory=ReleaseSection)

    def path(self, value: str) -> Path:
        """A path setting with ``~`` expanded, e.g. ``cfg.path(cfg.identity.keystore)``."""
        return Path(value).expanduser()


# ---------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One bad key: where, what was there, and what was expected."""

    key: str
    value: Any
    expected: str

    def __str__(self) -> str:
        if self.value is _MISSING:
            return f"{self.key}: expected {self.expected}"
        shown = _toml(self.value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return f"{self.key} = {shown}: expected {self.expected}"


class ConfigError(Exception):
    """A config file was rejected; :attr:`problems` lists every reason."""

    def __init__(
        self, source: str, problems: list[ConfigProblem], *, headline: str | None = None
    ) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        head = headline or f"{len(problems)} problem(s)"
        super().__init__(f"{source}: {head}:\n{lines}")


_MISSING: Any = object()


# ------------------------------------------------------------------ validation


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(json.dumps(c) for c in meta["choices"])
    base = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }.get(tp)
    if base is None:
        origin = typing.get_origin(tp)
        base = "a list of strings" if origin is tuple else "a table"
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        base += f" between {lo} and {hi}"
    elif lo is not None:
        base += f" >= {lo}"
    if meta.get("expect"):
        base += f" ({meta['expect']})"
    return base


def _check_type(tp: Any, value: Any) -> Any:
    """The value converted to the field's Python type, or ``_MISSING`` if it does not fit."""
    if tp is bool:
        return value if type(value) is bool else _MISSING
    if tp is int:
        return value if type(value) is int else _MISSING
    if tp is float:
        if type(value) in (int, float) and math.isfinite(value):
            return float(value)
        return _MISSING
    if tp is str:
        return value if type(value) is str else _MISSING
    origin = typing.get_origin(tp)
    if origin is tuple:
        if type(value) is list and all(type(x) is str for x in value):
            return tuple(value)
        return _MISSING
    if origin is dict:
        return dict(value) if isinstance(value, dict) else _MISSING
    raise TypeError(f"unsupported config type {tp!r}")


def _check_value(value: Any, meta: Mapping[str, Any]) -> str | None:
    lo, hi, choices, check = meta["lo"], meta["hi"], meta["choices"], meta["check"]
    if choices is not None and value not in choices:
        return "not allowed"
    if lo is not None and value < lo:
        return "too small"
    if hi is not None and value > hi:
        return "too large"
    if check is not None:
        result: str | None = check(value)
        return result
    return None


_RETIRED = {
    "serving.models": (
        'serving.model = "PATH" (one model per node; the list served only its first entry)'
    ),
    "market.currency_token": (
        "no such key: prices are in the deployment's token (chain.deployment); delete the line"
    ),
}
"""Keys that older files may hold, with what to write instead."""


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _section(cls: type, data: Any, prefix: str, problems: list[ConfigProblem]) -> Any:
    if not isinstance(data, dict):
        problems.append(ConfigProblem(prefix, data, f"a [{prefix}] table"))
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        dotted = f"{prefix}.{key}"
        if key not in fields and dotted in _RETIRED:
            problems.append(ConfigProblem(dotted, raw, _RETIRED[dotted]))
            continue
        if key not in fields:
            known = ", ".join(fields)
            problems.append(
                ConfigProblem(
                    dotted,
                    raw,
                    f"a known key{_did_you_mean(key, list(fields))}: {known}",
                )
            )
            continue
        f = fields[key]
        expected = _describe(hints[key], f.metadata)
        value = _check_type(hints[key], raw)
        if value is _MISSING or _check_value(value, f.metadata) is not None:
            detail = "" if value is _MISSING else _check_value(value, f.metadata)
            reason = (
                expected
                if not detail or detail in ("not allowed", "too small", "too large")
                else f"{expected}; {detail}"
            )
            problems.append(ConfigProblem(dotted, raw, reason))
            continue
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], *, source: str = "hearth.toml") -> HearthConfig:
    """Validate parsed TOML data; raise :class:`ConfigError` listing every problem."""
    problems: list[ConfigProblem] = []
    hints = typing.get_type_hints(HearthConfig)
    sections = [f.name for f in dataclasses.fields(HearthConfig)]
    kwargs: dict[str, Any] = {}
    for name, body in data.items():
        if name not in sections:
            problems.append(
                ConfigProblem(
                    name,
                    body,
                    f"a known section{_did_you_mean(name, sections)}: " + ", ".join(sections),
                )
            )
            continue
        kwargs[name] = _section(hints[name], body, name, problems)
    if problems:
        raise ConfigError(source, problems)
    return HearthConfig(**kwargs)


def parse_config(text: str, *, source: str = "hearth.toml") -> HearthConfig:
    """Parse and validate TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [ConfigProblem("(file)", _MISSING, f"valid TOML: {e}")]) from None
    return config_from_dict(data, source=source)


def load_config(path: str | os.PathLike[str] | None = None) -> HearthConfig:
    """Read and validate ``hearth.toml`` at ``path`` (``None`` = all defaults)."""
    if path is None:
        return HearthConfig()
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(p),
            [ConfigProblem("(file)", _MISSING, "an existing file (see `hearth config example`)")],
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            str(p), [ConfigProblem("(file)", _MISSING, f"a readable UTF-8 file ({e})")]
        ) from None
    return parse_config(text, source=str(p))


# ------------------------------------------------------------------- readiness


def _fill_in(section: str, key: str) -> str:
    cls = typing.get_type_hints(HearthConfig)[section]
    meta = {f.name: f.metadata for f in dataclasses.fields(cls)}[key]
    return f"{meta['fill_in']} (fill it in)"


def unready(cfg: HearthConfig, role: str = "node") -> list[ConfigProblem]:
    """What a valid ``cfg`` still lacks before ``hearth node`` (``role="node"``) or a buyer
    command (``role="buyer"``: submit, deposit, balance, withdraw, unlock, gateway) can
    start: keys to fill in and files that must exist. Empty when ready.

    Checks only this machine's files (no chain is dialled, no passphrase asked), so
    ``hearth config check`` and the commands themselves report the same things.
    """
    problems: list[ConfigProblem] = []
    if cfg.chain.rpc_url == "":
        problems.append(ConfigProblem("chain.rpc_url", "", _fill_in("chain", "rpc_url")))
    deployment = cfg.path(cfg.chain.deployment)
    if not deployment.is_file():
        problems.append(
            ConfigProblem(
                "chain.deployment",
                cfg.chain.deployment,
                f"an existing file (nothing at {deployment}): write it with `hearth chain "
                f"deploy --rpc-url URL --out {deployment}`, or get it from your market's operator",
            )
        )
    keystore = cfg.path(cfg.identity.keystore)
    if not keystore.is_dir():
        problems.append(
            ConfigProblem(
                "identity.keystore",
                cfg.identity.keystore,
                f"a keystore (nothing at {keystore}): create one with `hearth identity init "
                f"--keystore {keystore}`, or restore one with `hearth identity import`",
            )
        )
    model = cfg.serving.model
    if role == "node" and model and not cfg.path(model).exists():
        problems.append(
            ConfigProblem(
                "serving.model",
                model,
                f'a .gguf file or a model folder (nothing at {cfg.path(model)}); "" serves '
                "the bundled SmolLM2-135M-Instruct",
            )
        )
    return problems


def check_ready(cfg: HearthConfig, role: str = "node", *, source: str = "hearth.toml") -> None:
    """Raise :class:`ConfigError` listing :func:`unready`'s problems, if any."""
    problems = unready(cfg, role)
    if problems:
        command = "`hearth node`" if role == "node" else "the buyer commands"
        raise ConfigError(source, problems, headline=f"not ready for {command} yet")


# --------------------------------------------------------------------- example


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_toml(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    return repr(value)


def example_config() -> str:
    """A complete, commented ``hearth.toml`` holding every key at its default."""
    defaults = HearthConfig()
    hints = typing.get_type_hints(HearthConfig)
    fill = [
        line
        for sec in dataclasses.fields(HearthConfig)
        for f in dataclasses.fields(hints[sec.name])
        if f.metadata["fill_in"]
        for line in textwrap.wrap(
            f"{sec.name}.{f.name}: {f.metadata['fill_in']};",
            88,
            initial_indent="#    ",
            subsequent_indent="#      ",
        )
    ]
    lines = [
        "# hearth.toml — configuration of a Hearth node, buyer or gateway.",
        "# The values below are the defaults. Before `hearth node` or a buyer command runs:",
        "# 1. fill in the keys marked FILL IN:",
        *fill,
        "# 2. put the deployment file at chain.deployment: `hearth chain deploy --rpc-url URL",
        "#    --out PATH` writes it, or your market's operator gives it to you;",
        "# 3. create the keystore at identity.keystore: `hearth identity init`;",
        "# 4. to meet other nodes, list your market's bootstrap peers in network.bootstrap.",
        "# `hearth config check hearth.toml` validates the file and says what is still missing.",
    ]
    for sec in dataclasses.fields(HearthConfig):
        cls = hints[sec.name]
        lines += ["", f"[{sec.name}]"]
        lines += [f"# {ln}" for ln in textwrap.wrap((cls.__doc__ or "").strip(), 86)]
        section_hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            lines.append("")
            for ln in textwrap.wrap(f.metadata["doc"], 86):
                lines.append(f"# {ln}")
            lines.append(f"# Expected: {_describe(section_hints[f.name], f.metadata)}.")
            if f.metadata["fill_in"]:
                lines.append(f"# FILL IN: {f.metadata['fill_in']}.")
            lines.append(f"{f.name} = {_toml(getattr(getattr(defaults, sec.name), f.name))}")
    return "\n".join(lines) + "\n"
