"""One read of a running node: the snapshot that ``/metrics`` and the dashboard share.

Nothing here keeps its own counters of what the node did. A :class:`Telemetry`
reads the live parts when asked — the provider's :class:`ProviderStats`, the
network's ``stats()``, the ledger's tables (through its *own* SQLite connection,
as WAL allows, so it never shares the node's connection across threads), NVML
and the host's load — and returns a plain, JSON-ready ``dict``:

.. code-block:: text

    state           "serving" | "draining" | …    (the node's life-cycle state)
    currency        {symbol, decimals}            (amounts below are in base units)
    accepting       bool                          (is it bidding?)
    price_floor_per_1k  int | None
    uptime_s, peer_id, address
    tokens          {total, per_s}                (per_s over the last ~60 s of reads)
    jobs            {active, by_outcome: {status: n}, recent: [{job_id, status, tokens, amount, …}]}
    bids            {rfqs_seen, bids, won, lost, open, declined: {reason: n},
                     rfqs_dropped: {why: n}}  (RFQs refused before any work: rate limits)
    earnings        {credited, on_chain_net, series: [[t, cumulative]], by_day: [...]}
    vouchers        {held, pending_amount}         (pending: neither redeemed nor lost)
    redemptions     {status: {count, amount}}
    losses          {total, by_cause: {cause: amount}, items: [{buyer, token, epoch, cause, amount, detail}]}
    flagged_buyers  [{buyer, cause, detail, flagged_at}]  (buyers the ledger says not to serve)
    power           {state, since, history: [{at, state, reason}]}
    hardware        {cpu: {load1, cores, mem_used_frac}, gpus: [{index, name, util_pct, temp_c, power_w}] | None}
    peers           {count, ids}
    gossip          {delivered, dropped_full, invalid, malformed_frames, blacklisted}

Only what can be measured appears: ``hardware.gpus`` is ``None`` when NVML
(``pynvml`` from ``nvidia-ml-py``) is absent or finds no driver — never zeros.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["GpuSampler", "RateMeter", "Telemetry", "host_load"]

_RECENT_JOBS = 20
_SERIES_POINTS = 200


class _Stats(Protocol):
    rfqs_seen: int
    bids: int
    declines: int
    awards: int
    jobs_completed: int
    jobs_failed: int
    tokens_served: int
    earned: int


class _Service(Protocol):
    stats: _Stats
    active_jobs: int
    accepting: bool


class _Net(Protocol):
    def stats(self) -> dict[str, Any]: ...

    def connected_peers(self) -> list[str]: ...


class RateMeter:
    """A rate from a monotonically rising total, over a sliding window of reads.

    Each :meth:`rate` call records ``(now, total)``; the rate is the rise over the
    oldest kept sample no older than ``window_s``. Reads come from scrapes and
    dashboard polls, so no background task is needed.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque(maxlen=1024)

    def rate(self, total: int) -> float:
        now = self.clock()
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t0, v0 = self._samples[0]
        return (total - v0) / (now - t0) if now > t0 else 0.0


