"""The docs say what the code does: ``whitepaper.md`` and ``README.md`` against the code.

Each test reads a piece of the docs that names something in the code, and compares:

* §3.4 and §3.5's transition tables with ``BuyerJob.TABLE`` and ``ProviderJob.TABLE``,
  cell by cell, both ways (the handler named first in each cell; ``·`` = no entry);
* the defaults quoted for ``BuyerConfig`` and ``ProviderConfig``;
* every ``hearth …`` command written in either file (code spans and shell blocks) with
  the commands and options the CLI registers, and every registered command with the
  whitepaper;
* the worked figures: the bid window, the default price, the first chunk's cost;
* every repository path and module the whitepaper names exists.

A failure says what to change in the docs (or, if the docs were right, in the code),
and prints the corrected table rows to paste.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "whitepaper.md"
README = ROOT / "README.md"
NONE = "·"  # a cell with no table entry


# --------------------------------------------------------------------------- markdown


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _section(text: str, number: str) -> str:
    """The body of heading ``number`` (``"3.4"``) up to the next heading of any level."""
    m = re.search(rf"^#+ {re.escape(number)}[ .].*$", text, re.M)
    assert m, f"whitepaper.md has no section {number}"
    end = re.search(r"^#+ ", text[m.end() :], re.M)
    return text[m.end() : m.end() + end.start() if end else len(text)]


def _cells(line: str) -> list[str]:
    """A markdown table row's cells (``\\|`` is a pipe inside a cell)."""
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [p.strip().replace("\\|", "|") for p in parts]


@dataclasses.dataclass
class DocTable:
    """A transition table as written: column states, and each event row's cells."""

    states: list[str]
    rows: dict[str, list[str]]  # event name -> cells, one per state

    def handler(self, event: str, state: str) -> str | None:
        cell = self.rows[event][self.states.index(state)]
        if cell == NONE:
            return None
        m = re.match(r"`(\w+)`", cell)
        assert m, f"cell ({event}, {state}) must be {NONE} or start with `handler`: {cell!r}"
        return m.group(1)


def _table(section: str, first_header: str) -> DocTable:
    lines = section.splitlines()
    start = next(
        (i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header}")),
        None,
    )
    assert start is not None, f"no table whose header starts with {first_header!r}"
    states = _cells(lines[start])[1:]
    rows: dict[str, list[str]] = {}
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        event, *cells = _cells(ln)
        assert len(cells) == len(states), f"row {event} has {len(cells)} cells for {states}"
        rows[event] = cells
    return DocTable(states, rows)


# --------------------------------------------------------------------------- tables


def _code_table(table: Mapping[tuple[Any, type], Any]) -> dict[tuple[str, str], str]:
    """``{(event name, state name): handler name}`` of a machine's TABLE."""
    return {
        (event.__name__, state.name): getattr(fn, "__name__", repr(fn))
        for (state, event), fn in table.items()
    }


def _compare(
    where: str, doc: DocTable, code: dict[tuple[str, str], str], states: list[str]
) -> list[str]:
    """What to change in ``doc`` so that it says ``code``; empty when they agree."""
    problems: list[str] = []
    if doc.states != states:
        problems.append(f"columns should be {' | '.join(states)} (the paper has {doc.states})")
        return problems
    code_events = sorted({e for e, _ in code})
    for event in doc.rows:
        if event not in code_events:
            problems.append(f"row {event}: the code's table has no {event}; delete the row")
    fixed_rows: list[str] = []
    for event in code_events:
        if event not in doc.rows:
            problems.append(f"row {event} is missing")
            cells = [f"`{code[(event, s)]}`" if (event, s) in code else NONE for s in states]
            fixed_rows.append(f"| {event} | " + " | ".join(cells) + " |")
            continue
        cells = list(doc.rows[event])
        wrong = False
        for i, state in enumerate(states):
            said, has = doc.handler(event, state), code.get((event, state))
            if said != has:
                wrong = True
                problems.append(
                    f"row {event}, column {state}: the paper says "
                    f"{f'`{said}`' if said else NONE}, the code has {f'`{has}`' if has else NONE}"
                )
                cells[i] = f"`{has}`" if has else NONE
        if wrong:
            fixed_rows.append(
                f"| {event} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
            )
    if problems and fixed_rows:
        problems.append(
            "corrected rows (the handler's outcome after `→` is prose: check it):\n"
            + "\n".join(fixed_rows)
        )
    return [f"{where}: {p}" for p in problems]


