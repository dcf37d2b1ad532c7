"""The buyer's side of per-provider collateral: lock enough for a provider before awarding.

A provider accepts our vouchers only up to its channel's *cover* on the PaymentHub:
what the channel redeemed plus what we locked for that provider (``PaymentHub.cover``).
Before an award goes out, the buyer machine says how much cover the job may need
(:attr:`market.protocol.actions.SendAward.cover`); :meth:`Collateral.ensure` makes it
so, locking more of the free balance when the channel is short.

Each top-up locks ``top_up_multiple`` times the shortfall (capped by the free
balance), so a provider used again and again costs one lock transaction every few
jobs, not one per job. What stays locked for a provider goes back to the free balance
with ``hearth unlock`` (a notice, like a withdrawal, during which that provider can
still redeem).
"""

from __future__ import annotations

from pathlib import Path

import trio

from market.chain.aio import TrioChain
from market.chain.contracts import PaymentHub
from market.sdk.types import InsufficientFundsError

__all__ = ["Collateral", "channel_providers"]


def channel_providers(data_dir: Path) -> list[bytes]:
    """The providers a buyer signed vouchers to (from its ledger in ``data_dir``): the
    channels it may have locked money for."""
    from market.ledger import Ledger

    path = data_dir / "buyer-ledger.sqlite"
    if not path.is_file():
        return []
    ledger = Ledger(path)
    try:
        return sorted({sv.voucher.provider for sv in ledger.vouchers()})
    finally:
        ledger.close()


class Collateral:
    """Keeps each provider's channel covered before we award it a job."""

    def __init__(
        self,
        hub: PaymentHub,
        chain: TrioChain,
        buyer: bytes,
        token: bytes,
        *,
        top_up_multiple: int = 8,
        max_age_s: float = 30.0,
    ) -> None:
        if top_up_multiple < 1:
            raise ValueError("top_up_multiple must be >= 1")
        self.hub = hub
        self.chain = chain
        self.buyer = buyer
        self.token = token
        self.top_up_multiple = top_up_multiple
        self.max_age_s = max_age_s
        self.locks_sent = 0
        # (cover, when) as last read or locked by us. Only this buyer can lower a cover
        # (an unlock notice), but perhaps from another process (`hearth unlock`): a
        # reading is trusted for max_age_s, then read again.
        self._cover: dict[bytes, tuple[int, float]] = {}
        self._busy: dict[bytes, trio.Lock] = {}

    async def ensure(self, provider: bytes, need: int) -> int:
        """Make the channel to ``provider`` cover ``need``; returns what it now covers.

        Raises :class:`InsufficientFundsError` when the free balance cannot make up the
        shortfall (nothing is locked then).
        """
        fresh = self._fresh(provider, need)
        if fresh is not None:
            return fresh
        lock = self._busy.setdefault(provider, trio.Lock())
        async with lock:  # one top-up per provider at a time; others wait and re-check
            fresh = self._fresh(provider, need)  # what the task before us read or locked
            if fresh is not None:
                return fresh
            cover = await self.chain.run(self.hub.cover, self.buyer, provider, self.token)
            self._remember(provider, cover)
            if cover >= need:
                return cover
            short = need - cover
            free = await self.chain.run(self.hub.balance_of, self.buyer, self.token)
            amount = min(free, short * self.top_up_multiple)
            if amount < short:
                raise InsufficientFundsError(
                    f"the job may cost {short} more than is locked for provider "
                    f"0x{provider.hex()}, and the free deposit is {free}: deposit more, "
                    "or `hearth unlock` money locked for providers you no longer use"
                )
            await self.chain.run(self.hub.lock, provider, self.token, amount)
            self.locks_sent += 1
            self._remember(provider, cover + amount)
            return cover + amount

    def _fresh(self, provider: bytes, need: int) -> int | None:
        """The cover we know for ``provider`` if it is recent and enough, else None."""
        known = self._cover.get(provider)
        if known is not None and known[0] >= need and trio.current_time() < known[1]:
            return known[0]
        return None

    def _remember(self, provider: bytes, cover: int) -> None:
        self._cover[provider] = (cover, trio.current_time() + self.max_age_s)
