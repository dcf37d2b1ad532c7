"""Our libp2p-free peer id derivation agrees with py-libp2p's."""

from __future__ import annotations

import random

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID

from market.protocol import SigningKey, ed25519_key_from_peer_id, peer_id_from_ed25519
from market.protocol.peerid import b58decode, b58encode


def test_peer_id_matches_libp2p_for_random_keys() -> None:
    rng = random.Random(42)
    for _ in range(200):
        seed = rng.randbytes(32)
        theirs = Ed25519PrivateKey.from_bytes(seed)
        expected = ID.from_pubkey(theirs.get_public_key()).to_base58()
        ours = SigningKey.from_private_bytes(seed)
        assert ours.peer_id == expected
        assert ours.public_bytes == theirs.get_public_key().to_bytes()
        assert peer_id_from_ed25519(ours.public_bytes) == expected
        assert ed25519_key_from_peer_id(expected) == ours.public_bytes
        assert expected.startswith("12D3KooW")


def test_base58_round_trip_with_leading_zeros() -> None:
    rng = random.Random(1)
    for n in range(0, 50):
        data = b"\x00" * (n % 4) + rng.randbytes(n)
        assert b58decode(b58encode(data)) == data
