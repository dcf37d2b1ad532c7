"""Envelope: signatures, sender binding, expiry, replay protection."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from market.protocol import (
    DEFAULT_TTL_MS,
    ENVELOPE_DOMAIN,
    MAX_CLOCK_SKEW_MS,
    MAX_TTL_MS,
    Envelope,
    Heartbeat,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    ReplayGuard,
    SigningKey,
    encode,
    encode_frame,
    seal,
    unseal,
)
from tests.market.protocol.wire_strategies import any_message

NOW = 1_700_000_000_000
JOB = bytes(range(16))


def _rng(seed: int = 7) -> random.Random:
    return random.Random(seed)


def _key(seed: int) -> SigningKey:
    return SigningKey.generate(_rng(seed).randbytes)


ALICE = _key(1)
MALLORY = _key(2)


def _sealed(msg: Message | None = None, *, key: SigningKey = ALICE, now: int = NOW) -> bytes:
    return seal(msg or Heartbeat(job_id=JOB, seq=1), key=key, now_ms=now, rng=_rng(now).randbytes)


def _env(frame: bytes) -> dict[str, object]:
    raw = msgpack.unpackb(frame, raw=False)
    assert raw[1] == "env"
    body = raw[3]
    assert isinstance(body, dict)
    return body


def _reframe(body: dict[str, object]) -> bytes:
    out = msgpack.packb([1, "env", 1, body], use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _reason(frame: bytes, now: int = NOW + 1, guard: ReplayGuard | None = None) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        unseal(frame, now_ms=now, replay_guard=guard)
    return info.value.reason


@settings(max_examples=150, deadline=None)
@given(msg=any_message(), now=st.integers(0, 2**62), ttl=st.integers(1, MAX_TTL_MS))
def test_seal_unseal_round_trip(msg: Message, now: int, ttl: int) -> None:
    frame = seal(msg, key=ALICE, now_ms=now, rng=_rng(3).randbytes, ttl_ms=ttl)
    opened = unseal(frame, now_ms=now + ttl - 1)
    assert opened.message == msg
    assert opened.sender == ALICE.peer_id
    assert opened.sender_key == ALICE.public_bytes
    assert (opened.created_at_ms, opened.expires_at_ms) == (now, now + ttl)
    assert len(opened.msg_id) == 16


def test_seal_is_deterministic_given_rng_and_clock() -> None:
    assert _sealed() == _sealed()
    a = seal(Heartbeat(job_id=JOB, seq=1), key=ALICE, now_ms=NOW, rng=_rng(1).randbytes)
    b = seal(Heartbeat(job_id=JOB, seq=1), key=ALICE, now_ms=NOW, rng=_rng(2).randbytes)
    assert a != b  # different message ids


def test_every_byte_of_the_signature_and_payload_matters() -> None:
    frame = _sealed()
    body = _env(frame)
    for field in ("signature", "payload", "msg_id"):
        value = body[field]
        assert isinstance(value, bytes)
        for i in (0, len(value) // 2, len(value) - 1):
            tampered = dict(body)
            tampered[field] = value[:i] + bytes([value[i] ^ 0x01]) + value[i + 1 :]
            reason = _reason(_reframe(tampered))
            assert "signature" in reason or "undecodable" in reason or "Heartbeat" in reason


def test_times_are_signed() -> None:
    body = _env(_sealed())
    body["expires_at_ms"] = NOW + 2 * DEFAULT_TTL_MS
    assert _reason(_reframe(body)) == "bad envelope signature"


def test_forged_sender_is_refused() -> None:
    # Mallory claims Alice's peer id but signs with her own key.
    env = Envelope(
        msg_id=bytes(16),
        sender=MALLORY.peer_id,
        sender_key=MALLORY.public_bytes,
        created_at_ms=NOW,
        expires_at_ms=NOW + 1000,
        payload=encode(Heartbeat(job_id=JOB, seq=1)),
        signature=bytes(64),
    )
    body = msgpack.unpackb(encode_frame(env, "env", 1), raw=False)[3]
    body["sender"] = ALICE.peer_id
    assert "does not match sender_key" in _reason(_reframe(body))
    # Alice's key and id, Mallory's signature.
    body["sender_key"] = ALICE.public_bytes
    body["signature"] = MALLORY.sign(
        Envelope(
            msg_id=bytes(16),
            sender=ALICE.peer_id,
            sender_key=ALICE.public_bytes,
            created_at_ms=NOW,
            expires_at_ms=NOW + 1000,
            payload=body["payload"],
            signature=bytes(64),
        ).signed_bytes()
    )
    assert _reason(_reframe(body)) == "bad envelope signature"


def test_signature_is_domain_separated() -> None:
    env = Envelope(
        msg_id=bytes(16),
        sender=ALICE.peer_id,
        sender_key=ALICE.public_bytes,
        created_at_ms=NOW,
        expires_at_ms=NOW + 1000,
        payload=encode(Heartbeat(job_id=JOB, seq=1)),
        signature=bytes(64),
    )
    signed = env.signed_bytes()
    assert signed.startswith(ENVELOPE_DOMAIN)
    body = msgpack.unpackb(encode_frame(env, "env", 1), raw=False)[3]
    body["signature"] = ALICE.sign(signed[len(ENVELOPE_DOMAIN) :])  # no domain prefix
    assert _reason(_reframe(body)) == "bad envelope signature"
    body["signature"] = ALICE.sign(signed)
    assert unseal(_reframe(body), now_ms=NOW).message == Heartbeat(job_id=JOB, seq=1)


def test_expiry_and_future_dates() -> None:
    frame = _sealed(now=NOW)
    assert unseal(frame, now_ms=NOW + DEFAULT_TTL_MS - 1).message.TAG == "heartbeat"
    assert _reason(frame, now=NOW + DEFAULT_TTL_MS).startswith("expired")
    assert _reason(frame, now=NOW + 10**9).startswith("expired")
    # A sender clock slightly ahead is tolerated; far ahead is refused.
    assert unseal(frame, now_ms=NOW - MAX_CLOCK_SKEW_MS).sender == ALICE.peer_id
    assert "in the future" in _reason(frame, now=NOW - MAX_CLOCK_SKEW_MS - 1)


def test_lifetime_is_bounded() -> None:
    with pytest.raises(LocalProtocolError):
        seal(Heartbeat(job_id=JOB, seq=1), key=ALICE, now_ms=NOW, rng=_rng().randbytes, ttl_ms=0)
    with pytest.raises(LocalProtocolError):
        seal(
            Heartbeat(job_id=JOB, seq=1),
            key=ALICE,
            now_ms=NOW,
            rng=_rng().randbytes,
            ttl_ms=MAX_TTL_MS + 1,
        )
    body = _env(_sealed())
    body["expires_at_ms"] = NOW + MAX_TTL_MS + 1
    assert "MAX_TTL_MS" in _reason(_reframe(body))


def test_replay_is_refused_until_expiry() -> None:
    guard = ReplayGuard()
    frame = _sealed()
    unseal(frame, now_ms=NOW + 1, replay_guard=guard)
    assert _reason(frame, now=NOW + 2, guard=guard) == "replayed message id"
    # After expiry the frame is refused as expired, and the guard forgot the id.
    assert _reason(frame, now=NOW + DEFAULT_TTL_MS, guard=guard).startswith("expired")
    unseal(_sealed(now=NOW + DEFAULT_TTL_MS), now_ms=NOW + DEFAULT_TTL_MS, replay_guard=guard)
    assert len(guard) == 1


def test_replay_guard_keys_by_sender() -> None:
    # Same message id from two senders: both accepted (nobody can block another's id).
    guard = ReplayGuard()
    a = seal(Heartbeat(job_id=JOB, seq=1), key=ALICE, now_ms=NOW, rng=_rng(9).randbytes)
    m = seal(Heartbeat(job_id=JOB, seq=1), key=MALLORY, now_ms=NOW, rng=_rng(9).randbytes)
    assert (
        unseal(m, now_ms=NOW, replay_guard=guard).msg_id
        == unseal(a, now_ms=NOW, replay_guard=guard).msg_id
    )


def test_rejected_frames_do_not_poison_the_guard() -> None:
    guard = ReplayGuard()
    frame = _sealed()
    body = _env(frame)
    sig = body["signature"]
    assert isinstance(sig, bytes)
    body["signature"] = bytes([sig[0] ^ 1]) + sig[1:]
    _reason(_reframe(body), guard=guard)
    assert len(guard) == 0
    unseal(frame, now_ms=NOW + 1, replay_guard=guard)


def test_replay_guard_memory_is_bounded() -> None:
    guard = ReplayGuard(max_entries=50)
    rng = _rng(5)
    for i in range(2000):
        assert guard.remember(rng.randbytes(48), NOW + 10_000 + i, NOW)
    assert len(guard) == 50
    assert guard.evictions == 1950
    # Everything expires: the guard empties itself on the next call.
    assert guard.remember(b"x" * 48, NOW + 10**6, NOW + 10**5)
    assert len(guard) == 1
    with pytest.raises(LocalProtocolError):
        ReplayGuard(max_entries=0)


def test_nested_envelope_payload_is_refused() -> None:
    inner = _sealed()
    env = Envelope(
        msg_id=bytes(16),
        sender=ALICE.peer_id,
        sender_key=ALICE.public_bytes,
        created_at_ms=NOW,
        expires_at_ms=NOW + 1000,
        payload=inner,
        signature=bytes(64),
    )
    body = msgpack.unpackb(encode_frame(env, "env", 1), raw=False)[3]
    body["signature"] = ALICE.sign(env.signed_bytes())
    assert "unknown message type 'env'" in _reason(_reframe(body), now=NOW)


def test_a_plain_message_frame_is_not_an_envelope() -> None:
    assert "unknown message type 'heartbeat'" in _reason(encode(Heartbeat(job_id=JOB, seq=1)))
