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
``withdrawal_notices``  buyers' ``WithdrawalRequested`` notices, and
``unlock_notices``  their ``UnlockRequested`` notices to release money locked for us
                  (the policy redeems before either ends).
``losses``        what a held voucher can no longer be redeemed for, and why (one row
                  per channel epoch and cause; see :meth:`Ledger.record_loss`): every
                  unit owed is redeemable, redeemed, or here — never silently zero.
``flagged_buyers``  buyers who owe us what the chain will not pay (a voided epoch, a
                  balance that cannot cover their vouchers): serve them no more.
``jobs``          jobs served or bought.
``meta``          small key/value state (e.g. the last block scanned).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from market.chain.voucher import Voucher, VoucherDomain, recover_voucher_signer

__all__ = [
    "LOSS_BALANCE_SHORT",
    "LOSS_STALE_EPOCH",
    "FlaggedBuyer",
    "Ledger",
    "Loss",
    "RedemptionRow",
    "StoredVoucher",
]

#: Where each kind of notice is kept (see the module docstring).
_NOTICE_TABLES = {"withdrawal": "withdrawal_notices", "unlock": "unlock_notices"}

PENDING, CONFIRMED, FAILED, DROPPED = "pending", "confirmed", "failed", "dropped"

#: The channel moved to a newer epoch before this voucher was redeemed in full: the
#: contract voids older epochs, so what it still claimed can never be redeemed.
LOSS_STALE_EPOCH = "stale_epoch"
#: The buyer's money on the hub cannot cover what the voucher still claims (redeemable
#: later only if the buyer deposits more; the amount is kept current).
LOSS_BALANCE_SHORT = "balance_short"


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
    note: str = ""
    block_number: int | None = None
    gas_used: int | None = None


@dataclass(frozen=True, slots=True)
class Loss:
    """What one channel epoch's held voucher can no longer be redeemed for, and why."""

    buyer: bytes
    provider: bytes
    token: bytes
    epoch: int
    cause: str
    amount: int
    detail: str
    first_seen: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class FlaggedBuyer:
    buyer: bytes
    cause: str
    detail: str
    flagged_at: float


