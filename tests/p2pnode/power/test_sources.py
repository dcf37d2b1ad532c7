"""Tariff schedule, demand-response and override files, and the token-guarded HTTP override."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pytest
import trio

from p2pnode.power.governor import DemandResponse, Override, PowerState, TariffReading
from p2pnode.power.service import run_power
from p2pnode.power.sources import (
    TariffSchedule,
    read_demand_response_file,
    read_override_file,
    run_tariff,
)

TOKEN = "s3cret-token-for-tests-0123"


def test_tariff_periods_wrap_midnight() -> None:
    t = TariffSchedule.from_mapping(
        {
            "default": 0.15,
            "periods": [
                {"start": 16, "end": 21, "price": 0.45},
                {"start": 22, "end": 6, "price": 0.08},
            ],
        }
    )
    assert [t.price_at_hour(h) for h in (0, 5, 6, 15, 16, 20, 21, 22, 23)] == [
        0.08, 0.08, 0.15, 0.15, 0.45, 0.45, 0.15, 0.08, 0.08,
    ]  # fmt: skip
    assert t.price_at(dt.datetime(2026, 7, 1, 17, 30)) == 0.45


@pytest.mark.parametrize(
    "section",
    [
        {"hourly": [0.1] * 23},
        {"default": -1},
        {"periods": [{"start": 25, "end": 3, "price": 0.1}]},
        {"periods": [{"start": 1, "end": 3, "price": "cheap"}]},
    ],
)
def test_bad_tariff_is_refused(section: dict) -> None:
    with pytest.raises(ValueError):
        TariffSchedule.from_mapping(section)


async def test_run_tariff_sends_price_for_the_hour() -> None:
    send, recv = trio.open_memory_channel[TariffReading](4)  # type: ignore[type-var]
    schedule = TariffSchedule.from_mapping(
        {"default": 0.2, "periods": [{"start": 17, "end": 18, "price": 0.5}]}
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_tariff(
                send, schedule, period_s=3600, wall=lambda: dt.datetime(2026, 1, 1, 17, 5)
            )  # type: ignore[arg-type]
        )
        reading = await recv.receive()
        nursery.cancel_scope.cancel()
    assert reading.price_per_kwh == 0.5


def test_demand_response_file(tmp_path: Path) -> None:
    f = tmp_path / "dr.json"
    assert read_demand_response_file(f, at=0).level == 0  # missing: no event
    f.write_text(json.dumps({"level": 2, "event_id": "evt-7", "until": 2000}))
    r = read_demand_response_file(f, at=1, now_unix=1000)
    assert r == DemandResponse(at=1, level=2, event_id="evt-7")
    assert read_demand_response_file(f, at=2, now_unix=3000).level == 0  # expired
    f.write_text(json.dumps({"level": 9}))
    with pytest.raises(ValueError):
        read_demand_response_file(f, at=3)


def test_override_file(tmp_path: Path) -> None:
    f = tmp_path / "override"
    assert read_override_file(f, at=0).state is None
    f.write_text("draining\n")
    assert read_override_file(f, at=1) == Override(at=1, state=PowerState.DRAINING, source="file")
    f.write_text("auto")
    assert read_override_file(f, at=2).state is None
    f.write_text("melting")
    with pytest.raises(ValueError):
        read_override_file(f, at=3)


async def _wait_state(service, state: PowerState) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(30):
        while service.policy.state != state:
            await service.wait_change(service.policy)


async def test_override_file_and_http_through_run_power(tmp_path: Path) -> None:
    """The full config path: file and HTTP override drive the live service; bad tokens are refused."""
    ov_file = tmp_path / "override"
    section = {
        "governor": {"min_dwell_s": 0, "recover_after_s": 0},
        "override": {"file": str(ov_file), "token": TOKEN},
        "demand_response": {"file": str(tmp_path / "dr.json")},
    }
    async with trio.open_nursery() as nursery:
        service = await nursery.start(run_power, section, lambda: 1)
        assert service.policy.state == PowerState.NORMAL
        ov_file.write_text("throttled")
        await _wait_state(service, PowerState.THROTTLED)
        ov_file.write_text("auto")
        await _wait_state(service, PowerState.NORMAL)

        port = service.http_port
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            refused = [
                await http.post("/power/override", json={"state": "draining"}),
                await http.post(
                    "/power/override",
                    json={"state": "draining"},
                    headers={"Authorization": "Bearer nope"},
                ),
                await http.post(
                    "/power/override", json={"state": "draining"}, headers={"Authorization": TOKEN}
                ),
                await http.get("/power"),
            ]
            assert [r.status_code for r in refused] == [401, 401, 401, 401]
            auth = {"Authorization": f"Bearer {TOKEN}"}
            bad = [
                await http.post("/power/override", content=b"{not json", headers=auth),
                await http.post("/power/override", json={"state": "melting"}, headers=auth),
                await http.post("/power/override", json={"mode": "off"}, headers=auth),
            ]
            assert [r.status_code for r in bad] == [400, 400, 400]
            await trio.sleep(1.5)  # give any wrongly accepted override time to show
            assert service.policy.state == PowerState.NORMAL
            ok = await http.post("/power/override", json={"state": "draining"}, headers=auth)
            assert ok.status_code == 200 and ok.json() == {"override": "draining"}
            await _wait_state(service, PowerState.DRAINING)
            status = (await http.get("/power", headers=auth)).json()
            assert status["state"] == "draining" and status["may_bid"] is False
        nursery.cancel_scope.cancel()
