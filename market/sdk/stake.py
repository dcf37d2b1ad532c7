"""Only staked providers may win: the buyer's Sybil check against the ProviderRegistry.

A bid names a peer id and an Ethereum address. It counts only if the registry says
that address is an active (staked, not unbonding below the minimum) provider *and*
registered that very peer id — so a thousand fresh peer ids cost a thousand stakes.
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
    behind ``limiter``); failures to reach the chain count as "not staked".
    """

    def __init__(
        self,
        lookup: Callable[[str, bytes], bool],
        *,
        ttl_s: float = 600.0,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        self._lookup = lookup
        self.ttl_s = ttl_s
        self._limiter = limiter or trio.CapacityLimiter(1)
        self._cache: dict[tuple[str, bytes], tuple[bool, float]] = {}

    async def __call__(self, peer_id: str, address: bytes) -> bool:
        key = (peer_id, address)
        hit = self._cache.get(key)
        now = trio.current_time()
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        try:
            ok = await trio.to_thread.run_sync(
                self._lookup, peer_id, address, limiter=self._limiter
            )
        except Exception:  # unreachable chain or bad answer: no proof of stake
            ok = False
        self._cache[key] = (ok, now)
        return ok

    @classmethod
    def from_registry(cls, registry: object, **kwargs: object) -> StakeCheck:
        """A check backed by a :class:`market.chain.contracts.ProviderRegistry`."""

        def lookup(peer_id: str, address: bytes) -> bool:
            owner = registry.provider_of_peer_id(peer_id)  # type: ignore[attr-defined]
            if bytes.fromhex(owner[2:]) != address:
                return False
            return bool(registry.is_active(address))  # type: ignore[attr-defined]

        return cls(lookup, **kwargs)  # type: ignore[arg-type]
