"""Calling the synchronous chain client from trio.

web3.py is synchronous (its async API does not run under trio), so every chain call
runs in a worker thread via ``trio.to_thread.run_sync`` behind ONE capacity limiter
per process: the node creates one :class:`TrioChain` and hands it to everything that
talks to the chain. With the default single token, calls are serialised, which also
keeps the nonce order and the (not thread-safe) eth-tester backend sound::

    chain = TrioChain()
    receipt = await chain.run(hub.redeem, signed_voucher)
    async for event in chain.watch(poller, interval_s=2.0):
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from market.chain.events import ChainEvent, LogPoller

__all__ = ["TrioChain"]

T = TypeVar("T")


class TrioChain:
    """Run blocking chain calls from trio, at most `limit` at a time."""

    def __init__(self, limit: int = 1) -> None:
        self.limiter = trio.CapacityLimiter(limit)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a worker thread; exceptions propagate unchanged."""
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self.limiter)

    async def watch(
        self, poller: LogPoller, *, interval_s: float = 2.0
    ) -> AsyncIterator[ChainEvent]:
        """Yield events from `poller` forever, polling every `interval_s` seconds."""
        while True:
            for event in await self.run(poller.poll):
                yield event
            await trio.sleep(interval_s)
