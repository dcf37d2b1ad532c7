"""The redemption loop as a trio service for the node.

::

    async with trio.open_nursery() as nursery:
        await nursery.start(run_redeemer, redeemer, chain)   # chain: the node's TrioChain

On start it reconciles pending redemptions from the chain (exactly once across
crashes), signals readiness, then every ``interval_s`` watches withdrawal notices and
redeems what the policy says is due. Chain errors are retried on the next round, never
fatal to the node.
"""

from __future__ import annotations

import logging

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
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Reconcile, signal readiness, then run :meth:`Redeemer.step` every `interval_s`."""
    await chain.run(redeemer.reconcile)
    task_status.started()
    while True:
        try:
            results = await chain.run(redeemer.step)
            for r in results:
                log.info("redemption %s: %s", r.redemption_id, r.status)
        except ChainError as exc:
            log.warning("redemption round failed, will retry: %s", exc)
        await trio.sleep(interval_s)
