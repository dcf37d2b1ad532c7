"""A redeeming process for the crash test: ``python -m tests.market.ledger.redeem_worker
LEDGER DEPLOYMENT RPC_URL KEY_HEX``. It redeems every held voucher; the test SIGKILLs
it while it waits for a receipt (the chain is not mining)."""

from __future__ import annotations

import sys

from market.chain.backends import connect
from market.chain.client import ChainClient
from market.chain.deployment import Deployment
from market.ledger import Ledger, Redeemer


def main() -> None:
    ledger_path, deployment_path, rpc_url, key_hex = sys.argv[1:5]
    client = ChainClient(connect(rpc_url), bytes.fromhex(key_hex), receipt_timeout=600)
    redeemer = Redeemer(Ledger(ledger_path), Deployment.load(deployment_path).hub(client))
    print("redeeming", flush=True)
    redeemer.redeem_due(gas_price_wei=0)
    print("unexpectedly finished", flush=True)


if __name__ == "__main__":
    main()
