"""How market messages travel on libp2p: protocol ids, sealed frames, message → event.

Every market message — on gossip and on direct streams alike — is a signed
envelope (:func:`market.protocol.seal`): one mechanism, so the buyer can later show
a provider's signed result commitment to a verifier, and a relaying peer can never
put words in another's mouth. On a direct stream the envelope's sender must also be
the peer at the other end of the (Noise-authenticated) connection.

Four stream protocols:

* ``/hearth/rfq/1`` — buyer → provider: the buyer asks a provider it knows from its
  offer directly (the fast path): Rfq; the provider answers one Bid or Decline on the
  same stream. The winner's stream then goes on as a job stream (Award, Prompt, …);
  the others are ended by the buyer (their bids stay open for a failover).
* ``/hearth/bid/1`` — provider → buyer: the answer to an RFQ seen on gossip: one Bid
  or Decline, then END.
* ``/hearth/offer/1`` — buyer → provider: the provider answers with its current
  signed Offer, then END (a buyer that joins or rejoins need not wait for gossip).
* ``/hearth/job/1`` — buyer → provider: Award and, right behind it, Prompt; the
  provider answers Accept (or Error) and streams TokenChunk / Heartbeat frames while
  the buyer sends Voucher frames back; the provider closes with EndOfStream. Either
  side may send Cancel or Error.
"""

from __future__ import annotations

import os
import time

from market.protocol import Message, RemoteProtocolError, ReplayGuard, seal, unseal
from market.protocol.signing import SigningKey
from p2pnode.net.framing import FramedStream

__all__ = [
    "BID_PROTOCOL",
    "EVIDENCE_PROTOCOL",
    "JOB_PROTOCOL",
    "OFFER_PROTOCOL",
    "RFQ_PROTOCOL",
    "SCORE_PROTOCOL",
    "now_ms",
    "open_sealed",
    "receive_message",
    "receive_sealed",
    "sealed",
    "send_message",
]

BID_PROTOCOL = "/hearth/bid/1"
JOB_PROTOCOL = "/hearth/job/1"
RFQ_PROTOCOL = "/hearth/rfq/1"
OFFER_PROTOCOL = "/hearth/offer/1"
SCORE_PROTOCOL = "/hearth/score/1"  # verification jobs: re-score a completion, paid per token
EVIDENCE_PROTOCOL = "/hearth/evidence/1"  # fetch the evidence a fraud report names


def now_ms() -> int:
    """Wall-clock milliseconds: envelopes expire in real time across machines."""
    return int(time.time() * 1000)


def sealed(message: Message, key: SigningKey) -> bytes:
    """``message`` in a signed envelope from ``key``'s peer, stamped now."""
    return seal(message, key=key, now_ms=now_ms(), rng=os.urandom)


def open_sealed(data: bytes, guard: ReplayGuard | None = None) -> tuple[Message, str]:
    """Verify an envelope; returns ``(message, sender peer id)``; RemoteProtocolError else."""
    opened = unseal(data, now_ms=now_ms(), replay_guard=guard)
    return opened.message, opened.sender


async def send_message(fs: FramedStream, message: Message, key: SigningKey) -> None:
    """Seal ``message`` and send it as one DATA frame."""
    await fs.send(sealed(message, key))


async def receive_sealed(
    fs: FramedStream, guard: ReplayGuard | None = None, timeout: float | None = None
) -> tuple[Message, bytes] | None:
    """Like :func:`receive_message`, with the envelope's bytes (kept as evidence)."""
    data = await fs.receive(timeout=timeout)
    if data is None:
        return None
    message, sender = open_sealed(data, guard)
    if fs.peer_id and sender != fs.peer_id:
        raise RemoteProtocolError(f"envelope signed by {sender}, stream is from {fs.peer_id}")
    return message, data


async def receive_message(
    fs: FramedStream, guard: ReplayGuard | None = None, timeout: float | None = None
) -> Message | None:
    """The next message from the peer on ``fs`` (``None`` after its END frame).

    Raises :class:`RemoteProtocolError` if the envelope is invalid or was signed by
    someone other than the peer on the other end of the stream; transport failures
    raise :mod:`p2pnode.net.errors` exceptions.
    """
    got = await receive_sealed(fs, guard, timeout)
    return None if got is None else got[0]
