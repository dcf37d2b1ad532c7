"""The binding statement: the node's two keys vouch for each other.

A Hearth node has two identities: its libp2p ed25519 key (the peer id others dial
and see sign every envelope) and its Ethereum secp256k1 key (the address that
stakes, receives vouchers and redeems them). The binding statement lets anyone
check that both belong to the same node, with nothing but the statement itself:

* the **ed25519 key signs the Ethereum address**: the signature covers
  ``BINDING_DOMAIN || peer_id (ASCII) || 0x00 || address (20 bytes)``, and the
  public key is recovered from the peer id (ed25519 peer ids embed their key);
* the **Ethereum key signs the peer id** with EIP-191 ``personal_sign`` over the
  human-readable :func:`binding_text`, so a wallet shows what it is signing and
  ``ecrecover`` yields the address.

Serialized as a small JSON object (``binding.json`` in the keystore).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from market.identity.errors import BindingError
from market.protocol import RemoteProtocolError, SigningKey, verify_ed25519
from market.protocol.peerid import ed25519_key_from_peer_id

__all__ = [
    "BINDING_DOMAIN",
    "Binding",
    "binding_text",
    "create_binding",
    "ed25519_binding_bytes",
    "verify_binding",
]

BINDING_DOMAIN = b"hearth/binding/v1\x00"
_STATEMENT = "hearth-identity-binding"


def binding_text(peer_id: str, eth_address: str) -> str:
    """What the Ethereum key signs (EIP-191): readable in any wallet."""
    return f"Hearth identity binding v1\nlibp2p peer id: {peer_id}\nEthereum address: {eth_address}"


def ed25519_binding_bytes(peer_id: str, eth_address: str) -> bytes:
    """What the ed25519 key signs."""
    return BINDING_DOMAIN + peer_id.encode("ascii") + b"\x00" + _address_bytes(eth_address)


def _address_bytes(eth_address: str) -> bytes:
    text = eth_address[2:] if eth_address.startswith(("0x", "0X")) else eth_address
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise BindingError(f"not an Ethereum address: {eth_address!r}") from None
    if len(raw) != 20:
        raise BindingError(f"not an Ethereum address: {eth_address!r}")
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """A binding statement (see the module docstring). ``eth_address`` is checksummed."""

    peer_id: str
    eth_address: str
    ed25519_signature: bytes
    eth_signature: bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (hex-encoded signatures)."""
        return {
            "statement": _STATEMENT,
            "version": 1,
            "peer_id": self.peer_id,
            "eth_address": self.eth_address,
            "ed25519_signature": self.ed25519_signature.hex(),
            "eth_signature": "0x" + self.eth_signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Any) -> Binding:
        """Parse :meth:`to_json` output; ``BindingError`` if malformed (not verified)."""
        try:
            if data["statement"] != _STATEMENT or data["version"] != 1:
                raise BindingError("not a version-1 Hearth binding statement")
            sig = data["eth_signature"]
            return cls(
                peer_id=str(data["peer_id"]),
                eth_address=str(data["eth_address"]),
                ed25519_signature=bytes.fromhex(data["ed25519_signature"]),
                eth_signature=bytes.fromhex(sig[2:] if sig.startswith("0x") else sig),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BindingError(f"malformed binding statement ({e!r})") from None


def create_binding(ed25519_private: bytes, eth_private_key: bytes) -> Binding:
    """Sign a binding statement with both private keys."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    key = SigningKey.from_private_bytes(ed25519_private)
    account = Account.from_key(eth_private_key)
    address = str(account.address)
    ed_sig = key.sign(ed25519_binding_bytes(key.peer_id, address))
    signed = Account.sign_message(
        encode_defunct(text=binding_text(key.peer_id, address)), eth_private_key
    )
    return Binding(
        peer_id=key.peer_id,
        eth_address=address,
        ed25519_signature=ed_sig,
        eth_signature=bytes(signed.signature),
    )


def verify_binding(binding: Binding) -> None:
    """Check both signatures; raise :class:`BindingError` saying which one fails."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    try:
        public = ed25519_key_from_peer_id(binding.peer_id)
    except RemoteProtocolError as e:
        raise BindingError(f"peer id {binding.peer_id!r}: {e.reason}") from None
    signed_bytes = ed25519_binding_bytes(binding.peer_id, binding.eth_address)
    if not verify_ed25519(public, binding.ed25519_signature, signed_bytes):
        raise BindingError("the ed25519 (libp2p) signature over the Ethereum address is invalid")
    try:
        recovered = Account.recover_message(
            encode_defunct(text=binding_text(binding.peer_id, binding.eth_address)),
            signature=binding.eth_signature,
        )
    except Exception as e:  # eth_account raises several types for malformed signatures
        raise BindingError(f"the Ethereum signature is malformed ({e})") from None
    if _address_bytes(str(recovered)) != _address_bytes(binding.eth_address):
        raise BindingError("the Ethereum signature over the peer id is not by that address")
