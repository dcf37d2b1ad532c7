"""PaymentHub on a real EVM, run on both backends (embedded eth-tester and anvil)."""

from __future__ import annotations

import os

import coincurve
import pytest

from market.chain.backends import fund_native
from market.chain.contracts import Erc20, PaymentHub, SignedVoucher
from market.chain.errors import ContractReverted, decode_revert_data
from market.chain.voucher import VoucherDomain, sign_voucher, voucher_digest
from tests.market.chain.conftest import DEPOSIT, Market

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _reverts(name: str, fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(ContractReverted) as info:
        fn(*args)
    assert info.value.name == name, str(info.value)
    return info.value


def test_redeem_pays_difference_minus_fee(market: Market) -> None:
    hub, tok = market.hub(market.provider), market.token
    fee_bps = market.deployment.fee_bps
    hub.redeem(market.signed(100_000))
    assert tok.balance_of(market.provider.address) == 100_000 - 100_000 * fee_bps // 10_000
    hub.redeem(market.signed(350_000))  # pays only the 250,000 increment
    assert hub.redeemed(market.buyer.address, market.provider.address, tok.address) == (350_000, 0)
    assert tok.balance_of(market.provider.address) == 350_000 - 350_000 * fee_bps // 10_000
    assert hub.balance_of(market.buyer.address, tok.address) == DEPOSIT - 350_000
    fees = hub.accrued_fees(tok.address)
    assert fees == 350_000 * fee_bps // 10_000
    # the treasury (the deployer here) takes the fees; nobody else can
    _reverts("PaymentHubNotTreasury", hub.withdraw_fees, tok.address, market.provider.address)
    market.hub().withdraw_fees(tok.address, market.admin.address)
    assert hub.accrued_fees(tok.address) == 0
    assert tok.balance_of(hub.address) == DEPOSIT - 350_000


def test_lower_or_equal_cumulative_after_higher_pays_nothing(market: Market) -> None:
    hub = market.hub(market.provider)
    hub.redeem(market.signed(500))
    err = _reverts("PaymentHubNothingToRedeem", hub.redeem, market.signed(400))
    assert err.args_decoded == (400, 500)
    _reverts("PaymentHubNothingToRedeem", hub.redeem, market.signed(500))
    assert (
        hub.redeemed(market.buyer.address, market.provider.address, market.token.address)[0] == 500
    )


def test_replay_on_another_chain_id_or_contract_is_rejected(market: Market) -> None:
    v = market.voucher(1_000)
    hub = market.hub(market.provider)
    wrong_chain = VoucherDomain(
        chain_id=hub.domain().chain_id + 1, verifying_contract=hub.address_bytes
    )
    _reverts(
        "PaymentHubWrongSigner",
        hub.redeem,
        SignedVoucher(v, sign_voucher(market.buyer_key, wrong_chain, v)),
    )
    # a second hub on the same chain: a voucher for hub 1 is worthless at hub 2
    other = PaymentHub(
        market.admin,
        market.admin.deploy("PaymentHub", market.admin.address, market.admin.address, 0, 60),
    )
    sv = SignedVoucher(v, sign_voucher(market.buyer_key, hub.domain(), v))
    _reverts("PaymentHubWrongSigner", other.as_(market.provider).redeem, sv)
    hub.redeem(sv)  # the genuine one still works where it belongs


def test_malleable_signature_is_rejected(market: Market) -> None:
    sv = market.signed(1_000)
    s = int.from_bytes(sv.signature[32:64], "big")
    twin = sv.signature[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sv.signature[64]])
    err = _reverts(
        "PaymentHubInvalidSignature",
        market.hub(market.provider).redeem,
        SignedVoucher(sv.voucher, twin),
    )
    assert err.args_decoded == (3,)  # ECDSA.RecoverError.InvalidSignatureS


def test_voucher_signed_by_someone_else_is_rejected(market: Market) -> None:
    v = market.voucher(1_000)
    thief_key = os.urandom(32)

    raw = coincurve.PrivateKey(thief_key).sign_recoverable(
        voucher_digest(market.hub().domain(), v), hasher=None
    )
    forged = bytearray(raw[:64] + bytes([raw[64] + 27]))
    err = _reverts(
        "PaymentHubWrongSigner", market.hub(market.provider).redeem, SignedVoucher(v, bytes(forged))
    )
    assert err.args_decoded[1].lower() == market.buyer.address.lower()


