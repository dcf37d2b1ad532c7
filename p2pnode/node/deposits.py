"""The provider's view of each buyer's on-chain deposit, for voucher checks.

The voucher book is pure and asks ``deposit_of(buyer)`` synchronously; this cache
answers from the last chain reading and is refreshed (in a worker thread, behind the
node's one chain limiter) whenever an RFQ from that buyer arrives.
"""

from __future__ import annotations

import trio

from market.chain.aio import TrioChain
from market.chain.contracts import PaymentHub

__all__ = ["DepositCache"]


class DepositCache:
    """``deposit_of(buyer)`` = the buyer's hub balance + what we already redeemed from it.

    Vouchers are cumulative over the channel's life while the hub balance shrinks as
    providers redeem, so what we redeemed is added back.
    """

    def __init__(
        self,
        hub: PaymentHub,
        chain: TrioChain,
        provider: bytes,
        token: bytes,
        *,
        max_age_s: float = 5.0,
    ) -> None:
        self.hub = hub
        self.chain = chain
        self.provider = provider
        self.token = token
        self.max_age_s = max_age_s
        self._known: dict[bytes, tuple[int, float]] = {}

    def deposit_of(self, buyer: bytes) -> int:
        entry = self._known.get(buyer)
        return 0 if entry is None else entry[0]

    async def ensure(self, buyer: bytes) -> int:
        """The buyer's deposit, read from the chain unless a reading is fresh enough.

        Called on every RFQ: a recent reading keeps the chain off the bidding path.
        """
        entry = self._known.get(buyer)
        if entry is not None and trio.current_time() - entry[1] < self.max_age_s:
            return entry[0]
        return await self.refresh(buyer)

    def _read(self, buyer: bytes) -> int:
        balance = self.hub.balance_of(buyer, self.token)
        redeemed, _epoch = self.hub.redeemed(buyer, self.provider, self.token)
        return balance + redeemed

    async def refresh(self, buyer: bytes) -> int:
        """Read the buyer's deposit from the chain now; returns it."""
        value = await self.chain.run(self._read, buyer)
        self._known[buyer] = (value, trio.current_time())
        return value