def test_buyer_table_is_the_code() -> None:
    from market.protocol.buyer import BuyerJob, BuyerState

    doc = _table(_section(_text(PAPER), "3.4"), "event")
    problems = _compare(
        "whitepaper.md §3.4 vs BuyerJob.TABLE",
        doc,
        _code_table(BuyerJob.TABLE),
        [s.name for s in BuyerState],
    )
    assert not problems, "\n".join(problems)


def test_provider_table_is_the_code() -> None:
    from market.protocol.provider import ProviderJob, ProviderState

    doc = _table(_section(_text(PAPER), "3.5"), "event")
    problems = _compare(
        "whitepaper.md §3.5 vs ProviderJob.TABLE",
        doc,
        _code_table(ProviderJob.TABLE),
        [s.name for s in ProviderState],
    )
    assert not problems, "\n".join(problems)


def test_a_wrong_table_is_reported_with_the_fix() -> None:
    """The comparison itself: a missing row, a wrong cell and an extra row are named."""
    code = {("Ping", "A"): "_on_ping", ("Ping", "B"): "_ignore", ("Pong", "B"): "_on_pong"}
    doc = DocTable(["A", "B"], {"Ping": ["`_on_ping` → B", NONE], "Gone": [NONE, NONE]})
    problems = "\n".join(_compare("t", doc, code, ["A", "B"]))
    assert "row Gone: the code's table has no Gone; delete the row" in problems
    assert "row Pong is missing" in problems and "| Pong | · | `_on_pong` |" in problems
    assert "row Ping, column B: the paper says ·, the code has `_ignore`" in problems
    assert "| Ping | `_on_ping` → B | `_ignore` |" in problems
    agreeing = DocTable(
        ["A", "B"], {"Ping": ["`_on_ping` → B", "`_ignore`"], "Pong": [NONE, "`_on_pong` (prose)"]}
    )
    assert _compare("t", agreeing, code, ["A", "B"]) == []


def _quoted_defaults(section: str, cls_name: str) -> dict[str, str]:
    m = re.search(rf"Defaults\s*\(`{cls_name}`\):(.*?)\.\s*(?:\n\n|The |$)", section, re.S)
    assert m, f"no 'Defaults (`{cls_name}`): …' sentence"
    return dict(re.findall(r"`(\w+)=([^`]+)`", m.group(1)))


@pytest.mark.parametrize(
    "number, module, cls_name",
    [
        ("3.4", "market.protocol.buyer", "BuyerConfig"),
        ("3.5", "market.protocol.provider", "ProviderConfig"),
    ],
)
def test_quoted_machine_defaults_are_the_code(number: str, module: str, cls_name: str) -> None:
    import importlib

    cls = getattr(importlib.import_module(module), cls_name)
    code = {f.name: f.default for f in dataclasses.fields(cls)}
    said = _quoted_defaults(_section(_text(PAPER), number), cls_name)
    problems = []
    for name, value in code.items():
        shown = "None" if value is None else f"{value:g}"
        if name not in said:
            problems.append(f"§{number}: add `{name}={shown}` to the {cls_name} defaults")
        elif value is None or said[name] == "None":
            if said[name] != shown:
                problems.append(
                    f"§{number}: {cls_name}.{name} is {shown}, the paper says {said[name]}"
                )
        elif float(re.match(r"[\d.]+", said[name]).group()) != float(value):  # type: ignore[union-attr]
            problems.append(f"§{number}: {cls_name}.{name} is {shown}, the paper says {said[name]}")
    for name in said.keys() - code.keys():
        problems.append(f"§{number}: {cls_name} has no field {name}; remove it")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- commands


# Typer builds click commands (its own vendored click): groups are those with ``commands``.
Command = Any


def _cli() -> Command:
    from p2pnode.cli.app import app

    return typer.main.get_command(app)


def _is_group(cmd: Command) -> bool:
    return bool(getattr(cmd, "commands", None))


