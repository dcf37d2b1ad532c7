"""Every unit owed is redeemable, redeemed, or recorded lost with its cause; never
silently zero (issue 13, item 1, the ledger's half).

The attack: a provider holds a buyer's unredeemed epoch-0 voucher; the channel is moved
to epoch 1 (the buyer signed a 1-unit epoch-1 voucher and had it redeemed), which voids
epoch 0 on chain. The redeemer used to value the old voucher at 0 and say nothing. Who
made the new epoch visible does not matter to the loss logic, so the tests move it as
the provider's own account (what any version of the hub allows) and never put the
epoch-1 voucher in the ledger.
"""

from __future__ import annotations

from pathlib import Path

from market.ledger import Ledger, Redeemer, RedemptionPolicy
from market.ledger.store import LOSS_BALANCE_SHORT, LOSS_STALE_EPOCH
from p2pnode.node.telemetry import Telemetry
from tests.market.chain.conftest import DEPOSIT, Market


def _hold(m: Market, ledger: Ledger, amount: int, epoch: int = 0) -> None:
    sv = m.signed(amount, epoch=epoch)
    ledger.accept_voucher(m.hub().domain(), sv.voucher, sv.signature)


def _move_to_epoch_1(m: Market) -> None:
    """The channel moves on to epoch 1 behind the ledger's back (1 unit redeemed)."""
    m.hub(m.provider).redeem(m.signed(1, epoch=1))
    assert m.hub().redeemed(m.buyer.address, m.provider.address, m.deployment.token) == (1, 1)


