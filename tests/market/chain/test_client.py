"""ChainClient behaviour that is not about a particular contract."""

from __future__ import annotations

import socket
import threading

import pytest
from web3 import Web3

from market.chain.client import ChainClient, NonceManager
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
