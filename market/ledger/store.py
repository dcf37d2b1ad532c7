"""The node's (or buyer's) SQLite ledger: vouchers, redemptions, earnings, jobs.

One database file per node or buyer, opened with sqlite-utils in WAL mode so a reader
(``hearth`` status commands) never blocks the writer. Amounts can exceed 64 bits, so
they are stored as decimal TEXT and compared in Python.

Tables
------
``vouchers``      the latest (highest) voucher per channel epoch
                  ``(buyer, provider, token, epoch)``; a voucher, once accepted, is
                  never lost or lowered.
``redemptions``   each redemption we sign: the intent (with tx hash and the signed raw
                  transaction) is written *before* sending; its status moves
                  ``pending`` → ``confirmed`` | ``failed`` | ``dropped``.
``earnings``      one row per on-chain ``Redeemed`` event paying us, keyed by
                  ``(tx_hash, log_index)``: the chain is the truth, and the key makes
                  re-reading the same log harmless.
``withdrawal_notices``  buyers' ``WithdrawalRequested`` notices (the policy redeems
                  before they end).
``jobs``          jobs served or bought.
``meta``          small key/value state (e.g. the last block scanned).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from market.chain.voucher import Voucher, VoucherDomain, recover_voucher_signer

__all__ = ["Ledger", "RedemptionRow", "StoredVoucher"]

PENDING, CONFIRMED, FAILED, DROPPED = "pending", "confirmed", "failed", "dropped"


def _hex(b: bytes) -> str:
    return "0x" + b.hex()


def _unhex(s: str) -> bytes:
    return bytes.fromhex(s.removeprefix("0x"))


@dataclass(frozen=True, slots=True)
class StoredVoucher:
    """A voucher we hold, with its signature and the hub it is for."""

    voucher: Voucher
    signature: bytes
    chain_id: int
    contract: bytes
    job_id: bytes | None
    received_at: float


@dataclass(frozen=True, slots=True)
class RedemptionRow:
    id: int
    buyer: bytes
    provider: bytes
    token: bytes
    epoch: int
    cumulative_amount: int
    tx_hash: bytes
    raw_tx: bytes
    nonce: int
    status: str
    created_at: float


class Ledger:
    """A ledger in one SQLite file (``":memory:"`` works for tests)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        # Opened with check_same_thread=False: the node drives the ledger from trio's
        # worker threads, one call at a time (behind the TrioChain limiter). Another
        # process or thread that wants to read opens its own Ledger (WAL lets it).
        self.db = sqlite_utils.Database(sqlite3.connect(self.path, check_same_thread=False))
        if self.path != ":memory:":
            self.db.enable_wal()
        self.db.execute("PRAGMA busy_timeout = 10000")
        self._create()

    def close(self) -> None:
        self.db.close()

    def _create(self) -> None:
        db = self.db
        if "vouchers" not in db.table_names():
            db["vouchers"].create(
                {
                    "buyer": str, "provider": str, "token": str, "epoch": int,
                    "cumulative_amount": str, "signature": str, "chain_id": int,
                    "contract": str, "job_id": str, "received_at": float,
                },
                pk=("buyer", "provider", "token", "epoch"),
            )  # fmt: skip
        if "redemptions" not in db.table_names():
            db["redemptions"].create(
                {
                    "id": int, "buyer": str, "provider": str, "token": str, "epoch": int,
                    "cumulative_amount": str, "tx_hash": str, "raw_tx": str, "nonce": int,
                    "status": str, "created_at": float, "settled_at": float,
                    "block_number": int, "gas_used": int, "note": str,
                },
                pk="id",
            )  # fmt: skip
            db["redemptions"].create_index(["status"])
            db["redemptions"].create_index(["tx_hash"], unique=True)
        if "earnings" not in db.table_names():
            db["earnings"].create(
                {
                    "tx_hash": str, "log_index": int, "block_number": int, "day": str,
                    "buyer": str, "provider": str, "token": str, "amount": str, "fee": str,
                    "cumulative_amount": str, "epoch": int,
                },
                pk=("tx_hash", "log_index"),
            )  # fmt: skip
        if "withdrawal_notices" not in db.table_names():
            db["withdrawal_notices"].create(
                {"buyer": str, "token": str, "amount": str, "unlock_at": int, "block_number": int},
                pk=("buyer", "token"),
            )
        if "jobs" not in db.table_names():
            db["jobs"].create(
                {
                    "job_id": str, "role": str, "counterparty": str, "model_id": str,
                    "tokens": int, "amount": str, "status": str, "started_at": float,
                    "finished_at": float,
                },
                pk="job_id",
            )  # fmt: skip
        if "meta" not in db.table_names():
            db["meta"].create({"key": str, "value": str}, pk="key")

    # ------------------------------------------------------------- vouchers

    def accept_voucher(
        self,
        domain: VoucherDomain,
        voucher: Voucher,
        signature: bytes,
        *,
        job_id: bytes | None = None,
    ) -> bool:
        """Verify and keep `voucher` if it is the highest seen for its channel epoch.

        Raises ``InvalidVoucherSignature`` / ``ValueError`` if the buyer did not sign
        it. Returns ``True`` if stored, ``False`` if an equal or higher one is held.
        """
        if recover_voucher_signer(domain, voucher, signature) != voucher.buyer:
            raise ValueError("voucher is not signed by its buyer")
        key = (_hex(voucher.buyer), _hex(voucher.provider), _hex(voucher.token), voucher.epoch)
        with self.db.conn:
            try:
                row = self.db["vouchers"].get(key)
                if int(row["cumulative_amount"]) >= voucher.cumulative_amount:
                    return False
            except sqlite_utils.db.NotFoundError:
                pass
            self.db["vouchers"].upsert(
                {
                    "buyer": key[0], "provider": key[1], "token": key[2], "epoch": key[3],
                    "cumulative_amount": str(voucher.cumulative_amount),
                    "signature": _hex(signature), "chain_id": domain.chain_id,
                    "contract": _hex(domain.verifying_contract),
                    "job_id": job_id.hex() if job_id else None, "received_at": time.time(),
                },
                pk=("buyer", "provider", "token", "epoch"),
            )  # fmt: skip
        return True

    def vouchers(self, provider: bytes | None = None) -> list[StoredVoucher]:
        """Every held voucher (latest per channel epoch), oldest epoch first."""
        where, args = ("provider = ?", [_hex(provider)]) if provider else (None, [])
        rows = self.db["vouchers"].rows_where(where, args, order_by="buyer, token, epoch")
        return [self._voucher(r) for r in rows]

    def latest_voucher(self, buyer: bytes, provider: bytes, token: bytes) -> StoredVoucher | None:
        """The held voucher of the highest epoch for a channel."""
        rows = list(
            self.db["vouchers"].rows_where(
                "buyer = ? and provider = ? and token = ?",
                [_hex(buyer), _hex(provider), _hex(token)],
                order_by="epoch desc",
                limit=1,
            )
        )
        return self._voucher(rows[0]) if rows else None

    @staticmethod
    def _voucher(r: dict[str, Any]) -> StoredVoucher:
        return StoredVoucher(
            voucher=Voucher(
                buyer=_unhex(r["buyer"]),
                provider=_unhex(r["provider"]),
                token=_unhex(r["token"]),
                cumulative_amount=int(r["cumulative_amount"]),
                epoch=r["epoch"],
            ),
            signature=_unhex(r["signature"]),
            chain_id=r["chain_id"],
            contract=_unhex(r["contract"]),
            job_id=bytes.fromhex(r["job_id"]) if r["job_id"] else None,
            received_at=r["received_at"],
        )

    # ---------------------------------------------------------- redemptions

    def record_intent(self, voucher: Voucher, tx_hash: bytes, raw_tx: bytes, nonce: int) -> int:
        """Write a redemption intent (status ``pending``) BEFORE broadcasting it."""
        with self.db.conn:
            table = self.db["redemptions"].insert(
                {
                    "buyer": _hex(voucher.buyer), "provider": _hex(voucher.provider),
                    "token": _hex(voucher.token), "epoch": voucher.epoch,
                    "cumulative_amount": str(voucher.cumulative_amount), "tx_hash": _hex(tx_hash),
                    "raw_tx": _hex(raw_tx), "nonce": nonce, "status": PENDING,
                    "created_at": time.time(),
                }
            )  # fmt: skip
        return int(table.last_pk)

    def settle(
        self,
        redemption_id: int,
        status: str,
        *,
        block_number: int | None = None,
        gas_used: int | None = None,
        note: str = "",
    ) -> bool:
        """Move a ``pending`` redemption to `status`; ``False`` if it was not pending."""
        with self.db.conn:
            cur = self.db.execute(
                "UPDATE redemptions SET status = ?, settled_at = ?, block_number = ?, gas_used = ?, "
                "note = ? WHERE id = ? AND status = ?",
                [status, time.time(), block_number, gas_used, note, redemption_id, PENDING],
            )
            return cur.rowcount == 1

    def redemptions(self, status: str | None = None) -> list[RedemptionRow]:
        where, args = ("status = ?", [status]) if status else (None, [])
        return [
            RedemptionRow(
                id=r["id"],
                buyer=_unhex(r["buyer"]),
                provider=_unhex(r["provider"]),
                token=_unhex(r["token"]),
                epoch=r["epoch"],
                cumulative_amount=int(r["cumulative_amount"]),
                tx_hash=_unhex(r["tx_hash"]),
                raw_tx=_unhex(r["raw_tx"]),
                nonce=r["nonce"],
                status=r["status"],
                created_at=r["created_at"],
            )
            for r in self.db["redemptions"].rows_where(where, args, order_by="id")
        ]

    # ------------------------------------------------------------- earnings

    def record_earning(
        self,
        *,
        tx_hash: bytes,
        log_index: int,
        block_number: int,
        timestamp: int,
        buyer: bytes,
        provider: bytes,
        token: bytes,
        amount: int,
        fee: int,
        cumulative_amount: int,
        epoch: int,
    ) -> bool:
        """Record one on-chain ``Redeemed`` event; ``False`` if already recorded."""
        day = dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d")
        with self.db.conn:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO earnings (tx_hash, log_index, block_number, day, buyer, "
                "provider, token, amount, fee, cumulative_amount, epoch) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    _hex(tx_hash), log_index, block_number, day, _hex(buyer), _hex(provider),
                    _hex(token), str(amount), str(fee), str(cumulative_amount), epoch,
                ],
            )  # fmt: skip
            return cur.rowcount == 1

    def earnings_by_day(self) -> list[dict[str, Any]]:
        """``[{day, token, gross, fees, net, redemptions}]`` sorted by day."""
        totals: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.db["earnings"].rows_where(order_by="day"):
            t = totals.setdefault(
                (r["day"], r["token"]),
                {"day": r["day"], "token": r["token"], "gross": 0, "fees": 0, "redemptions": 0},
            )
            t["gross"] += int(r["amount"])
            t["fees"] += int(r["fee"])
            t["redemptions"] += 1
        for t in totals.values():
            t["net"] = t["gross"] - t["fees"]
        return list(totals.values())

    def earned_on_chain(self, buyer: bytes, provider: bytes, token: bytes) -> int:
        """Gross amount this ledger has seen redeemed on a channel (all epochs)."""
        rows = self.db["earnings"].rows_where(
            "buyer = ? and provider = ? and token = ?", [_hex(buyer), _hex(provider), _hex(token)]
        )
        return sum(int(r["amount"]) for r in rows)

    # ------------------------------------------------------- withdrawals

    def record_withdrawal_notice(
        self, buyer: bytes, token: bytes, amount: int, unlock_at: int, block_number: int
    ) -> None:
        self.db["withdrawal_notices"].upsert(
            {
                "buyer": _hex(buyer), "token": _hex(token), "amount": str(amount),
                "unlock_at": unlock_at, "block_number": block_number,
            },
            pk=("buyer", "token"),
        )  # fmt: skip

    def withdrawal_unlock_at(self, buyer: bytes, token: bytes) -> int | None:
        try:
            return int(self.db["withdrawal_notices"].get((_hex(buyer), _hex(token)))["unlock_at"])
        except sqlite_utils.db.NotFoundError:
            return None

    # ---------------------------------------------------------------- jobs

    def record_job(
        self, job_id: bytes, *, role: str, counterparty: str, model_id: str, status: str = "running"
    ) -> None:
        self.db["jobs"].upsert(
            {
                "job_id": job_id.hex(), "role": role, "counterparty": counterparty,
                "model_id": model_id, "tokens": 0, "amount": "0", "status": status,
                "started_at": time.time(),
            },
            pk="job_id",
        )  # fmt: skip

    def finish_job(self, job_id: bytes, *, tokens: int, amount: int, status: str = "done") -> None:
        self.db["jobs"].update(
            job_id.hex(),
            {"tokens": tokens, "amount": str(amount), "status": status, "finished_at": time.time()},
        )

    def jobs(self) -> list[dict[str, Any]]:
        return list(self.db["jobs"].rows_where(order_by="started_at"))

    # ---------------------------------------------------------------- meta

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        try:
            return str(self.db["meta"].get(key)["value"])
        except sqlite_utils.db.NotFoundError:
            return default

    def set_meta(self, key: str, value: str) -> None:
        self.db["meta"].upsert({"key": key, "value": value}, pk="key")
