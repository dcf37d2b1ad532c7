"""Prometheus metrics for a homeowner node, read from its snapshot at scrape time.

:class:`NodeCollector` keeps no counters of its own: each scrape calls the node's
``snapshot()`` (see :mod:`p2pnode.node.telemetry` for its shape) and turns it into
metric families, so the figures can never drift from what the node and its ledger
say. Amounts are in the payment token's base units.

Exported (``_total`` is added to counters by the exposition format):

==========================================  =======  =====================================
name                                        type     labels
==========================================  =======  =====================================
hearth_node_accepting                       gauge    (1 while bidding)
hearth_uptime_seconds                       gauge
hearth_tokens_generated_total               counter
hearth_tokens_per_second                    gauge    (over the last ~60 s)
hearth_measured_tokens_per_second           gauge    (per job, at the batch a new job
                                                      would join: what offers state)
hearth_measured_ttft_seconds                gauge    (median of recent requests)
hearth_jobs_total                           counter  outcome (ledger status: done, …)
hearth_jobs_active                          gauge
hearth_rfqs_seen_total                      counter
hearth_bids_total                           counter  result = won | lost
hearth_bids_open                            gauge
hearth_bids_declined_total                  counter  reason
hearth_earnings_credited_total              counter  (vouchers credited for served jobs)
hearth_earnings_onchain_net_total           counter  (redeemed on chain, net of fees)
hearth_vouchers_held                        gauge
hearth_vouchers_pending_amount              gauge    (held but not yet redeemed)
hearth_redemptions                          gauge    status
hearth_redemptions_amount                   gauge    status
hearth_power_state                          gauge    state (1 for the current one)
hearth_cpu_load1                            gauge
hearth_memory_used_ratio                    gauge
hearth_gpu_utilization_ratio                gauge    gpu, name   (NVML only)
hearth_gpu_temperature_celsius              gauge    gpu, name   (NVML only)
hearth_gpu_power_watts                      gauge    gpu, name   (NVML only)
hearth_gpu_memory_used_ratio                gauge    gpu, name   (NVML only)
hearth_peers                                gauge
hearth_pubsub_<kind>_total                  counter  (delivered, dropped_full, invalid,
                                                      malformed_frames, blacklisted)
==========================================  =======  =====================================

Peers and pubsub names match the bootstrap's ``/metrics`` (:mod:`bootstrap.http`), so
one dashboard query covers both kinds of node. GPU families are absent, not zero,
where NVML is absent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = ["POWER_STATES", "NodeCollector", "node_registry", "render_metrics"]

POWER_STATES = ("normal", "throttled", "draining", "off")
_GOSSIP = ("delivered", "dropped_full", "invalid", "malformed_frames", "blacklisted")


class NodeCollector:
    """A custom collector: one ``snapshot()`` per scrape, turned into metric families."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # families vary (GPU, labels): let the registry skip up-front checks

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot()
        yield _gauge("hearth_node_accepting", "1 while the node bids for jobs", s["accepting"])
        if s.get("uptime_s") is not None:
            yield _gauge("hearth_uptime_seconds", "Seconds since the node started", s["uptime_s"])
        yield from self._work(s)
        yield from self._money(s)
        yield from self._power_and_hardware(s)
        yield from self._network(s)

    def _work(self, s: dict[str, Any]) -> Iterator[Metric]:
        tok, jobs, bids = s["tokens"], s["jobs"], s["bids"]
        yield CounterMetricFamily(
            "hearth_tokens_generated", "Tokens generated for buyers", value=tok["total"]
        )
        yield _gauge("hearth_tokens_per_second", "Tokens generated per second", tok["per_s"])
        measured = s.get("measured") or {}
        if measured.get("tokens_per_s") is not None:
            yield _gauge(
                "hearth_measured_tokens_per_second",
                "Measured tokens/s per job at the batch a new job would join (as offered)",
                measured["tokens_per_s"],
            )
        if measured.get("ttft_ms") is not None:
            yield _gauge(
                "hearth_measured_ttft_seconds",
                "Measured time to first token, median of recent requests (as offered)",
                measured["ttft_ms"] / 1000.0,
            )
        fam = CounterMetricFamily("hearth_jobs", "Jobs served, by outcome", labels=["outcome"])
        for outcome, n in sorted(jobs["by_outcome"].items()):
            if outcome != "running":
                fam.add_metric([outcome], n)
        yield fam
        yield _gauge("hearth_jobs_active", "Jobs running now", jobs["active"])
        yield CounterMetricFamily(
            "hearth_rfqs_seen", "Requests for quotes received", value=bids["rfqs_seen"]
        )
        fam = CounterMetricFamily("hearth_bids", "Bids sent, by result", labels=["result"])
        fam.add_metric(["won"], bids["won"])
        fam.add_metric(["lost"], bids["lost"])
        yield fam
        yield _gauge("hearth_bids_open", "Bids awaiting an award", bids["open"])
        fam = CounterMetricFamily(
            "hearth_bids_declined", "Requests declined, by reason", labels=["reason"]
        )
        for reason, n in sorted(bids["declined"].items()):
            fam.add_metric([reason], n)
        yield fam

    def _money(self, s: dict[str, Any]) -> Iterator[Metric]:
        earn, vouch = s["earnings"], s["vouchers"]
        yield CounterMetricFamily(
            "hearth_earnings_credited",
            "Voucher amounts credited for served jobs (token base units)",
            value=earn["credited"],
        )
        yield CounterMetricFamily(
            "hearth_earnings_onchain_net",
            "Amounts redeemed on chain, net of fees (token base units)",
            value=earn["on_chain_net"],
        )
        yield _gauge("hearth_vouchers_held", "Payment channels with a held voucher", vouch["held"])
        yield _gauge(
            "hearth_vouchers_pending_amount",
            "Held voucher value not yet redeemed (token base units)",
            vouch["pending_amount"],
        )
        count = GaugeMetricFamily("hearth_redemptions", "Redemptions by status", labels=["status"])
        amount = GaugeMetricFamily(
            "hearth_redemptions_amount",
            "Cumulative voucher amounts in redemptions, by status (token base units)",
            labels=["status"],
        )
        for status, r in sorted(s["redemptions"].items()):
            count.add_metric([status], r["count"])
            amount.add_metric([status], r["amount"])
        yield count
        yield amount

    def _power_and_hardware(self, s: dict[str, Any]) -> Iterator[Metric]:
        current = s["power"]["state"]
        fam = GaugeMetricFamily(
            "hearth_power_state", "Power state (1 for the current one)", labels=["state"]
        )
        for state in sorted({*POWER_STATES, current}):
            fam.add_metric([state], 1.0 if state == current else 0.0)
        yield fam
        cpu = s["hardware"]["cpu"]
        if "load1" in cpu:
            yield _gauge("hearth_cpu_load1", "CPU load average over 1 minute", cpu["load1"])
        if "mem_used_frac" in cpu:
            yield _gauge("hearth_memory_used_ratio", "Host memory in use", cpu["mem_used_frac"])
        gpus = s["hardware"]["gpus"]
        if gpus is None:
            return  # no NVML: nothing is known, so nothing is exported
        for key, name, doc, scale in (
            ("util_pct", "hearth_gpu_utilization_ratio", "GPU utilisation", 0.01),
            ("temp_c", "hearth_gpu_temperature_celsius", "GPU temperature", 1.0),
            ("power_w", "hearth_gpu_power_watts", "GPU power draw", 1.0),
            ("mem_used_frac", "hearth_gpu_memory_used_ratio", "GPU memory in use", 1.0),
        ):
            fam = GaugeMetricFamily(name, doc, labels=["gpu", "name"])
            for g in gpus:
                if key in g:
                    fam.add_metric([str(g["index"]), g["name"]], g[key] * scale)
            yield fam

    def _network(self, s: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge("hearth_peers", "Connected peers", s["peers"]["count"])
        for kind in _GOSSIP:
            if kind in s["gossip"]:
                yield CounterMetricFamily(
                    f"hearth_pubsub_{kind}", f"Pubsub messages/frames: {kind}", s["gossip"][kind]
                )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def node_registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding only this node's collector (no process-global metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(snapshot))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` (blocking: run it in a thread)."""
    return generate_latest(registry)
