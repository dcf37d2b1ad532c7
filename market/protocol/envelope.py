"""Signed envelopes: who sent a message, when, until when, and proof of it.

Every message that crosses the network travels sealed::

    frame = seal(bid, key=signing_key, now_ms=now, rng=os.urandom)
    opened = unseal(frame, now_ms=now, replay_guard=guard)   # -> Sealed
    opened.message, opened.sender                            # Bid, "12D3KooW…"

The envelope is itself a canonical frame (tag ``"env"``, version 1) holding a
random 16-byte ``msg_id``, the sender's peer id *and* ed25519 public key (which
must agree), ``created_at_ms``/``expires_at_ms``, the encoded message as
``payload``, and an ed25519 signature over::

    ENVELOPE_DOMAIN || msgpack([msg_id, sender, sender_key, created_at_ms,
                                expires_at_ms, payload])

The domain prefix keeps these signatures from ever being valid for anything else
signed with the same libp2p key. Sans-IO: the caller passes the clock (``now_ms``)
and the randomness (``rng``); nothing here reads either.

:func:`unseal` checks, cheapest first: frame shape and limits, peer id ↔ key,
lifetime (not expired, not from the future beyond :data:`MAX_CLOCK_SKEW_MS`, not
longer than :data:`MAX_TTL_MS`), signature, the payload message, and finally the
:class:`ReplayGuard`. Any failure is a :class:`RemoteProtocolError`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import msgpack

from market.protocol.codec import MAX_MESSAGE, decode, decode_frame, encode, encode_frame
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import Message, PeerIdStr
from market.protocol.peerid import peer_id_from_ed25519
from market.protocol.schema import Range, Size, WireStruct
from market.protocol.signing import SigningKey, verify_ed25519

__all__ = [
    "DEFAULT_TTL_MS",
    "ENVELOPE_DOMAIN",
    "MAX_CLOCK_SKEW_MS",
    "MAX_TTL_MS",
    "Envelope",
    "ReplayGuard",
    "Sealed",
    "seal",
    "unseal",
    "unseal_record",
]

#: Signature domain separator (versioned, NUL-terminated).
ENVELOPE_DOMAIN = b"hearth/envelope/v1\x00"
#: Default lifetime of a sealed message.
DEFAULT_TTL_MS = 60_000
#: Longest lifetime accepted (bounds how long a ReplayGuard must remember an id).
MAX_TTL_MS = 3_600_000
#: How far in the future a sender's clock may be before we refuse its envelopes.
MAX_CLOCK_SKEW_MS = 30_000

_ENV_TAG = ("env", 1)
Millis = Annotated[int, Range(0, 2**63 - 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope(WireStruct):
    """The signed outer frame. Build it with :func:`seal`, read it with :func:`unseal`."""

    msg_id: Annotated[bytes, Size(16, 16)]
    sender: PeerIdStr
    sender_key: Annotated[bytes, Size(32, 32)]
    created_at_ms: Millis
    expires_at_ms: Millis
    payload: Annotated[bytes, Size(1, MAX_MESSAGE)]
    signature: Annotated[bytes, Size(64, 64)]

    def _invariant(self) -> str | None:
        if self.expires_at_ms <= self.created_at_ms:
            return "expires_at_ms must be after created_at_ms"
        if self.expires_at_ms - self.created_at_ms > MAX_TTL_MS:
            return f"lifetime over MAX_TTL_MS ({MAX_TTL_MS} ms)"
        if peer_id_from_ed25519(self.sender_key) != self.sender:
            return "sender peer id does not match sender_key"
        return None

    def signed_bytes(self) -> bytes:
        """The exact bytes the signature covers (domain-separated)."""
        return signing_input(
            self.msg_id,
            self.sender,
            self.sender_key,
            self.created_at_ms,
            self.expires_at_ms,
            self.payload,
        )


def signing_input(
    msg_id: bytes,
    sender: str,
    sender_key: bytes,
    created_at_ms: int,
    expires_at_ms: int,
    payload: bytes,
) -> bytes:
    """``ENVELOPE_DOMAIN`` + canonical msgpack of the signed fields."""
    body = msgpack.packb(
        [msg_id, sender, sender_key, created_at_ms, expires_at_ms, payload],
        use_bin_type=True,
    )
    assert isinstance(body, bytes)
    return ENVELOPE_DOMAIN + body


@dataclass(frozen=True, slots=True, kw_only=True)
class Sealed:
    """A verified message and what the envelope said about it."""

    message: Message
    msg_id: bytes
    sender: str
    sender_key: bytes
    created_at_ms: int
    expires_at_ms: int


def seal(
    message: Message,
    *,
    key: SigningKey,
    now_ms: int,
    rng: Callable[[int], bytes],
    ttl_ms: int = DEFAULT_TTL_MS,
) -> bytes:
    """Sign ``message`` as ``key``'s peer; returns the envelope frame.

    ``rng(16)`` supplies the message id (pass ``os.urandom``, or a seeded
    ``random.Random(...).randbytes`` in simulations). Raises
    :class:`LocalProtocolError` on bad arguments or a frame over ``MAX_FRAME``.
    """
    if not 1 <= ttl_ms <= MAX_TTL_MS:
        raise LocalProtocolError(f"ttl_ms must be in [1, {MAX_TTL_MS}], got {ttl_ms}")
    payload = encode(message)
    msg_id = rng(16)
    expires = now_ms + ttl_ms
    sig = key.sign(signing_input(msg_id, key.peer_id, key.public_bytes, now_ms, expires, payload))
    env = Envelope(
        msg_id=msg_id,
        sender=key.peer_id,
        sender_key=key.public_bytes,
        created_at_ms=now_ms,
        expires_at_ms=expires,
        payload=payload,
        signature=sig,
    )
    return encode_frame(env, *_ENV_TAG)


def unseal(
    data: bytes,
    *,
    now_ms: int,
    replay_guard: ReplayGuard | None = None,
) -> Sealed:
    """Verify and open an envelope frame; :class:`RemoteProtocolError` on any fault.

    With a ``replay_guard``, a second arrival of the same (sender, msg_id) within its
    lifetime is refused as a replay.
    """
    env = decode_frame(data, {_ENV_TAG: Envelope})
    if now_ms >= env.expires_at_ms:
        raise RemoteProtocolError(f"expired: expires_at_ms={env.expires_at_ms} but now_ms={now_ms}")
    if env.created_at_ms > now_ms + MAX_CLOCK_SKEW_MS:
        raise RemoteProtocolError(
            f"created_at_ms={env.created_at_ms} is in the future (now_ms={now_ms})"
        )
    if not verify_ed25519(env.sender_key, env.signature, env.signed_bytes()):
        raise RemoteProtocolError("bad envelope signature")
    message = decode(env.payload)
    if replay_guard is not None and not replay_guard.remember(
        env.sender_key + env.msg_id, env.expires_at_ms, now_ms
    ):
        raise RemoteProtocolError("replayed message id")
    return Sealed(
        message=message,
        msg_id=env.msg_id,
        sender=env.sender,
        sender_key=env.sender_key,
        created_at_ms=env.created_at_ms,
        expires_at_ms=env.expires_at_ms,
    )


def unseal_record(data: bytes) -> Sealed:
    """Open a *kept* envelope (evidence) as of the moment it was made.

    The signature and the message must hold; the lifetime is judged at the envelope's
    own ``created_at_ms``, not today's clock, so a record stays checkable after its
    envelope expired. :class:`RemoteProtocolError` on any fault.
    """
    env = decode_frame(data, {_ENV_TAG: Envelope})
    return unseal(data, now_ms=env.created_at_ms)


class ReplayGuard:
    """Remembers envelope ids until they expire, in bounded memory.

    Entries expire with their envelope (after which :func:`unseal` refuses the frame
    as expired anyway), so memory holds at most the ids of live envelopes. If more
    than ``max_entries`` are live at once, the one closest to expiry is forgotten
    first (counted in :attr:`evictions`): a flood can then re-admit an old id, but
    it can never grow memory without bound.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise LocalProtocolError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.evictions = 0
        self._expiry: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def _forget_expired(self, now_ms: int) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now_ms:
            _, key = heapq.heappop(heap)
            expiry.pop(key, None)

    def remember(self, key: bytes, expires_at_ms: int, now_ms: int) -> bool:
        """Record ``key`` until ``expires_at_ms``; False if it is already live."""
        self._forget_expired(now_ms)
        if key in self._expiry:
            return False
        while len(self._expiry) >= self.max_entries:
            _, old = heapq.heappop(self._heap)
            self._expiry.pop(old, None)
            self.evictions += 1
        self._expiry[key] = expires_at_ms
        heapq.heappush(self._heap, (expires_at_ms, key))
        return True
