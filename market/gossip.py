"""Topic validators built on the wire format (``market.protocol``).

Every gossip payload is a sealed envelope (:func:`market.protocol.envelope.seal`).
:func:`gossip_check` returns the ``check(data, origin)`` a topic needs: it unseals with
the wall clock, insists that the envelope's sender is the peer that signed the pubsub
message (no re-publishing someone else's offer under your name), and that the message
has the type — and, for RFQs, the model — of the topic. Anything else raises
:class:`~market.protocol.errors.RemoteProtocolError`, so the message is rejected and the
forwarder scored down.

:func:`valid_rfq` is the one rule for an RFQ a provider answers, on gossip
(:func:`rfq_check`) and on a direct stream alike: it is an :class:`Rfq` for exactly the
provider's model, and its buyer is the peer that signed it — who, on gossip, is also the
publisher, and on a stream the peer at the other end. An RFQ republished by anyone else,
or put on another model's topic, is never answered: answering would make the provider
read the chain and dial the buyer for a stranger (issue 13, item 7).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from market.protocol.envelope import Sealed, unseal
from market.protocol.errors import RemoteProtocolError
from market.protocol.messages import Message, Offer, Rfq

__all__ = ["gossip_check", "offer_check", "open_gossip", "rfq_check", "valid_rfq"]


def open_gossip(data: bytes, origin: str) -> Sealed:
    """Unseal a gossip payload and tie it to the pubsub origin; raises on any fault."""
    sealed = unseal(data, now_ms=int(time.time() * 1000))
    if sealed.sender != origin:
        raise RemoteProtocolError(f"envelope sender {sealed.sender} is not the publisher {origin}")
    return sealed


def gossip_check(
    kind: type[Message], predicate: Callable[[Sealed], bool] | None = None
) -> Callable[[bytes, str], Sealed]:
    """A topic check accepting only sealed ``kind`` messages (and ``predicate``)."""

    def check(data: bytes, origin: str) -> Sealed:
        sealed = open_gossip(data, origin)
        if not isinstance(sealed.message, kind):
            raise RemoteProtocolError(
                f"expected {kind.__name__} on this topic, got {type(sealed.message).__name__}"
            )
        if predicate is not None and not predicate(sealed):
            raise RemoteProtocolError(f"{kind.__name__} does not belong on this topic")
        return sealed

    return check


def offer_check() -> Callable[[bytes, str], Sealed]:
    """Check for the offers topic: a sealed Offer whose provider is its publisher."""
    return gossip_check(
        Offer, lambda s: isinstance(s.message, Offer) and s.message.provider == s.sender
    )


def valid_rfq(message: object, sender: str, model_id: str) -> Rfq:
    """``message`` as an Rfq for ``model_id`` whose buyer ``sender`` signed it.

    Raises :class:`RemoteProtocolError` for anything else (another message type, another
    model, a buyer who is not the signer).
    """
    if not isinstance(message, Rfq):
        raise RemoteProtocolError(f"expected an Rfq, got {type(message).__name__}")
    if _model_hex(message.model_id) != model_id:
        raise RemoteProtocolError(f"an Rfq for model {message.model_id}, not {model_id}")
    if message.buyer != sender:
        raise RemoteProtocolError(f"an Rfq of buyer {message.buyer} signed by {sender}")
    return message


def rfq_check(model_id: str) -> Callable[[bytes, str], Sealed]:
    """Check for one model's RFQ topic: :func:`valid_rfq`, published by its signer."""

    def check(data: bytes, origin: str) -> Sealed:
        sealed = open_gossip(data, origin)
        valid_rfq(sealed.message, sealed.sender, model_id)
        return sealed

    return check


def _model_hex(model_id: object) -> str:
    return model_id.hex() if isinstance(model_id, bytes) else str(model_id)
