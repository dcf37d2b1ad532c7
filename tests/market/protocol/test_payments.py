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
    v1 = w.pay(JOB, PROV, 100, reserved=700, job_paid=100)
    v2 = w.pay(JOB, PROV, 50, reserved=600, job_paid=150)
    assert (v1.cumulative_amount, v2.cumulative_amount) == (100, 150)
    assert (v1.job_paid, v2.job_paid) == (100, 150)
    assert w.spent == 150 and w.available == 300
    w.release(550)
    assert w.available == 850
    assert verify(v2) and v2.token == TERMS.token and v2.chain_id == 5


def test_wallet_refuses_to_pay_beyond_the_reservation() -> None:
    w = wallet(1000)
    assert w.reserve(10)
    with pytest.raises(LocalProtocolError):
        w.pay(JOB, PROV, 11, reserved=10, job_paid=11)
    with pytest.raises(LocalProtocolError):
        w.pay(JOB, PROV, 0, reserved=10, job_paid=0)
    with pytest.raises(LocalProtocolError, match="job_paid"):
        w.pay(JOB, PROV, 5, reserved=10, job_paid=4)
    with pytest.raises(LocalProtocolError):
        w.release(11)


def test_wallet_cover_counts_every_open_job_with_the_provider() -> None:
    w = wallet(1000)
    assert w.reserve(300) and w.reserve(200)
    w.assign(PROV, 300)
    w.assign(PROV, 200)
    assert w.cover_needed(PROV) == 500
    w.pay(JOB, PROV, 120, reserved=300, job_paid=120)  # signed moves from open to cumulative
    assert w.cover_needed(PROV) == 500 and w.cumulative(PROV) == 120
    w.unassign(PROV, 180)  # that job left the provider with 180 unpaid
    assert w.cover_needed(PROV) == 320
    with pytest.raises(LocalProtocolError):
        w.unassign(PROV, 201)


def test_book_accepts_forward_vouchers_and_returns_the_increment() -> None:
    w, b = wallet(), book()
    w.reserve(500)
    v1 = w.pay(JOB, PROV, 40, reserved=500, job_paid=40)
    v2 = w.pay(JOB, PROV, 60, reserved=460, job_paid=100)
    assert b.accept(v1, buyer_address=BUYER, job_paid=0) == 40
    assert b.accept(v2, buyer_address=BUYER, job_paid=40) == 60
    assert b.cumulative(BUYER) == 100 and b.latest(BUYER) == v2


def test_concurrent_jobs_vouchers_arriving_out_of_order_credit_each_job_exactly() -> None:
    """Three jobs on one channel: the buyer signs in one order, the provider receives
    in another. No voucher looks like going back; each job is credited its own total."""
    w, b = wallet(10_000), book(10_000)
    jobs = [bytes([i]) * 16 for i in range(3)]
    signed: list[Voucher] = []
    paid = dict.fromkeys(jobs, 0)
    for rnd in range(4):
        for j in jobs:
            amount = 10 + rnd + j[0]
            assert w.reserve(amount)
            paid[j] += amount
            signed.append(w.pay(j, PROV, amount, reserved=amount, job_paid=paid[j]))
    credited = dict.fromkeys(jobs, 0)
    # per job in order (one stream each), jobs interleaved newest-first
    order = sorted(range(len(signed)), key=lambda k: (k % 3 != 2, k % 3 != 1, k))
    for k in order:
        v = signed[k]
        credited[v.job_id] += b.accept(v, buyer_address=BUYER, job_paid=credited[v.job_id])
    assert credited == paid
    assert b.cumulative(BUYER) == w.cumulative(PROV) == sum(paid.values())
    assert b.latest(BUYER) == signed[-1]


