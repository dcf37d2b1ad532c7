"""libp2p peer ids for ed25519 keys, computed without importing libp2p.

A libp2p peer id is a multihash of the protobuf-encoded public key. For keys whose
encoding is at most 42 bytes — ed25519 keys are 36 — the multihash is the
*identity* hash (code 0x00), so the peer id literally contains the key::

    protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes} = 08 01 12 20 <key>
    multihash = 00 24 <those 36 bytes>            (identity, length 36)
    peer id   = base58btc(multihash)              ("12D3KooW…", 52 characters)

``tests/market/identity`` checks this against ``libp2p.peer.id.ID.from_pubkey``.
"""

from __future__ import annotations

from market.protocol.errors import RemoteProtocolError

__all__ = [
    "b58decode",
    "b58encode",
    "ed25519_key_from_peer_id",
    "peer_id_from_ed25519",
]

_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}
_ED25519_PREFIX = b"\x00\x24\x08\x01\x12\x20"


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 of ``data`` (leading zero bytes become ``1``)."""
    zeros = len(data) - len(data.lstrip(b"\x00"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_ALPHABET[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; ``ValueError`` on a character outside base58."""
    n = 0
    for c in text:
        digit = _INDEX.get(c)
        if digit is None:
            raise ValueError(f"{c!r} is not a base58 character")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


def peer_id_from_ed25519(public_key: bytes) -> str:
    """The libp2p peer id (base58 string) of a raw 32-byte ed25519 public key."""
    if type(public_key) is not bytes or len(public_key) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return b58encode(_ED25519_PREFIX + public_key)


def ed25519_key_from_peer_id(peer_id: str) -> bytes:
    """The 32-byte ed25519 key inside an ed25519 peer id.

    Raises :class:`RemoteProtocolError` when ``peer_id`` is not one (peer ids come
    from the network).
    """
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 60:
        raise RemoteProtocolError("not an ed25519 peer id")
    try:
        raw = b58decode(peer_id)
    except ValueError:
        raise RemoteProtocolError("peer id is not base58") from None
    if len(raw) != 38 or not raw.startswith(_ED25519_PREFIX):
        raise RemoteProtocolError("not an ed25519 peer id")
    return raw[6:]
