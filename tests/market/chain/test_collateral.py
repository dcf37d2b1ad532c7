"""Issue 13.3: a buyer cannot promise a provider more than it locked for it.

The attack: a buyer with deposit D signs vouchers worth D to two providers; the one
that redeems first takes everything and the other's vouchers pay nothing. With
per-provider collateral, a provider's voucher book accepts vouchers only up to what
the buyer locked for it (``PaymentHub.cover``), the buyer's SDK locks that much before
each award (:class:`market.sdk.collateral.Collateral`), and redemption draws on the
lock first — so the honest provider is paid in full whatever the buyer does elsewhere.
"""

from __future__ import annotations

import pytest

from market.chain.aio import TrioChain
from market.chain.contracts import SignedVoucher
from market.chain.voucher import draft_signer, message_verifier
from market.protocol.errors import RemoteProtocolError
from market.protocol.payments import BuyerWallet, ChannelTerms, VoucherBook
from market.sdk.collateral import Collateral
from market.sdk.types import InsufficientFundsError
from market.vouchers import to_chain
from p2pnode.node.cover import CoverCache
from tests.market.chain.conftest import DEPOSIT, Market

JOB = bytes(16)


def _terms(market: Market) -> ChannelTerms:
    hub = market.hub()
    return ChannelTerms(
        token=bytes.fromhex(market.deployment.token[2:]),
        chain_id=hub.domain().chain_id,
        contract=hub.address_bytes,
    )


async def test_a_buyer_promising_its_deposit_twice_cannot_cheat_the_provider_it_locked_for(
    market: Market,
) -> None:
    terms = _terms(market)
    token = terms.token
    buyer = market.buyer.address_bytes
    honest, accomplice = market.provider, market.new_account(market.admin)
    chain = TrioChain()
    # the honest provider's node: a voucher book over the chain's cover
    covers = CoverCache(market.hub(), chain, honest.address_bytes, token)
    book = VoucherBook(
        provider_address=honest.address_bytes,
        terms=terms,
        verifier=message_verifier(chain_id=terms.chain_id, contract=terms.contract),
        cover_of=covers.cover_of,
    )
    wallet = BuyerWallet(
        buyer_address=buyer,
        deposit=2 * DEPOSIT,  # a buyer that lies to itself: it will sign twice its money
        terms=terms,
        signer=draft_signer(market.buyer_key),
    )
    # the buyer's SDK locks what a 300,000 job may cost before awarding it
    collateral = Collateral(market.hub(market.buyer), chain, buyer, token, top_up_multiple=1)
    assert await collateral.ensure(honest.address_bytes, 300_000) == 300_000
    assert await collateral.ensure(honest.address_bytes, 200_000) == 300_000  # no new lock
    assert collateral.locks_sent == 1
    await covers.ensure(buyer)
    assert wallet.reserve(2 * DEPOSIT)
    paid = wallet.pay(JOB, honest.address_bytes, 300_000, reserved=2 * DEPOSIT, job_paid=300_000)
    assert book.accept(paid, buyer_address=buyer, job_paid=0) == 300_000
    # one unit past what is locked for us is refused, whatever the buyer's free balance
    beyond = wallet.pay(JOB, honest.address_bytes, 1, reserved=DEPOSIT, job_paid=300_001)
    with pytest.raises(RemoteProtocolError, match="locked for us"):
        book.accept(beyond, buyer_address=buyer, job_paid=300_000)
    # the accomplice redeems a voucher for the whole deposit first
    grab = wallet.pay(JOB, accomplice.address_bytes, DEPOSIT, reserved=DEPOSIT, job_paid=DEPOSIT)
    market.hub(accomplice).redeem(SignedVoucher(to_chain(grab), grab.signature))
    assert market.hub().balance_of(market.buyer.address, market.deployment.token) == 0
    # the honest provider is still paid every unit it accepted
    held = book.latest(buyer)
    assert held is not None
    market.hub(honest).redeem(SignedVoucher(to_chain(held), held.signature))
    assert market.hub().redeemed(buyer, honest.address_bytes, token)[0] == 300_000


async def test_the_sdk_says_why_when_the_free_deposit_cannot_cover_a_provider(
    market: Market,
) -> None:
    token = bytes.fromhex(market.deployment.token[2:])
    buyer = market.buyer.address_bytes
    collateral = Collateral(market.hub(market.buyer), TrioChain(), buyer, token)
    first, second = market.provider, market.new_account(market.admin)
    # top-ups lock a multiple of the shortfall, capped by the free balance
    assert await collateral.ensure(first.address_bytes, DEPOSIT // 2) == DEPOSIT
    with pytest.raises(InsufficientFundsError, match="hearth unlock"):
        await collateral.ensure(second.address_bytes, 1)
    assert market.hub().collateral(buyer, second.address_bytes, token).locked == 0


async def test_an_unlock_given_elsewhere_is_noticed_once_the_reading_ages(
    market: Market, autojump_clock: object
) -> None:
    """`hearth unlock` runs in another process than the buyer's client: the client's
    reading of a cover is trusted for ``max_age_s`` only, then read again (and topped
    up), so it never awards against money under notice to leave."""
    import trio

    token = bytes.fromhex(market.deployment.token[2:])
    buyer = market.buyer.address_bytes
    provider = market.provider.address_bytes
    collateral = Collateral(
        market.hub(market.buyer), TrioChain(), buyer, token, top_up_multiple=1, max_age_s=30
    )
    assert await collateral.ensure(provider, 1_000) == 1_000
    market.hub(market.buyer).request_unlock(market.provider.address, market.deployment.token, 1_000)
    assert await collateral.ensure(provider, 1_000) == 1_000  # the fresh reading
    await trio.sleep(31)
    assert await collateral.ensure(provider, 1_000) == 1_000  # re-read (0 firm), locked again
    assert collateral.locks_sent == 2
    assert market.hub().cover(buyer, provider, token) == 1_000
