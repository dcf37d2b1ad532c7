"""EIP-712 payment vouchers: hash, sign and recover them off chain.

A voucher says "`buyer` owes `provider` a total of `cumulative_amount` of `token` in
channel `epoch`". It is signed under the PaymentHub's EIP-712 domain, which binds it to
one chain id and one contract address, so it cannot be replayed elsewhere. The same
digest is what ``PaymentHub.redeem`` checks on chain.

This module needs no node and no web3: only keccak (``eth_hash``) and secp256k1
(``coincurve``), so the market's protocol code can verify vouchers through a callback::

    domain = VoucherDomain(chain_id=31337, verifying_contract=hub_address)
    sig = sign_voucher(buyer_key, domain, voucher)          # 65 bytes: r || s || v
    assert recover_voucher_signer(domain, voucher, sig) == voucher.buyer

Signatures are canonical: ``s`` in the lower half of the curve order and ``v`` in
{27, 28}. ``recover_voucher_signer`` rejects anything else (as the contract does), so a
malleated copy of a signature is never a second valid signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coincurve
from eth_hash.auto import keccak

__all__ = [
    "HUB_EIP712_NAME",
    "HUB_EIP712_VERSION",
    "InvalidVoucherSignature",
    "Voucher",
    "VoucherDomain",
    "draft_signer",
    "message_verifier",
    "recover_voucher_signer",
    "sign_voucher",
    "voucher_digest",
    "voucher_struct_hash",
]

HUB_EIP712_NAME = "HearthPaymentHub"
HUB_EIP712_VERSION = "1"

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
_MAX_U256 = 2**256 - 1
_MAX_U64 = 2**64 - 1

_DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
VOUCHER_TYPEHASH = keccak(
    b"Voucher(address buyer,address provider,address token,uint256 cumulativeAmount,uint64 epoch)"
)


class InvalidVoucherSignature(ValueError):
    """The signature is malformed, non-canonical, or does not recover."""


def _address(value: bytes, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 20:
        raise ValueError(f"{what} must be 20 bytes, got {value!r}")
    return value


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _addr_word(value: bytes) -> bytes:
    return b"\x00" * 12 + value


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherDomain:
    """The EIP-712 domain of one PaymentHub deployment."""

    chain_id: int
    verifying_contract: bytes  # 20-byte PaymentHub address
    name: str = HUB_EIP712_NAME
    version: str = HUB_EIP712_VERSION

    def __post_init__(self) -> None:
        if not 0 < self.chain_id <= _MAX_U256:
            raise ValueError(f"chain_id out of range: {self.chain_id}")
        _address(self.verifying_contract, "verifying_contract")

    @property
    def separator(self) -> bytes:
        """The 32-byte EIP-712 domain separator."""
        return keccak(
            _DOMAIN_TYPEHASH
            + keccak(self.name.encode())
            + keccak(self.version.encode())
            + _word(self.chain_id)
            + _addr_word(self.verifying_contract)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Voucher:
    """A cumulative payment promise (addresses are 20-byte ``bytes``)."""

    buyer: bytes
    provider: bytes
    token: bytes
    cumulative_amount: int
    epoch: int = 0

    def __post_init__(self) -> None:
        _address(self.buyer, "buyer")
        _address(self.provider, "provider")
        _address(self.token, "token")
        if not 0 <= self.cumulative_amount <= _MAX_U256:
            raise ValueError(f"cumulative_amount out of range: {self.cumulative_amount}")
        if not 0 <= self.epoch <= _MAX_U64:
            raise ValueError(f"epoch out of range: {self.epoch}")

    def as_abi_tuple(self) -> tuple[str, str, str, int, int]:
        """The voucher as the contract's ``Voucher`` struct argument (checksummed hex)."""
        from eth_utils import to_checksum_address

        return (
            to_checksum_address(self.buyer),
            to_checksum_address(self.provider),
            to_checksum_address(self.token),
            self.cumulative_amount,
            self.epoch,
        )


def voucher_struct_hash(voucher: Voucher) -> bytes:
    """``hashStruct(voucher)`` as EIP-712 defines it."""
    return keccak(
        VOUCHER_TYPEHASH
        + _addr_word(voucher.buyer)
        + _addr_word(voucher.provider)
        + _addr_word(voucher.token)
        + _word(voucher.cumulative_amount)
        + _word(voucher.epoch)
    )


