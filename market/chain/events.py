"""Event watching by log polling (works on every node; no filters or websockets).

A :class:`LogPoller` remembers the next block to read; each :meth:`LogPoller.poll`
fetches ``eth_getLogs`` for the wanted events from there up to the latest block (minus
``confirmations``), in ranges of at most ``max_range`` blocks, decodes them with the
contract ABI and advances. Persist ``next_block`` to resume after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_hash.auto import keccak
from web3.contract import Contract

from market.chain.client import ChainClient

__all__ = ["ChainEvent", "LogPoller"]


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One decoded event log."""

    name: str
    args: dict[str, Any]
    block_number: int
    tx_hash: bytes
    log_index: int


def _topic(entry: dict[str, Any]) -> bytes:
    types = ",".join(i["type"] for i in entry["inputs"])
    return keccak(f"{entry['name']}({types})".encode())


class LogPoller:
    """Poll `contract` for `event_names`, optionally filtered by indexed `topics`.

    ``topics`` follows ``eth_getLogs`` (topic1, topic2, … after the event signature);
    e.g. ``[None, provider_topic]`` selects events whose second indexed argument is the
    provider.
    """

    def __init__(
        self,
        client: ChainClient,
        contract: Contract,
        event_names: list[str],
        *,
        from_block: int = 0,
        confirmations: int = 0,
        max_range: int = 2_000,
        topics: list[bytes | None] | None = None,
    ) -> None:
        self.client = client
        self.contract = contract
        self.next_block = from_block
        self.confirmations = confirmations
        self.max_range = max_range
        abi = {e["name"]: e for e in contract.abi if e.get("type") == "event"}
        self._by_topic = {_topic(abi[n]): n for n in event_names}
        self._extra_topics = topics or []

    def poll(self) -> list[ChainEvent]:
        """New events since the last poll, in chain order."""
        head = self.client.block_number() - self.confirmations
        out: list[ChainEvent] = []
        while self.next_block <= head:
            to_block = min(head, self.next_block + self.max_range - 1)
            topics: list[Any] = [[("0x" + t.hex()) for t in self._by_topic]]
            topics += [("0x" + t.hex()) if t is not None else None for t in self._extra_topics]
            params = {
                "address": self.contract.address,
                "fromBlock": self.next_block,
                "toBlock": to_block,
                "topics": topics,
            }
            logs = self.client._retry(lambda p=params: self.client.w3.eth.get_logs(p))  # type: ignore[misc]
            for log in logs:
                name = self._by_topic.get(bytes(log["topics"][0]))
                if name is None:
                    continue
                decoded = getattr(self.contract.events, name)().process_log(log)
                out.append(
                    ChainEvent(
                        name=name,
                        args=dict(decoded["args"]),
                        block_number=int(log["blockNumber"]),
                        tx_hash=bytes(log["transactionHash"]),
                        log_index=int(log["logIndex"]),
                    )
                )
            self.next_block = to_block + 1
        return out