class GpuSampler:
    """Utilisation, temperature and power of each GPU through NVML, if present.

    :meth:`read` returns ``None`` when ``pynvml`` cannot be imported or NVML does
    not initialise (no driver): callers then export nothing rather than zeros.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception:  # no library, or no driver: nothing to report
                self._nvml = None
        return self._nvml

    def read(self) -> list[dict[str, Any]] | None:
        nv = self._init()
        if nv is None:
            return None
        out: list[dict[str, Any]] = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                gpu: dict[str, Any] = {"index": i, "name": str(nv.nvmlDeviceGetName(h))}
                for key, read in (
                    ("util_pct", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                    ("temp_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                    ("power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                    ("mem_used_frac", lambda h: _frac(nv.nvmlDeviceGetMemoryInfo(h))),
                ):
                    try:
                        gpu[key] = float(read(h))
                    except Exception:  # a field this card or driver does not support
                        continue
                out.append(gpu)
        except Exception:
            return None
        return out


def _frac(mem: Any) -> float:
    return float(mem.used) / float(mem.total) if mem.total else 0.0


def host_load() -> dict[str, Any]:
    """CPU load average (1 min), core count and memory in use, from the OS (Linux)."""
    cpu: dict[str, Any] = {"cores": os.cpu_count() or 1}
    with contextlib.suppress(OSError):
        cpu["load1"] = round(os.getloadavg()[0], 2)
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
        cpu["mem_used_frac"] = round(1 - info["MemAvailable"] / info["MemTotal"], 4)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    return cpu


class Telemetry:
    """Builds the node's snapshot from its live parts; one per node.

    ``ledger_path`` is the node's ledger file: Telemetry opens it read-only on its
    own connection (lazily, guarded by a lock, so snapshots may run in worker
    threads). Power transitions are noticed whenever a snapshot sees a new state;
    the governor may also call :meth:`note_power` at the moment it changes state,
    with a reason, for an exact history.
    """

    def __init__(
        self,
        *,
        ledger_path: str | Path | None,
        provider_address: str = "",
        currency_symbol: str = "",
        currency_decimals: int = 0,
        gpus: GpuSampler | None = None,
        history: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger_path = None if ledger_path is None else Path(ledger_path)
        self.provider_address = provider_address.lower()
        self.currency = {"symbol": currency_symbol, "decimals": currency_decimals}
        self.gpus = gpus if gpus is not None else GpuSampler()
        self.clock = clock
        self.tokens_rate = RateMeter()
        self.power_history: deque[dict[str, Any]] = deque(maxlen=history)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def close(self) -> None:
        """Close the ledger connection (the node calls this on the way out)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ------------------------------------------------------------------ power
    def note_power(self, state: str, reason: str = "", at: float | None = None) -> None:
        """Record a power-state change (ignored if it is the state already recorded)."""
        if self.power_history and self.power_history[-1]["state"] == state:
            return
        when = self.clock() if at is None else at
        self.power_history.append({"at": when, "state": state, "reason": reason})

    # ------------------------------------------------------------------ ledger
    def _conn(self) -> sqlite3.Connection | None:
        if self.ledger_path is None or not self.ledger_path.exists():
            return None
        if self._db is None:
            uri = f"file:{self.ledger_path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 2000")
        return self._db

    def _ledger(self) -> dict[str, Any]:
        db = self._conn()
        empty: dict[str, Any] = {
            "jobs": {"by_outcome": {}, "recent": []},
            "earnings": {"credited": 0, "on_chain_net": 0, "series": [], "by_day": []},
            "vouchers": {"held": 0, "pending_amount": 0},
            "redemptions": {},
            "losses": {"total": 0, "by_cause": {}, "items": []},
            "flagged_buyers": [],
        }
        if db is None:
            return empty
        try:
            doc = self._read_ledger(db)
        except sqlite3.OperationalError:  # tables not created yet, or a locked moment
            return empty
        try:
            doc.update(self._read_losses(db))
        except sqlite3.OperationalError:  # a ledger from before losses were recorded
            doc.update({k: empty[k] for k in ("losses", "flagged_buyers")})
        return doc

    def _read_losses(self, db: sqlite3.Connection) -> dict[str, Any]:
        """What held vouchers can no longer be redeemed for, by cause, and the flagged
        buyers (see :meth:`market.ledger.Ledger.record_loss`)."""
        where, args = ("WHERE lower(provider) = ?", [self.provider_address])
        if not self.provider_address:
            where, args = "", []
        items = [
            {"buyer": b, "token": tk, "epoch": ep, "cause": c, "amount": int(a), "detail": d}
            for b, tk, ep, c, a, d in db.execute(
                f"SELECT buyer, token, epoch, cause, amount, detail FROM losses {where} "
                "ORDER BY first_seen",
                args,
            )
            if int(a) > 0
        ]
        by_cause: dict[str, int] = {}
        for item in items:
            by_cause[item["cause"]] = by_cause.get(item["cause"], 0) + item["amount"]
        flagged = [
            {"buyer": b, "cause": c, "detail": d, "flagged_at": t}
            for b, c, d, t in db.execute(
                "SELECT buyer, cause, detail, flagged_at FROM flagged_buyers ORDER BY flagged_at"
            )
        ]
        return {
            "losses": {"total": sum(by_cause.values()), "by_cause": by_cause, "items": items},
            "flagged_buyers": flagged,
        }

    def _read_ledger(self, db: sqlite3.Connection) -> dict[str, Any]:
        by_outcome = {
            status: n
            for status, n in db.execute(
                "SELECT status, count(*) FROM jobs WHERE role = 'provider' GROUP BY status"
            )
        }
        recent = [
            {
                "job_id": jid,
                "status": st,
                "tokens": tok or 0,
                "amount": int(amt or 0),
                "counterparty": cp,
                "started_at": s0,
                "finished_at": s1,
            }
            for jid, st, tok, amt, cp, s0, s1 in db.execute(
                "SELECT job_id, status, tokens, amount, counterparty, started_at, finished_at "
                "FROM jobs WHERE role = 'provider' ORDER BY started_at DESC LIMIT ?",
                [_RECENT_JOBS],
            )
        ]
        series: list[list[float]] = []
        total = 0
        for t, amt in db.execute(
            "SELECT finished_at, amount FROM jobs WHERE role = 'provider' "
            "AND finished_at IS NOT NULL ORDER BY finished_at"
        ):
            total += int(amt or 0)
            series.append([round(float(t), 3), total])
        if len(series) > _SERIES_POINTS:  # keep the shape, and always the last point
            step = len(series) / _SERIES_POINTS
            series = [series[int(i * step)] for i in range(_SERIES_POINTS - 1)] + [series[-1]]
        by_day: dict[str, dict[str, int]] = {}
        for day, amt, fee in db.execute("SELECT day, amount, fee FROM earnings ORDER BY day"):
            d = by_day.setdefault(day, {"gross": 0, "fees": 0})
            d["gross"] += int(amt)
            d["fees"] += int(fee)
        days = [{"day": k, **v, "net": v["gross"] - v["fees"]} for k, v in by_day.items()]
        # Held but unredeemed: each channel's latest voucher minus its best confirmed
        # redemption (both cumulative, per buyer/provider/token/epoch).
        confirmed: dict[tuple[str, str, str, int], int] = {}
        redemptions: dict[str, dict[str, int]] = {}
        for b, p, tk, ep, amt, st in db.execute(
            "SELECT buyer, provider, token, epoch, cumulative_amount, status FROM redemptions"
        ):
            r = redemptions.setdefault(st, {"count": 0, "amount": 0})
            r["count"] += 1
            r["amount"] += int(amt)
            if st == "confirmed":
                key = (b, p, tk, ep)
                confirmed[key] = max(confirmed.get(key, 0), int(amt))
        lost: dict[tuple[str, str, str, int], int] = {}
        with contextlib.suppress(sqlite3.OperationalError):  # no losses table: none lost
            for b, p, tk, ep, amt in db.execute(
                "SELECT buyer, provider, token, epoch, amount FROM losses"
            ):
                lost[(b, p, tk, ep)] = lost.get((b, p, tk, ep), 0) + int(amt)
        held = pending = 0
        where, args = ("WHERE lower(provider) = ?", [self.provider_address])
        if not self.provider_address:
            where, args = "", []
        for b, p, tk, ep, amt in db.execute(
            f"SELECT buyer, provider, token, epoch, cumulative_amount FROM vouchers {where}", args
        ):
            held += 1
            key = (b, p, tk, ep)
            pending += max(0, int(amt) - confirmed.get(key, 0) - lost.get(key, 0))
        return {
            "jobs": {"by_outcome": by_outcome, "recent": recent},
            "earnings": {
                "credited": total,
                "on_chain_net": sum(d["net"] for d in days),
                "series": series,
                "by_day": days,
            },
            "vouchers": {"held": held, "pending_amount": pending},
            "redemptions": redemptions,
        }

    # ---------------------------------------------------------------- snapshot
    def snapshot(
        self,
        *,
        state: str,
        service: _Service | None,
        net: _Net | None,
        power_state: str,
        price_floor_per_1k: int | None = None,
        started_at: float | None = None,
        peer_id: str = "",
    ) -> dict[str, Any]:
        """Read everything now; safe to call from a worker thread."""
        with self._lock:
            now = self.clock()
            self.note_power(power_state, "observed")
            doc: dict[str, Any] = {
                "state": state,
                "accepting": bool(service.accepting) if service is not None else False,
                "price_floor_per_1k": price_floor_per_1k,
                "peer_id": peer_id,
                "address": self.provider_address,
                "currency": self.currency,
                "uptime_s": round(now - started_at, 1) if started_at is not None else None,
                "updated_at": now,
            }
            doc.update(self._ledger())
            st = service.stats if service is not None else None
            tokens_total = st.tokens_served if st is not None else 0
            doc["tokens"] = {
                "total": tokens_total,
                "per_s": round(self.tokens_rate.rate(tokens_total), 3),
            }
            doc["jobs"]["active"] = service.active_jobs if service is not None else 0
            doc["jobs"]["completed"] = st.jobs_completed if st is not None else 0
            doc["jobs"]["failed"] = st.jobs_failed if st is not None else 0
            doc["bids"] = _bids(service)
            doc["earnings"]["this_run"] = st.earned if st is not None else 0
            last = self.power_history[-1]
            doc["power"] = {
                "state": power_state,
                "since": last["at"],
                "history": list(self.power_history),
            }
            doc["hardware"] = {"cpu": host_load(), "gpus": self.gpus.read()}
            doc.update(_network(net))
            return doc


