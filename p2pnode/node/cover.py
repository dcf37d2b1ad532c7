"""The provider's view of each buyer's on-chain deposit, for voucher checks.

The voucher book is pure and asks ``deposit_of(buyer)`` synchronously; this cache
answers from the last chain reading. An RFQ from a new buyer waits for a first
reading; later RFQs are answered from the cache at once, and a reading older than
``max_age_s`` is renewed in the background (:meth:`DepositCache.run`), so the chain
is never on the bidding path of a buyer already known.
"""

from __future__ import annotations

import math
from contextlib import suppress

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
        self._stale, self._renew = trio.open_memory_channel[bytes](math.inf)
        self._renewing: set[bytes] = set()

    def deposit_of(self, buyer: bytes) -> int:
        entry = self._known.get(buyer)
        return 0 if entry is None else entry[0]

    async def ensure(self, buyer: bytes) -> int:
        """The buyer's deposit: read now for a new buyer, else the last reading.

        Called on every RFQ. A reading older than ``max_age_s`` is queued for
        :meth:`run` to renew; this RFQ is answered from it meanwhile.
        """
        entry = self._known.get(buyer)
        if entry is None:
            return await self.refresh(buyer)
        if trio.current_time() - entry[1] >= self.max_age_s and buyer not in self._renewing:
            self._renewing.add(buyer)
            self._stale.send_nowait(buyer)
        return entry[0]

    async def run(self) -> None:
        """Renew the stale readings :meth:`ensure` queued, one at a time, until cancelled."""
        async for buyer in self._renew:
            with suppress(Exception):  # unreachable chain: keep the reading, retry later
                await self.refresh(buyer)
            self._renewing.discard(buyer)

    def _read(self, buyer: bytes) -> int:
        balance = self.hub.balance_of(buyer, self.token)
        redeemed, _epoch = self.hub.redeemed(buyer, self.provider, self.token)
        return balance + redeemed

    async def refresh(self, buyer: bytes) -> int:
        """Read the buyer's deposit from the chain now; returns it."""
        value = await self.chain.run(self._read, buyer)
        self._known[buyer] = (value, trio.current_time())
        return value
