"""The wire format: canonical, strict msgpack frames.

A frame is one msgpack array of four items::

    [WIRE_VERSION, tag, version, body]      e.g. [1, "heartbeat", 1, {"job_id": …, "seq": 7}]

``body`` is a map of field name → value in the dataclass's declaration order.
Encoding rules, chosen so that *the same object always gives the same bytes*:

* maps keep declaration order; msgpack's shortest int/str/bin/array/map forms;
* ``str`` is msgpack str (UTF-8), ``bytes`` is msgpack bin;
* ``float`` is always IEEE-754 binary64 (msgpack ``float 64``), never float32;
  NaN and ±inf are refused; on the wire an int is never accepted where a float
  belongs (locally an int is accepted and sent as a float);
* 256-bit amounts are 32-byte big-endian bin (msgpack ints stop at 64 bits);
* enums travel as their string value, tuples as arrays, ``None`` as nil.

Decoding is strict. Anything wrong with a peer's bytes raises
:class:`~market.protocol.errors.RemoteProtocolError` with a reason — undecodable
msgpack, trailing bytes, a frame over :data:`MAX_FRAME`, an unknown wire version,
type tag or message version, unknown or missing fields, wrong types, out-of-range
numbers, and *non-canonical* bytes (the decoder re-encodes what it read and insists
on byte equality, so there is exactly one valid encoding of each message and no
malleability). No other exception escapes :func:`decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import msgpack

from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import MESSAGE_TYPES, Message
from market.protocol.schema import Invalid, WireStruct, struct_from_wire, struct_to_wire

__all__ = [
    "MAX_FRAME",
    "MAX_MESSAGE",
    "WIRE_VERSION",
    "decode",
    "decode_frame",
    "encode",
    "encode_frame",
]

#: Version of the frame layout itself (messages carry their own version too).
WIRE_VERSION = 1
#: Largest frame we send or accept: libp2p silently drops messages over 1 MiB, so
#: keep 64 KiB of headroom for the envelope, pubsub and protobuf framing.
MAX_FRAME = 1024 * 1024 - 64 * 1024
#: Largest encoded message: leaves room for the envelope around it (~300 bytes),
#: so any message that encodes can also be sealed.
MAX_MESSAGE = MAX_FRAME - 1024

T = TypeVar("T", bound=WireStruct)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def encode_frame(obj: WireStruct, tag: str, version: int, *, limit: int = MAX_FRAME) -> bytes:
    """Canonical bytes of ``[WIRE_VERSION, tag, version, body(obj)]`` (at most ``limit``)."""
    data = msgpack.packb(
        [WIRE_VERSION, tag, version, struct_to_wire(obj)],
        use_bin_type=True,
        use_single_float=False,
        datetime=False,
    )
    assert isinstance(data, bytes)
    if len(data) > limit:
        raise LocalProtocolError(
            f"{type(obj).__name__} encodes to {len(data)} bytes, over the limit of {limit} "
            "(MAX_MESSAGE for messages, MAX_FRAME for envelopes)"
        )
    return data


def encode(message: Message) -> bytes:
    """Canonical frame of a registered :class:`Message`.

    ``LocalProtocolError`` if it is not a message or encodes to over :data:`MAX_MESSAGE`.
    """
    if not isinstance(message, Message):
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: not a Message")
    return encode_frame(message, message.TAG, message.VERSION, limit=MAX_MESSAGE)


def decode_frame(
    data: bytes,
    types: Mapping[tuple[str, int], type[T]],
    *,
    max_size: int = MAX_FRAME,
) -> T:
    """Strictly decode ``data`` into one of ``types``; ``RemoteProtocolError`` on any fault."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"decode wants bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise RemoteProtocolError(f"frame of {len(data)} bytes exceeds limit of {max_size}")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
        )
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        # msgpack's own errors (ExtraData, FormatError, StackError, OutOfData,
        # UnicodeDecodeError, limits) all derive from ValueError.
        raise RemoteProtocolError(f"undecodable msgpack ({type(e).__name__})") from None
    if type(raw) is not tuple or len(raw) != 4:
        raise RemoteProtocolError("frame is not a 4-item array")
    wire_version, tag, version, body = raw
    if type(wire_version) is not int or wire_version != WIRE_VERSION:
        raise RemoteProtocolError(f"unsupported wire version {wire_version!r:.20}")
    if type(tag) is not str or type(version) is not int:
        raise RemoteProtocolError("frame type tag must be str and version int")
    cls = types.get((tag, version))
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {tag!r:.40} version {version}")
    try:
        obj = struct_from_wire(cls, body)
    except Invalid as e:
        where = e.where()
        raise RemoteProtocolError(
            f"{cls.__name__}{'.' + where if where else ''}: {e.message}"
        ) from None
    try:
        canonical = encode_frame(obj, tag, version, limit=max_size)
    except LocalProtocolError:
        canonical = b""
    if canonical != data:
        raise RemoteProtocolError(f"non-canonical encoding of {cls.__name__}")
    return obj


def decode(data: bytes, *, max_size: int = MAX_MESSAGE) -> Message:
    """Strictly decode one message frame; ``RemoteProtocolError`` on any fault."""
    return decode_frame(data, MESSAGE_TYPES, max_size=max_size)
