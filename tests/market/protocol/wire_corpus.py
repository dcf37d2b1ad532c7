"""Seeded generators of valid frames and of their mutations, for fuzzing the decoder.

Plain ``random.Random`` (no hypothesis) so the bulk fuzz loop runs hundreds of
thousands of cases quickly and reproducibly: one seed fixes every case.

* :func:`random_message` — a valid message of any registered type, its values drawn
  from the schema (bounds, patterns, enums, nested structs);
* :func:`mutate` — one random mutation of a frame: byte-level (bit flips, overwrites
  with msgpack-significant bytes, truncation, insertion, deletion, splicing) or
  structural (field swaps, type changes, dropped/added/renamed keys, bad tags and
  versions, deep nesting), the latter re-packed with plain msgpack;
* :func:`resealed_mutation` — a structurally mutated *payload* inside an envelope
  re-signed with the right key, so the signature passes and the payload decoder is
  exercised through :func:`~market.protocol.unseal`.
"""

from __future__ import annotations

import math
import random
import string
from typing import Any

import msgpack

from market.protocol import (
    MESSAGE_TYPES,
    Envelope,
    LocalProtocolError,
    Message,
    SigningKey,
    TokenChunk,
    encode,
    encode_frame,
)
from market.protocol.schema import (
    BoolNode,
    BytesNode,
    EnumNode,
    FloatNode,
    IntNode,
    Node,
    OptionalNode,
    StrNode,
    StructNode,
    TupleNode,
    WireStruct,
    schema_of,
)

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_INTERESTING_BYTES = bytes.fromhex(
    "007f808f909fa0bfc0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d3d4d8d9dadbdcdddedfe0ff"
)
_ODD_VALUES: list[Any] = [
    0, 1, -1, 2**64 - 1, -(2**63), 2**63, 1.5, -0.0, math.nan, math.inf, -math.inf,
    "", "x" * 300, "\u00e9", b"", b"\x00" * 33, b"\xff" * 16, None, True, False,
    [], {}, [1, 2, 3], {"a": 1}, {b"k": 1}, msgpack.ExtType(5, b"xy"),
]  # fmt: skip


def _value(node: Node, rng: random.Random) -> Any:
    if isinstance(node, IntNode):
        pick = rng.random()
        if pick < 0.2:
            return node.lo
        if pick < 0.4:
            return node.hi
        return (
            rng.randint(node.lo, node.hi)
            if pick < 0.7
            else rng.randint(node.lo, min(node.hi, node.lo + 300))
        )
    if isinstance(node, FloatNode):
        return rng.choice([node.lo, node.hi, rng.uniform(node.lo, node.hi)])
    if isinstance(node, BoolNode):
        return rng.random() < 0.5
    if isinstance(node, StrNode):
        if node.choices is not None:
            return rng.choice(sorted(node.choices))
        n = rng.randint(node.lo, min(node.hi, node.lo + 24))
        if node.pattern is not None:
            if "0-9a-f" in node.pattern.pattern:
                return "".join(rng.choice("0123456789abcdef") for _ in range(n))
            if "a-z_" in node.pattern.pattern:
                return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(max(n, 1)))
            return "".join(rng.choice(_B58) for _ in range(max(n, 1)))
        alphabet = string.printable + "éß漢字🙂"
        return "".join(rng.choice(alphabet) for _ in range(n))
    if isinstance(node, BytesNode):
        return rng.randbytes(rng.randint(node.lo, min(node.hi, node.lo + 40)))
    if isinstance(node, EnumNode):
        return rng.choice(list(node.cls))
    if isinstance(node, TupleNode):
        n = rng.randint(node.lo, min(node.hi, node.lo + 4))
        return tuple(_value(node.item, rng) for _ in range(n))
    if isinstance(node, OptionalNode):
        return None if rng.random() < 0.3 else _value(node.inner, rng)
    if isinstance(node, StructNode):
        return random_struct(node.cls, rng)
    raise TypeError(node)


def random_struct(cls: type[WireStruct], rng: random.Random) -> Any:
    """A valid instance of ``cls`` (retries draws that break an invariant)."""
    for _ in range(100):
        kwargs = {s.name: _value(s.node, rng) for s in schema_of(cls)}
        if cls is TokenChunk:
            kwargs["logprobs"] = tuple(-rng.random() * 20 for _ in kwargs["token_ids"])
        try:
            return cls(**kwargs)
        except LocalProtocolError:
            continue
    raise RuntimeError(f"could not draw a valid {cls.__name__}")


