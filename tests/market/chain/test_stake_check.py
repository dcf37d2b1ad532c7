"""The buyer's Sybil check (market.sdk.stake) against a real ProviderRegistry."""

from __future__ import annotations

import trio

from market.sdk.stake import StakeCheck
from tests.market.chain.conftest import Market

PEER = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
OTHER = "12D3KooWGzBCgMtTZAvvAQuxyz7iTgxZzvANFK2Mz6WbVbXbqcR6"


def _register(market: Market) -> bytes:
    p = market.provider
    stake = market.deployment.min_stake
    tok = market.deployment.erc20(p)
    tok.mint(p.address, stake)
    tok.approve(market.deployment.provider_registry, stake)
    market.registry(p).register(PEER, stake)
    return p.address_bytes


async def test_only_the_registered_pair_counts_as_staked(market: Market) -> None:
    address = _register(market)
    check = StakeCheck.from_registry(market.registry())
    assert await check(PEER, address)
    assert not await check(OTHER, address)  # a peer id the address never bound
    assert not await check(PEER, b"\x11" * 20)  # someone else claiming the peer id


async def test_a_squatter_registered_first_does_not_shut_the_real_provider_out(
    market: Market,
) -> None:
    """Issue 13.2: before, a stranger who registered PEER first made the real provider's
    registration revert and every buyer drop its bids."""
    stake = market.deployment.min_stake
    squatter = market.new_account(market.admin)
    market.deployment.erc20(squatter).mint(squatter.address, stake)
    market.deployment.erc20(squatter).approve(market.deployment.provider_registry, stake)
    market.registry(squatter).register(PEER, stake)
    address = _register(market)
    check = StakeCheck.from_registry(market.registry())
    assert await check(PEER, address)  # the real node's bids count


async def test_answers_are_cached_and_concurrent_askers_share_one_read() -> None:
    reads: list[tuple[str, bytes]] = []

    def lookup(peer: str, address: bytes) -> bool:
        reads.append((peer, address))
        return True

    check = StakeCheck(lookup, ttl_s=600)
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(check.warm, PEER, b"\x01" * 20)
    assert await check(PEER, b"\x01" * 20)
    assert reads == [(PEER, b"\x01" * 20)]


async def test_an_unreachable_chain_is_no_proof_of_stake_until_a_retry() -> None:
    up = False

    def lookup(peer: str, address: bytes) -> bool:
        if not up:
            raise ConnectionError("rpc down")
        return True

    check = StakeCheck(lookup, retry_s=0.05)
    assert not await check(PEER, b"\x01" * 20)
    up = True
    assert not await check(PEER, b"\x01" * 20)  # the failed read is remembered briefly…
    await trio.sleep(0.06)
    assert await check(PEER, b"\x01" * 20)  # …then tried again


async def test_the_buyer_routes_only_staked_bids(market: Market) -> None:
    from market.protocol import Bid, Decline, DeclineReason
    from market.protocol.events import BidReceived, DeclineReceived
    from market.sdk.client import Client, ClientConfig

    address = _register(market)
    client = Client(
        net=None,  # type: ignore[arg-type]  # routing a bid touches no network
        key=None,  # type: ignore[arg-type]
        wallet=None,  # type: ignore[arg-type]
        config=ClientConfig(),
        nursery=None,  # type: ignore[arg-type]
        stake_check=StakeCheck.from_registry(market.registry()),
    )

    def bid(peer: str, addr: bytes) -> Bid:
        return Bid(
            job_id=bytes(16),
            provider=peer,
            provider_address=addr,
            price_per_1k=100,
            est_ttft_ms=50,
            est_tokens_per_s=20.0,
            chunk_tokens=4,
            credit_chunks=1,
        )

    assert isinstance(await client._bid_event(PEER, bid(PEER, address)), BidReceived)
    assert await client._bid_event(OTHER, bid(OTHER, address)) is None  # not its peer id
    assert client.unstaked_bids == 1
    # a decline needs no stake: it only tells the buyer why nobody bid
    decline = Decline(job_id=bytes(16), provider=OTHER, reason=DeclineReason.BUSY)
    assert isinstance(await client._bid_event(OTHER, decline), DeclineReceived)
