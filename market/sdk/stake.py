"""Only staked providers may win: the buyer's Sybil check against the ProviderRegistry.

A bid is signed by a peer id and names an Ethereum address. It counts only if the
registry says that address is an active (staked, not unbonding below the minimum)
provider *and* that address registered that very peer id — so a thousand fresh peer
ids cost a thousand stakes. The registry maps addresses to peer ids, never peer ids to
an owner: someone who writes another node's peer id into its own record gains nothing
(it cannot sign that node's bids) and blocks nothing (the real owner's record still
names it).
Answers are cached for ``ttl_s`` (stake changes slowly: unbonding takes days), so the
chain is read once per provider, not per bid.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["StakeCheck"]


class StakeCheck:
    """``await check(peer_id, address)`` → True when that pair is staked and active.

    ``lookup(peer_id, address)`` is a blocking chain read (run in a worker thread
    behind ``limiter``); failures to reach the chain count as "not staked" until the
    read is tried again ``retry_s`` later.
    """

    def __init__(
        self,
        lookup: Callable[[str, bytes], bool],
        *,
        ttl_s: float = 600.0,
        retry_s: float = 10.0,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._lookup = lookup
        self.ttl_s = ttl_s
        self.retry_s = retry_s  # a failed read is retried after this long, not ttl_s
        self._limiter = limiter or trio.CapacityLimiter(1)
        self._cache: dict[tuple[str, bytes], tuple[bool, float]] = {}
        self._reading: dict[tuple[str, bytes], trio.Event] = {}

    async def __call__(self, peer_id: str, address: bytes) -> bool:
        key = (peer_id, address)
        while True:
            hit = self._cache.get(key)
            if hit is not None and trio.current_time() < hit[1]:
                return hit[0]
            running = self._reading.get(key)
            if running is None:
                break
            await running.wait()  # someone is reading this very pair: share its answer
        done = self._reading[key] = trio.Event()
        ttl = self.ttl_s
        try:
            ok = await trio.to_thread.run_sync(
                self._lookup, peer_id, address, limiter=self._limiter
            )
        except Exception:  # unreachable chain or bad answer: no proof of stake, for now
            ok, ttl = False, min(ttl, self.retry_s)
        finally:
            del self._reading[key]
            done.set()
        self._cache[key] = (ok, trio.current_time() + ttl)
        return ok

    async def warm(self, peer_id: str, address: bytes) -> None:
        """Read the pair's stake ahead of its first bid (a no-op when already known)."""
        await self(peer_id, address)

    @classmethod
    def from_registry(cls, registry: object, **kwargs: object) -> StakeCheck:
        """A check backed by a :class:`market.chain.contracts.ProviderRegistry`."""

        def lookup(peer_id: str, address: bytes) -> bool:
            return bool(registry.is_active_for(address, peer_id))  # type: ignore[attr-defined]

        return cls(lookup, **kwargs)  # type: ignore[arg-type]
