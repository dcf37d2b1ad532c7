"""The redemption loop as a trio service for the node.

::

    async with trio.open_nursery() as nursery:
        await nursery.start(run_redeemer, redeemer, chain)   # chain: the node's TrioChain

On start it reconciles pending redemptions from the chain (exactly once across
crashes), signals readiness, then every ``interval_s`` watches withdrawal and unlock
notices, redeems what the policy says is due and records losses; buyers the ledger
flags are handed to ``suspend`` (the node's voucher book) so they are served no more.
Chain errors are retried on the next round, never fatal to the node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from market.chain.aio import TrioChain
from market.chain.errors import ChainError
from market.ledger.redeemer import Redeemer

__all__ = ["run_redeemer"]

log = logging.getLogger(__name__)


async def run_redeemer(
    redeemer: Redeemer,
    chain: TrioChain,
    *,
    interval_s: float = 30.0,
    suspend: Callable[[bytes, str], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reconcile, signal readiness, then run :meth:`Redeemer.step` every `interval_s`.

    After each round, ``suspend(buyer, cause)`` is called for every buyer the ledger
    has flagged (a channel that changed under us), so the node stops serving them.
    """
    await chain.run(redeemer.reconcile)
    await _suspend_flagged(redeemer, chain, suspend)
    task_status.started()
    while True:
        try:
            results = await chain.run(redeemer.step)
            for r in results:
                log.info("redemption %s: %s", r.redemption_id, r.status)
        except ChainError as exc:
            log.warning("redemption round failed, will retry: %s", exc)
        await _suspend_flagged(redeemer, chain, suspend)
        await trio.sleep(interval_s)


async def _suspend_flagged(
    redeemer: Redeemer, chain: TrioChain, suspend: Callable[[bytes, str], None] | None
) -> None:
    if suspend is None:
        return
    for flagged in await chain.run(redeemer.ledger.flagged_buyers):
        cause = f"{flagged.cause}: {flagged.detail}" if flagged.detail else flagged.cause
        suspend(flagged.buyer, cause)
