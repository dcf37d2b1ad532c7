"""The buyer's memory of providers: a score per peer that the auction weighs."""

from __future__ import annotations

__all__ = ["Reputation"]


class Reputation:
    """Scores in 0..1 (unknown peers start at ``prior``), moved by the job machines.

    It implements :class:`market.protocol.auction.ReputationSource`; the buyer machine's
    ``ScorePeer`` actions and transport failures adjust it.
    """

    def __init__(self, prior: float = 0.8) -> None:
        self.prior = prior
        self._scores: dict[str, float] = {}
        self.failures: dict[str, str] = {}

    def reputation(self, provider: str) -> float:
        return self._scores.get(provider, self.prior)

    def adjust(self, provider: str, delta: float) -> None:
        """Move ``provider``'s score by ``delta``, kept inside 0..1."""
        self._scores[provider] = min(1.0, max(0.0, self.reputation(provider) + delta))

    def note_failure(self, provider: str, why: str) -> None:
        """Remember the last transport or protocol failure seen with ``provider``."""
        self.failures[provider] = why