def random_message(rng: random.Random) -> Message:
    """A valid message of a random registered type."""
    cls = rng.choice(list(MESSAGE_TYPES.values()))
    msg = random_struct(cls, rng)
    assert isinstance(msg, Message)
    return msg


# ------------------------------------------------------------------- mutations


def _pack(obj: Any) -> bytes:
    out = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def _containers(obj: Any, out: list[Any]) -> None:
    if isinstance(obj, dict | list):
        out.append(obj)
        for v in obj.values() if isinstance(obj, dict) else obj:
            _containers(v, out)


def mutate_structure(frame: bytes, rng: random.Random) -> bytes:
    """Decode ``frame`` with plain msgpack, change it structurally, re-pack."""
    obj = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False)
    spots: list[Any] = []
    _containers(obj, spots)
    target = rng.choice(spots) if spots else obj
    op = rng.randrange(8)
    if isinstance(target, dict) and target:
        keys = list(target)
        k = rng.choice(keys)
        if op == 0 and len(keys) > 1:  # swap two fields' values
            k2 = rng.choice(keys)
            target[k], target[k2] = target[k2], target[k]
        elif op == 1:  # drop a key
            del target[k]
        elif op == 2:  # add an unknown key
            target[rng.choice(["x", "extra", k + "_", ""])] = rng.choice(_ODD_VALUES)
        elif op == 3:  # rename a key
            target[k.upper() if isinstance(k, str) else "k"] = target.pop(k)
        elif op == 4:  # reorder
            items = list(target.items())
            rng.shuffle(items)
            target.clear()
            target.update(items)
        else:  # change a value's type
            target[k] = rng.choice(_ODD_VALUES)
    elif isinstance(target, list) and target:
        i = rng.randrange(len(target))
        if op < 3:
            target[i] = rng.choice(_ODD_VALUES)
        elif op == 3:
            target.append(rng.choice(_ODD_VALUES))
        elif op == 4:
            del target[i]
        elif op == 5:
            target[i] = [target[i]]
        elif op == 6 and len(target) == 4:  # header: tag / version / wire version
            target[rng.randrange(3)] = rng.choice(["offer", "env", 2, 0, 255, "", None])
        else:
            nested: Any = target[i]
            for _ in range(rng.choice([10, 100, 2000])):
                nested = [nested]
            target[i] = nested
    try:
        return _pack(obj)
    except (ValueError, TypeError, OverflowError):
        return frame


def mutate_bytes(frame: bytes, rng: random.Random, donor: bytes) -> bytes:
    """One byte-level mutation of ``frame`` (``donor`` is another frame for splicing)."""
    data = bytearray(frame)
    n = len(data)
    op = rng.randrange(9)
    if op == 0 or n == 0:
        for _ in range(rng.randint(1, 4)):
            if data:
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        data[rng.randrange(n)] = rng.choice(_INTERESTING_BYTES)
    elif op == 2:
        del data[rng.randrange(n) :]
    elif op == 3:
        data += rng.randbytes(rng.randint(1, 16))
    elif op == 4:
        i = rng.randrange(n + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 8))
    elif op == 5:
        i = rng.randrange(n)
        del data[i : i + rng.randint(1, 16)]
    elif op == 6:
        cut = rng.randrange(n + 1)
        data = data[:cut] + donor[rng.randrange(len(donor) + 1) :]
    elif op == 7:
        i = rng.randrange(n)
        j = min(n, i + rng.randint(1, 32))
        data[j:j] = data[i:j]
    else:
        data[rng.randrange(n)] = rng.randrange(256)
    return bytes(data)


def mutate(frame: bytes, rng: random.Random, donor: bytes) -> bytes:
    """One random mutation, byte-level or structural."""
    if rng.random() < 0.45:
        return mutate_structure(frame, rng)
    return mutate_bytes(frame, rng, donor)


def resealed_mutation(
    msg: Message, key: SigningKey, now_ms: int, rng: random.Random, donor: bytes
) -> bytes:
    """An envelope with a valid signature around a mutated payload."""
    payload = mutate(encode(msg), rng, donor)
    if not payload:
        payload = b"\xc0"
    env = Envelope(
        msg_id=rng.randbytes(16),
        sender=key.peer_id,
        sender_key=key.public_bytes,
        created_at_ms=now_ms,
        expires_at_ms=now_ms + 60_000,
        payload=payload,
        signature=bytes(64),
    )
    signed = Envelope(
        msg_id=env.msg_id,
        sender=env.sender,
        sender_key=env.sender_key,
        created_at_ms=env.created_at_ms,
        expires_at_ms=env.expires_at_ms,
        payload=payload,
        signature=key.sign(env.signed_bytes()),
    )
    return encode_frame(signed, "env", 1)
