"""The governor on trio: readings in, the current :class:`PowerPolicy` out.

How the node uses it::

    async with trio.open_nursery() as nursery:
        power = await nursery.start(run_power, config["power"], running_jobs_fn)
        policy = power.policy                 # read any time (bidding, admission)
        policy = await power.wait_change(policy)   # or wait for the next change

Sources (panel, tariff, demand-response file, override file/HTTP) run in the same
nursery and put readings on the service's channel; each reading is applied at once
(so a shed signal turns ``may_bid`` off within one scheduling pass), and a tick every
``tick_s`` lets dwell times and staleness advance when nothing arrives.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from p2pnode.power.governor import Governor, GovernorConfig, PowerPolicy, Reading

__all__ = ["PowerService", "run_power"]


class PowerService:
    """Owns a :class:`Governor`; call :meth:`run` in a nursery (``nursery.start``)."""

    def __init__(
        self,
        governor: Governor,
        *,
        running_jobs: Callable[[], int] = lambda: 0,
        tick_s: float = 1.0,
    ) -> None:
        self.governor = governor
        self.running_jobs = running_jobs
        self.tick_s = tick_s
        self._send, self._recv = trio.open_memory_channel[Reading](256)
        self.policy: PowerPolicy = governor.step(governor.start)
        self._changed = trio.Event()
        self.http_port: int | None = None  # the override endpoint's port, once served

    def readings(self) -> trio.MemorySendChannel[Reading]:
        """A send channel (a clone) for one source; close it when the source ends."""
        return self._send.clone()

    async def wait_change(self, seen: PowerPolicy) -> PowerPolicy:
        """Return the policy once its state differs from ``seen``'s."""
        while self.policy.state == seen.state:
            await self._changed.wait()
        return self.policy

    def _apply(self, now: float) -> None:
        new = self.governor.step(now, running_jobs=self.running_jobs())
        if new != self.policy:
            self.policy = new
            self._changed.set()
            self._changed = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[PowerService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply readings as they come and tick every ``tick_s``; runs until cancelled."""
        task_status.started(self)
        while True:
            with trio.move_on_after(self.tick_s):
                reading = await self._recv.receive()
                self.governor.observe(reading)
                while True:  # apply everything already queued in one step
                    try:
                        self.governor.observe(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
            self._apply(trio.current_time())


async def run_power(
    section: Mapping[str, Any],
    running_jobs: Callable[[], int] = lambda: 0,
    *,
    task_status: trio.TaskStatus[PowerService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the governor and every source named in the node config's ``[power]`` section.

    Keys (all optional): ``governor`` (GovernorConfig fields), ``tariff``
    (:meth:`TariffSchedule.from_mapping`), ``span`` (:class:`SpanPanelSource` fields),
    ``demand_response.file``, ``override.file``, ``override.http_port`` +
    ``override.token``. ``task_status.started(service)`` once all sources are up.
    """
    from p2pnode.power.sources import (
        TariffSchedule,
        run_demand_response_file,
        run_override_file,
        run_tariff,
    )

    known = {"governor", "tariff", "span", "demand_response", "override"}
    if set(section) - known:
        raise ValueError(f"unknown [power] keys: {sorted(set(section) - known)}")
    governor = Governor(
        GovernorConfig.from_mapping(section.get("governor", {})), start=trio.current_time()
    )
    service = PowerService(governor, running_jobs=running_jobs)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        if "tariff" in section:
            nursery.start_soon(
                run_tariff, service.readings(), TariffSchedule.from_mapping(section["tariff"])
            )
        if "span" in section:
            from p2pnode.power.span import SpanPanelSource

            await nursery.start(SpanPanelSource(**section["span"]).run, service.readings())
        dr = section.get("demand_response", {})
        if "file" in dr:
            nursery.start_soon(run_demand_response_file, service.readings(), Path(dr["file"]))
        ov = section.get("override", {})
        if "file" in ov:
            nursery.start_soon(run_override_file, service.readings(), Path(ov["file"]))
        if "token" in ov:
            from p2pnode.power.override_http import override_app, serve_override_http

            app = override_app(service.readings(), str(ov["token"]), lambda: service.policy)
            serve = functools.partial(serve_override_http, app, port=int(ov.get("http_port", 0)))
            service.http_port = await nursery.start(serve)
        task_status.started(service)
