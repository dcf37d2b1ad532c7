"""Contract artifacts (ABI + bytecode) shipped inside the package.

The JSON files in ``market/chain/artifacts/`` are written by
``python -m market.chain.compile`` from ``contracts/`` and committed, so nothing here
needs Node or solc.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Artifact", "artifact_names", "load_artifact"]


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code


def artifact_names() -> list[str]:
    """Names of every compiled contract shipped with the package."""
    folder = resources.files("market.chain.artifacts")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


@cache
def load_artifact(name: str) -> Artifact:
    """Load the artifact of contract `name` (e.g. ``"PaymentHub"``)."""
    path = resources.files("market.chain.artifacts") / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no compiled artifact for contract {name!r}")
    data = json.loads(path.read_text())
    return Artifact(name=data["contractName"], abi=data["abi"], bytecode=data["bytecode"])
