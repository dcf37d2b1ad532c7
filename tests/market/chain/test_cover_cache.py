"""The provider's cover cache (p2pnode.node.cover) against a real PaymentHub."""

from __future__ import annotations

import trio

from market.chain.aio import TrioChain
from p2pnode.node.cover import CoverCache
from tests.market.chain.conftest import DEPOSIT, Market


def _cache(market: Market, **kwargs: float) -> CoverCache:
    token = bytes.fromhex(market.deployment.token[2:])
    return CoverCache(market.hub(), TrioChain(), market.provider.address_bytes, token, **kwargs)  # type: ignore[arg-type]


async def test_a_new_buyer_is_read_at_once_a_known_one_renewed_behind_the_bid(
    market: Market,
) -> None:
    cache = _cache(market, max_age_s=0.05)
    buyer = market.buyer.address_bytes
    hub, token = market.hub(market.buyer), market.deployment.token
    assert cache.cover_of(buyer) == 0  # never read
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run)
        # a deposit alone covers nothing: vouchers to other providers could take it first
        assert await cache.ensure(buyer) == 0
        hub.lock(market.provider.address, token, 300)
        assert await cache.ensure(buyer) == 0  # answered from the cache…
        await trio.sleep(0.06)
        await cache.ensure(buyer)  # …stale now: renewed behind it
        with trio.fail_after(10):
            while cache.cover_of(buyer) != 300:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    # a redemption from the lock leaves the cover where it was; an unlock notice lowers it
    market.hub(market.provider).redeem(market.signed(100))
    assert await cache.refresh(buyer) == 300
    hub.request_unlock(market.provider.address, token, 150)
    assert await cache.refresh(buyer) == 150
    assert hub.balance_of(market.buyer.address, token) == DEPOSIT - 300


async def test_the_cache_is_bounded(market: Market) -> None:
    """Issue 13.7: RFQs from ever-new identities must not grow the provider's caches."""
    cache = _cache(market, max_buyers=3)
    buyers = [bytes([i]) * 20 for i in range(1, 6)]
    for b in buyers:
        await cache.ensure(b)
    assert len(cache) == 3
    assert [cache.cover_of(b) for b in buyers] == [0, 0, 0, 0, 0]
    # the least recently used went first: the last three are still known
    assert all(b in cache._known for b in buyers[2:])
