"""The SQLite ledger on its own (no chain)."""

from __future__ import annotations

import os
import sqlite3

import coincurve
import pytest
from eth_hash.auto import keccak

from market.chain.voucher import Voucher, VoucherDomain, sign_voucher
from market.ledger import Ledger

KEY = os.urandom(32)
BUYER = keccak(coincurve.PrivateKey(KEY).public_key.format(compressed=False)[1:])[-20:]
DOMAIN = VoucherDomain(chain_id=31337, verifying_contract=b"\x44" * 20)


def _v(amount: int, epoch: int = 0) -> tuple[Voucher, bytes]:
    v = Voucher(
        buyer=BUYER,
        provider=b"\x22" * 20,
        token=b"\x33" * 20,
        cumulative_amount=amount,
        epoch=epoch,
    )
    return v, sign_voucher(KEY, DOMAIN, v)


def test_keeps_only_the_highest_voucher_per_epoch(ledger: Ledger) -> None:
    assert ledger.accept_voucher(DOMAIN, *_v(100), job_id=b"\x01" * 16)
    assert ledger.accept_voucher(DOMAIN, *_v(2**200))  # amounts beyond 64 bits survive
    assert not ledger.accept_voucher(DOMAIN, *_v(150))
    assert ledger.accept_voucher(DOMAIN, *_v(5, epoch=1))
    held = ledger.vouchers()
    assert [(s.voucher.epoch, s.voucher.cumulative_amount) for s in held] == [(0, 2**200), (1, 5)]
    latest = ledger.latest_voucher(BUYER, b"\x22" * 20, b"\x33" * 20)
    assert latest is not None and latest.voucher.epoch == 1


def test_rejects_vouchers_not_signed_by_the_buyer(ledger: Ledger) -> None:
    v, sig = _v(100)
    other = VoucherDomain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)
    with pytest.raises(ValueError):
        ledger.accept_voucher(other, v, sig)
    assert ledger.vouchers() == []


def test_earnings_count_each_log_once_and_sum_by_day(ledger: Ledger) -> None:
    common = dict(
        buyer=BUYER, provider=b"\x22" * 20, token=b"\x33" * 20, cumulative_amount=0, epoch=0
    )
    assert ledger.record_earning(
        tx_hash=b"\xaa" * 32,
        log_index=0,
        block_number=1,
        timestamp=86_400,
        amount=1_000,
        fee=10,
        **common,
    )
    assert not ledger.record_earning(
        tx_hash=b"\xaa" * 32,
        log_index=0,
        block_number=1,
        timestamp=86_400,
        amount=1_000,
        fee=10,
        **common,
    )
    assert ledger.record_earning(
        tx_hash=b"\xbb" * 32,
        log_index=3,
        block_number=2,
        timestamp=86_401,
        amount=500,
        fee=5,
        **common,
    )
    assert ledger.record_earning(
        tx_hash=b"\xcc" * 32,
        log_index=0,
        block_number=3,
        timestamp=2 * 86_400,
        amount=7,
        fee=0,
        **common,
    )
    days = ledger.earnings_by_day()
    assert [(d["day"], d["gross"], d["fees"], d["net"], d["redemptions"]) for d in days] == [
        ("1970-01-02", 1_500, 15, 1_485, 2),
        ("1970-01-03", 7, 0, 7, 1),
    ]  # fmt: skip


def test_redemption_settles_once_and_file_is_wal(ledger: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    v, _ = _v(100)
    rid = ledger.record_intent(v, b"\x01" * 32, b"raw", 7)
    assert [r.status for r in ledger.redemptions()] == ["pending"]
    assert ledger.settle(rid, "confirmed", block_number=3, gas_used=50_000)
    assert not ledger.settle(rid, "dropped")
    assert ledger.redemptions("confirmed")[0].nonce == 7
    mode = sqlite3.connect(tmp_path / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_jobs_and_meta(ledger: Ledger) -> None:
    ledger.record_job(b"\x05" * 16, role="provider", counterparty="12D3KooX", model_id="ab" * 32)
    ledger.finish_job(b"\x05" * 16, tokens=42, amount=420)
    (job,) = ledger.jobs()
    assert job["status"] == "done" and job["tokens"] == 42 and job["amount"] == "420"
    ledger.set_meta("k", "v")
    assert ledger.get_meta("k") == "v" and ledger.get_meta("missing") is None


def test_losses_are_idempotent_and_current(ledger: Ledger) -> None:
    from market.ledger.store import LOSS_BALANCE_SHORT, LOSS_STALE_EPOCH

    v, _ = _v(300)
    assert not ledger.record_loss(v, amount=0, cause=LOSS_BALANCE_SHORT)  # 0: no row
    assert ledger.losses(include_recovered=True) == []
    assert ledger.record_loss(v, amount=120, cause=LOSS_BALANCE_SHORT, detail="short")
    assert not ledger.record_loss(v, amount=120, cause=LOSS_BALANCE_SHORT, detail="short")
    assert ledger.record_loss(v, amount=2**200, cause=LOSS_STALE_EPOCH)  # its own row
    assert {(x.cause, x.amount) for x in ledger.losses()} == {
        (LOSS_BALANCE_SHORT, 120),
        (LOSS_STALE_EPOCH, 2**200),
    }
    assert ledger.record_loss(v, amount=0, cause=LOSS_BALANCE_SHORT)  # made good
    assert [x.cause for x in ledger.losses()] == [LOSS_STALE_EPOCH]
    assert ledger.lost_total() == 2**200 and ledger.lost_total(b"\x99" * 20) == 0
    with pytest.raises(ValueError):
        ledger.record_loss(v, amount=-1, cause=LOSS_STALE_EPOCH)


def test_flagged_buyers(ledger: Ledger) -> None:
    assert not ledger.is_flagged(BUYER)
    assert ledger.flag_buyer(BUYER, "stale_epoch", "moved to epoch 1")
    assert not ledger.flag_buyer(BUYER, "balance_short")  # the first cause is kept
    assert ledger.is_flagged(BUYER) and ledger.is_flagged("0x" + BUYER.hex().upper())
    (flag,) = ledger.flagged_buyers()
    assert (flag.buyer, flag.cause, flag.detail) == (BUYER, "stale_epoch", "moved to epoch 1")
    assert ledger.unflag_buyer(BUYER) and not ledger.unflag_buyer(BUYER)
    assert ledger.flagged_buyers() == []
