"""Exactly-once redemption across a real crash.

A separate process redeems a voucher and is SIGKILLed after it recorded its intent
and sent the transaction but before it saw a receipt (the anvil node is told not to
mine, so the receipt cannot arrive). A fresh Redeemer then reconciles from the chain.
Endings: the transaction is mined after the crash; the node lost it; it is still in the
mempool when ``hearth node redeem`` runs (it must stay pending and nothing may be
signed again for the voucher); its nonce was taken by another transaction.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from market.chain.backends import ANVIL_DEV_KEY, AnvilProcess, fund_native
from market.chain.client import ChainClient
from market.chain.contracts import PaymentHub
from market.chain.deployment import Deployment, deploy_all
from market.chain.voucher import Voucher, sign_voucher
from market.ledger import Ledger, Redeemer

REPO = Path(__file__).resolve().parents[3]
AMOUNT = 123_456


@pytest.fixture
def private_anvil(tmp_path: Path) -> Iterator[AnvilProcess]:
    """A node of our own: this test switches mining off."""
    with AnvilProcess(log_path=tmp_path / "anvil.log") as node:
        yield node


def _rpc(w3: Web3, method: str, *params: object) -> object:
    resp = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in resp, resp
    return resp["result"]


def _setup(
    node: AnvilProcess, tmp_path: Path
) -> tuple[ChainClient, ChainClient, Deployment, Path, bytes]:
    admin = ChainClient(node.web3(), ANVIL_DEV_KEY)
    d = deploy_all(admin)
    dep_path = tmp_path / "deployment.json"
    d.save(dep_path)
    buyer_key, provider_key = os.urandom(32), os.urandom(32)
    buyer, provider = admin.with_key(buyer_key), admin.with_key(provider_key)
    for c in (buyer, provider):
        fund_native(admin, c.address, 10**18)
    d.erc20(buyer).mint(buyer.address, 10**9)
    d.erc20(buyer).approve(d.payment_hub, 10**9)
    d.hub(buyer).deposit(d.token, 10**9)
    ledger_path = tmp_path / "provider.db"
    hub = d.hub(provider)
    ledger = Ledger(ledger_path)
    for amount in (1_000, 50_000, AMOUNT):  # the vouchers of three jobs
        v = Voucher(
            buyer=buyer.address_bytes,
            provider=provider.address_bytes,
            token=bytes.fromhex(d.token[2:]),
            cumulative_amount=amount,
        )
        ledger.accept_voucher(hub.domain(), v, sign_voucher(buyer_key, hub.domain(), v))
    ledger.close()
    return admin, provider, d, ledger_path, provider_key


def _crash_mid_redemption(
    node: AnvilProcess, ledger_path: Path, dep_path: Path, key: bytes, tmp_path: Path
) -> bytes:
    """Run the worker with mining off; kill it once its intent is on disk and its tx in the pool."""
    w3 = node.web3()
    _rpc(w3, "evm_setAutomine", False)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.market.ledger.redeem_worker",
            str(ledger_path),
            str(dep_path),
            node.url,
            key.hex(),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        tx_hash = None
        while time.monotonic() < deadline and worker.poll() is None:
            ledger = Ledger(ledger_path)
            pending = ledger.redemptions("pending")
            ledger.close()
            if pending:
                tx_hash = pending[0].tx_hash
                content = _rpc(w3, "txpool_content")
                in_pool = any(
                    tx["hash"].lower() == "0x" + tx_hash.hex()
                    for by_nonce in content["pending"].values()  # type: ignore[index]
                    for tx in by_nonce.values()
                )
                if in_pool:
                    break
            time.sleep(0.05)
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()
        assert tx_hash is not None, "worker never recorded its intent"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        log.close()
    assert worker.returncode == -signal.SIGKILL
    return tx_hash


def _check_paid_once(
    admin: ChainClient, provider: ChainClient, d: Deployment, ledger_path: Path
) -> None:
    hub = d.hub(provider)
    redeemer = Redeemer(Ledger(ledger_path), hub)
    assert redeemer.redeem_due(gas_price_wei=0) == []  # nothing left: no second payment
    fee = AMOUNT * d.fee_bps // 10_000
    assert d.erc20(admin).balance_of(provider.address) == AMOUNT - fee
    logs = hub.contract.events.Redeemed().get_logs(from_block=0)
    assert len(logs) == 1 and logs[0]["args"]["amount"] == AMOUNT
    ledger = redeemer.ledger
    assert [r.status for r in ledger.redemptions()] == ["confirmed"]
    (day,) = ledger.earnings_by_day()
    assert day["gross"] == AMOUNT and day["redemptions"] == 1


@pytest.mark.slow
def test_killed_after_send_then_mined(private_anvil: AnvilProcess, tmp_path: Path) -> None:
    admin, provider, d, ledger_path, key = _setup(private_anvil, tmp_path)
    tx_hash = _crash_mid_redemption(
        private_anvil, ledger_path, tmp_path / "deployment.json", key, tmp_path
    )
    w3 = private_anvil.web3()
    _rpc(w3, "evm_mine")  # the transaction lands while nobody is watching
    _rpc(w3, "evm_setAutomine", True)
    redeemer = Redeemer(Ledger(ledger_path), d.hub(provider.with_key(key)))
    (result,) = redeemer.reconcile()
    assert result.status == "confirmed" and result.receipt is not None
    assert result.receipt.tx_hash == tx_hash
    _check_paid_once(admin, provider, d, ledger_path)


@pytest.mark.slow
def test_killed_after_send_then_lost(private_anvil: AnvilProcess, tmp_path: Path) -> None:
    admin, provider, d, ledger_path, key = _setup(private_anvil, tmp_path)
    tx_hash = _crash_mid_redemption(
        private_anvil, ledger_path, tmp_path / "deployment.json", key, tmp_path
    )
    w3 = private_anvil.web3()
    _rpc(w3, "anvil_dropTransaction", "0x" + tx_hash.hex())  # the node forgot it
    _rpc(w3, "evm_setAutomine", True)
    _rpc(w3, "evm_mine")
    assert admin.receipt(tx_hash) is None  # really gone
    (held,) = {sv.voucher.buyer for sv in Ledger(ledger_path).vouchers()}
    assert d.hub(admin).redeemed(held, provider.address, d.token) == (0, 0)  # nothing paid yet
    redeemer = Redeemer(Ledger(ledger_path), d.hub(provider.with_key(key)))
    (result,) = redeemer.reconcile()  # re-broadcasts the very same signed transaction
    assert result.status == "confirmed" and result.receipt is not None
    assert result.receipt.tx_hash == tx_hash
    _check_paid_once(admin, provider, d, ledger_path)


def _provider_txs_in_pool(w3: Web3, provider: str) -> list[str]:
    content = _rpc(w3, "txpool_content")
    pending = {k.lower(): v for k, v in content["pending"].items()}  # type: ignore[index]
    return [tx["hash"] for tx in pending.get(provider.lower(), {}).values()]


def _redeem_held(redeemer: Redeemer) -> list[str]:
    """What ``hearth node redeem`` does after reconciling: redeem every held voucher
    with something accrued (``p2pnode.node.runtime.redeem_all``)."""
    return [
        redeemer.redeem(sv).status
        for sv in redeemer.ledger.vouchers(redeemer.provider)
        if redeemer.accrued(sv) > 0
    ]


@pytest.mark.slow
def test_killed_in_mempool_then_node_redeem_signs_nothing_twice(
    private_anvil: AnvilProcess, tmp_path: Path
) -> None:
    """The issue's case: the node dies with its redemption in the mempool and `hearth node
    redeem` runs before it is mined. The row was marked dropped and a second redemption
    of the same voucher was signed and sent (it reverted after the first paid: gas paid
    twice). Its nonce is unused, so it must stay pending and nothing be signed again."""
    admin, provider, d, ledger_path, key = _setup(private_anvil, tmp_path)
    tx_hash = _crash_mid_redemption(
        private_anvil, ledger_path, tmp_path / "deployment.json", key, tmp_path
    )
    w3 = private_anvil.web3()
    assert _provider_txs_in_pool(w3, provider.address) == ["0x" + tx_hash.hex()]
    client = ChainClient(w3, key, receipt_timeout=1.0)  # no 120 s waits in a test
    redeemer = Redeemer(Ledger(ledger_path), PaymentHub(client, d.payment_hub))
    (reconciled,) = redeemer.reconcile(wait_s=0.5)  # `hearth node redeem`; nothing mined
    assert reconciled.status == "pending"  # its nonce is unused: it may still land
    assert _provider_txs_in_pool(w3, provider.address) == ["0x" + tx_hash.hex()]
    assert set(_redeem_held(redeemer)) <= {"pending"}  # nothing signed for it again
    assert [r.status for r in redeemer.ledger.redemptions()] == ["pending"]
    assert _provider_txs_in_pool(w3, provider.address) == ["0x" + tx_hash.hex()]
    assert redeemer.redeem_due(gas_price_wei=0) == []  # not due while it may still land
    assert _provider_txs_in_pool(w3, provider.address) == ["0x" + tx_hash.hex()]

    _rpc(w3, "evm_mine")  # now it lands
    _rpc(w3, "evm_setAutomine", True)
    (result,) = redeemer.reconcile()
    assert result.status == "confirmed" and result.receipt is not None
    assert result.receipt.tx_hash == tx_hash
    assert w3.eth.get_transaction_count(provider.address, "latest") == 1  # one tx, one gas bill
    _check_paid_once(admin, provider, d, ledger_path)


@pytest.mark.slow
def test_killed_then_nonce_taken_by_another_tx_is_dropped_and_due_again(
    private_anvil: AnvilProcess, tmp_path: Path
) -> None:
    """Only when the chain used the row's nonce for a different transaction can the
    redemption never land: then (and only then) it is dropped and the voucher is due."""
    admin, provider, d, ledger_path, key = _setup(private_anvil, tmp_path)
    tx_hash = _crash_mid_redemption(
        private_anvil, ledger_path, tmp_path / "deployment.json", key, tmp_path
    )
    w3 = private_anvil.web3()
    _rpc(w3, "anvil_dropTransaction", "0x" + tx_hash.hex())
    _rpc(w3, "evm_setAutomine", True)
    other = provider.with_key(key)  # the same key, from elsewhere: takes the freed nonce
    other.send_value(admin.address, 1)
    assert w3.eth.get_transaction_count(provider.address, "latest") == 1
    redeemer = Redeemer(Ledger(ledger_path), d.hub(provider.with_key(key)))
    (result,) = redeemer.reconcile()
    assert result.status == "dropped"
    assert admin.receipt(tx_hash) is None
    (again,) = redeemer.redeem_due(gas_price_wei=0)  # due again, with a fresh nonce
    assert again.status == "confirmed"
    assert [r.status for r in redeemer.ledger.redemptions()] == ["dropped", "confirmed"]
    buyer = redeemer.ledger.vouchers()[0].voucher.buyer
    assert d.hub(admin).redeemed(buyer, provider.address, d.token) == (AMOUNT, 0)
