"""The node's and buyer's SQLite ledger and the exactly-once redemption loop.

Public API::

    Ledger(path)                      # sqlite-utils, WAL
    Redeemer(ledger, hub, policy)     # reconcile() on start, then step() periodically
    ledger.losses(), ledger.is_flagged(buyer)   # what the chain will not pay, and who owes it
    RedemptionPolicy(gas_multiple=10, notice_margin_s=3600, ...)
    await nursery.start(run_redeemer, redeemer, trio_chain)   # the node's loop
"""

from market.ledger.redeemer import Redeemer, RedemptionPolicy, RedemptionResult, Standing
from market.ledger.service import run_redeemer
from market.ledger.store import (
    LOSS_BALANCE_SHORT,
    LOSS_STALE_EPOCH,
    FlaggedBuyer,
    Ledger,
    Loss,
    RedemptionRow,
    StoredVoucher,
)

__all__ = [
    "LOSS_BALANCE_SHORT",
    "LOSS_STALE_EPOCH",
    "FlaggedBuyer",
    "Ledger",
    "Loss",
    "Redeemer",
    "RedemptionPolicy",
    "RedemptionResult",
    "RedemptionRow",
    "Standing",
    "StoredVoucher",
    "run_redeemer",
]
