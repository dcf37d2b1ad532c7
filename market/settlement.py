"""The bridge between the sans-IO payment accounting and EIP-712 settlement.

:class:`market.protocol.payments.BuyerWallet` and ``VoucherBook`` take a signer and
a verifier as plain callbacks; these build them from the chain code's EIP-712
implementation, so the protocol package never imports web3 or coincurve.
"""

from __future__ import annotations

from market.chain.voucher import (
    InvalidVoucherSignature,
    VoucherDomain,
    recover_voucher_signer,
    sign_voucher,
)
from market.chain.voucher import Voucher as ChainVoucher
from market.protocol import Voucher
from market.protocol.payments import ChannelTerms, VoucherDraft, VoucherSigner, VoucherVerifier

__all__ = ["domain_of", "voucher_signer", "voucher_verifier"]


def domain_of(terms: ChannelTerms) -> VoucherDomain:
    """The EIP-712 domain the channel's vouchers are signed under."""
    return VoucherDomain(chain_id=terms.chain_id, verifying_contract=terms.contract)


def voucher_signer(eth_private_key: bytes, terms: ChannelTerms) -> VoucherSigner:
    """A signer for :class:`BuyerWallet`: signs each draft with the buyer's key."""
    domain = domain_of(terms)

    def sign(draft: VoucherDraft) -> bytes:
        voucher = ChainVoucher(
            buyer=draft.buyer_address,
            provider=draft.provider_address,
            token=draft.terms.token,
            cumulative_amount=draft.cumulative_amount,
            epoch=draft.terms.epoch,
        )
        return sign_voucher(eth_private_key, domain, voucher)

    return sign


def voucher_verifier(terms: ChannelTerms) -> VoucherVerifier:
    """A verifier for ``VoucherBook``: true when the buyer named in it signed it."""
    domain = domain_of(terms)

    def verify(v: Voucher) -> bool:
        chain_voucher = ChainVoucher(
            buyer=v.buyer_address,
            provider=v.provider_address,
            token=v.token,
            cumulative_amount=v.cumulative_amount,
            epoch=v.epoch,
        )
        try:
            return recover_voucher_signer(domain, chain_voucher, v.signature) == v.buyer_address
        except InvalidVoucherSignature:
            return False

    return verify
