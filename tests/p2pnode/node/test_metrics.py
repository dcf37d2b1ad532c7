"""The node's /metrics: scraped over real HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from p2pnode.node.dashboard import serve_dashboard
from p2pnode.node.metrics import NodeCollector
from p2pnode.node.telemetry import GpuSampler, RateMeter, Telemetry
from tests.p2pnode.node.fake_control import (
    CONFIRMED,
    JOB_AMOUNTS,
    PENDING_REDEMPTION,
    VOUCHERS,
    FakeNode,
)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from a Prometheus text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return _samples(resp.text)


async def test_metrics_scraped_from_live_state(tmp_path: Path) -> None:
    node = FakeNode(tmp_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_dashboard(
            node, token="t", port=0, task_status=task_status
        ))  # fmt: skip
        m = await _scrape(port)
        # Work done, from ProviderStats and the ledger's jobs table.
        assert m[("hearth_tokens_generated_total", ())] == 2_345
        assert m[("hearth_jobs_total", (("outcome", "done"),))] == 4
        assert m[("hearth_jobs_total", (("outcome", "cancelled"),))] == 1
        assert ("hearth_jobs_total", (("outcome", "running"),)) not in m  # that's a gauge
        assert m[("hearth_jobs_active", ())] == 1
        assert m[("hearth_rfqs_seen_total", ())] == 40
        assert m[("hearth_bids_total", (("result", "won"),))] == 5
        assert m[("hearth_bids_total", (("result", "lost"),))] == 12 - 5 - 1  # one still open
        assert m[("hearth_bids_open", ())] == 1
        assert m[("hearth_bids_declined_total", (("reason", "unspecified"),))] == 6
        # Money, from the ledger: credited jobs, held vouchers, redemptions.
        assert m[("hearth_earnings_credited_total", ())] == sum(JOB_AMOUNTS)
        assert m[("hearth_earnings_onchain_net_total", ())] == CONFIRMED - 50_000
        assert m[("hearth_vouchers_held", ())] == 2
        pending = (VOUCHERS[0] - CONFIRMED) + VOUCHERS[1]  # the in-flight one is not paid yet
        assert m[("hearth_vouchers_pending_amount", ())] == pending
        assert m[("hearth_redemptions", (("status", "confirmed"),))] == 1
        assert m[("hearth_redemptions", (("status", "pending"),))] == 1
        assert m[("hearth_redemptions_amount", (("status", "pending"),))] == PENDING_REDEMPTION
        # Power, host, network.
        assert m[("hearth_power_state", (("state", "normal"),))] == 1
        assert m[("hearth_power_state", (("state", "off"),))] == 0
        assert 0 < m[("hearth_memory_used_ratio", ())] < 1
        assert m[("hearth_peers", ())] == 3
        assert m[("hearth_pubsub_dropped_full_total", ())] == 4
        assert m[("hearth_node_accepting", ())] == 1
        assert 3590 < m[("hearth_uptime_seconds", ())] < 4000
        gpu_names = {name for name, _ in m if name.startswith("hearth_gpu_")}
        if GpuSampler().read() is None:  # no NVML here: nothing exported, never zeros
            assert gpu_names == set()
        else:
            assert "hearth_gpu_utilization_ratio" in gpu_names

        # Live: the next scrape sees the node's state as it is now, with no bookkeeping.
        node.service.stats.tokens_served += 655
        node.net.dropped += 1
        node.power = "draining"
        node.ledger.record_job(b"\x77" * 16, role="provider", counterparty="b", model_id="m")
        node.ledger.finish_job(b"\x77" * 16, tokens=10, amount=450_000, status="done")
        m = await _scrape(port)
        assert m[("hearth_tokens_generated_total", ())] == 3_000
        assert m[("hearth_pubsub_dropped_full_total", ())] == 5
        assert m[("hearth_power_state", (("state", "draining"),))] == 1
        assert m[("hearth_power_state", (("state", "normal"),))] == 0
        assert m[("hearth_jobs_total", (("outcome", "done"),))] == 5
        assert m[("hearth_earnings_credited_total", ())] == sum(JOB_AMOUNTS) + 450_000
        assert m[("hearth_tokens_per_second", ())] > 0
        nursery.cancel_scope.cancel()


class _ReadingsSampler(GpuSampler):
    """NVML's answers for a two-GPU box, for the exporter's side (no driver here)."""

    def read(self) -> list[dict[str, Any]] | None:
        return [
            {"index": 0, "name": "RTX 4090", "util_pct": 87.0, "temp_c": 71.0, "power_w": 312.5},
            {"index": 1, "name": "RTX 3090", "util_pct": 0.0, "temp_c": 40.0},  # no power field
        ]


def test_gpu_families_exported_from_nvml_readings(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, gpus=_ReadingsSampler())
    fams = {f.name: f for f in NodeCollector(node.snapshot).collect()}
    util = {s.labels["gpu"]: s.value for s in fams["hearth_gpu_utilization_ratio"].samples}
    assert util == {"0": 0.87, "1": 0.0}
    power = {s.labels["gpu"]: s.value for s in fams["hearth_gpu_power_watts"].samples}
    assert power == {"0": 312.5}  # a field the card did not report is left out, not zeroed
    temps = fams["hearth_gpu_temperature_celsius"].samples
    assert [(s.labels["name"], s.value) for s in temps] == [("RTX 4090", 71.0), ("RTX 3090", 40.0)]


def test_rate_meter_uses_a_sliding_window() -> None:
    now = [100.0]
    meter = RateMeter(window_s=60.0, clock=lambda: now[0])
    assert meter.rate(0) == 0.0
    now[0] = 110.0
    assert meter.rate(500) == 50.0
    now[0] = 200.0  # old samples age out: the rate is over the last window only
    meter.rate(500)
    now[0] = 210.0
    assert meter.rate(700) == 200 / 100  # from the sample at t=110, the oldest one kept
    now[0] = 300.0
    assert meter.rate(700) == 0.0


def test_a_node_still_starting_exports_zeros_not_errors(tmp_path: Path) -> None:
    """Before the ledger file exists and before the network is up, scrapes still work."""
    tele = Telemetry(ledger_path=tmp_path / "not-yet.sqlite")
    snap = tele.snapshot(state="starting", service=None, net=None, power_state="normal")
    assert snap["earnings"]["series"] == [] and snap["vouchers"]["pending_amount"] == 0
    fams = {f.name: f for f in NodeCollector(lambda: snap).collect()}
    assert fams["hearth_node_accepting"].samples[0].value == 0
    assert fams["hearth_peers"].samples[0].value == 0
    assert fams["hearth_jobs"].samples == []
    assert "hearth_uptime_seconds" not in fams  # unknown, so not exported
    tele.close()


def test_measured_speed_is_exported_when_the_engine_has_measured(tmp_path: Path) -> None:
    """What offers state (measured by the engine) is scraped as it is offered."""
    tele = Telemetry(ledger_path=tmp_path / "not-yet.sqlite")
    snap = tele.snapshot(state="serving", service=None, net=None, power_state="normal")
    fams = {f.name: f for f in NodeCollector(lambda: snap).collect()}
    assert "hearth_measured_tokens_per_second" not in fams  # nothing measured: nothing said
    snap["measured"] = {"tokens_per_s": 22.5, "batch": 1, "ttft_ms": 46.0, "step_ms": {}}
    fams = {f.name: f for f in NodeCollector(lambda: snap).collect()}
    assert fams["hearth_measured_tokens_per_second"].samples[0].value == 22.5
    assert fams["hearth_measured_ttft_seconds"].samples[0].value == 0.046
    tele.close()
