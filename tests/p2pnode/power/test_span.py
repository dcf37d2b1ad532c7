"""The SPAN panel source against a real mosquitto broker and the real span-panel-api client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from p2pnode.power.governor import Governor, GovernorConfig, PanelReading, PowerState
from p2pnode.power.service import PowerService
from p2pnode.power.simpanel import Mosquitto, SimulatedSpanPanel
from p2pnode.power.span import SpanPanelSource


@pytest.fixture
def panel() -> Iterator[SimulatedSpanPanel]:
    with Mosquitto() as broker, SimulatedSpanPanel(broker.port) as sim:
        yield sim


def _source(sim: SimulatedSpanPanel) -> SpanPanelSource:
    return SpanPanelSource(
        host="127.0.0.1",
        serial=sim.serial,
        broker_port=sim.broker_port,
        use_tls=False,
        http_port=sim.http_port,
        node_circuit=sim.node_circuit_name,
    )


async def test_panel_readings_flow_through_the_library(panel: SimulatedSpanPanel) -> None:
    send, recv = trio.open_memory_channel[PanelReading](64)  # type: ignore[type-var]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(_source(panel).run, send)
            first = await recv.receive()
            assert first.limit_w == pytest.approx(200 * 240 * 0.8)
            assert first.main_w == pytest.approx(1000.0)
            await trio.to_thread.run_sync(lambda: panel.set_power(main_w=30_000.0, node_w=2_000.0))
            while True:
                r = await recv.receive()
                if r.main_w == pytest.approx(30_000.0) and r.node_w == pytest.approx(2_000.0):
                    break
            assert r.house_headroom_w == pytest.approx(38_400 - 28_000)
            nursery.cancel_scope.cancel()


async def test_shed_reading_turns_bidding_off(panel: SimulatedSpanPanel) -> None:
    service = PowerService(Governor(GovernorConfig(), start=trio.current_time()), tick_s=0.5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            await nursery.start(_source(panel).run, service.readings())
            while service.policy.state != PowerState.NORMAL or service.governor.panel is None:
                await trio.sleep(0.05)
            assert service.policy.may_bid
            seen = service.policy
            # the dryer and the EV charger start: 38 kW on a 38.4 kW limit, 1.5 kW of it ours
            await trio.to_thread.run_sync(lambda: panel.set_power(main_w=38_000.0, node_w=1_500.0))
            policy = await service.wait_change(seen)
            while policy.may_bid:  # a reading may pass through THROTTLED first
                policy = await service.wait_change(policy)
            assert not policy.may_bid
            assert policy.state >= PowerState.DRAINING
            assert "panel=draining" in policy.reasons
            nursery.cancel_scope.cancel()
