"""The result hash chain: byte-level definition, fp32 rounding, verifier."""

from __future__ import annotations

import hashlib
import struct

import pytest

from market.protocol.commitment import CHAIN_DOMAIN, ChainVerifier, chain_genesis, chain_link
from market.protocol.errors import LocalProtocolError

JOB = bytes(range(16))


def test_genesis_is_domain_job_and_offset() -> None:
    want = hashlib.sha256(CHAIN_DOMAIN + JOB + struct.pack(">I", 7)).digest()
    assert chain_genesis(JOB, 7) == want
    assert chain_genesis(JOB, 0) != chain_genesis(JOB, 7)
    assert chain_genesis(bytes(16)) != chain_genesis(JOB)


def test_link_matches_the_documented_bytes() -> None:
    prev = chain_genesis(JOB)
    ids, lps = (1, 2, 70000), (-0.5, -1.25, -3.0)
    body = prev + struct.pack(">II", 4, 3) + struct.pack(">3I", *ids) + struct.pack(">3f", *lps)
    assert chain_link(prev, 4, ids, lps) == hashlib.sha256(body).digest()


def test_logprobs_are_committed_as_float32() -> None:
    prev = chain_genesis(JOB)
    x = -0.1  # not exact in fp32; the commitment binds its fp32 rounding
    x32 = struct.unpack(">f", struct.pack(">f", x))[0]
    assert x32 != x
    assert chain_link(prev, 0, (5,), (x,)) == chain_link(prev, 0, (5,), (x32,))
    assert chain_link(prev, 0, (5,), (x,)) != chain_link(prev, 0, (5,), (-0.2,))


def test_token_ids_and_order_matter() -> None:
    prev = chain_genesis(JOB)
    assert chain_link(prev, 0, (1, 2), (0.0, 0.0)) != chain_link(prev, 0, (2, 1), (0.0, 0.0))
    assert chain_link(prev, 0, (1,), (0.0,)) != chain_link(prev, 1, (1,), (0.0,))


@pytest.mark.parametrize(
    ("prev", "ids", "lps"),
    [(b"short", (1,), (0.0,)), (bytes(32), (1, 2), (0.0,)), (bytes(32), (-1,), (0.0,))],
)
def test_bad_inputs_are_local_errors(
    prev: bytes, ids: tuple[int, ...], lps: tuple[float, ...]
) -> None:
    with pytest.raises(LocalProtocolError):
        chain_link(prev, 0, ids, lps)


def test_genesis_rejects_bad_job_or_offset() -> None:
    with pytest.raises(LocalProtocolError):
        chain_genesis(b"x")
    with pytest.raises(LocalProtocolError):
        chain_genesis(JOB, -1)


def test_verifier_follows_the_chain_and_refuses_breaks() -> None:
    v = ChainVerifier(JOB, 3)
    h0 = chain_link(chain_genesis(JOB, 3), 0, (9,), (-1.0,))
    assert not v.feed(1, (9,), (-1.0,), h0)  # wrong seq
    assert not v.feed(0, (9,), (-1.0,), bytes(32))  # wrong hash
    assert v.head == chain_genesis(JOB, 3) and v.next_seq == 0  # unchanged
    assert v.feed(0, (9,), (-1.0,), h0)
    h1 = chain_link(h0, 1, (8, 7), (-0.5, -0.25))
    assert not v.feed(1, (8, 7), (-0.5, -0.5), h1)  # a changed logprob breaks it
    assert v.feed(1, (8, 7), (-0.5, -0.25), h1)
    assert v.head == h1