def _registered(group: Command, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path the CLI answers to (``("chain", "deploy")``), leaves only."""
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        if _is_group(cmd):
            yield from _registered(cmd, (*prefix, name))
        else:
            yield (*prefix, name)


def _written_commands(text: str) -> Iterator[tuple[int, str]]:
    """``(line, "hearth …")`` for each command in a code span or a shell block."""
    lines = text.splitlines()
    prose = list(lines)
    in_block = False
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("```"):
            in_block = not in_block
            prose[i] = ""
        elif in_block:
            prose[i] = ""
            cmd = ln.strip().removeprefix("$ ")
            if cmd.startswith("hearth "):
                yield i + 1, cmd
    flat = "\n".join(prose)
    for m in re.finditer(r"`(hearth\s[^`]+)`", flat):
        yield flat.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split())


def _options(cmd: Command) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        names.update(getattr(p, "opts", ()))
        names.update(getattr(p, "secondary_opts", ()))
    return names


def _resolve(root: Command, written: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """The command paths ``written`` names, and what is wrong with it."""
    tokens = shlex.split(written, comments=True)[1:]
    paths: list[tuple[str, ...]] = []
    problems: list[str] = []

    def walk(cmd: Command, path: tuple[str, ...], rest: list[str]) -> None:
        if _is_group(cmd):
            word = rest[0] if rest else None
            if word is None or word.startswith("-") or word in ("…", "..."):
                if word in ("…", "..."):
                    paths.append(path)  # "hearth bench …": the group, its commands elsewhere
                    return
                if not cmd.invoke_without_command:
                    problems.append(f"`hearth {' '.join(path)}` needs a command after it")
                    return
            else:
                for alt in word.split("|"):
                    sub = cmd.commands.get(alt)
                    if sub is None and "|" not in word:
                        # a group that routes words itself (`hearth verify JOB_ID`)
                        try:
                            name, sub, args = cmd.resolve_command(cmd.context_class(cmd), rest)
                        except Exception:
                            sub = None
                        if sub is not None and name is not None:
                            walk(sub, (*path, name), args[1:])
                            continue
                    if sub is None:
                        problems.append(
                            f"`hearth {' '.join((*path, alt))}` is not a command "
                            f"(`hearth {' '.join(path)}` has: {', '.join(sorted(cmd.commands))})"
                        )
                    else:
                        walk(sub, (*path, alt), rest[1:] if "|" not in word else [])
                return
        paths.append(path)
        known = _options(cmd)
        for tok in rest:
            if tok in ("…", "..."):
                break
            if tok.startswith("-") and tok != "-":
                opt = tok.split("=", 1)[0]
                if opt not in known:
                    problems.append(
                        f"`hearth {' '.join(path)}` has no option {opt} "
                        f"(it has: {', '.join(sorted(known))})"
                    )

    walk(root, (), tokens)
    return paths, problems


def _check_written(path: Path) -> tuple[set[tuple[str, ...]], list[str]]:
    root = _cli()
    documented: set[tuple[str, ...]] = set()
    problems: list[str] = []
    for line, written in _written_commands(_text(path)):
        paths, wrong = _resolve(root, written)
        documented.update(paths)
        problems.extend(f"{path.name}:{line}: {w}  (in `{written}`)" for w in wrong)
    return documented, problems


def test_every_command_in_the_whitepaper_exists_and_every_command_is_in_it() -> None:
    documented, problems = _check_written(PAPER)
    for path in sorted(_registered(_cli())):
        if path not in documented:
            problems.append(
                f"whitepaper.md never mentions `hearth {' '.join(path)}`: add it (§1's list "
                "of commands, or where it is used), or unregister it"
            )
    assert not problems, "\n".join(problems)


def test_every_command_in_the_readme_exists() -> None:
    _, problems = _check_written(README)
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_drift() -> None:
    root = _cli()
    assert _resolve(root, "hearth node status --config x.toml") == ([("node", "status")], [])
    paths, wrong = _resolve(root, "hearth identity init|show|burn")
    assert paths == [("identity", "init"), ("identity", "show")]
    assert wrong and "`hearth identity burn` is not a command" in wrong[0]
    _, wrong = _resolve(root, "hearth withdraw --everything")
    assert wrong and "has no option --everything" in wrong[0]
    _, wrong = _resolve(root, "hearth chain")
    assert wrong == ["`hearth chain` needs a command after it"]


# --------------------------------------------------------------------------- figures


def _number(s: str) -> float:
    return float(s.replace(",", "").replace("_", ""))


def test_the_bid_window_is_the_shipped_one() -> None:
    from market.config import MarketSection

    section = " ".join(_section(_text(PAPER), "3.3").split())
    said = re.findall(r"bid window \(([\d,]+) ms\)", section)
    said += re.findall(r"`\[market\] bid_window_ms`[^()]*\(([\d,]+) ms by default\)", section)
    assert len(said) >= 2, "§3.3 should give the bid window in the diagram and the prose"
    shipped = MarketSection().bid_window_ms
    assert {_number(x) for x in said} == {shipped}, f"§3.3: the shipped bid window is {shipped} ms"


def test_the_worked_price_is_what_the_policy_computes() -> None:
    from market.config import MarketSection
    from market.protocol.messages import cost_of
    from market.protocol.policy import CostPlusPolicy, ProviderStatus
    from p2pnode.node.runtime import NodeSettings

    section = _section(_text(PAPER), "4.1")
    m = re.search(
        r"\(([\d.]+) hUSD/kWh = `([\d_]+)` base units at (\d+) decimals, ([\d,]+) W, "
        r"([\d.]+) tok/s per job\), the price is \*\*([\d,]+) base units per 1k tokens\*\*"
        r".*?and ([\d,]+) when throttled",
        " ".join(section.split()),
    )
    assert m, "§4.1: the worked example's sentence changed shape; update this test with it"
    kwh, base, decimals, watts, tps, price, throttled = map(_number, m.groups())
    market = MarketSection()
    tokens_per_s = {f.name: f.default for f in dataclasses.fields(NodeSettings)}["tokens_per_s"]
    assert (kwh, watts, tps) == (
        market.electricity_price_per_kwh,
        market.power_draw_w,
        tokens_per_s,
    ), "§4.1: the node's defaults changed"
    assert base == int(kwh * 10**decimals)
    policy = CostPlusPolicy(electricity_per_kwh=int(base), power_draw_w=watts, margin=market.margin)

    def status(power: str) -> ProviderStatus:
        return ProviderStatus(
            provider="p",
            provider_address=b"\0" * 20,
            region="",
            power_state=power,  # type: ignore[arg-type]
            models=frozenset(),
            active_jobs=0,
            capacity=4,
            tokens_per_s=tps,
        )

    normal, slow = policy.price_per_1k(status("normal")), policy.price_per_1k(status("throttled"))
    assert (price, throttled) == (normal, slow), (
        f"§4.1: the policy prices {normal:,} (throttled {slow:,}); the paper says "
        f"{price:,.0f} ({throttled:,.0f})"
    )
    chunk = re.search(r"\((\d+) tokens ≈ (\d+) base units at the default price\)", _text(PAPER))
    assert chunk, "§4.4: the first chunk's cost sentence changed shape"
    n, units = map(int, chunk.groups())
    assert cost_of(n, normal) == units, f"§4.4: {n} tokens cost {cost_of(n, normal)} units"


# --------------------------------------------------------------------------- names


def _exists_in_repo(name: str) -> bool:
    """A path (``market/chain/voucher.py``) or module (``market.sdk.sync``, maybe ``.Attr``)."""
    if "/" in name:
        return (ROOT / name).exists()
    name = name.rstrip(".")
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                rest = parts[cut:]
                return not rest or all(r in f.read_text(encoding="utf-8") for r in rest)
    return False


def test_every_path_and_module_the_whitepaper_names_exists() -> None:
    text = _text(PAPER)
    missing = []
    for m in re.finditer(r"`((?:market|p2pnode|bootstrap|contracts|tests)[./][\w./-]*)`", text):
        if not _exists_in_repo(m.group(1)):
            missing.append(f"whitepaper.md:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)}")
    assert not missing, "named in the whitepaper, not in the repository:\n" + "\n".join(missing)


def _layers() -> list[list[str]]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    return [[m.strip() for m in layer.split("|")] for layer in contract["layers"]]


def test_architecture_md_draws_the_enforced_layers_in_order() -> None:
    """ARCHITECTURE.md's diagram names every module of every layer of the import
    contract (fully, or by its last part after the first name of its row), top to
    bottom in the contract's order."""
    text = _text(ROOT / "ARCHITECTURE.md")
    diagram = text.split("```")[1].splitlines()
    problems = []
    last = -1
    for layer in _layers():
        rows = []
        for module in layer:
            short = module.rsplit(".", 1)[-1]
            hits = [
                i
                for i, line in enumerate(diagram)
                if re.search(rf"(^|[\s|]){re.escape(module)}($|[\s|])", line)
                or re.search(rf"\|\s*{re.escape(short)}($|[\s|])", line)
            ]
            if not hits:
                problems.append(f"{module} is not in ARCHITECTURE.md's diagram")
            else:
                rows.append(hits[0])
        if rows and min(rows) <= last:
            problems.append(f"layer {' | '.join(layer)} is drawn above a layer it sits below")
        last = max(rows, default=last)
    assert not problems, "\n".join(problems)
