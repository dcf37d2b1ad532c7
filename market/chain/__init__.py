"""On-chain settlement: contracts' Python side.

Modules (import what you need; the names below are also re-exported lazily, so
``import market.chain.voucher`` stays free of web3):

- ``voucher``    — EIP-712 vouchers: ``Voucher``, ``VoucherDomain``, ``sign_voucher``,
  ``recover_voucher_signer``, ``message_verifier``, ``draft_signer`` (no web3).
- ``client``     — ``ChainClient``: local signing, nonces, gas, retries, receipts.
- ``contracts``  — typed ``PaymentHub``, ``ProviderRegistry``, ``Erc20`` wrappers.
- ``errors``     — ``ChainError`` → ``ContractReverted`` (same on every backend), …
- ``backends``   — ``start_embedded_chain``, ``AnvilProcess``, ``connect``.
- ``deployment`` — ``deploy_all`` and the ``Deployment`` JSON file.
- ``events``     — ``LogPoller``; ``aio`` — ``TrioChain`` (trio, one limiter).
- ``compile``    — ``python -m market.chain.compile [--check]``; ``gasbench``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Voucher": "voucher",
    "VoucherDomain": "voucher",
    "sign_voucher": "voucher",
    "recover_voucher_signer": "voucher",
    "voucher_digest": "voucher",
    "message_verifier": "voucher",
    "draft_signer": "voucher",
    "InvalidVoucherSignature": "voucher",
    "ChainClient": "client",
    "Receipt": "client",
    "SignedTx": "client",
    "PaymentHub": "contracts",
    "ProviderRegistry": "contracts",
    "Erc20": "contracts",
    "SignedVoucher": "contracts",
    "ChainError": "errors",
    "ChainUnavailable": "errors",
    "ContractReverted": "errors",
    "TransactionDropped": "errors",
    "start_embedded_chain": "backends",
    "EmbeddedChain": "backends",
    "AnvilProcess": "backends",
    "connect": "backends",
    "Deployment": "deployment",
    "deploy_all": "deployment",
    "LogPoller": "events",
    "ChainEvent": "events",
    "TrioChain": "aio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'market.chain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"market.chain.{module}"), name)
