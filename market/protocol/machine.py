"""What every job machine shares: one ``handle()``, one table lookup, one stray rule.

:class:`JobMachine` is the base of :class:`~market.protocol.buyer.BuyerJob` and
:class:`~market.protocol.provider.ProviderJob`. Each subclass states its transitions
in ``TABLE`` (``(state, event type) → handler``) and names itself in ``ROLE``;
``handle(event, now)`` looks the pair up and runs the handler. A pair missing from
the table is either

* a :class:`~market.protocol.events.PeerEvent`: a message nobody asked for. The
  machine answers with a ``ScorePeer`` (carrying the
  :class:`~market.protocol.errors.RemoteProtocolError`) unless :meth:`_tolerates`
  says it is a harmless straggler; it never raises on a peer's account; or
* a local event: our own driver fed something the state cannot take, a
  :class:`~market.protocol.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from market.protocol.actions import Action, ScorePeer
from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.events import Event, PeerEvent

__all__ = ["STRAY_PENALTY", "JobMachine"]

#: Reputation cost of one unsolicited message.
STRAY_PENALTY = -0.1

Handler = Callable[[Any, Any, float], list[Action]]


class JobMachine:
    """Base of the job machines: the table-driven ``handle()`` and stray handling."""

    TABLE: ClassVar[Mapping[tuple[Any, type[Event]], Handler]]
    ROLE: ClassVar[str]  # "buyer job" / "provider job", for error messages
    __slots__ = ()
    state: enum.Enum

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event at time ``now``; return the actions to carry out, in order."""
        handler = self.TABLE.get((self.state, type(event)))
        if handler is None:
            if isinstance(event, PeerEvent):
                return self._stray(event, now)
            raise LocalProtocolError(
                f"{self.ROLE} cannot take {type(event).__name__} in state {self.state.value}"
            )
        return handler(self, event, now)

    def _tolerates(self, ev: PeerEvent) -> bool:
        """True when an unsolicited ``ev`` is a harmless straggler (no score)."""
        return False

    def _stray(self, ev: PeerEvent, now: float) -> list[Action]:
        """A message nobody asked for: ignored if :meth:`_tolerates` it, else scored."""
        if self._tolerates(ev):
            return []
        what = f"unexpected {type(ev.message).__name__} in state {self.state.value}"
        return [self._score(ev.sender, STRAY_PENALTY, what)]

    def _score(self, peer: str, delta: float, why: str) -> ScorePeer:
        """A ``ScorePeer`` for a peer that broke the protocol (the error says how)."""
        return ScorePeer(peer=peer, delta=delta, reason=why, error=RemoteProtocolError(why))

    def _ignore(self, ev: Event, now: float) -> list[Action]:
        return []
