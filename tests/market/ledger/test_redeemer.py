"""The redemption loop against a real EVM, on both backends."""

from __future__ import annotations

from pathlib import Path

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
