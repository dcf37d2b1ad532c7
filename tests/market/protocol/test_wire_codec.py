"""Codec: round trips for every message, canonical bytes, strict decoding."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Annotated

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from market.protocol import (
    MAX_FRAME,
    MAX_MESSAGE,
    MESSAGE_TYPES,
    Bid,
    ChatMessage,
    DeclineReason,
    GpuInfo,
    Heartbeat,
    LocalProtocolError,
    Message,
    Offer,
    Prompt,
    RemoteProtocolError,
    TokenChunk,
    Voucher,
    decode,
    encode,
    register,
)
from market.protocol.schema import Range
from tests.market.protocol.wire_strategies import message_strategy

PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
JOB = bytes(range(16))


def _offer(**kw: object) -> Offer:
    base: dict[str, object] = dict(
        provider=PEER,
        provider_address=b"\x11" * 20,
        region="eu-west",
        power_state="normal",
        load=0.25,
        gpus=(GpuInfo(name="RTX 4090", vram_mb=24_564),),
        models=(),
        ttl_s=60,
    )
    base.update(kw)
    return Offer(**base)  # type: ignore[arg-type]


def _raw(data: bytes) -> list[object]:
    raw = msgpack.unpackb(data, raw=False, use_list=True)
    assert isinstance(raw, list)
    return raw


def _pack(raw: object) -> bytes:
    out = msgpack.packb(raw, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _reason(data: bytes) -> str:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    return info.value.reason


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_message(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(message_strategy(cls))
    frame = encode(msg)
    back = decode(frame)
    assert type(back) is cls
    assert back == msg
    assert encode(back) == frame  # canonical: decode∘encode is the identity on bytes
    assert len(frame) <= MAX_FRAME


def test_every_message_type_is_covered() -> None:
    names = {c.__name__ for c in MESSAGE_TYPES.values()}
    assert names >= {
        "Offer", "Rfq", "Bid", "Decline", "Award", "Accept", "Prompt",
        "TokenChunk", "EndOfStream", "Voucher", "Cancel", "Error", "Heartbeat",
    }  # fmt: skip


def test_golden_bytes_pin_the_format() -> None:
    frame = encode(Heartbeat(job_id=JOB, seq=7))
    expected = b"\x94\x01\xa9heartbeat\x01\x82\xa6job_id\xc4\x10" + JOB + b"\xa3seq\x07"
    assert frame == expected


def test_equal_objects_give_equal_bytes() -> None:
    # An int passed for a float field is sent as the same float64.
    assert encode(_offer(load=1)) == encode(_offer(load=1.0))
    assert encode(_offer()) == encode(_offer())
    # Floats are always float64 on the wire.
    assert struct.pack(">d", 0.25) in encode(_offer(load=0.25))


def test_amounts_use_256_bits() -> None:
    big = 2**256 - 1
    v = Voucher(
        job_id=JOB,
        buyer_address=b"\x01" * 20,
        provider_address=b"\x02" * 20,
        token=b"\x03" * 20,
        cumulative_amount=big,
        epoch=0,
        chain_id=31337,
        contract=b"\x04" * 20,
        signature=b"\x05" * 65,
    )
    back = decode(encode(v))
    assert isinstance(back, Voucher) and back.cumulative_amount == big


# ----------------------------------------------------------------- local misuse


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(load=1.5), "Offer.load"),
        (dict(load=float("nan")), "finite"),
        (dict(ttl_s=0), "Offer.ttl_s: 0 out of range"),
        (dict(power_state="asleep"), "not one of"),
        (dict(provider_address=b"\x00" * 19), "exactly 20 bytes"),
        (dict(gpus=[GpuInfo(name="x", vram_mb=1)]), "expected tuple"),
        (dict(region="x" * 33), "Offer.region: length 33"),
        (dict(provider="0OIl"), "does not match"),
        (dict(region="\ud800"), "UTF-8"),
    ],
)
def test_invalid_construction_is_local_error(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(LocalProtocolError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        _offer(**kwargs)


def test_cross_field_invariants() -> None:
    with pytest.raises(LocalProtocolError, match="exactly one"):
        Prompt(job_id=JOB)
    with pytest.raises(LocalProtocolError, match="exactly one"):
        Prompt(job_id=JOB, prompt="a", messages=(ChatMessage(role="user", content="b"),))
    with pytest.raises(LocalProtocolError, match="2 token_ids but 1 logprobs"):
        TokenChunk(
            job_id=JOB, seq=0, token_ids=(1, 2), logprobs=(-0.1,), text="", chain_hash=bytes(32)
        )


def test_oversize_message_refused_on_encode() -> None:
    msg = TokenChunk(
        job_id=JOB, seq=0, token_ids=(), logprobs=(), text="a" * 999_999, chain_hash=bytes(32)
    )
    with pytest.raises(LocalProtocolError, match="over the limit"):
        encode(msg)
    # Anything that encodes can be sealed: the envelope fits in MAX_FRAME.
    import random

    from market.protocol import MAX_MESSAGE, SigningKey, seal

    room = MAX_MESSAGE - len(encode(dataclasses.replace(msg, text="")))
    biggest = dataclasses.replace(msg, text="a" * (room - 5))  # str header grows by 4
    assert len(encode(biggest)) <= MAX_MESSAGE
    key = SigningKey.generate(random.Random(0).randbytes)
    assert len(seal(biggest, key=key, now_ms=0, rng=random.Random(0).randbytes)) <= MAX_FRAME


def test_encode_non_message_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(GpuInfo(name="x", vram_mb=1))  # type: ignore[arg-type]


def test_unbounded_field_is_refused_at_registration() -> None:
    with pytest.raises(TypeError, match="Range"):

        @register("bad_unbounded")
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Bad(Message):
            n: int

    with pytest.raises(TypeError, match="does not fit"):

        @register("bad_wide")
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Bad2(Message):
            n: Annotated[int, Range(0, 2**70)]

    assert ("bad_unbounded", 1) not in MESSAGE_TYPES
    assert ("bad_wide", 1) not in MESSAGE_TYPES


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="registered twice"):

        @register("heartbeat")
        @dataclass(frozen=True, slots=True, kw_only=True)
        class Heartbeat2(Message):
            pass


# -------------------------------------------------------------- strict decoding


def _heartbeat_raw() -> list[object]:
    return _raw(encode(Heartbeat(job_id=JOB, seq=7)))


def test_decode_rejects_unknown_type_and_versions() -> None:
    raw = _heartbeat_raw()
    raw[1] = "teleport"
    assert "unknown message type" in _reason(_pack(raw))
    raw = _heartbeat_raw()
    raw[2] = 9
    assert "unknown message type" in _reason(_pack(raw))
    raw = _heartbeat_raw()
    raw[0] = 2
    assert "wire version" in _reason(_pack(raw))


def test_decode_rejects_unknown_and_missing_fields() -> None:
    raw = _heartbeat_raw()
    body = raw[3]
    assert isinstance(body, dict)
    body["extra"] = 1
    assert "unknown field(s) 'extra'" in _reason(_pack(raw))
    del body["extra"]
    del body["seq"]
    assert "missing field(s) seq" in _reason(_pack(raw))


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("7", "Heartbeat.seq: expected int, got str"),
        (True, "expected int, got bool"),
        (7.0, "expected int, got float"),
        (-1, "out of range"),
        (2**32, "out of range"),
        (None, "expected int, got NoneType"),
    ],
)
def test_decode_rejects_wrong_types_and_ranges(value: object, needle: str) -> None:
    raw = _heartbeat_raw()
    body = raw[3]
    assert isinstance(body, dict)
    body["seq"] = value
    assert needle in _reason(_pack(raw))


def test_decode_rejects_nested_errors_with_path() -> None:
    raw = _raw(encode(_offer()))
    body = raw[3]
    assert isinstance(body, dict)
    body["gpus"][0]["vram_mb"] = -5
    assert "Offer.gpus[0].vram_mb" in _reason(_pack(raw))


def test_decode_rejects_non_canonical_forms() -> None:
    frame = encode(_offer())
    raw = _raw(frame)
    # Reordered map keys.
    body = raw[3]
    assert isinstance(body, dict)
    raw[3] = dict(reversed(list(body.items())))
    assert "non-canonical" in _reason(_pack(raw))
    # float32 instead of float64.
    f32 = msgpack.packb(_raw(frame), use_bin_type=True, use_single_float=True)
    assert "non-canonical" in _reason(f32)
    # Non-minimal integer encoding (uint16 for 7).
    hb = encode(Heartbeat(job_id=JOB, seq=7))
    assert "non-canonical" in _reason(hb[:-1] + b"\xcd\x00\x07")


def test_decode_rejects_float_as_int_for_float_field() -> None:
    raw = _raw(encode(_offer()))
    body = raw[3]
    assert isinstance(body, dict)
    body["load"] = 0
    assert "expected float64" in _reason(_pack(raw))


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "undecodable"),
        (b"\xc1", "undecodable"),
        (b"\x91" * 5000 + b"\xc0", "undecodable"),
        (b"\xa1\xff", "undecodable"),
        (b"\xd6\xff\x00\x00\x00\x01", "not a 4-item array"),
        (b"\xc7\x01\x05\x00", "undecodable"),
        (b"\x81\xc0\x01", "undecodable"),
        (b"\x90", "not a 4-item array"),
        (b"\xdd\xff\xff\xff\xff", "undecodable"),
    ],
)
def test_decode_rejects_garbage(data: bytes, needle: str) -> None:
    assert needle in _reason(data)


def test_decode_rejects_trailing_bytes_and_oversize() -> None:
    frame = encode(Heartbeat(job_id=JOB, seq=7))
    assert "undecodable" in _reason(frame + b"\x00")
    assert "exceeds limit" in _reason(b"\x00" * (MAX_FRAME + 1))
    assert "exceeds limit" in _reason(b"\x00" * (MAX_MESSAGE + 1))


def test_decode_enum_and_literal_values() -> None:
    raw = _raw(encode(_offer()))
    body = raw[3]
    assert isinstance(body, dict)
    body["power_state"] = "exploding"
    assert "not one of" in _reason(_pack(raw))
    from market.protocol import Decline

    raw = _raw(encode(Decline(job_id=JOB, provider=PEER, reason=DeclineReason.BUSY)))
    body = raw[3]
    assert isinstance(body, dict)
    body["reason"] = "bored"
    assert "is not a DeclineReason" in _reason(_pack(raw))


def test_decode_accepts_bytearray_and_memoryview() -> None:
    msg = Bid(
        job_id=JOB,
        provider=PEER,
        provider_address=b"\x01" * 20,
        price_per_1k=5,
        est_ttft_ms=100,
        est_tokens_per_s=30.0,
        chunk_tokens=16,
        credit_chunks=1,
    )
    frame = encode(msg)
    assert decode(bytearray(frame)) == msg
    assert decode(memoryview(frame)) == msg
    with pytest.raises(LocalProtocolError):
        decode("not bytes")  # type: ignore[arg-type]
