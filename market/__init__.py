"""Hearth market: wire protocol, state machines, settlement, ledger and buyer SDK."""
