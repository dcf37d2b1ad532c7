"""The node's and buyer's SQLite ledger and the exactly-once redemption loop.

Public API::

    Ledger(path)                      # sqlite-utils, WAL
    Redeemer(ledger, hub, policy)     # reconcile() on start, then step() periodically
    RedemptionPolicy(gas_multiple=10, notice_margin_s=3600, ...)
    await nursery.start(run_redeemer, redeemer, trio_chain)   # the node's loop
"""

from market.ledger.redeemer import Redeemer, RedemptionPolicy, RedemptionResult
from market.ledger.service import run_redeemer
from market.ledger.store import Ledger, RedemptionRow, StoredVoucher

__all__ = [
    "Ledger",
    "Redeemer",
    "RedemptionPolicy",
    "RedemptionResult",
    "RedemptionRow",
    "StoredVoucher",
    "run_redeemer",
]