def test_voided_epoch_is_recorded_lost_with_its_cause_and_the_buyer_flagged(
    market: Market, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    _hold(market, ledger, 279)
    _move_to_epoch_1(market)
    assert r.step() == []  # nothing to send: the chain will not pay epoch 0 any more
    assert ledger.redemptions() == []
    (loss,) = ledger.losses()
    assert (loss.buyer, loss.provider, loss.epoch) == (
        market.buyer.address_bytes,
        market.provider.address_bytes,
        0,
    )
    assert (loss.cause, loss.amount) == (LOSS_STALE_EPOCH, 279)
    assert "epoch 1" in loss.detail
    assert ledger.lost_total() == 279
    assert ledger.is_flagged(market.buyer.address_bytes)
    assert ledger.is_flagged(market.buyer.address)  # checksummed hex works too
    assert not ledger.is_flagged(market.provider.address_bytes)
    (flag,) = ledger.flagged_buyers()
    assert (flag.buyer, flag.cause) == (market.buyer.address_bytes, LOSS_STALE_EPOCH)
    # idempotent: another round, another reconcile, a second Ledger connection
    r.step()
    r.reconcile(wait_s=0)
    again = Ledger(tmp_path / "l.db")
    assert again.losses() == [loss] and len(again.flagged_buyers()) == 1
    (st,) = [r.standing(sv) for sv in ledger.vouchers()]
    assert (st.owed, st.payable, st.lost) == (279, 0, 279)
    # and the node's status (`hearth node status`, the dashboard) says so
    tele = Telemetry(ledger_path=tmp_path / "l.db", provider_address=market.provider.address)
    doc = tele.snapshot(state="stopped", service=None, net=None, power_state="normal")
    tele.close()
    assert doc["losses"]["total"] == 279
    assert doc["losses"]["by_cause"] == {LOSS_STALE_EPOCH: 279}
    assert doc["vouchers"] == {"held": 1, "pending_amount": 0}  # lost, so not pending
    (shown,) = doc["flagged_buyers"]
    assert (shown["buyer"], shown["cause"]) == (
        "0x" + market.buyer.address_bytes.hex(),
        LOSS_STALE_EPOCH,
    )


def test_loss_of_a_voided_epoch_counts_only_what_it_had_not_redeemed(
    market: Market, tmp_path: Path
) -> None:
    """Redeemed 100 of epoch 0, then held a 300 voucher when the epoch moved: 200 lost,
    not 300 (what was redeemed is earnings; the two never overlap)."""
    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    _hold(market, ledger, 100)
    (res,) = r.step()
    assert res.status == "confirmed"
    _hold(market, ledger, 300)
    _move_to_epoch_1(market)
    r.step()
    (loss,) = ledger.losses()
    assert (loss.cause, loss.amount) == (LOSS_STALE_EPOCH, 200)
    gross = sum(d["gross"] for d in ledger.earnings_by_day())
    assert gross == 101 and gross - 1 + loss.amount == 300  # redeemed + lost = promised


def test_balance_short_is_recorded_kept_current_and_cleared_when_made_good(
    market: Market, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    _hold(market, ledger, DEPOSIT + 500)  # the buyer promised more than it deposited
    (res,) = r.step()
    assert res.status == "confirmed"  # the hub pays what there is …
    (loss,) = ledger.losses()  # … and the rest is reported, with its cause
    assert (loss.cause, loss.amount, loss.epoch) == (LOSS_BALANCE_SHORT, 500, 0)
    assert ledger.is_flagged(market.buyer.address_bytes)
    assert r.step() == [] and ledger.losses() == [loss]  # nothing payable: nothing sent
    market.fund_buyer(market.buyer, 500)  # the buyer makes it good
    (res,) = r.step()
    assert res.status == "confirmed"
    assert ledger.losses() == []  # nothing lost any more …
    (kept,) = ledger.losses(include_recovered=True)  # … and the history stays
    assert (kept.cause, kept.amount) == (LOSS_BALANCE_SHORT, 0)
    assert ledger.is_flagged(market.buyer.address_bytes)  # flags stay until unflagged
    assert ledger.unflag_buyer(market.buyer.address_bytes)
    assert not ledger.is_flagged(market.buyer.address_bytes)


def test_drained_buyer_is_reported_lost_without_a_transaction(
    market: Market, tmp_path: Path
) -> None:
    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    _hold(market, ledger, 5_000)
    market.hub(market.buyer).request_withdrawal(market.deployment.token, 10**12)
    market.admin.advance_time(market.deployment.withdrawal_delay_s + 1)
    market.hub(market.buyer).execute_withdrawal(market.deployment.token)
    assert r.step() == [] and ledger.redemptions() == []
    (loss,) = ledger.losses()
    assert (loss.cause, loss.amount) == (LOSS_BALANCE_SHORT, 5_000)
    assert ledger.is_flagged(market.buyer.address_bytes)


def test_collateral_locked_for_us_counts_as_cover(market: Market, tmp_path: Path) -> None:
    """A buyer whose whole deposit is locked for this provider has no free balance, yet
    the hub pays the provider from the lock first: due, paid, nothing lost or flagged."""
    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    market.hub(market.buyer).lock(market.provider.address, market.deployment.token, DEPOSIT)
    assert market.hub().balance_of(market.buyer.address, market.deployment.token) == 0
    _hold(market, ledger, 4_000)
    (res,) = r.step()
    assert res.status == "confirmed"
    assert ledger.losses() == [] and ledger.flagged_buyers() == []
    collateral = market.hub().collateral(
        market.buyer.address, market.provider.address, market.deployment.token
    )
    assert collateral.locked == DEPOSIT - 4_000


async def test_the_node_stops_serving_a_buyer_whose_channel_changed_under_it(
    market: Market, tmp_path: Path
) -> None:
    """The redemption service hands flagged buyers to the voucher book: their RFQs are
    declined with the cause, while what we hold stays on the ledger."""
    import trio

    from market.chain.aio import TrioChain
    from market.ledger.service import run_redeemer
    from market.protocol.payments import ChannelTerms, VoucherBook

    ledger = Ledger(tmp_path / "l.db")
    r = Redeemer(ledger, market.hub(market.provider), RedemptionPolicy(gas_multiple=0))
    hub = market.hub()
    book = VoucherBook(
        provider_address=market.provider.address_bytes,
        terms=ChannelTerms(
            token=market.token.address_bytes,
            chain_id=hub.domain().chain_id,
            contract=hub.address_bytes,
        ),
        verifier=lambda v: True,
        cover_of=lambda b: 0,
    )
    _hold(market, ledger, 279)
    _move_to_epoch_1(market)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_redeemer(
                r, TrioChain(), interval_s=0.05, suspend=book.suspend, task_status=task_status
            )
        )
        with trio.fail_after(10):
            while book.suspended(market.buyer.address_bytes) is None:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    cause = book.suspended(market.buyer.address_bytes)
    assert cause is not None and cause.startswith(LOSS_STALE_EPOCH)
    assert book.suspended(market.provider.address_bytes) is None
    assert len(ledger.vouchers()) == 1  # what we hold is kept
