"""ProviderRegistry on a real EVM, on both backends."""

from __future__ import annotations

import pytest
from web3.logs import DISCARD

from market.chain.client import ChainClient
from market.chain.errors import ContractReverted
from tests.market.chain.conftest import Market

PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"


def _reverts(name: str, fn, *args):  # type: ignore[no-untyped-def]
    with pytest.raises(ContractReverted) as info:
        fn(*args)
    assert info.value.name == name, str(info.value)
    return info.value


def _staker(market: Market, amount: int) -> ChainClient:
    p = market.provider
    tok = market.deployment.erc20(p)
    tok.mint(p.address, amount)
    tok.approve(market.deployment.provider_registry, amount)
    return p


def test_register_needs_min_stake(market: Market) -> None:
    min_stake = market.deployment.min_stake
    p = _staker(market, 2 * min_stake)
    reg = market.registry(p)
    err = _reverts("ProviderRegistryBelowMinStake", reg.register, PEER, min_stake - 1)
    assert err.args_decoded == (min_stake - 1, min_stake)
    _reverts("ProviderRegistryBadPeerId", reg.register, "", min_stake)
    reg.register(PEER, min_stake)
    assert reg.is_active(p.address)
    assert reg.is_active_for(p.address, PEER)
    assert not reg.is_active_for(p.address, PEER[:-1] + "Y")
    assert reg.provider_info(p.address).peer_id == PEER


def test_a_squatter_can_neither_block_nor_impersonate_a_peer_id(market: Market) -> None:
    """Issue 13.2: a stranger registered a provider's peer id first and so kept the real
    provider out (and buyers dropped its bids). Peer ids are no longer exclusive: the
    buyer checks the pair (bid signer, address the bid names)."""
    min_stake = market.deployment.min_stake
    squatter = market.new_account(market.admin)
    market.deployment.erc20(squatter).mint(squatter.address, min_stake)
    market.deployment.erc20(squatter).approve(market.deployment.provider_registry, min_stake)
    market.registry(squatter).register(PEER, min_stake)  # first, with the real node's peer id
    real = _staker(market, min_stake)
    market.registry(real).register(PEER, min_stake)  # not blocked
    reg = market.registry()
    assert reg.is_active_for(real.address, PEER)
    # the squatter's record names PEER too, but a bid naming the squatter's address must
    # be signed by PEER's key, which only the real node holds: it gains nothing


def test_unbonding_takes_the_delay(market: Market) -> None:
    min_stake = market.deployment.min_stake
    p = _staker(market, min_stake)
    reg, tok = market.registry(p), market.deployment.erc20(p)
    reg.register(PEER, min_stake)
    reg.begin_unbonding(min_stake)
    assert not reg.is_active(p.address)
    _reverts("ProviderRegistryUnbondingNotReady", reg.withdraw_unbonded)
    market.admin.advance_time(market.deployment.unbonding_delay_s + 1)
    reg.withdraw_unbonded()
    assert tok.balance_of(p.address) == min_stake
    _reverts("ProviderRegistryNothingUnbonding", reg.withdraw_unbonded)


def test_unbonding_does_not_escape_a_slash(market: Market) -> None:
    min_stake = market.deployment.min_stake
    p = _staker(market, min_stake)
    reg, tok = market.registry(p), market.deployment.erc20(p)
    reg.register(PEER, min_stake)
    reg.begin_unbonding(min_stake)  # tries to run with the stake …
    evidence = b"\xab" * 32
    treasury_before = tok.balance_of(market.deployment.treasury)
    rec = market.registry().slash(
        p.address, min_stake // 2, evidence
    )  # … but it is still slashable
    (event,) = (
        market.registry().contract.events.ProviderSlashed().process_receipt(rec.raw, errors=DISCARD)
    )
    assert event["args"]["evidenceHash"] == evidence and event["args"]["amount"] == min_stake // 2
    assert tok.balance_of(market.deployment.treasury) == treasury_before + min_stake // 2
    market.admin.advance_time(market.deployment.unbonding_delay_s + 1)
    reg.withdraw_unbonded()
    assert tok.balance_of(p.address) == min_stake - min_stake // 2
    assert tok.balance_of(reg.address) == 0


def test_only_arbiters_slash(market: Market) -> None:
    min_stake = market.deployment.min_stake
    p = _staker(market, min_stake)
    market.registry(p).register(PEER, min_stake)
    _reverts(
        "AccessControlUnauthorizedAccount", market.registry(p).slash, p.address, 1, b"\x00" * 32
    )
    arbiter = market.new_account(market.admin)
    market.registry().grant_arbiter(arbiter.address)
    market.registry(arbiter).slash(p.address, min_stake, b"\x01" * 32)
    assert not market.registry().is_active(p.address)
    _reverts(
        "ProviderRegistryInsufficientStake",
        market.registry(arbiter).slash,
        p.address,
        1,
        b"\x01" * 32,
    )
