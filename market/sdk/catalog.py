"""What the buyer knows of the market: the offers providers gossip, with their TTLs."""

from __future__ import annotations

from dataclasses import dataclass

from market.protocol import ModelOffer, Offer

__all__ = ["Catalog", "ModelListing"]


@dataclass(frozen=True, slots=True)
class ModelListing:
    """One model on the market: its content address, its name and who serves it."""

    model_id: str
    name: str
    providers: int
    best_price_per_1k: int


class Catalog:
    """The latest offer of each provider, forgotten when its TTL runs out.

    ``now`` is passed in (seconds, any monotonic clock), so the catalog is testable
    without waiting.
    """

    def __init__(self) -> None:
        self._offers: dict[str, tuple[Offer, float]] = {}

    def add(self, offer: Offer, now: float) -> None:
        """Record ``offer`` (it replaces the provider's previous one)."""
        self._offers[offer.provider] = (offer, now + offer.ttl_s)

    def _live(self, now: float) -> list[Offer]:
        for peer in [p for p, (_, exp) in self._offers.items() if exp <= now]:
            del self._offers[peer]
        return [o for o, _ in self._offers.values()]

    def has(self, provider: str, now: float) -> bool:
        """True when ``provider``'s offer is live."""
        entry = self._offers.get(provider)
        return entry is not None and entry[1] > now

    def provider_count(self, now: float) -> int:
        """How many providers have a live offer."""
        return len(self._live(now))

    def region_of(self, provider: str) -> str:
        entry = self._offers.get(provider)
        return entry[0].region if entry else ""

    def models(self, now: float) -> list[ModelListing]:
        """Every model some live, bidding provider offers, cheapest first per name."""
        seen: dict[str, list[ModelOffer]] = {}
        for offer in self._live(now):
            if offer.power_state in ("draining", "off"):
                continue
            for m in offer.models:
                seen.setdefault(m.model_id, []).append(m)
        out = [
            ModelListing(
                model_id=mid,
                name=ms[0].name,
                providers=len(ms),
                best_price_per_1k=min(m.price_per_1k for m in ms),
            )
            for mid, ms in seen.items()
        ]
        return sorted(out, key=lambda m: (m.name, m.model_id))

    def candidates(self, model_id: str, now: float) -> list[Offer]:
        """Live offers of ``model_id`` from providers taking work, best first.

        Best = cheapest for this model, then least loaded: whom a buyer asks first.
        """
        found = []
        for offer in self._live(now):
            if offer.power_state in ("draining", "off"):
                continue
            prices = [m.price_per_1k for m in offer.models if m.model_id == model_id]
            if prices:
                found.append((min(prices), offer.load, offer))
        found.sort(key=lambda t: (t[0], t[1]))
        return [offer for _, _, offer in found]

    def resolve(self, model: str, now: float) -> str | None:
        """A model's content address from its name or address (``None``: not offered)."""
        wanted = model.removeprefix("sha256:").lower()
        for m in self.models(now):
            name = m.name.lower()
            # "SmolLM2-135M-Instruct" also names "SmolLM2-135M-Instruct.Q4_1" (a quantisation)
            if wanted in (m.model_id, name, name.rsplit(".", 1)[0]):
                return m.model_id
        return None
