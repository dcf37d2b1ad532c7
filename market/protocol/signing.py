"""Ed25519 signing keys (the node's libp2p identity key) and verification.

Wraps ``cryptography`` so the rest of the protocol handles raw bytes only::

    key = SigningKey.from_private_bytes(seed32)
    sig = key.sign(data)                          # 64 bytes
    verify_ed25519(key.public_bytes, sig, data)   # True
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from market.protocol.errors import LocalProtocolError
from market.protocol.peerid import peer_id_from_ed25519

__all__ = ["SigningKey", "verify_ed25519"]


class SigningKey:
    """An ed25519 private key with its public bytes and libp2p peer id."""

    __slots__ = ("_key", "peer_id", "public_bytes")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.public_bytes: bytes = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id: str = peer_id_from_ed25519(self.public_bytes)

    @classmethod
    def from_private_bytes(cls, seed: bytes) -> SigningKey:
        """Build from the 32-byte private seed (what libp2p and the keystore hold)."""
        if type(seed) is not bytes or len(seed) != 32:
            raise LocalProtocolError("an ed25519 private key is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def generate(cls, rng: Callable[[int], bytes]) -> SigningKey:
        """A new key from ``rng(32)`` (pass ``os.urandom``, or a seeded rng in tests)."""
        return cls.from_private_bytes(rng(32))

    def private_bytes(self) -> bytes:
        """The 32-byte private seed."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        """A 64-byte ed25519 signature of ``data``."""
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(peer_id={self.peer_id!r})"


def verify_ed25519(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid ed25519 signature of ``data`` by ``public_key``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