def _addr(buyer: bytes | str) -> str:
    """A 20-byte address as the ledger stores it (lower-case ``0x`` hex)."""
    if isinstance(buyer, str):
        return "0x" + buyer.removeprefix("0x").lower()
    return _hex(buyer)


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
        for table in _NOTICE_TABLES.values():
            if table not in db.table_names():
                db[table].create(
                    {
                        "buyer": str, "token": str, "amount": str, "unlock_at": int,
                        "block_number": int,
                    },
                    pk=("buyer", "token"),
                )  # fmt: skip
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
        if "losses" not in db.table_names():
            db["losses"].create(
                {
                    "buyer": str, "provider": str, "token": str, "epoch": int, "cause": str,
                    "amount": str, "detail": str, "first_seen": float, "updated_at": float,
                },
                pk=("buyer", "provider", "token", "epoch", "cause"),
            )  # fmt: skip
        if "flagged_buyers" not in db.table_names():
            db["flagged_buyers"].create(
                {"buyer": str, "cause": str, "detail": str, "flagged_at": float}, pk="buyer"
            )

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
                note=r["note"] or "",
                block_number=r["block_number"],
                gas_used=r["gas_used"],
            )
            for r in self.db["redemptions"].rows_where(where, args, order_by="id")
        ]

    def note_pending(self, redemption_id: int, note: str) -> None:
        """Say why a ``pending`` redemption is still pending (its status is unchanged)."""
        with self.db.conn:
            self.db.execute(
                "UPDATE redemptions SET note = ? WHERE id = ? AND status = ?",
                [note, redemption_id, PENDING],
            )

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

    def redeemed_in_epoch(self, buyer: bytes, provider: bytes, token: bytes, epoch: int) -> int:
        """How far the chain's ``Redeemed`` events seen so far took a channel in `epoch`
        (its cumulative counter then; 0 if none): what a voided epoch had paid."""
        row = self.db.execute(
            "SELECT cumulative_amount FROM earnings WHERE buyer = ? AND provider = ? AND "
            "token = ? AND epoch = ?",
            [_hex(buyer), _hex(provider), _hex(token), epoch],
        ).fetchall()
        return max((int(r[0]) for r in row), default=0)

    # ------------------------------------------------------- withdrawals

    def record_withdrawal_notice(
        self,
        buyer: bytes,
        token: bytes,
        amount: int,
        unlock_at: int,
        block_number: int,
        *,
        kind: str = "withdrawal",
    ) -> None:
        """Remember that ``buyer``'s money leaves at ``unlock_at``: a withdrawal of its free
        balance, or (``kind="unlock"``) the release of what it locked for us."""
        self.db[_NOTICE_TABLES[kind]].upsert(
            {
                "buyer": _hex(buyer), "token": _hex(token), "amount": str(amount),
                "unlock_at": unlock_at, "block_number": block_number,
            },
            pk=("buyer", "token"),
        )  # fmt: skip

    def clear_withdrawal_notice(
        self, buyer: bytes, token: bytes, *, kind: str = "withdrawal"
    ) -> None:
        """The notice was cancelled or carried out."""
        self.db[_NOTICE_TABLES[kind]].delete_where(
            "buyer = ? and token = ?", [_hex(buyer), _hex(token)]
        )

    def withdrawal_unlock_at(self, buyer: bytes, token: bytes) -> int | None:
        """When the first of ``buyer``'s pending notices (either kind) ends, or ``None``."""
        ends = []
        for table in _NOTICE_TABLES.values():
            with suppress(sqlite_utils.db.NotFoundError):
                ends.append(int(self.db[table].get((_hex(buyer), _hex(token)))["unlock_at"]))
        return min(ends, default=None)

    # --------------------------------------------------------------- losses

    def record_loss(self, voucher: Voucher, *, amount: int, cause: str, detail: str = "") -> bool:
        """Record that `voucher`'s channel epoch can no longer be redeemed for `amount`
        because of `cause` (``LOSS_STALE_EPOCH``, ``LOSS_BALANCE_SHORT``).

        One row per ``(buyer, provider, token, epoch, cause)`` holding the *current*
        amount: recording the same loss again changes nothing, a larger (or, for a
        shortfall the buyer made good, smaller or zero) amount replaces it; an amount of
        0 creates no row. Returns ``True`` if a row was created or its amount changed.
        """
        if amount < 0:
            raise ValueError(f"a loss is not negative: {amount}")
        key = [
            _hex(voucher.buyer), _hex(voucher.provider), _hex(voucher.token), voucher.epoch, cause
        ]  # fmt: skip
        now = time.time()
        with self.db.conn:
            if amount == 0:
                cur = self.db.execute(
                    "UPDATE losses SET amount = '0', detail = ?, updated_at = ? WHERE buyer = ? "
                    "AND provider = ? AND token = ? AND epoch = ? AND cause = ? AND amount != '0'",
                    [detail, now, *key],
                )
                return cur.rowcount == 1
            cur = self.db.execute(
                "INSERT OR IGNORE INTO losses (buyer, provider, token, epoch, cause, amount, "
                "detail, first_seen, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [*key, str(amount), detail, now, now],
            )
            if cur.rowcount == 1:
                return True
            cur = self.db.execute(
                "UPDATE losses SET amount = ?, detail = ?, updated_at = ? WHERE buyer = ? AND "
                "provider = ? AND token = ? AND epoch = ? AND cause = ? AND amount != ?",
                [str(amount), detail, now, *key, str(amount)],
            )
            return cur.rowcount == 1

    def losses(self, *, include_recovered: bool = False) -> list[Loss]:
        """Recorded losses, oldest first (those whose amount went back to 0, e.g. a
        shortfall the buyer made good, only with `include_recovered`)."""
        rows = self.db["losses"].rows_where(order_by="first_seen, buyer, token, epoch")
        out = [
            Loss(
                buyer=_unhex(r["buyer"]),
                provider=_unhex(r["provider"]),
                token=_unhex(r["token"]),
                epoch=r["epoch"],
                cause=r["cause"],
                amount=int(r["amount"]),
                detail=r["detail"] or "",
                first_seen=r["first_seen"],
                updated_at=r["updated_at"],
            )
            for r in rows
        ]
        return out if include_recovered else [x for x in out if x.amount > 0]

    def lost_total(self, token: bytes | None = None) -> int:
        """The sum of current losses (in one token's base units when `token` is given)."""
        return sum(x.amount for x in self.losses() if token is None or x.token == token)

    # ------------------------------------------------------------ flagged buyers

    def flag_buyer(self, buyer: bytes | str, cause: str, detail: str = "") -> bool:
        """Mark `buyer` as one not to serve, citing `cause`. The first flag's cause is
        kept; returns ``True`` if the buyer was not flagged before."""
        with self.db.conn:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO flagged_buyers (buyer, cause, detail, flagged_at) "
                "VALUES (?, ?, ?, ?)",
                [_addr(buyer), cause, detail, time.time()],
            )
            return cur.rowcount == 1

    def unflag_buyer(self, buyer: bytes | str) -> bool:
        """Serve `buyer` again; ``True`` if it was flagged."""
        with self.db.conn:
            cur = self.db.execute("DELETE FROM flagged_buyers WHERE buyer = ?", [_addr(buyer)])
            return cur.rowcount == 1

    def is_flagged(self, buyer: bytes | str) -> bool:
        """Whether `buyer` (20 address bytes, or ``0x`` hex in any case) is flagged."""
        row = self.db.execute(
            "SELECT 1 FROM flagged_buyers WHERE buyer = ?", [_addr(buyer)]
        ).fetchone()
        return row is not None

    def flagged_buyers(self) -> list[FlaggedBuyer]:
        """Every flagged buyer, first flagged first."""
        return [
            FlaggedBuyer(_unhex(r["buyer"]), r["cause"], r["detail"] or "", r["flagged_at"])
            for r in self.db["flagged_buyers"].rows_where(order_by="flagged_at, buyer")
        ]

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
