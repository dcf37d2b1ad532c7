"""The redemption loop against a real EVM, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from market.chain.errors import ContractReverted
from market.ledger import Ledger, Redeemer, RedemptionPolicy
from tests.market.chain.conftest import Market

GWEI = 10**9


def _redeemer(m: Market, ledger: Ledger, **policy: int) -> Redeemer:
    return Redeemer(ledger, m.hub(m.provider), RedemptionPolicy(**policy))


def _hold(m: Market, ledger: Ledger, *amounts: int, epoch: int = 0) -> None:
    for a in amounts:
        sv = m.signed(a, epoch=epoch)
        ledger.accept_voucher(m.hub().domain(), sv.voucher, sv.signature)


def test_redeems_latest_voucher_once_and_books_earnings(market: Market, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger)
    _hold(market, ledger, 100, 2_500, 7_000)  # three jobs' worth of increments
    (result,) = r.redeem_due(gas_price_wei=0)
    assert result.status == "confirmed"
    assert r.redeem_due(gas_price_wei=0) == []  # nothing accrued: nothing sent
    fee = 7_000 * market.deployment.fee_bps // 10_000
    assert market.token.balance_of(market.provider.address) == 7_000 - fee
    (day,) = ledger.earnings_by_day()
    assert (day["gross"], day["fees"], day["net"], day["redemptions"]) == (
        7_000,
        fee,
        7_000 - fee,
        1,
    )
    assert r.sync_earnings() == 0  # re-reading the chain adds nothing
    assert [x.status for x in ledger.redemptions()] == ["confirmed"]


def test_waits_until_worth_the_gas(market: Market, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger, gas_multiple=10)
    cost = r.policy.gas_cost_in_token(GWEI)
    assert cost > 0
    _hold(market, ledger, 10 * cost - 1)
    assert r.due(gas_price_wei=GWEI) == []
    _hold(market, ledger, 10 * cost)
    assert len(r.due(gas_price_wei=GWEI)) == 1


def test_redeems_small_amounts_before_withdrawal_notice_ends(
    market: Market, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger, gas_multiple=10, notice_margin_s=3_600)
    _hold(market, ledger, 50)  # far below the gas threshold
    market.hub(market.buyer).request_withdrawal(market.deployment.token, 10**12)
    assert r.sync_withdrawal_notices() == 1
    assert r.due(gas_price_wei=GWEI) == []  # a day of notice left: not yet
    market.admin.advance_time(market.deployment.withdrawal_delay_s - 1_800)
    (result,) = r.redeem_due(gas_price_wei=GWEI)
    assert result.status == "confirmed"
    market.admin.advance_time(3_600)
    market.hub(market.buyer).execute_withdrawal(market.deployment.token)
    assert market.token.balance_of(market.buyer.address) == 1_000 * 10**6 - 50


def test_redeems_before_a_notice_to_release_our_lock_ends(market: Market, tmp_path: Path) -> None:
    """The lock is what covers the vouchers we accepted: a buyer's notice to release it
    makes the channel due whatever the amount (and a notice about another provider's
    lock does not)."""
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger, gas_multiple=10, notice_margin_s=3_600)
    token = market.deployment.token
    buyer_hub = market.hub(market.buyer)
    other = market.new_account(market.admin)
    buyer_hub.lock(market.provider.address, token, 500)
    buyer_hub.lock(other.address, token, 500)
    _hold(market, ledger, 50)  # far below the gas threshold
    buyer_hub.request_unlock(other.address, token, 500)  # not ours: ignored
    assert r.sync_withdrawal_notices() == 0
    buyer_hub.request_unlock(market.provider.address, token, 500)
    assert r.sync_withdrawal_notices() == 1
    assert r.due(gas_price_wei=GWEI) == []  # most of the notice left: not yet
    market.admin.advance_time(market.deployment.withdrawal_delay_s - 1_800)
    (result,) = r.redeem_due(gas_price_wei=GWEI)
    assert result.status == "confirmed"
    market.admin.advance_time(3_600)
    buyer_hub.execute_unlock(market.provider.address, token)  # what is left goes back
    assert market.hub().redeemed(market.buyer.address, market.provider.address, token)[0] == 50
    r.sync_withdrawal_notices()
    assert (
        ledger.withdrawal_unlock_at(market.buyer.address_bytes, market.token.address_bytes) is None
    )


def test_older_epoch_is_redeemed_before_newer(market: Market, tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger)
    _hold(market, ledger, 900, epoch=0)
    _hold(market, ledger, 40, epoch=1)
    results = r.redeem_due(gas_price_wei=0)
    assert [x.status for x in results] == ["confirmed", "confirmed"]
    assert market.hub().redeemed(
        market.buyer.address, market.provider.address, market.deployment.token
    ) == (40, 1)
    assert (
        market.hub().balance_of(market.buyer.address, market.deployment.token)
        == 1_000 * 10**6 - 940
    )


def test_drained_buyer_is_not_due_and_refusals_do_not_stop_the_loop(
    market: Market, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger)
    _hold(market, ledger, 5_000)
    market.hub(market.buyer).request_withdrawal(market.deployment.token, 10**12)
    market.admin.advance_time(market.deployment.withdrawal_delay_s + 1)
    market.hub(market.buyer).execute_withdrawal(market.deployment.token)  # buyer leaves first
    assert r.due(gas_price_wei=0) == []  # nothing to take: no transaction wasted
    with pytest.raises(ContractReverted) as info:  # refused at gas estimation …
        r.redeem(ledger.vouchers()[0])
    assert info.value.name == "PaymentHubBuyerBalanceEmpty"
    assert ledger.redemptions() == []  # … so nothing was signed, recorded or sent


async def test_service_reconciles_then_redeems(market: Market, tmp_path: Path) -> None:
    import trio

    from market.chain.aio import TrioChain
    from market.ledger import run_redeemer

    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    _hold(market, ledger, 9_000)
    chain = TrioChain()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_redeemer(r, chain, interval_s=0.05, task_status=task_status)
        )
        reader = Ledger(tmp_path / "l.db")  # a second connection, as a status command would
        with trio.fail_after(60):
            while not reader.redemptions("confirmed"):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert (
        market.hub().redeemed(
            market.buyer.address, market.provider.address, market.deployment.token
        )[0]
        == 9_000
    )


def test_reconciled_failure_keeps_its_reason(market: Market, tmp_path: Path) -> None:
    """A pending redemption mined and reverted behind another redemption of the same
    voucher in its block (submitted by someone else): the ledger says why it failed."""
    from tests.market.chain.test_client import _automine, _mine

    ledger = Ledger(tmp_path / "l.db")
    r = _redeemer(market, ledger)
    _hold(market, ledger, 777)
    (sv,) = ledger.vouchers()
    theirs = market.hub(market.admin).sign_redeem(market.signed(777))
    ours = market.hub(market.provider).sign_redeem(market.signed(777), gas=200_000)
    rid = ledger.record_intent(sv.voucher, ours.tx_hash, ours.raw, ours.nonce)
    _automine(market.admin, False)
    try:
        market.admin.broadcast(theirs)
        market.provider.broadcast(ours)  # … and the node dies before it sees the receipt
        _mine(market.admin)
    finally:
        _automine(market.admin, True)
    (result,) = r.reconcile(wait_s=0)
    assert (result.redemption_id, result.status) == (rid, "failed")
    (row,) = ledger.redemptions()
    assert row.status == "failed" and "PaymentHubNothingToRedeem(777, 777)" in row.note
    assert r.redeem_due(gas_price_wei=0) == []  # paid (to us, by someone else): nothing due
    assert ledger.losses() == [] and not ledger.is_flagged(market.buyer.address_bytes)
