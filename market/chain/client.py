"""A synchronous, typed, retrying web3 client that signs locally.

:class:`ChainClient` wraps one ``Web3`` connection and (optionally) one private key.
Transactions are built, gas-estimated and signed here and sent raw, so keys never reach
the node. It keeps its own nonce counter (one client per key and process), retries
transport failures with exponential back-off (``tenacity``; :data:`TRANSIENT` says
which failures those are), waits for receipts with a small
``poll_latency`` (web3's default 0.1 s halves throughput on a dev chain) and turns every
revert into :class:`~market.chain.errors.ContractReverted`, whichever backend said it.

It is synchronous on purpose: web3's async API does not run under trio. Call it from
trio through :class:`market.chain.aio.TrioChain` (one thread limiter), never directly
from async code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import requests.exceptions
import tenacity
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction

from market.chain.abi import load_artifact
from market.chain.errors import (
    ChainError,
    ChainUnavailable,
    ContractReverted,
    TransactionDropped,
    decode_revert_data,
    hex_or_none,
    revert_from_exception,
)

__all__ = ["NOT_TRANSIENT", "TRANSIENT", "ChainClient", "NonceManager", "Receipt", "SignedTx"]

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,  # the OS's: refused, reset, aborted (and their subclasses)
    TimeoutError,
    requests.exceptions.ConnectionError,  # web3's HTTP provider: no connection (ConnectTimeout)
    requests.exceptions.Timeout,  # ReadTimeout, ConnectTimeout
    requests.exceptions.ChunkedEncodingError,  # the connection died mid-answer
)
"""Failures worth another try: the node was unreachable or slow, not wrong."""

NOT_TRANSIENT: tuple[type[BaseException], ...] = (
    requests.exceptions.SSLError,  # a certificate or TLS setting: the same next time
    requests.exceptions.ProxyError,  # a proxy setting: the same next time
)
"""Subclasses of :data:`TRANSIENT` that are not: retrying them only delays the error."""

_retry_if_transient = tenacity.retry_if_exception_type(
    TRANSIENT
) & tenacity.retry_if_not_exception_type(NOT_TRANSIENT)


def _unreachable(state: tenacity.RetryCallState) -> NoReturn:
    """Called by tenacity once the last try failed transiently."""
    assert state.outcome is not None
    exc = state.outcome.exception()
    raise ChainUnavailable(f"node unreachable after {state.attempt_number} tries: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SignedTx:
    """A locally signed transaction, ready to (re)broadcast."""

    raw: bytes
    tx_hash: bytes
    nonce: int
    sender: str


@dataclass(frozen=True, slots=True)
class Receipt:
    """The parts of a transaction receipt callers need (``raw`` holds the rest)."""

    tx_hash: bytes
    status: int
    gas_used: int
    block_number: int
    contract_address: str | None
    raw: Any


class NonceManager:
    """Hands out consecutive nonces for one sender, thread-safely.

    It starts from the node's *pending* count and counts locally from there; after a
    failed send, :meth:`resync` re-reads the node so a gap never blocks later sends.
    """

    def __init__(self, fetch: Callable[[], int]) -> None:
        self._fetch = fetch
        self._next: int | None = None
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if self._next is None:
                self._next = self._fetch()
            n = self._next
            self._next += 1
            return n

    def resync(self) -> None:
        with self._lock:
            self._next = None


class ChainClient:
    """Typed access to one chain for one (optional) signing key.

    ``private_key`` is the raw 32-byte key (or hex); pass ``None`` for a read-only
    client. ``poll_latency`` is the receipt polling interval in seconds.
    """

    def __init__(
        self,
        w3: Web3,
        private_key: bytes | str | None = None,
        *,
        poll_latency: float = 0.01,
        receipt_timeout: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        gas_margin: float = 1.25,
    ) -> None:
        self.w3 = w3
        self.poll_latency = poll_latency
        self.receipt_timeout = receipt_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.gas_margin = gas_margin
        self._account: LocalAccount | None = (
            Account.from_key(private_key) if private_key is not None else None
        )
        self._chain_id: int | None = None
        self.nonces = NonceManager(
            lambda: self._retry(lambda: w3.eth.get_transaction_count(self.address, "pending"))
        )

    # ------------------------------------------------------------ identity

    @property
    def address(self) -> str:
        """The signer's checksummed address."""
        if self._account is None:
            raise ChainError("this client has no signing key")
        return str(self._account.address)

    @property
    def address_bytes(self) -> bytes:
        return bytes.fromhex(self.address[2:])

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self._retry(lambda: self.w3.eth.chain_id))
        return self._chain_id

    def with_key(self, private_key: bytes | str) -> ChainClient:
        """Another client on the same connection, signing with `private_key`."""
        other = ChainClient(
            self.w3,
            private_key,
            poll_latency=self.poll_latency,
            receipt_timeout=self.receipt_timeout,
            retries=self.retries,
            backoff_s=self.backoff_s,
            gas_margin=self.gas_margin,
        )
        other._chain_id = self._chain_id
        return other

    # ------------------------------------------------------------ plumbing

    def _retrying(self) -> tenacity.Retrying:
        """How one call is retried: ``retries`` more tries after the first, on a
        :data:`TRANSIENT` failure only, waiting ``backoff_s``, then twice as long each time
        (0.2, 0.4, 0.8, 1.6 s by default); after the last, :class:`ChainUnavailable`.
        Any other exception (a revert, a bad argument) propagates at once."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, exp_base=2, min=0),
            retry=_retry_if_transient,
            retry_error_callback=_unreachable,
            sleep=time.sleep,
        )

    def _retry(self, fn: Callable[[], T]) -> T:
        return self._retrying()(fn)

    def _reverts(self, fn: Callable[[], T]) -> T:
        try:
            return self._retry(fn)
        except ChainError:
            raise
        except Exception as exc:
            revert = revert_from_exception(exc)
            if revert is None:
                raise
            raise revert from None

    def contract(self, name: str, address: str | bytes) -> Contract:
        """A web3 contract object for artifact `name` at `address`."""
        if isinstance(address, bytes):
            address = Web3.to_checksum_address(address)
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=load_artifact(name).abi
        )

    # --------------------------------------------------------------- reads

    def call(self, fn: ContractFunction, block: int | str = "latest") -> Any:
        """Run a view/pure function (or dry-run any function) and return its result."""
        sender = {"from": self.address} if self._account is not None else {}
        return self._reverts(lambda: fn.call(sender, block_identifier=block))

    def block_number(self) -> int:
        return int(self._retry(lambda: self.w3.eth.block_number))

    def timestamp(self) -> int:
        """The latest block's timestamp."""
        return int(self._retry(lambda: self.w3.eth.get_block("latest"))["timestamp"])

    # -------------------------------------------------------------- writes

    def sign(
        self,
        fn: ContractFunction | None = None,
        *,
        tx: dict[str, Any] | None = None,
        gas: int | None = None,
    ) -> SignedTx:
        """Estimate gas (surfacing reverts as :class:`ContractReverted`), take a nonce
        and sign locally. Nothing is sent."""
        if self._account is None:
            raise ChainError("this client has no signing key")
        base: dict[str, Any] = {"from": self.address, "chainId": self.chain_id}
        if fn is not None:
            if gas is None:
                gas = int(self._reverts(lambda: fn.estimate_gas(base)) * self.gas_margin)
            base["gas"] = gas
            params = self._reverts(lambda: fn.build_transaction({**base, "nonce": 0}))
        else:
            params = {**base, **(tx or {})}
            if gas is None:
                gas = int(self._reverts(lambda: self.w3.eth.estimate_gas(params)) * self.gas_margin)
            params["gas"] = gas
            if "maxFeePerGas" not in params and "gasPrice" not in params:
                params.update(self._fees())
        params["nonce"] = self.nonces.take()
        signed = self._account.sign_transaction(params)
        return SignedTx(
            bytes(signed.raw_transaction), bytes(signed.hash), params["nonce"], self.address
        )

    def _fees(self) -> dict[str, int]:
        base_fee = int(self._retry(lambda: self.w3.eth.get_block("latest")).get("baseFeePerGas", 0))
        tip = 10**9
        return {"maxPriorityFeePerGas": tip, "maxFeePerGas": 2 * base_fee + tip}

    def broadcast(self, signed: SignedTx) -> bytes:
        """Send a signed transaction; re-sending one the node already knows is fine."""
        try:
            self._retry(lambda: self.w3.eth.send_raw_transaction(signed.raw))
        except Exception as exc:
            text = str(exc).lower()
            if "already known" in text or "already imported" in text or "known transaction" in text:
                return signed.tx_hash
            if "nonce" in text:
                self.nonces.resync()
            revert = revert_from_exception(exc)
            if revert is not None:
                raise revert from None
            raise
        return signed.tx_hash

    def receipt(self, tx_hash: bytes) -> Receipt | None:
        """The receipt of `tx_hash`, or ``None`` if it is not mined (yet)."""
        from web3.exceptions import TransactionNotFound

        try:
            raw = self._retry(lambda: self.w3.eth.get_transaction_receipt(tx_hash))
        except TransactionNotFound:
            return None
        if raw is None:
            return None
        return Receipt(
            tx_hash=bytes(raw["transactionHash"]),
            status=int(raw["status"]),
            gas_used=int(raw["gasUsed"]),
            block_number=int(raw["blockNumber"]),
            contract_address=raw.get("contractAddress"),
            raw=raw,
        )

    def wait_for_receipt(self, tx_hash: bytes, timeout: float | None = None) -> Receipt | None:
        """Poll until `tx_hash` is mined and return its receipt, whatever its status;
        ``None`` if it is not mined within `timeout` seconds (0: look once)."""
        deadline = time.monotonic() + (self.receipt_timeout if timeout is None else timeout)
        while True:
            rec = self.receipt(tx_hash)
            if rec is not None or time.monotonic() >= deadline:
                return rec
            time.sleep(self.poll_latency)

    def wait(self, tx_hash: bytes, timeout: float | None = None) -> Receipt:
        """Poll until `tx_hash` is mined; raise :class:`ContractReverted` if it failed,
        :class:`TransactionDropped` if no receipt came in time."""
        rec = self.wait_for_receipt(tx_hash, timeout)
        if rec is None:
            raise TransactionDropped(tx_hash, f"no receipt for 0x{tx_hash.hex()}")
        if rec.status != 1:
            raise self.explain_failure(rec)
        return rec

    def confirmed_nonce(self, address: str | None = None) -> int:
        """How many transactions of `address` (default: the signer) are mined: every
        nonce below it is used, it and above are not."""
        who = self.address if address is None else address
        return int(self._retry(lambda: self.w3.eth.get_transaction_count(who, "latest")))  # type: ignore[arg-type]

    def explain_failure(self, rec: Receipt) -> ContractReverted:
        """Recover why a mined transaction failed (a receipt says only "status 0").

        The exact answer is the node's own trace of the transaction
        (``debug_traceTransaction`` with the call tracer: its output is the revert data,
        taken on the state the transaction really ran on). Where the node has no tracer
        (eth-tester), the call is replayed: on the parent block's state when it was its
        block's first transaction (exact), otherwise on the state its block left behind —
        which includes the earlier transactions of the block that made it fail (a replay
        at the parent block would run before them and often succeed, losing the reason) —
        and only then on the parent block's state.
        """
        data = self._traced_revert_data(rec.tx_hash)
        if isinstance(data, bytes):
            return decode_revert_data(data, rec.tx_hash)
        if isinstance(data, str):  # the trace names a failure that carries no revert data
            return ContractReverted("Error", (data,), b"", rec.tx_hash)
        tx = self._retry(lambda: self.w3.eth.get_transaction(rec.tx_hash))
        call = {
            "from": tx["from"],
            "to": tx["to"],
            "data": tx["input"],
            "value": tx["value"],
            "gas": tx["gas"],
        }
        index = int(rec.raw.get("transactionIndex", 0) or 0)
        blocks = [rec.block_number - 1] if index == 0 else [rec.block_number, rec.block_number - 1]
        for block in blocks:
            try:
                self.w3.eth.call(call, block_identifier=max(0, block))  # type: ignore[arg-type]
            except Exception as exc:
                revert = revert_from_exception(exc)
                if revert is not None:
                    revert.tx_hash = rec.tx_hash
                    return revert
        return decode_revert_data(b"", rec.tx_hash)

    def _traced_revert_data(self, tx_hash: bytes) -> bytes | str | None:
        """The revert data of a mined, failed transaction from the node's call tracer
        (bytes), the failure's text when it carries no data (str), or ``None`` when the
        node cannot trace (eth-tester, a node without the debug namespace)."""
        try:
            resp = self.w3.provider.make_request(
                "debug_traceTransaction",  # type: ignore[arg-type]
                [
                    "0x" + tx_hash.hex(),
                    {"tracer": "callTracer", "tracerConfig": {"onlyTopCall": True}},
                ],
            )
        except Exception:
            return None
        result = resp.get("result") if isinstance(resp, dict) else None
        if not isinstance(result, dict) or not result.get("error"):
            return None
        output = hex_or_none(result.get("output"))
        if output:
            return output
        return str(result["error"])

    def transact(self, fn: ContractFunction, *, gas: int | None = None) -> Receipt:
        """Sign, send and wait for `fn`; the mined receipt, or :class:`ContractReverted`."""
        return self.wait(self.broadcast(self.sign(fn, gas=gas)))

    def send_value(self, to: str | bytes, wei: int) -> Receipt:
        """Send `wei` of the chain's native coin."""
        if isinstance(to, bytes):
            to = Web3.to_checksum_address(to)
        return self.wait(self.broadcast(self.sign(tx={"to": to, "value": wei}, gas=21_000)))

    def deploy(self, name: str, *args: Any) -> str:
        """Deploy artifact `name` with constructor `args`; return its checksummed address."""
        art = load_artifact(name)
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        rec = self.transact(factory.constructor(*args))
        if not rec.contract_address:
            raise ChainError(f"deploying {name} produced no contract address")
        return str(rec.contract_address)

    # ---------------------------------------------------------- dev chains

    def advance_time(self, seconds: int) -> None:
        """Move a development chain's clock forward and mine a block (eth-tester or anvil)."""
        tester = getattr(self.w3.provider, "ethereum_tester", None)
        if tester is not None:
            tester.time_travel(self.timestamp() + seconds)
            return
        self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
