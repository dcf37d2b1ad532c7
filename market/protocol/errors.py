"""Whose fault was it? The two exception types of the market protocol.

Following h11, every failure in ``market.protocol`` says who caused it:

* :class:`LocalProtocolError` — *we* misused the protocol: built a message with an
  out-of-range field, asked a state machine for a transition it forbids, passed a
  bad argument. This is a bug in our own code; let it surface loudly.
* :class:`RemoteProtocolError` — the *peer* misbehaved: sent bytes that do not
  decode, a message that fails validation, a bad signature, an expired or replayed
  envelope. Score the peer, drop the frame, never crash.

Both carry a human-readable :attr:`ProtocolError.reason`; ``str(err)`` is the reason.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every protocol failure; ``reason`` says what went wrong."""

    reason: str

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something invalid (score the peer; never crash)."""
