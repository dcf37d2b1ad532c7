"""Hearth bootstrap node: DHT server, relay, rendezvous and gossip seed."""
