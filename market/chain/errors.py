"""One exception hierarchy for everything the chain can say no with.

Backends report a revert differently: eth-tester raises ``TransactionFailed`` with the
revert data in its message, a JSON-RPC node (anvil, geth, …) answers with an error that
web3 turns into ``ContractCustomError`` / ``ContractLogicError`` carrying hex data, and a
transaction mined with status 0 carries nothing at all until it is replayed. The client
turns all of them into :class:`ContractReverted`, decoded by selector against the ABIs of
every shipped contract (plus ``Error(string)`` and ``Panic(uint256)``), so callers write
``except ContractReverted as e: if e.name == "PaymentHubStaleEpoch": ...`` on any chain.
"""

from __future__ import annotations

import ast
from functools import cache
from typing import Any

from eth_hash.auto import keccak

from market.chain.abi import artifact_names, load_artifact

__all__ = [
    "ChainError",
    "ChainUnavailable",
    "ContractReverted",
    "TransactionDropped",
    "decode_revert_data",
    "hex_or_none",
    "revert_from_exception",
]


class ChainError(Exception):
    """Base of every error raised by ``market.chain``."""


class ChainUnavailable(ChainError):
    """The node could not be reached (after retries)."""


class TransactionDropped(ChainError):
    """A sent transaction got no receipt before the deadline."""

    def __init__(self, tx_hash: bytes, message: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class RawRevertData(Exception):
    """Raw revert bytes from the embedded chain (see ``backends.start_embedded_chain``:
    web3's eth-tester provider would otherwise decode custom errors as strings)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data


def tester_failure_bytes(exc: BaseException) -> bytes | None:
    """The raw revert bytes inside an eth-tester ``TransactionFailed``, if any."""
    raw: Any = exc.args[0] if exc.args else None
    if isinstance(raw, Exception):
        raw = raw.args[0] if raw.args else None
    if isinstance(raw, str) and raw[:2] in ("b'", 'b"'):
        try:
            raw = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return None
    return raw if isinstance(raw, bytes) else None


class ContractReverted(ChainError):
    """A call or transaction reverted.

    ``name`` is the custom error's name (``"PaymentHubWrongSigner"``), ``"Error"`` for a
    ``require(..., "reason")`` string, ``"Panic"`` for an assertion/overflow, or
    ``"unknown"`` when the data matched nothing; ``args`` are the decoded arguments and
    ``data`` the raw revert bytes.
    """

    def __init__(self, name: str, args: tuple[Any, ...], data: bytes, tx_hash: bytes | None = None):
        self.name = name
        self.args_decoded = args
        self.data = data
        self.tx_hash = tx_hash
        shown = ", ".join(repr(a) for a in args)
        super().__init__(f"reverted: {name}({shown})")


def _signature(entry: dict[str, Any]) -> str:
    def typ(inp: dict[str, Any]) -> str:
        t = str(inp["type"])
        if t.startswith("tuple"):
            return "(" + ",".join(typ(c) for c in inp["components"]) + ")" + t[5:]
        return t

    return f"{entry['name']}({','.join(typ(i) for i in entry['inputs'])})"


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {
        bytes.fromhex("08c379a0"): ("Error", ["string"]),
        bytes.fromhex("4e487b71"): ("Panic", ["uint256"]),
    }
    for name in artifact_names():
        for entry in load_artifact(name).abi:
            if entry.get("type") == "error":
                sig = _signature(entry)
                types = sig[sig.index("(") + 1 : -1]
                table[keccak(sig.encode())[:4]] = (
                    entry["name"],
                    [t for t in types.split(",") if t] if "(" not in types else [types],
                )
    return table


def decode_revert_data(data: bytes, tx_hash: bytes | None = None) -> ContractReverted:
    """Decode raw revert bytes into a :class:`ContractReverted`."""
    from eth_abi import decode

    entry = _error_table().get(data[:4]) if len(data) >= 4 else None
    if entry is None:
        return ContractReverted("unknown", (), data, tx_hash)
    name, types = entry
    try:
        args = tuple(decode(types, data[4:])) if types else ()
    except Exception:
        args = ()
    return ContractReverted(name, args, data, tx_hash)


def hex_or_none(value: Any) -> bytes | None:
    """`value` as bytes if it is bytes or a ``0x`` hex string, else ``None``."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            return None
    return None


def revert_from_exception(exc: BaseException) -> ContractReverted | None:
    """Translate a backend's revert exception; ``None`` if `exc` is not a revert."""
    from web3.exceptions import ContractLogicError

    if isinstance(exc, ContractReverted):
        return exc
    if isinstance(exc, RawRevertData):
        return decode_revert_data(exc.data)
    if isinstance(exc, ContractLogicError):
        data = hex_or_none(exc.data)
        if data:
            return decode_revert_data(data)
        return ContractReverted("Error", (str(exc.message or exc),), b"")
    if type(exc).__name__ == "TransactionFailed":  # eth_tester.exceptions.TransactionFailed
        data = tester_failure_bytes(exc)
        if data is not None:
            return decode_revert_data(data)
        msg = str(exc.args[0]) if exc.args else ""
        return ContractReverted("Error", (msg.removeprefix("execution reverted: "),), b"")
    return None
