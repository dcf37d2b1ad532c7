"""The provider's deposit cache (p2pnode.node.deposits) against a real PaymentHub."""

from __future__ import annotations

import trio

from market.chain.aio import TrioChain
from p2pnode.node.deposits import DepositCache
from tests.market.chain.conftest import DEPOSIT, Market


async def test_a_new_buyer_is_read_at_once_a_known_one_renewed_behind_the_bid(
    market: Market,
) -> None:
    token = bytes.fromhex(market.deployment.token[2:])
    cache = DepositCache(
        market.hub(), TrioChain(), market.provider.address_bytes, token, max_age_s=0.05
    )
    buyer = market.buyer.address_bytes
    assert cache.deposit_of(buyer) == 0  # never read
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.run)
        assert await cache.ensure(buyer) == DEPOSIT  # first contact: read on the spot
        market.fund_buyer(market.buyer, 5)  # the deposit grows on chain
        await trio.sleep(0.06)
        assert await cache.ensure(buyer) == DEPOSIT  # stale: answered from the cache…
        with trio.fail_after(10):
            while cache.deposit_of(buyer) != DEPOSIT + 5:  # …and renewed behind it
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