def test_a_buyer_cannot_claim_more_for_its_jobs_than_it_signed() -> None:
    """The attack on ``job_paid``: it is not signed, so a buyer could say each job paid
    the whole cumulative. The jobs' credits together are held to the signed total."""
    w, b = wallet(10_000), book(10_000)
    a, c = b"\x01" * 16, b"\x02" * 16
    w.reserve(200)
    va = w.pay(a, PROV, 100, reserved=200, job_paid=100)
    assert b.accept(va, buyer_address=BUYER, job_paid=0) == 100
    lie = dataclasses.replace(va, job_id=c)  # "job c paid 100 too", same cumulative
    with pytest.raises(RemoteProtocolError, match="claim 200 paid"):
        b.accept(lie, buyer_address=BUYER, job_paid=0)
    inflated = w.pay(c, PROV, 10, reserved=100, job_paid=10)
    with pytest.raises(RemoteProtocolError, match="claim 150 paid"):
        b.accept(dataclasses.replace(inflated, job_paid=50), buyer_address=BUYER, job_paid=0)
    assert b.credited(BUYER) == 100 and b.cumulative(BUYER) == 100  # nothing recorded
    assert b.accept(inflated, buyer_address=BUYER, job_paid=0) == 10


def test_restored_book_credits_only_what_was_signed_after_the_restart() -> None:
    w, b = wallet(10_000), book(10_000)
    w.reserve(10_000)
    old = w.pay(JOB, PROV, 500, reserved=10_000, job_paid=500)
    b.restore(old)  # accepted in an earlier run
    new_job = b"\x05" * 16
    v = w.pay(new_job, PROV, 30, reserved=9_500, job_paid=30)
    with pytest.raises(RemoteProtocolError, match="claim 31"):
        b.accept(dataclasses.replace(v, job_paid=31), buyer_address=BUYER, job_paid=0)
    assert b.accept(v, buyer_address=BUYER, job_paid=0) == 30


def test_book_refuses_backwards_replayed_over_deposit_forged_and_misdirected() -> None:
    w, b = wallet(10_000), book(deposit=500)
    w.reserve(10_000)
    v1 = w.pay(JOB, PROV, 100, reserved=10_000, job_paid=100)
    v2 = w.pay(JOB, PROV, 100, reserved=9_900, job_paid=200)
    b.accept(v2, buyer_address=BUYER, job_paid=0)
    for bad, why in [
        (v1, "does not move its job forward"),
        (v2, "does not move its job forward"),  # replay = standing still
        (w.pay(JOB, PROV, 400, reserved=9_800, job_paid=600), "locked for us"),
        (w.pay(JOB, OTHER, 1, reserved=9_400, job_paid=601), "another provider"),
        (dataclasses.replace(v2, cumulative_amount=300, job_paid=300), "signature"),
        (dataclasses.replace(v2, cumulative_amount=300, epoch=1), "epoch"),
    ]:
        with pytest.raises(RemoteProtocolError, match=why):
            b.accept(bad, buyer_address=BUYER, job_paid=200)
    with pytest.raises(RemoteProtocolError, match="another buyer"):
        b.accept(v2, buyer_address=OTHER, job_paid=0)
    assert b.cumulative(BUYER) == 200 and b.credited(BUYER) == 200


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
    job_paid = 0
    for amount, to_other in payments:
        if not w.reserve(amount):
            assert w.available < amount
            continue
        v = w.pay(JOB, OTHER if to_other else PROV, amount, reserved=amount, job_paid=amount)
        if to_other:
            with pytest.raises(RemoteProtocolError):
                b.accept(v, buyer_address=BUYER, job_paid=0)
            continue
        v = dataclasses.replace(v, job_paid=job_paid + amount)  # one job, paid as it goes
        issued.append(v)
        before = b.cumulative(BUYER)
        assert b.accept(v, buyer_address=BUYER, job_paid=job_paid) == amount
        job_paid += amount
        assert b.cumulative(BUYER) == before + amount
        assert w.spent <= deposit
    assert b.cumulative(BUYER) == w.cumulative(PROV) == b.credited(BUYER) <= deposit
    assert w.cumulative(PROV) + w.cumulative(OTHER) == w.spent
    assert w.spent + w.available == deposit
    for i in replay:
        if i < len(issued):
            with pytest.raises(RemoteProtocolError):
                b.accept(issued[i], buyer_address=BUYER, job_paid=job_paid)
    assert b.cumulative(BUYER) == w.cumulative(PROV)
