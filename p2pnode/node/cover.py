"""The provider's view of what each buyer's channel is sure to pay, for voucher checks.

A voucher is worth accepting only up to the channel's *cover*: what the channel already
redeemed in its epoch plus what the buyer locked for this provider on the PaymentHub,
less any part of the lock under notice to be released (``PaymentHub.cover``). Money
only the buyer's free balance backs could be taken first by vouchers it signed to
other providers, so it never counts.

The voucher book is pure and asks ``cover_of(buyer)`` synchronously; this cache answers
from the last chain reading. An RFQ from a new buyer waits for a first reading; later
RFQs are answered from the cache at once, and a reading older than ``max_age_s`` is
renewed in the background (:meth:`CoverCache.run`), so the chain is never on the
bidding path of a buyer already known. A voucher above the cached cover (the buyer
locked more just before its award) is checked against a fresh reading
(:meth:`CoverCache.refresh`) before it is refused.

At most ``max_buyers`` readings are kept (least recently used first out), so RFQs
from ever-new identities cannot grow it without bound.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from contextlib import suppress

import trio

from market.chain.aio import TrioChain
from market.chain.contracts import PaymentHub

__all__ = ["CoverCache"]


class CoverCache:
    """``cover_of(buyer)``: the cumulative voucher amount ``buyer``'s channel to us is sure
    to pay, as last read on chain (0 for a buyer never read)."""

    def __init__(
        self,
        hub: PaymentHub,
        chain: TrioChain,
        provider: bytes,
        token: bytes,
        *,
        max_age_s: float = 5.0,
        max_buyers: int = 10_000,
    ) -> None:
        self.hub = hub
        self.chain = chain
        self.provider = provider
        self.token = token
        self.max_age_s = max_age_s
        self.max_buyers = max_buyers
        self._known: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        self._stale, self._renew = trio.open_memory_channel[bytes](math.inf)
        self._renewing: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._known)

    def cover_of(self, buyer: bytes) -> int:
        entry = self._known.get(buyer)
        return 0 if entry is None else entry[0]

    async def ensure(self, buyer: bytes) -> int:
        """The buyer's cover: read now for a new buyer, else the last reading.

        Called on every RFQ. A reading older than ``max_age_s`` is queued for
        :meth:`run` to renew; this RFQ is answered from it meanwhile.
        """
        entry = self._known.get(buyer)
        if entry is None:
            return await self.refresh(buyer)
        self._known.move_to_end(buyer)
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
        return self.hub.cover(buyer, self.provider, self.token)

    async def refresh(self, buyer: bytes) -> int:
        """Read the buyer's cover from the chain now; returns it."""
        value = await self.chain.run(self._read, buyer)
        self._known[buyer] = (value, trio.current_time())
        self._known.move_to_end(buyer)
        while len(self._known) > self.max_buyers:
            self._known.popitem(last=False)
        return value
