"""The SPAN smart panel as a power source, through the ``span-panel-api`` library.

What the library speaks (read from span-panel-api 2.6.4's source): SPAN's v2 panels
publish their state over **MQTT** as a Homie v5 device under ``ebus/5/<serial>/…``
(the eBus convention): ``$state``, ``$description`` (node id → type), and one topic
per property. The upstream-lugs node's ``active-power`` is the main meter (W), the
core node's ``breaker-rating`` the main breaker (A), and each circuit node has
``name`` and ``active-power`` (negative = consumption). Before connecting, the client
fetches the Homie schema over HTTP (``GET /api/v2/homie/schema`` on the panel) to
learn the panel size, and with TLS also the broker's CA from the panel.

The library is asyncio (paho-mqtt wired into an asyncio loop). The node is trio, so
this source runs the library in **its own asyncio event loop on a dedicated thread**
(entered through ``trio.to_thread.run_sync``), and the library's snapshot callback
hands each :class:`PanelReading` back to trio with ``trio.from_thread.run_sync``.
Stopping: when the trio task is cancelled it asks the asyncio loop (thread-safely) to
close the client and return, and waits for the thread to finish.

The panel limit defaults to ``breaker-rating × volts × continuous_factor`` (the NEC
80 % rule for continuous loads: 200 A × 240 V × 0.8 = 38.4 kW).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from p2pnode.power.governor import PanelReading, Reading

if TYPE_CHECKING:
    from span_panel_api import SpanPanelSnapshot

__all__ = ["SpanPanelSource", "reading_from_snapshot"]


def reading_from_snapshot(
    snap: SpanPanelSnapshot,
    *,
    at: float,
    node_circuit: str,
    limit_w: float | None,
    volts: float = 240.0,
    continuous_factor: float = 0.8,
) -> PanelReading:
    """Map a library snapshot to a reading; ``node_circuit`` is a circuit id or name."""
    if limit_w is None:
        if not snap.main_breaker_rating_a:
            raise ValueError("the panel reports no breaker rating; set limit_w in [power.span]")
        limit_w = snap.main_breaker_rating_a * volts * continuous_factor
    node_w = 0.0
    for cid, circuit in snap.circuits.items():
        if node_circuit in (cid, circuit.name):
            node_w = max(0.0, circuit.instant_power_w)
            break
    return PanelReading(at=at, limit_w=limit_w, main_w=snap.instant_grid_power_w, node_w=node_w)


@dataclass(slots=True, kw_only=True)
class SpanPanelSource:
    """Config ``[power.span]``: where the panel and its broker are, which circuit is ours."""

    host: str
    serial: str
    broker_host: str | None = None  # default: the panel's host
    broker_port: int = 8883
    username: str = ""
    password: str = ""
    use_tls: bool = True
    http_port: int = 80
    node_circuit: str = ""
    limit_w: float | None = None
    volts: float = 240.0
    continuous_factor: float = 0.8

    async def run(
        self,
        send: trio.MemorySendChannel[Reading],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Stream readings until cancelled; ``started()`` once connected and ready."""
        token = trio.lowlevel.current_trio_token()
        connected = trio.Event()
        stop: dict[str, object] = {}  # "loop", "event": set by the thread
        stop_ready = threading.Event()

        def deliver(snap: SpanPanelSnapshot) -> None:  # runs in trio
            reading = reading_from_snapshot(
                snap,
                at=trio.current_time(),
                node_circuit=self.node_circuit,
                limit_w=self.limit_w,
                volts=self.volts,
                continuous_factor=self.continuous_factor,
            )
            # The governor is behind if this blocks; the next snapshot supersedes this one.
            with contextlib.suppress(trio.WouldBlock):
                send.send_nowait(reading)

        async def amain() -> None:  # runs in the asyncio thread
            from span_panel_api import MqttClientConfig, SpanMqttClient

            stop["loop"], stop["event"] = asyncio.get_running_loop(), asyncio.Event()
            stop_ready.set()
            config = MqttClientConfig(
                broker_host=self.broker_host or self.host,
                username=self.username,
                password=self.password,
                mqtts_port=self.broker_port,
                use_tls=self.use_tls,
            )
            client = SpanMqttClient(self.host, self.serial, config, panel_http_port=self.http_port)

            async def on_snapshot(snap: SpanPanelSnapshot) -> None:
                trio.from_thread.run_sync(deliver, snap, trio_token=token)

            try:
                await client.connect()
                client.set_snapshot_interval(0)  # a snapshot per message: no added latency
                client.register_snapshot_callback(on_snapshot)
                await client.start_streaming()
                first = await client.get_snapshot()
                trio.from_thread.run_sync(deliver, first, trio_token=token)
                trio.from_thread.run_sync(connected.set, trio_token=token)
                event = stop["event"]
                assert isinstance(event, asyncio.Event)
                await event.wait()
            finally:
                await client.close()

        def thread_main() -> None:
            try:
                asyncio.run(amain())
            finally:
                stop_ready.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, thread_main)
            try:
                await connected.wait()
                task_status.started()
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(stop_ready.wait)
                loop, event = stop.get("loop"), stop.get("event")
                if isinstance(loop, asyncio.AbstractEventLoop) and isinstance(event, asyncio.Event):
                    # RuntimeError: the loop already ended (connect failed); its error propagates.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(event.set)
