"""Readings from the house's non-panel sources: tariff, demand response, override file.

Each source is an async function ``run(send)`` that puts readings on a trio memory
channel until cancelled; :class:`~p2pnode.power.service.PowerService` feeds them to
the governor. They read the clock through ``clock`` (default ``trio.current_time``
for the governor's ``at`` field, and wall time for the tariff's hour of day).

Demand response: OpenADR 3 needs a VTN server to test against, and no open VTN can be
run here (the ``openadr3-client`` library is a client only), so the utility's signal
arrives as a JSON file (``{"level": 0..3, "event_id": "...", "until": <unix time>}``)
that whatever speaks to the utility (an OpenADR VEN, a Home Assistant automation,
a cron job) writes. A file that is missing means no event; an expired ``until``
means level 0.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from p2pnode.power.governor import DemandResponse, Override, PowerState, Reading, TariffReading

__all__ = [
    "TariffSchedule",
    "read_demand_response_file",
    "read_override_file",
    "run_demand_response_file",
    "run_override_file",
    "run_tariff",
]

ReadingSend = trio.MemorySendChannel[Reading]


@dataclass(frozen=True, slots=True)
class TariffSchedule:
    """Time-of-use prices: 24 prices per kWh, index = local hour of day."""

    hourly: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.hourly) != 24:
            raise ValueError(f"a tariff needs 24 hourly prices, got {len(self.hourly)}")
        if any(p < 0 for p in self.hourly):
            raise ValueError("tariff prices must be >= 0")

    @classmethod
    def from_mapping(cls, section: Mapping[str, object]) -> TariffSchedule:
        """From config: ``{"default": 0.15, "periods": [{"start": 16, "end": 21, "price": 0.45}]}``.

        Periods are ``[start, end)`` hours and may wrap midnight (start 22, end 6);
        later periods override earlier ones. Or ``{"hourly": [24 prices]}``.
        """
        if "hourly" in section:
            hourly = section["hourly"]
            if not isinstance(hourly, Sequence) or isinstance(hourly, str):
                raise ValueError("tariff 'hourly' must be a list of 24 prices")
            return cls(tuple(_price(p) for p in hourly))
        prices = [_price(section.get("default", 0.0))] * 24
        periods = section.get("periods", [])
        if not isinstance(periods, Sequence):
            raise ValueError("tariff 'periods' must be a list")
        for period in periods:
            if not isinstance(period, Mapping):
                raise ValueError(f"tariff period must be a table, got {period!r}")
            start, end = _hour(period.get("start")), _hour(period.get("end"))
            price = _price(period.get("price"))
            hour = start
            while True:
                prices[hour] = price
                hour = (hour + 1) % 24
                if hour == end % 24:
                    break
        return cls(tuple(prices))

    def price_at_hour(self, hour: int) -> float:
        """Price per kWh during local hour ``hour`` (0..23)."""
        return self.hourly[hour % 24]

    def price_at(self, when: dt.datetime) -> float:
        """Price per kWh at wall-clock time ``when``."""
        return self.price_at_hour(when.hour)


def _price(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ValueError(f"tariff price must be a number >= 0, got {value!r}")
    return float(value)


def _hour(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 24:
        raise ValueError(f"tariff hour must be an integer 0..24, got {value!r}")
    return value % 24


async def run_tariff(
    send: ReadingSend,
    schedule: TariffSchedule,
    *,
    period_s: float = 60.0,
    wall: Callable[[], dt.datetime] = dt.datetime.now,
) -> None:
    """Send the current price now and every ``period_s`` (hour boundaries are caught)."""
    while True:
        await send.send(
            TariffReading(at=trio.current_time(), price_per_kwh=schedule.price_at(wall()))
        )
        await trio.sleep(period_s)


def read_demand_response_file(
    path: Path, *, at: float, now_unix: float | None = None
) -> DemandResponse:
    """Parse the DR file; missing → level 0. ValueError for a malformed file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return DemandResponse(at=at, level=0)
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    level = data.get("level", 0)
    if not isinstance(level, int) or isinstance(level, bool):
        raise ValueError(f"{path}: level must be an integer 0..3")
    until = data.get("until")
    now_unix = time.time() if now_unix is None else now_unix
    if isinstance(until, (int, float)) and until <= now_unix:
        level = 0
    return DemandResponse(at=at, level=level, event_id=str(data.get("event_id", "")))


def read_override_file(path: Path, *, at: float) -> Override:
    """The override file holds one word: normal|throttled|draining|off|auto; missing = auto."""
    try:
        word = path.read_text().strip().lower()
    except FileNotFoundError:
        return Override(at=at, state=None, source="file")
    if word in ("", "auto"):
        return Override(at=at, state=None, source="file")
    return Override(at=at, state=PowerState.parse(word), source="file")


async def _poll_file(
    send: ReadingSend, path: Path, period_s: float, parse: Callable[[float], Reading]
) -> None:
    """Send a reading at start and whenever the file's mtime/size changes (polled)."""
    last: tuple[float, int] | str | None = "unset"
    while True:
        try:
            st = path.stat()
            sig: tuple[float, int] | str | None = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            sig = None
        if sig != last:
            try:
                reading = parse(trio.current_time())
            except ValueError:
                reading = None  # a half-written or bad file: keep the last good reading
            if reading is not None:
                await send.send(reading)
                last = sig
        await trio.sleep(period_s)


async def run_demand_response_file(send: ReadingSend, path: Path, *, period_s: float = 1.0) -> None:
    """Watch the demand-response file (see module docstring)."""
    await _poll_file(send, path, period_s, lambda at: read_demand_response_file(path, at=at))


async def run_override_file(send: ReadingSend, path: Path, *, period_s: float = 1.0) -> None:
    """Watch the override file (one word; see :func:`read_override_file`)."""
    await _poll_file(send, path, period_s, lambda at: read_override_file(path, at=at))
