"""Compile the Solidity contracts and keep the committed artifacts honest.

``python -m market.chain.compile`` recompiles ``contracts/src/*.sol`` and
``contracts/test/*.sol`` with the pinned solcjs (``contracts/node_modules/solc``, run
through ``node contracts/scripts/compile.js``) and rewrites the artifacts in
``market/chain/artifacts/`` — the single source of truth that the Python package loads,
so a pip-installed Hearth never needs Node. With ``--check`` it writes nothing and
exits non-zero if any committed artifact differs from a fresh compile (CI runs this).

Compiler settings are fixed here: optimizer on (200 runs) and ``evmVersion: cancun``
(solc 0.8.37 defaults to osaka, which py-evm cannot run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
SOURCE_DIRS = ("src", "test")

SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "outputSelection": {
        "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]},
    },
}


class CompileError(RuntimeError):
    """solc reported errors, or node/solc could not be run."""


def _sources() -> dict[str, dict[str, str]]:
    sources: dict[str, dict[str, str]] = {}
    for sub in SOURCE_DIRS:
        for path in sorted((CONTRACTS_DIR / sub).glob("*.sol")):
            sources[f"{sub}/{path.name}"] = {"content": path.read_text()}
    if not sources:
        raise CompileError(f"no Solidity sources under {CONTRACTS_DIR}")
    return sources


def compile_artifacts() -> dict[str, str]:
    """Compile every contract; return ``{file name: JSON text}`` for the artifacts."""
    if not (CONTRACTS_DIR / "node_modules" / "solc").is_dir():
        raise CompileError("contracts/node_modules/solc is missing: run `cd contracts && npm ci`")
    request = {"language": "Solidity", "sources": _sources(), "settings": SETTINGS}
    proc = subprocess.run(
        ["node", str(CONTRACTS_DIR / "scripts" / "compile.js")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise CompileError(f"solcjs failed: {proc.stderr.strip()}")
    result = json.loads(proc.stdout)
    output = result["output"]
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise CompileError("\n".join(e.get("formattedMessage", e["message"]) for e in errors))
    artifacts: dict[str, str] = {}
    for source_name in sorted(output["contracts"]):
        if not source_name.startswith(SOURCE_DIRS):
            continue  # OpenZeppelin dependencies: not artifacts of ours
        for name, data in sorted(output["contracts"][source_name].items()):
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode:
                continue  # interfaces and abstract contracts
            artifact = {
                "contractName": name,
                "sourceName": source_name,
                "compiler": {"version": result["solcVersion"], "settings": SETTINGS},
                "abi": data["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
            }
            artifacts[f"{name}.json"] = json.dumps(artifact, indent=1, sort_keys=True) + "\n"
    return artifacts


def check(artifacts: dict[str, str]) -> list[str]:
    """Return the artifact files that are missing, stale or unexpected on disk."""
    problems = []
    on_disk = {p.name for p in ARTIFACTS_DIR.glob("*.json")}
    for name, text in artifacts.items():
        path = ARTIFACTS_DIR / name
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text() != text:
            problems.append(f"stale: {path}")
    problems.extend(f"unexpected: {ARTIFACTS_DIR / n}" for n in sorted(on_disk - set(artifacts)))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m market.chain.compile", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="fail if committed artifacts are stale"
    )
    args = parser.parse_args(argv)
    try:
        artifacts = compile_artifacts()
    except CompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        problems = check(artifacts)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            print("run `python -m market.chain.compile` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(artifacts)} contract artifacts up to date")
        return 0
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    for stale in set(p.name for p in ARTIFACTS_DIR.glob("*.json")) - set(artifacts):
        (ARTIFACTS_DIR / stale).unlink()
    for name, text in artifacts.items():
        (ARTIFACTS_DIR / name).write_text(text)
    print(f"wrote {len(artifacts)} artifacts to {ARTIFACTS_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
