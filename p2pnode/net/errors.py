"""Exceptions of the network layer: what can go wrong between two peers.

Every failure the market above must react to has its own type, so callers write
``except PeerTimeout`` rather than parse messages. All derive from :class:`NetError`.

* :class:`PeerTimeout` — the peer went silent: no frame (not even a heartbeat) within the
  liveness window, or a read/write deadline passed. A frozen (SIGSTOPped) peer ends here.
* :class:`StreamBroken` — the stream ended without an explicit end-of-stream frame
  (killed peer, reset, connection lost). Never confuse this with a clean end.
* :class:`RemoteStreamError` — the peer sent an error frame on purpose; ``message`` says why.
* :class:`FrameTooLarge` — a frame over the agreed maximum (ours: refused before sending;
  theirs: the stream is reset and the peer penalised).
* :class:`PublishTooLarge` — a gossip payload over the topic's size guard.
* :class:`DialFailed` — no connection could be made to the peer.
"""

from __future__ import annotations

__all__ = [
    "DialFailed",
    "FrameTooLarge",
    "NetError",
    "PeerTimeout",
    "PublishTooLarge",
    "RemoteStreamError",
    "StreamBroken",
]


class NetError(Exception):
    """Base class of every network-layer failure."""


class PeerTimeout(NetError):
    """The peer sent nothing (not even a heartbeat) in time, or would not read."""


class StreamBroken(NetError):
    """The stream ended without an end-of-stream frame: the peer died or reset it."""


class RemoteStreamError(NetError):
    """The peer closed the stream with an explicit error frame."""

    def __init__(self, message: str) -> None:
        super().__init__(f"peer reported an error: {message}")
        self.message = message


class FrameTooLarge(NetError):
    """A frame exceeds the maximum frame size."""


class PublishTooLarge(NetError):
    """A gossip payload exceeds the topic's maximum message size."""


class DialFailed(NetError):
    """Could not connect to (or open a stream with) a peer."""
