"""Compiled contract artifacts (ABI + bytecode JSON), written by ``python -m market.chain.compile``."""