def voucher_digest(domain: VoucherDomain, voucher: Voucher) -> bytes:
    """The 32-byte digest the buyer signs: ``keccak(0x1901 ‖ domain ‖ hashStruct)``."""
    return keccak(b"\x19\x01" + domain.separator + voucher_struct_hash(voucher))


def _private_key_bytes(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = bytes.fromhex(key.removeprefix("0x"))
    if not isinstance(key, bytes) or len(key) != 32:
        raise ValueError("an Ethereum private key is 32 bytes")
    return key


def sign_voucher(eth_private_key: bytes | str, domain: VoucherDomain, voucher: Voucher) -> bytes:
    """Sign `voucher` with the buyer's key; return the 65-byte ``r ‖ s ‖ v`` signature.

    Raises ``ValueError`` if the key is not the voucher's buyer (signing someone
    else's voucher is a local bug, never useful).
    """
    priv = coincurve.PrivateKey(_private_key_bytes(eth_private_key))
    address = keccak(priv.public_key.format(compressed=False)[1:])[-20:]
    if address != voucher.buyer:
        raise ValueError("the signing key is not the voucher's buyer")
    raw = priv.sign_recoverable(voucher_digest(domain, voucher), hasher=None)
    return raw[:64] + bytes([raw[64] + 27])


def recover_voucher_signer(domain: VoucherDomain, voucher: Voucher, signature: bytes) -> bytes:
    """Return the 20-byte address that signed `voucher` under `domain`.

    Raises ``InvalidVoucherSignature`` for a signature that is not 65 bytes, has ``v``
    outside {27, 28}, a high ``s`` (malleable), or does not recover. The caller compares
    the result with ``voucher.buyer``.
    """
    if not isinstance(signature, bytes) or len(signature) != 65:
        raise InvalidVoucherSignature("signature must be 65 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise InvalidVoucherSignature(f"bad v: {v}")
    if not (0 < r < _SECP256K1_N and 0 < s <= _HALF_N):
        raise InvalidVoucherSignature("non-canonical (malleable) signature")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), voucher_digest(domain, voucher), hasher=None
        )
    except Exception as exc:  # coincurve raises plain Exception on failure
        raise InvalidVoucherSignature(f"signature does not recover: {exc}") from None
    return bytes(keccak(pub.format(compressed=False)[1:])[-20:])


# --------------------------------------------------------------------------------------
# Adapters for market.protocol (duck-typed so this module never imports the protocol)


def message_verifier(
    *, chain_id: int | None = None, contract: bytes | None = None
) -> Callable[[Any], bool]:
    """A ``VoucherVerifier`` for the wire ``Voucher`` message.

    The returned callable takes a message with ``buyer_address``, ``provider_address``,
    ``token``, ``cumulative_amount``, ``epoch``, ``chain_id``, ``contract`` and
    ``signature`` and returns ``True`` only if the buyer signed exactly those fields and,
    when given, the message names our `chain_id` and hub `contract`.
    """

    def verify(msg: Any) -> bool:
        if chain_id is not None and msg.chain_id != chain_id:
            return False
        if contract is not None and msg.contract != contract:
            return False
        try:
            domain = VoucherDomain(chain_id=msg.chain_id, verifying_contract=msg.contract)
            voucher = Voucher(
                buyer=msg.buyer_address,
                provider=msg.provider_address,
                token=msg.token,
                cumulative_amount=msg.cumulative_amount,
                epoch=msg.epoch,
            )
            return recover_voucher_signer(domain, voucher, msg.signature) == voucher.buyer
        except ValueError:  # includes InvalidVoucherSignature
            return False

    return verify


def draft_signer(eth_private_key: bytes | str) -> Callable[[Any], bytes]:
    """A ``VoucherSigner``: signs a ``VoucherDraft`` (``buyer_address``,
    ``provider_address``, ``cumulative_amount``, ``terms.{token, chain_id, contract,
    epoch}``) with the buyer's key, returning the 65-byte signature."""
    key = _private_key_bytes(eth_private_key)

    def sign(draft: Any) -> bytes:
        terms = draft.terms
        domain = VoucherDomain(chain_id=terms.chain_id, verifying_contract=terms.contract)
        voucher = Voucher(
            buyer=draft.buyer_address,
            provider=draft.provider_address,
            token=terms.token,
            cumulative_amount=draft.cumulative_amount,
            epoch=terms.epoch,
        )
        return sign_voucher(key, domain, voucher)

    return sign