def _bids(service: _Service | None) -> dict[str, Any]:
    if service is None:
        return {
            "rfqs_seen": 0, "bids": 0, "won": 0, "lost": 0, "open": 0, "declined": {},
            "rfqs_dropped": {},
        }  # fmt: skip
    st = service.stats
    # Bids still awaiting an award or expiry are neither won nor lost yet.
    open_bids = len(getattr(service, "_bids", ()))
    declined = getattr(st, "declines_by_reason", None)
    if not declined:
        declined = {"unspecified": st.declines} if st.declines else {}
    return {
        "rfqs_seen": st.rfqs_seen,
        "bids": st.bids,
        "won": st.awards,
        "lost": max(0, st.bids - st.awards - open_bids),
        "open": open_bids,
        "declined": {str(k): int(v) for k, v in dict(declined).items()},
        "rfqs_dropped": _dropped(service),
    }


def _dropped(service: _Service) -> dict[str, int]:
    """RFQs the service refused before any work, by why (its rate limiter's counters)."""
    limiter = getattr(service, "rfq_limiter", None)
    stats = getattr(limiter, "stats", {})
    return {
        k.removeprefix("dropped_"): int(v)
        for k, v in sorted(stats.items())
        if k.startswith("dropped_")
    }


def _network(net: _Net | None) -> dict[str, Any]:
    if net is None:
        return {"peers": {"count": 0, "ids": []}, "gossip": {}}
    stats = net.stats()
    ps = stats.get("pubsub", {})
    ids = sorted(str(p) for p in net.connected_peers())
    return {
        "peers": {"count": len(ids), "ids": ids},
        "gossip": {
            k: int(ps.get(k, 0))
            for k in ("delivered", "dropped_full", "invalid", "malformed_frames", "blacklisted")
        },
    }