def test_withdrawal_waits_for_notice_and_providers_redeem_first(market: Market) -> None:
    buyer_hub, tok = market.hub(market.buyer), market.token
    buyer_hub.request_withdrawal(tok.address, DEPOSIT)
    amount, unlock_at = buyer_hub.pending_withdrawal(market.buyer.address, tok.address)
    assert amount == DEPOSIT and unlock_at > market.admin.timestamp()
    _reverts("PaymentHubWithdrawalNotReady", buyer_hub.execute_withdrawal, tok.address)
    market.hub(market.provider).redeem(market.signed(300_000))  # still honoured during the notice
    market.admin.advance_time(market.deployment.withdrawal_delay_s + 1)
    buyer_hub.execute_withdrawal(tok.address)
    assert tok.balance_of(market.buyer.address) == DEPOSIT - 300_000
    assert buyer_hub.balance_of(market.buyer.address, tok.address) == 0
    _reverts(
        "PaymentHubBuyerBalanceEmpty", market.hub(market.provider).redeem, market.signed(400_000)
    )


def test_short_balance_pays_partially_and_rest_later(market: Market) -> None:
    hub = market.hub(market.provider)
    hub.redeem(market.signed(DEPOSIT + 500))
    assert (
        hub.redeemed(market.buyer.address, market.provider.address, market.token.address)[0]
        == DEPOSIT
    )
    market.fund_buyer(market.buyer, 10_000)
    hub.redeem(market.signed(DEPOSIT + 500))
    assert (
        hub.redeemed(market.buyer.address, market.provider.address, market.token.address)[0]
        == DEPOSIT + 500
    )
    assert hub.balance_of(market.buyer.address, market.token.address) == 10_000 - 500


def test_new_epoch_restarts_channel_and_voids_older(market: Market) -> None:
    hub, tok = market.hub(market.provider), market.token
    hub.redeem(market.signed(5_000, epoch=0))
    hub.redeem(market.signed(700, epoch=1))  # a fresh start: counts from zero
    assert hub.redeemed(market.buyer.address, market.provider.address, tok.address) == (700, 1)
    err = _reverts("PaymentHubStaleEpoch", hub.redeem, market.signed(9_000, epoch=0))
    assert err.args_decoded == (0, 1)
    assert hub.balance_of(market.buyer.address, tok.address) == DEPOSIT - 5_700


def test_buyer_cannot_void_what_it_owes_with_a_newer_epoch(market: Market) -> None:
    """Issue 13.1: the provider holds an unredeemed epoch-0 voucher worth 279. The buyer
    signs a 1-unit voucher of epoch 1 and redeems it itself, which used to void the 279.
    Only the channel's provider may make a newer epoch visible."""
    tok = market.token
    owed = market.signed(279, epoch=0)
    attack = market.signed(1, epoch=1)
    err = _reverts("PaymentHubEpochAdvanceByProviderOnly", market.hub(market.buyer).redeem, attack)
    assert err.args_decoded[:2] == (1, 0)
    # nor through the batch path, nor by any other third party
    stranger = market.new_account(market.admin)
    _reverts("PaymentHubEpochAdvanceByProviderOnly", market.hub(stranger).redeem_many, [attack])
    provider_hub = market.hub(market.provider)
    provider_hub.redeem(owed)  # the provider is paid in full
    assert provider_hub.redeemed(market.buyer.address, market.provider.address, tok.address) == (
        279,
        0,
    )
    # a third party may still submit the provider's vouchers of the current epoch: it
    # only pays the provider
    market.hub(stranger).redeem(market.signed(300, epoch=0))
    assert (
        provider_hub.redeemed(market.buyer.address, market.provider.address, tok.address)[0] == 300
    )


def test_locked_collateral_is_safe_from_vouchers_to_other_providers(market: Market) -> None:
    """Issue 13.3: a buyer promises its whole deposit to two providers. Money it locked
    for the first cannot be taken by the second, whoever redeems first."""
    tok = market.token
    first, second = market.provider, market.new_account(market.admin)
    buyer_hub = market.hub(market.buyer)
    buyer_hub.lock(first.address, tok.address, 400_000)
    assert buyer_hub.balance_of(market.buyer.address, tok.address) == DEPOSIT - 400_000
    c = buyer_hub.collateral(market.buyer.address, first.address, tok.address)
    assert (c.locked, c.firm) == (400_000, 400_000)
    assert buyer_hub.cover(market.buyer.address, first.address, tok.address) == 400_000
    # the second provider redeems a voucher for the whole deposit first
    market.hub(second).redeem(market.signed(DEPOSIT, provider=second))
    assert buyer_hub.balance_of(market.buyer.address, tok.address) == 0
    # the first is still paid what the lock covers, from the lock
    market.hub(first).redeem(market.signed(400_000))
    assert buyer_hub.redeemed(market.buyer.address, first.address, tok.address)[0] == 400_000
    assert buyer_hub.collateral(market.buyer.address, first.address, tok.address).locked == 0
    # redemptions from the lock leave the cover where it was: vouchers up to it are paid
    assert buyer_hub.cover(market.buyer.address, first.address, tok.address) == 400_000
    _reverts("PaymentHubInsufficientBalance", buyer_hub.lock, first.address, tok.address, 1)


