"""Off-chain voucher signing and recovery (no chain needed)."""

from __future__ import annotations

import os

import coincurve
import pytest
from eth_hash.auto import keccak

from market.chain.voucher import (
    InvalidVoucherSignature,
    Voucher,
    VoucherDomain,
    recover_voucher_signer,
    sign_voucher,
)

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def _address(key: bytes) -> bytes:
    return keccak(coincurve.PrivateKey(key).public_key.format(compressed=False)[1:])[-20:]


KEY = bytes(range(1, 33))
DOMAIN = VoucherDomain(chain_id=31337, verifying_contract=b"\x11" * 20)
VOUCHER = Voucher(
    buyer=_address(KEY), provider=b"\x22" * 20, token=b"\x33" * 20, cumulative_amount=10**6, epoch=2
)


def test_sign_then_recover_gives_the_buyer() -> None:
    sig = sign_voucher(KEY, DOMAIN, VOUCHER)
    assert len(sig) == 65 and sig[64] in (27, 28)
    assert recover_voucher_signer(DOMAIN, VOUCHER, sig) == VOUCHER.buyer
    assert sign_voucher("0x" + KEY.hex(), DOMAIN, VOUCHER) == sig  # deterministic (RFC 6979)


def test_other_domain_or_amount_recovers_someone_else() -> None:
    sig = sign_voucher(KEY, DOMAIN, VOUCHER)
    other_chain = VoucherDomain(chain_id=1, verifying_contract=DOMAIN.verifying_contract)
    other_hub = VoucherDomain(chain_id=31337, verifying_contract=b"\x12" * 20)
    bumped = Voucher(**{**_fields(VOUCHER), "cumulative_amount": 10**6 + 1})
    assert recover_voucher_signer(other_chain, VOUCHER, sig) != VOUCHER.buyer
    assert recover_voucher_signer(other_hub, VOUCHER, sig) != VOUCHER.buyer
    assert recover_voucher_signer(DOMAIN, bumped, sig) != VOUCHER.buyer


def _fields(v: Voucher) -> dict[str, object]:
    return {f: getattr(v, f) for f in ("buyer", "provider", "token", "cumulative_amount", "epoch")}


def test_malleable_twin_is_rejected() -> None:
    sig = sign_voucher(KEY, DOMAIN, VOUCHER)
    s = int.from_bytes(sig[32:64], "big")
    twin = sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    with pytest.raises(InvalidVoucherSignature, match="malleable"):
        recover_voucher_signer(DOMAIN, VOUCHER, twin)


@pytest.mark.parametrize(
    "bad",
    [b"", b"\x00" * 64, b"\x01" * 64 + b"\x1d", b"\x00" * 64 + b"\x1b"],
    ids=["empty", "short", "bad-v", "zero-rs"],
)
def test_garbage_signatures_raise(bad: bytes) -> None:
    with pytest.raises(InvalidVoucherSignature):
        recover_voucher_signer(DOMAIN, VOUCHER, bad)


def test_signing_someone_elses_voucher_is_refused() -> None:
    with pytest.raises(ValueError, match="not the voucher's buyer"):
        sign_voucher(os.urandom(32), DOMAIN, VOUCHER)


def test_fields_are_validated() -> None:
    with pytest.raises(ValueError):
        Voucher(buyer=b"\x01" * 19, provider=b"\x02" * 20, token=b"\x03" * 20, cumulative_amount=1)
    with pytest.raises(ValueError):
        Voucher(buyer=b"\x01" * 20, provider=b"\x02" * 20, token=b"\x03" * 20, cumulative_amount=-1)
    with pytest.raises(ValueError):
        VoucherDomain(chain_id=0, verifying_contract=b"\x01" * 20)


def test_protocol_adapters_sign_drafts_and_verify_wire_messages() -> None:
    from market.chain.voucher import draft_signer, message_verifier
    from market.protocol.messages import Voucher as WireVoucher
    from market.protocol.payments import ChannelTerms, VoucherDraft

    terms = ChannelTerms(
        token=VOUCHER.token, chain_id=31337, contract=DOMAIN.verifying_contract, epoch=2
    )
    draft = VoucherDraft(
        job_id=b"\x07" * 16,
        buyer_address=VOUCHER.buyer,
        provider_address=VOUCHER.provider,
        cumulative_amount=VOUCHER.cumulative_amount,
        terms=terms,
    )
    sig = draft_signer(KEY)(draft)
    assert sig == sign_voucher(KEY, DOMAIN, VOUCHER)  # the same EIP-712 signature
    wire = dict(
        job_id=b"\x07" * 16,
        buyer_address=VOUCHER.buyer,
        provider_address=VOUCHER.provider,
        token=VOUCHER.token,
        cumulative_amount=VOUCHER.cumulative_amount,
        epoch=2,
        chain_id=31337,
        contract=DOMAIN.verifying_contract,
    )
    verify = message_verifier(chain_id=31337, contract=DOMAIN.verifying_contract)
    assert verify(WireVoucher(**wire, signature=sig))
    assert not verify(WireVoucher(**{**wire, "cumulative_amount": 10**6 + 1}, signature=sig))
    assert not verify(WireVoucher(**wire, signature=b"\x00" * 65))
    assert not message_verifier(chain_id=1)(WireVoucher(**wire, signature=sig))
