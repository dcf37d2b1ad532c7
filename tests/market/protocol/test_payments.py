"""Voucher accounting: wallet reservations, monotonic channels, deposit bound."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import Voucher
from market.protocol.payments import BuyerWallet, ChannelTerms, VoucherBook, VoucherDraft

TERMS = ChannelTerms(token=b"\x07" * 20, chain_id=5, contract=b"\x0c" * 20)
BUYER = b"\xbb" * 20
PROV = b"\xaa" * 20
OTHER = b"\xcc" * 20
JOB = bytes(16)


def sign(d: VoucherDraft) -> bytes:
    return d.buyer_address + d.cumulative_amount.to_bytes(32, "big")[-8:] + bytes(37)


def verify(v: Voucher) -> bool:
    return v.signature[:28] == v.buyer_address + v.cumulative_amount.to_bytes(32, "big")[-8:]


def wallet(deposit: int = 1000) -> BuyerWallet:
    return BuyerWallet(buyer_address=BUYER, deposit=deposit, terms=TERMS, signer=sign)


def book(deposit: int = 1000) -> VoucherBook:
    return VoucherBook(
        provider_address=PROV, terms=TERMS, verifier=verify, cover_of=lambda _a: deposit
    )


def test_wallet_reserves_pays_and_releases() -> None:
    w = wallet(1000)
    assert w.reserve(700)
    assert not w.reserve(400)
    v1 = w.pay(JOB, PROV, 100, reserved=700)
    v2 = w.pay(JOB, PROV, 50, reserved=600)
    assert (v1.cumulative_amount, v2.cumulative_amount) == (100, 150)
    assert w.spent == 150 and w.available == 300
    w.release(550)
    assert w.available == 850
    assert verify(v2) and v2.token == TERMS.token and v2.chain_id == 5


def test_wallet_refuses_to_pay_beyond_the_reservation() -> None:
    w = wallet(1000)
    assert w.reserve(10)
    with pytest.raises(LocalProtocolError):
        w.pay(JOB, PROV, 11, reserved=10)
    with pytest.raises(LocalProtocolError):
        w.pay(JOB, PROV, 0, reserved=10)
    with pytest.raises(LocalProtocolError):
        w.release(11)


def test_book_accepts_forward_vouchers_and_returns_the_increment() -> None:
    w, b = wallet(), book()
    w.reserve(500)
    v1 = w.pay(JOB, PROV, 40, reserved=500)
    v2 = w.pay(JOB, PROV, 60, reserved=460)
    assert b.accept(v1, buyer_address=BUYER) == 40
    assert b.accept(v2, buyer_address=BUYER) == 60
    assert b.cumulative(BUYER) == 100 and b.latest(BUYER) == v2


def test_book_refuses_backwards_replayed_over_deposit_forged_and_misdirected() -> None:
    w, b = wallet(10_000), book(deposit=500)
    w.reserve(10_000)
    v1 = w.pay(JOB, PROV, 100, reserved=10_000)
    v2 = w.pay(JOB, PROV, 100, reserved=9_900)
    b.accept(v2, buyer_address=BUYER)
    for bad, why in [
        (v1, "backwards"),
        (v2, "backwards"),  # replay = standing still
        (w.pay(JOB, PROV, 400, reserved=9_800), "locked for us"),
        (dataclasses.replace(w.pay(JOB, OTHER, 1, reserved=9_400)), "another provider"),
        (dataclasses.replace(v2, cumulative_amount=300), "signature"),
        (dataclasses.replace(v2, cumulative_amount=300, epoch=1), "epoch"),
    ]:
        with pytest.raises(RemoteProtocolError, match=why):
            b.accept(bad, buyer_address=BUYER)
    with pytest.raises(RemoteProtocolError, match="another buyer"):
        b.accept(v2, buyer_address=OTHER)
    assert b.cumulative(BUYER) == 200


@settings(max_examples=60, deadline=None)
@given(
    deposit=st.integers(0, 10_000),
    payments=st.lists(st.tuples(st.integers(1, 500), st.booleans()), max_size=40),
    replay=st.lists(st.integers(0, 39), max_size=10),
)
def test_property_channel_accounting(
    deposit: int, payments: list[tuple[int, bool]], replay: list[int]
) -> None:
    """Whatever the buyer pays, in order: the book tracks the wallet exactly, never
    goes backwards, never exceeds the deposit; replays of old vouchers are refused."""
    w, b = wallet(deposit), book(deposit)
    issued: list[Voucher] = []
    for amount, to_other in payments:
        if not w.reserve(amount):
            assert w.available < amount
            continue
        v = w.pay(JOB, OTHER if to_other else PROV, amount, reserved=amount)
        issued.append(v)
        if to_other:
            with pytest.raises(RemoteProtocolError):
                b.accept(v, buyer_address=BUYER)
            continue
        before = b.cumulative(BUYER)
        assert b.accept(v, buyer_address=BUYER) == amount
        assert b.cumulative(BUYER) == before + amount
        assert w.spent <= deposit
    assert b.cumulative(BUYER) == w.cumulative(PROV) <= deposit
    assert w.cumulative(PROV) + w.cumulative(OTHER) == w.spent
    assert w.spent + w.available == deposit
    for i in replay:
        if i < len(issued):
            with pytest.raises(RemoteProtocolError):
                b.accept(issued[i], buyer_address=BUYER)
    assert b.cumulative(BUYER) == w.cumulative(PROV)
