"""ChainClient behaviour that is not about a particular contract."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests.exceptions
from web3 import Web3

from market.chain.client import NOT_TRANSIENT, TRANSIENT, ChainClient, NonceManager
from market.chain.errors import ChainUnavailable, ContractReverted
from tests.market.chain.conftest import Market


def test_unreachable_node_is_retried_then_reported() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 2}))
    client = ChainClient(w3, b"\x01" * 32, retries=2, backoff_s=0.01)
    with pytest.raises(ChainUnavailable, match="after 3 tries"):
        client.block_number()


class _FlakyNode:
    """A stand-in ``Web3`` whose ``eth.block_number`` raises each of ``failures`` in turn."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0
        flaky = self

        class _Eth:
            @property
            def block_number(self) -> int:
                flaky.calls += 1
                if flaky.failures:
                    raise flaky.failures.pop(0)
                return 7

        self.eth = _Eth()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The back-off waits, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


_TRANSIENT_EXAMPLES = [
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    TimeoutError("timed out"),
    requests.exceptions.ConnectionError("no route"),
    requests.exceptions.ConnectTimeout("connect timeout"),
    requests.exceptions.ReadTimeout("read timeout"),
    requests.exceptions.ChunkedEncodingError("cut short"),
]


@pytest.mark.parametrize("exc", _TRANSIENT_EXAMPLES, ids=lambda e: type(e).__name__)
def test_transient_failures_are_retried_with_doubling_waits(
    exc: BaseException, sleeps: list[float]
) -> None:
    assert isinstance(exc, TRANSIENT) and not isinstance(exc, NOT_TRANSIENT)
    node = _FlakyNode(exc, exc, exc)
    client = ChainClient(node, retries=4, backoff_s=0.2)  # type: ignore[arg-type]
    assert client.block_number() == 7
    assert node.calls == 4 and sleeps == pytest.approx([0.2, 0.4, 0.8])


def test_after_the_last_try_the_node_is_reported_unavailable(sleeps: list[float]) -> None:
    last = requests.exceptions.ReadTimeout("read timeout 5")
    node = _FlakyNode(*[requests.exceptions.ConnectionError("refused")] * 4, last)
    client = ChainClient(node)  # type: ignore[arg-type]  # the defaults: 4 retries, 0.2 s
    with pytest.raises(ChainUnavailable, match="after 5 tries: read timeout 5") as info:
        client.block_number()
    assert info.value.__cause__ is last
    assert node.calls == 5 and sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6])


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad argument"),
        KeyError("blockNumber"),
        ContractReverted("PaymentHubNothingToRedeem", (), b""),
        requests.exceptions.SSLError("certificate verify failed"),  # a setting, not luck
        requests.exceptions.ProxyError("proxy refused"),
        requests.exceptions.HTTPError("500 Server Error"),  # answered: not ours to retry
    ],
    ids=lambda e: type(e).__name__,
)
def test_other_failures_propagate_at_once(exc: BaseException, sleeps: list[float]) -> None:
    node = _FlakyNode(exc)
    client = ChainClient(node, retries=4)  # type: ignore[arg-type]
    with pytest.raises(type(exc)) as info:
        client.block_number()
    assert info.value is exc and node.calls == 1 and sleeps == []


def test_retries_zero_means_one_try(sleeps: list[float]) -> None:
    node = _FlakyNode(TimeoutError("slow"))
    with pytest.raises(ChainUnavailable, match="after 1 tries"):
        ChainClient(node, retries=0).block_number()  # type: ignore[arg-type]
    assert sleeps == []


def test_nonce_manager_hands_out_each_nonce_once() -> None:
    fetches = []
    nm = NonceManager(lambda: fetches.append(1) or 5)
    taken: list[int] = []
    threads = [
        threading.Thread(target=lambda: taken.extend(nm.take() for _ in range(50)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(5, 205)) and len(fetches) == 1
    nm.resync()
    assert nm.take() == 5 and len(fetches) == 2


def test_failed_estimate_consumes_no_nonce_and_mined_revert_is_decoded(market: Market) -> None:
    hub = market.hub(market.provider)
    with pytest.raises(ContractReverted):
        hub.redeem(market.signed(0))  # reverts at estimation: no nonce used
    hub.redeem(market.signed(5))  # so the next transaction is not stuck behind a gap
    # forced past estimation with a fixed gas limit, the revert is mined and replayed
    with pytest.raises(ContractReverted) as info:
        market.provider.transact(hub.redeem_fn(market.signed(5)), gas=200_000)
    assert info.value.name == "PaymentHubNothingToRedeem" and info.value.tx_hash is not None
    assert market.provider.receipt(info.value.tx_hash).status == 0


def _automine(client: ChainClient, on: bool) -> None:
    """Switch a development chain's automining (eth-tester or anvil)."""
    tester = getattr(client.w3.provider, "ethereum_tester", None)
    if tester is not None:
        if on:
            tester.enable_auto_mine_transactions()
        else:
            tester.disable_auto_mine_transactions()
        return
    resp = client.w3.provider.make_request("evm_setAutomine", [on])  # type: ignore[arg-type]
    assert "error" not in resp, resp


def _mine(client: ChainClient) -> None:
    tester = getattr(client.w3.provider, "ethereum_tester", None)
    if tester is not None:
        tester.mine_blocks(1)
        return
    resp = client.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    assert "error" not in resp, resp


def test_revert_caused_earlier_in_its_own_block_keeps_its_reason(market: Market) -> None:
    """A redemption mined in the same block right after another that paid the same
    voucher (anyone may submit a voucher) fails; replaying it at the block *before* would
    succeed and lose the reason (it read "unknown()"). The client must name the real
    error with its arguments."""
    sv = market.signed(5)
    first = market.hub(market.admin).sign_redeem(sv)
    second = market.hub(market.provider).sign_redeem(sv, gas=200_000)  # looks fine when signed
    _automine(market.admin, False)
    try:
        market.admin.broadcast(first)
        market.provider.broadcast(second)
        _mine(market.admin)
    finally:
        _automine(market.admin, True)
    paid, failed = market.provider.receipt(first.tx_hash), market.provider.receipt(second.tx_hash)
    assert paid is not None and failed is not None
    assert (paid.status, failed.status) == (1, 0)
    assert paid.block_number == failed.block_number  # one block: the state before it pays
    assert market.provider.wait(first.tx_hash).status == 1
    with pytest.raises(ContractReverted) as info:
        market.provider.wait(second.tx_hash)
    assert info.value.name == "PaymentHubNothingToRedeem"
    assert info.value.args_decoded == (5, 5)
    assert info.value.tx_hash == second.tx_hash
