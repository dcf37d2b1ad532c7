"""Where a chain comes from: in process (eth-tester/py-evm), anvil, or any RPC URL.

* :func:`start_embedded_chain` — an EVM inside this process (eth-tester on py-evm,
  Prague rules, instant blocks). Ten accounts are funded with 1,000,000 ETH; their keys
  are in ``EmbeddedChain.funded_keys``. Good for demos and quick tests; it dies with
  the process.
* :class:`AnvilProcess` — the anvil binary from npm (``@foundry-rs/anvil-linux-amd64``)
  on 127.0.0.1 and a free port, its output in a file, stopped by PID.
* :func:`connect` — any EVM JSON-RPC endpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3

from market.chain.client import ChainClient
from market.chain.errors import ChainUnavailable, RawRevertData, tester_failure_bytes

__all__ = [
    "ANVIL_DEV_KEY",
    "AnvilProcess",
    "EmbeddedChain",
    "connect",
    "find_anvil",
    "fund_native",
    "start_embedded_chain",
]

#: Anvil's first default account (mnemonic "test test … junk"); public, dev chains only.
ANVIL_DEV_KEY = bytes.fromhex("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")

_REPO_ROOT = Path(__file__).resolve().parents[2]
_NPM_ANVIL = _REPO_ROOT / "contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


@dataclass
class EmbeddedChain:
    """An in-process EVM with funded accounts."""

    w3: Web3
    funded_keys: list[bytes] = field(default_factory=list)

    def client(self, index: int = 0, **kwargs: float) -> ChainClient:
        """A client signing with funded account `index`."""
        return ChainClient(self.w3, self.funded_keys[index], **kwargs)  # type: ignore[arg-type]


def start_embedded_chain() -> EmbeddedChain:
    """Start an eth-tester/py-evm chain in this process."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider

    backend = PyEVMBackend()
    provider = EthereumTesterProvider(EthereumTester(backend), api_endpoints=_lossless_endpoints())
    w3 = Web3(provider)
    return EmbeddedChain(w3=w3, funded_keys=[k.to_bytes() for k in backend.account_keys])


def _lossless_endpoints() -> dict[str, dict[str, Any]]:
    """web3's eth-tester endpoints, except that ``eth_call`` and ``eth_estimateGas``
    keep a revert's raw bytes (web3 would decode a custom error whose first argument is
    a string as if it were ``Error(string)``, losing its selector)."""
    from eth_tester.exceptions import TransactionFailed
    from web3.providers.eth_tester.defaults import API_ENDPOINTS

    def keep_bytes(delegate: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return delegate(*args, **kwargs)
            except TransactionFailed as exc:
                data = tester_failure_bytes(exc)
                if data is None:
                    raise
                raise RawRevertData(data) from None

        return wrapped

    endpoints = {ns: dict(table) for ns, table in API_ENDPOINTS.items()}
    for name in ("call", "estimateGas"):
        endpoints["eth"][name] = keep_bytes(endpoints["eth"][name])
    return endpoints


def connect(rpc_url: str, timeout_s: float = 30.0) -> Web3:
    """A ``Web3`` on an HTTP(S) JSON-RPC endpoint; raises :class:`ChainUnavailable`."""
    if not re.match(r"^https?://", rpc_url):
        raise ChainUnavailable(f"not an http(s) RPC URL: {rpc_url!r}")
    # web3's own retries are off: ChainClient retries transient errors (tenacity), and
    # both together made up to 25 requests of one call.
    w3 = Web3(
        Web3.HTTPProvider(
            rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
        )
    )
    try:
        w3.eth.chain_id  # noqa: B018 - probe the connection
    except Exception as exc:
        raise ChainUnavailable(f"cannot reach {rpc_url}: {exc}") from None
    return w3


def find_anvil() -> Path | None:
    """The anvil binary: ``$HEARTH_ANVIL``, the npm package in ``contracts/``, or ``PATH``."""
    env = os.environ.get("HEARTH_ANVIL")
    if env and Path(env).is_file():
        return Path(env)
    if _NPM_ANVIL.is_file():
        return _NPM_ANVIL
    found = shutil.which("anvil")
    return Path(found) if found else None


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent dies, so a
    killed test session never leaves anvil behind. (The signal fires when the *thread*
    that started it exits: start anvil from a long-lived thread, e.g. the main one.)"""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: fall back to stop() by PID


class AnvilProcess:
    """An anvil node on 127.0.0.1 and a free port (``--port 0``).

    Output goes to a log file (an undrained pipe would stall it). ``stop()`` ends it by
    PID. Use as a context manager or call ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        binary: Path | None = None,
        log_path: Path | None = None,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = True,
    ) -> None:
        self.binary = binary or find_anvil()
        if self.binary is None:
            raise ChainUnavailable(
                "anvil not found: run `cd contracts && npm ci` or set HEARTH_ANVIL"
            )
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="anvil-", suffix=".log")[1])
        self.extra_args = extra_args
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> AnvilProcess:
        log = open(self.log_path, "wb")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(
                [str(self.binary), "--host", "127.0.0.1", "--port", "0", *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(rb"Listening on 127\.0\.0\.1:(\d+)", self.log_path.read_bytes())
            if match:
                self.url = f"http://127.0.0.1:{int(match.group(1))}"
                return self
            if self.proc.poll() is not None:
                raise ChainUnavailable(
                    f"anvil exited ({self.proc.returncode}); see {self.log_path}"
                )
            time.sleep(0.05)
        self.stop()
        raise ChainUnavailable(f"anvil did not start in {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        """Stop anvil by PID (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def web3(self) -> Web3:
        return connect(self.url)

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fund_native(funder: ChainClient, address: str | bytes, wei: int) -> None:
    """Give `address` `wei` of native coin: ``anvil_setBalance`` on anvil, otherwise a
    transfer from `funder`."""
    if isinstance(address, bytes):
        address = Web3.to_checksum_address(address)
    if getattr(funder.w3.provider, "ethereum_tester", None) is None:
        resp = funder.w3.provider.make_request("anvil_setBalance", [address, hex(wei)])  # type: ignore[arg-type]
        if "error" not in resp:
            return
    funder.send_value(address, wei)
