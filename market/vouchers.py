"""Vouchers between the wire, the ledger and the chain, for both ends of a channel.

The protocol machines speak :class:`market.protocol.Voucher` (wire form, with the
job id and the domain fields); the ledger and the contracts speak
:class:`market.chain.voucher.Voucher` plus a signature. Both the buyer (who records
what it signed, to resume its channels after a restart) and the provider (who
records what it was paid, to redeem it exactly once) persist vouchers the same way.
"""

from __future__ import annotations

from market.chain.voucher import Voucher as ChainVoucher
from market.chain.voucher import VoucherDomain
from market.ledger import Ledger
from market.ledger.store import StoredVoucher
from market.protocol import Voucher

__all__ = ["from_stored", "record", "to_chain"]


def to_chain(v: Voucher) -> ChainVoucher:
    """The fields the contract checks (buyer, provider, token, cumulative, epoch)."""
    return ChainVoucher(
        buyer=v.buyer_address,
        provider=v.provider_address,
        token=v.token,
        cumulative_amount=v.cumulative_amount,
        epoch=v.epoch,
    )


def record(ledger: Ledger, v: Voucher) -> bool:
    """Persist ``v`` (verified against its buyer's signature); False if not newer."""
    domain = VoucherDomain(chain_id=v.chain_id, verifying_contract=v.contract)
    return ledger.accept_voucher(domain, to_chain(v), v.signature, job_id=v.job_id)


def from_stored(sv: StoredVoucher) -> Voucher:
    """A held voucher back in wire form (to seed a voucher book or a wallet)."""
    c = sv.voucher
    return Voucher(
        job_id=sv.job_id or bytes(16),
        buyer_address=c.buyer,
        provider_address=c.provider,
        token=c.token,
        cumulative_amount=c.cumulative_amount,
        epoch=c.epoch,
        chain_id=sv.chain_id,
        contract=sv.contract,
        signature=sv.signature,
    )