def test_unlock_takes_notice_and_the_provider_redeems_meanwhile(market: Market) -> None:
    tok = market.token
    buyer_hub = market.hub(market.buyer)
    buyer_hub.lock(market.provider.address, tok.address, 500_000)
    _reverts(
        "PaymentHubNoUnlockPending", buyer_hub.execute_unlock, market.provider.address, tok.address
    )
    buyer_hub.request_unlock(market.provider.address, tok.address, 500_000)
    c = buyer_hub.collateral(market.buyer.address, market.provider.address, tok.address)
    assert (c.locked, c.unlocking, c.firm) == (500_000, 500_000, 0)
    assert c.unlock_at > market.admin.timestamp()
    _reverts(
        "PaymentHubWithdrawalNotReady",
        buyer_hub.execute_unlock,
        market.provider.address,
        tok.address,
    )
    market.hub(market.provider).redeem(market.signed(200_000))  # honoured during the notice
    market.admin.advance_time(market.deployment.withdrawal_delay_s + 1)
    buyer_hub.execute_unlock(market.provider.address, tok.address)
    c = buyer_hub.collateral(market.buyer.address, market.provider.address, tok.address)
    assert (c.locked, c.unlocking) == (0, 0)
    # 200,000 went to the provider from the lock, the other 300,000 back to the balance
    assert buyer_hub.balance_of(market.buyer.address, tok.address) == DEPOSIT - 200_000


def test_redeem_many_settles_buyers_in_one_transfer(market: Market) -> None:
    hub, tok = market.hub(market.provider), market.token
    others = []
    for _ in range(3):
        key = os.urandom(32)
        client = market.new_account(market.admin).with_key(key)
        fund_native(market.admin, client.address, 10**18)
        market.fund_buyer(client, 50_000)
        others.append((client, key))
    batch = [market.signed(1_000)]
    for i, (client, key) in enumerate(others):
        v = market.voucher(10_000 * (i + 1))
        v = type(v)(
            buyer=client.address_bytes,
            provider=v.provider,
            token=v.token,
            cumulative_amount=v.cumulative_amount,
        )
        batch.append(SignedVoucher(v, sign_voucher(key, hub.domain(), v)))
    hub.redeem(batch[0])  # already settled: skipped inside the batch, not fatal
    rec = hub.redeem_many(batch)
    assert rec.status == 1
    gross = 1_000 + 10_000 + 20_000 + 30_000
    fee = sum(a * market.deployment.fee_bps // 10_000 for a in (1_000, 10_000, 20_000, 30_000))
    assert tok.balance_of(market.provider.address) == gross - fee
    _reverts("PaymentHubNothingToRedeem", hub.redeem_many, batch)
    stranger = market.new_account(market.admin)
    mixed = [*batch[:1], market.signed(2_000, provider=stranger)]
    err = _reverts("PaymentHubMixedBatch", hub.redeem_many, mixed)
    assert err.args_decoded == (1,)
    _reverts("PaymentHubEmptyBatch", hub.redeem_many, [])


def test_owner_controls_fee_within_cap(market: Market) -> None:
    _reverts("PaymentHubFeeTooHigh", market.hub().set_fee_bps, 1_001)
    _reverts("OwnableUnauthorizedAccount", market.hub(market.provider).set_fee_bps, 0)
    market.hub().set_fee_bps(0)
    assert market.hub().fee_bps() == 0


def test_reentrancy_through_malicious_token_is_blocked(market: Market) -> None:
    admin = market.admin
    mal = Erc20(admin, admin.deploy("MaliciousToken"))
    mal_contract = admin.contract("MaliciousToken", mal.address)
    hub = market.hub(market.buyer)
    admin.transact(mal_contract.functions.mint(market.buyer.address, 10_000))
    mal.as_(market.buyer).approve(hub.address, 10_000)
    hub.deposit(mal.address, 10_000)
    v = market.voucher(4_000)
    v = type(v)(
        buyer=v.buyer, provider=v.provider, token=mal.address_bytes, cumulative_amount=8_000
    )
    sv = SignedVoucher(v, sign_voucher(market.buyer_key, hub.domain(), v))
    # when the hub pays the provider, the token calls hub.redeem(sv) again from inside
    attack = hub.contract.encode_abi("redeem", [v.as_abi_tuple(), sv.signature])
    admin.transact(mal_contract.functions.arm(hub.address, attack))
    market.hub(market.provider).redeem(sv)
    assert admin.call(mal_contract.functions.attempts()) == 1
    assert admin.call(mal_contract.functions.successes()) == 0
    assert decode_revert_data(bytes(admin.call(mal_contract.functions.lastRevertData()))).name == (
        "ReentrancyGuardReentrantCall"
    )
    fee = 8_000 * market.deployment.fee_bps // 10_000
    assert mal.balance_of(market.provider.address) == 8_000 - fee  # paid exactly once
    assert hub.balance_of(market.buyer.address, mal.address) == 2_000
    assert mal.balance_of(hub.address) == 2_000 + fee
