"""Hearth bootstrap node: DHT server, relay, rendezvous and gossip seed.

:mod:`bootstrap.node` runs it (``hearth bootstrap --listen … --announce …`` or
``python -m bootstrap``); :mod:`bootstrap.http` serves ``/health`` and ``/metrics``.
"""
