"""Redeem held vouchers on chain when it pays, exactly once across crashes.

Policy (:class:`RedemptionPolicy`): a channel is *due* when what it has accrued (the
held voucher minus what the chain says is redeemed) is worth at least
``gas_multiple`` × the gas cost of a redemption, or — whatever the amount — when the
buyer has given notice that ends within ``notice_margin_s`` — to withdraw its free
balance, or to release what it locked for us (we watch the hub's
``WithdrawalRequested`` and our channels' ``UnlockRequested`` events) — or when a newer
epoch is waiting behind an older one.

Exactly once (:meth:`Redeemer.redeem`):

1. sign the redemption locally (the tx hash is known before anything is sent);
2. write the intent — tx hash, signed raw tx, nonce — to the ledger as ``pending``;
3. broadcast, wait for the receipt, mark it ``confirmed`` (or ``failed``, with the
   contract's reason); no receipt in time leaves it ``pending``.

A pending redemption is settled by its receipt and its nonce, never by a clock
(:meth:`Redeemer.reconcile`, run on start and every round):

* a receipt settles it (``confirmed``, or ``failed`` with the decoded revert reason);
* no receipt and its nonce unused on chain (below the account's mined count it is
  not): it may still land, so it stays ``pending`` and the *same* signed transaction is
  re-broadcast (same nonce and hash: it can land at most once) — unless the chain
  already covers its voucher, when re-sending could only revert;
* no receipt and its nonce used: another transaction took the nonce, so this one can
  never land — only then is it ``dropped``, and the channel is due again.

While a redemption of a channel may still land and pay, nothing more is signed for that
channel: :meth:`Redeemer.due` skips it and :meth:`Redeemer.redeem` returns the pending
one. On top, the contract pays only ``cumulative − redeemed``, so even a duplicate
transaction cannot pay twice; earnings are taken from ``Redeemed`` logs keyed by
``(tx_hash, log_index)``, so they are counted once too.

Losses (:meth:`Redeemer.review`): every unit a held voucher claims is redeemable,
redeemed, or recorded lost with its cause — the channel moved to a newer epoch before
the voucher was redeemed (``stale_epoch``: void for ever), or the buyer's money on the
hub cannot cover it (``balance_short``: kept current, redeemable if the buyer deposits
more; the hub pays from the collateral the buyer locked for us, then from its free
balance). The buyer is flagged in the ledger (:meth:`Ledger.is_flagged`); who advanced
the epoch does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

from market.chain.client import ChainClient, Receipt, SignedTx
from market.chain.contracts import PaymentHub, SignedVoucher
from market.chain.errors import ContractReverted
from market.chain.events import LogPoller
from market.chain.voucher import Voucher
from market.ledger.store import (
    CONFIRMED,
    DROPPED,
    FAILED,
    LOSS_BALANCE_SHORT,
    LOSS_STALE_EPOCH,
    PENDING,
    Ledger,
    Loss,
    RedemptionRow,
    StoredVoucher,
)

__all__ = ["REJECTED", "Redeemer", "RedemptionPolicy", "RedemptionResult", "Standing"]

REJECTED = "rejected"

REDEEM_GAS_ESTIMATE = 110_000


@dataclass(frozen=True, slots=True, kw_only=True)
class RedemptionPolicy:
    """When a channel is worth redeeming.

    ``native_price_in_token``: token base units per one native coin (10**18 wei), used to
    express gas cost in the payment token (default: 3,000 hUSD per ETH).
    """

    gas_multiple: float = 10.0
    notice_margin_s: int = 3_600
    redeem_gas: int = REDEEM_GAS_ESTIMATE
    native_price_in_token: int = 3_000 * 10**6

    def gas_cost_in_token(self, gas_price_wei: int) -> int:
        return self.redeem_gas * gas_price_wei * self.native_price_in_token // 10**18

    def worth_it(self, accrued: int, gas_price_wei: int) -> bool:
        return accrued > 0 and accrued >= self.gas_multiple * self.gas_cost_in_token(gas_price_wei)


@dataclass(frozen=True, slots=True)
class RedemptionResult:
    """What one redemption attempt did."""

    redemption_id: int
    status: str
    receipt: Receipt | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Standing:
    """Where one held voucher stands against the chain (token base units).

    ``owed`` is what it still claims (its cumulative amount minus what its epoch has
    redeemed), ``payable`` what redeeming it now would take, ``lost`` the rest
    (``owed = payable + lost``), with ``cause`` saying why when ``lost > 0``.
    """

    owed: int
    payable: int
    lost: int
    cause: str | None
    detail: str = ""


class Redeemer:
    """Redeems the vouchers in `ledger` through `hub` (whose client signs as the provider)."""

    def __init__(
        self, ledger: Ledger, hub: PaymentHub, policy: RedemptionPolicy | None = None
    ) -> None:
        self.ledger = ledger
        self.hub = hub
        self.client: ChainClient = hub.client
        self.policy = policy or RedemptionPolicy()
        self.provider = self.client.address_bytes

    # -------------------------------------------------------------- state

    def onchain(self, sv: StoredVoucher) -> tuple[int, int]:
        v = sv.voucher
        return self.hub.redeemed(v.buyer, v.provider, v.token)

    def cover(self, v: Voucher) -> int:
        """What the hub can pay on `v` at most now: what the buyer locked for this
        provider (drawn on first, its part under unlock notice included until the notice
        is executed) plus the buyer's free balance (which others' vouchers may take)."""
        locked = self.hub.collateral(v.buyer, v.provider, v.token).locked
        return locked + self.hub.balance_of(v.buyer, v.token)

    def standing(self, sv: StoredVoucher) -> Standing:
        """Read the chain for `sv`: what it still claims, what is payable, what is lost."""
        v = sv.voucher
        redeemed, epoch = self.onchain(sv)
        if v.epoch < epoch:
            paid = self.ledger.redeemed_in_epoch(v.buyer, v.provider, v.token, v.epoch)
            owed = max(0, v.cumulative_amount - paid)
            detail = (
                f"channel moved to epoch {epoch} with epoch {v.epoch} redeemed to {paid} "
                f"of {v.cumulative_amount}"
            )
            return Standing(
                owed=owed,
                payable=0,
                lost=owed,
                cause=LOSS_STALE_EPOCH if owed else None,
                detail=detail if owed else "",
            )
        already = redeemed if v.epoch == epoch else 0
        owed = max(0, v.cumulative_amount - already)
        if owed == 0:
            return Standing(owed=0, payable=0, lost=0, cause=None)
        payable = min(owed, self.cover(v))
        lost = owed - payable
        detail = f"the buyer's lock and balance cover {payable} of {owed} owed" if lost else ""
        return Standing(
            owed=owed,
            payable=payable,
            lost=lost,
            cause=LOSS_BALANCE_SHORT if lost else None,
            detail=detail,
        )

    def accrued(self, sv: StoredVoucher) -> int:
        """What redeeming `sv` now would take: the unredeemed part, capped by what the
        hub holds for it (0 if nothing is owed or its epoch is void; see :meth:`standing`)."""
        return self.standing(sv).payable

    def held(self) -> list[StoredVoucher]:
        """Our held vouchers for this hub, oldest epoch first."""
        return [
            sv
            for sv in self.ledger.vouchers(self.provider)
            if sv.contract == self.hub.address_bytes
        ]

    def _covered(self, row: RedemptionRow) -> bool:
        """Whether the chain already covers `row`'s voucher (landing, it would revert)."""
        redeemed, epoch = self.hub.redeemed(row.buyer, row.provider, row.token)
        return epoch > row.epoch or (epoch == row.epoch and redeemed >= row.cumulative_amount)

    def pending(self) -> list[RedemptionRow]:
        """Our redemptions still ``pending`` (signed with this client's key), oldest first."""
        return [row for row in self.ledger.redemptions(PENDING) if row.provider == self.provider]

    def in_flight(self, buyer: bytes, token: bytes) -> RedemptionRow | None:
        """A pending redemption of ours on the (buyer, token) channel that may still land
        and pay, if any: while it exists nothing more is signed for that channel."""
        for row in self.pending():
            if (row.buyer, row.token) == (buyer, token) and not self._covered(row):
                return row
        return None

    def due(
        self, *, now: int | None = None, gas_price_wei: int | None = None
    ) -> list[StoredVoucher]:
        """Held vouchers the policy says to redeem now (oldest epoch first); none of a
        channel whose earlier redemption may still land."""
        now = self.client.timestamp() if now is None else now
        gas_price = int(self.client.w3.eth.gas_price) if gas_price_wei is None else gas_price_wei
        held = self.held()
        newest_epoch: dict[tuple[bytes, bytes], int] = {}
        for sv in held:
            k = (sv.voucher.buyer, sv.voucher.token)
            newest_epoch[k] = max(newest_epoch.get(k, 0), sv.voucher.epoch)
        busy = {(row.buyer, row.token) for row in self.pending() if not self._covered(row)}
        out = []
        for sv in held:
            v = sv.voucher
            if (v.buyer, v.token) in busy:
                continue
            accrued = self.accrued(sv)
            if accrued == 0:
                continue
            unlock_at = self.ledger.withdrawal_unlock_at(v.buyer, v.token)
            notice = unlock_at is not None and unlock_at - now <= self.policy.notice_margin_s
            superseded = v.epoch < newest_epoch[(v.buyer, v.token)]
            if notice or superseded or self.policy.worth_it(accrued, gas_price):
                out.append(sv)
        return out

    # ------------------------------------------------------------- actions

    def redeem(self, sv: StoredVoucher) -> RedemptionResult:
        """Redeem one held voucher exactly once (see the module docstring). If an earlier
        redemption of its channel may still land, nothing is signed: that one's result
        (``pending``) is returned."""
        v = sv.voucher
        earlier = self.in_flight(v.buyer, v.token)
        if earlier is not None:
            return RedemptionResult(earlier.id, PENDING, None)
        signed = self.hub.sign_redeem(SignedVoucher(v, sv.signature))
        rid = self.ledger.record_intent(v, signed.tx_hash, signed.raw, signed.nonce)
        self.client.broadcast(signed)
        return self._await(rid, signed.tx_hash, timeout=None)

    def _await(self, rid: int, tx_hash: bytes, *, timeout: float | None) -> RedemptionResult:
        receipt = self.client.wait_for_receipt(tx_hash, timeout)
        if receipt is None:
            self.ledger.note_pending(rid, "no receipt yet; its nonce decides (see reconcile)")
            return RedemptionResult(rid, PENDING, None)
        return self._settle(rid, receipt)

    def _settle(self, rid: int, receipt: Receipt) -> RedemptionResult:
        """Settle a redemption from its receipt (a failure with its decoded reason)."""
        if receipt.status == 1:
            self.ledger.settle(
                rid, CONFIRMED, block_number=receipt.block_number, gas_used=receipt.gas_used
            )
            self.sync_earnings()
            return RedemptionResult(rid, CONFIRMED, receipt)
        try:
            reason = str(self.client.explain_failure(receipt))
        except Exception as exc:  # the receipt settles it; the reason is a courtesy
            reason = f"reverted (reason unavailable: {exc})"
        self.ledger.settle(
            rid, FAILED, block_number=receipt.block_number, gas_used=receipt.gas_used, note=reason
        )
        return RedemptionResult(rid, FAILED, receipt)

    def redeem_due(self, **kwargs: int) -> list[RedemptionResult]:
        """Redeem every due voucher, one transaction each. A voucher the chain refuses
        at gas estimation (nothing was signed or recorded) is reported ``rejected``."""
        results = []
        for sv in self.due(**kwargs):
            try:
                results.append(self.redeem(sv))
            except ContractReverted:
                results.append(RedemptionResult(-1, REJECTED, None))
        return results

    def reconcile(self, *, wait_s: float = 60.0) -> list[RedemptionResult]:
        """Settle every ``pending`` redemption by receipt and nonce (on start-up, and
        each round): see the module docstring. One still pending after `wait_s` is left
        pending, never dropped while its nonce is unused."""
        results = [self._reconcile_one(row, wait_s) for row in self.pending()]
        self.client.nonces.resync()
        self.review()  # syncs earnings first
        return results

    def _reconcile_one(self, row: RedemptionRow, wait_s: float) -> RedemptionResult:
        receipt = self.client.receipt(row.tx_hash)
        if receipt is not None:
            return self._settle(row.id, receipt)
        if row.nonce < self.client.confirmed_nonce():
            receipt = self.client.receipt(row.tx_hash)  # mined since we looked?
            if receipt is not None:
                return self._settle(row.id, receipt)
            self.ledger.settle(
                row.id, DROPPED, note=f"nonce {row.nonce} was used by another transaction"
            )
            return RedemptionResult(row.id, DROPPED, None)
        if self._covered(row):
            self.ledger.note_pending(
                row.id,
                f"nonce {row.nonce} unused; the chain already covers this voucher, so it is "
                "not re-sent (it would only revert)",
            )
            return RedemptionResult(row.id, PENDING, None)
        try:
            self.client.broadcast(SignedTx(row.raw_tx, row.tx_hash, row.nonce, self.client.address))
        except Exception as exc:  # refused or unreachable: its nonce still decides later
            self.ledger.note_pending(row.id, f"nonce {row.nonce} unused; re-broadcast: {exc}")
        return self._await(row.id, row.tx_hash, timeout=wait_s)

    # --------------------------------------------------------------- losses

    def review(self) -> list[Loss]:
        """Record what each held voucher can no longer be redeemed for, with its cause,
        and flag those buyers (idempotent: the same state records nothing new). A
        shortfall is kept current, back to 0 once the buyer makes it good; a voided
        epoch is lost for good. Returns the current losses."""
        self.sync_earnings()  # what a voided epoch had redeemed comes from its logs
        for sv in self.held():
            v = sv.voucher
            st = self.standing(sv)
            if st.cause == LOSS_STALE_EPOCH:
                self.ledger.record_loss(v, amount=st.lost, cause=st.cause, detail=st.detail)
            short = st.lost if st.cause == LOSS_BALANCE_SHORT else 0
            self.ledger.record_loss(
                v, amount=short, cause=LOSS_BALANCE_SHORT, detail=st.detail or "covered"
            )
            if st.lost > 0 and st.cause is not None:
                self.ledger.flag_buyer(v.buyer, st.cause, st.detail)
        return self.ledger.losses()

    # ------------------------------------------------------------- watching

    def _poller(self, key: str, events: list[str], topics: list[bytes | None] | None) -> LogPoller:
        start = int(self.ledger.get_meta(key, "0") or 0)
        return LogPoller(self.client, self.hub.contract, events, from_block=start, topics=topics)

    def sync_earnings(self) -> int:
        """Record ``Redeemed`` events paying this provider; returns how many were new."""
        key = f"earnings_block:{self.hub.address}"
        topic = b"\x00" * 12 + self.provider
        poller = self._poller(key, ["Redeemed"], [None, topic])
        new = 0
        for ev in poller.poll():
            a = ev.args
            ts = int(self.client.w3.eth.get_block(ev.block_number)["timestamp"])
            new += self.ledger.record_earning(
                tx_hash=ev.tx_hash,
                log_index=ev.log_index,
                block_number=ev.block_number,
                timestamp=ts,
                buyer=bytes.fromhex(a["buyer"][2:]),
                provider=bytes.fromhex(a["provider"][2:]),
                token=bytes.fromhex(a["token"][2:]),
                amount=int(a["amount"]),
                fee=int(a["fee"]),
                cumulative_amount=int(a["cumulativeAmount"]),
                epoch=int(a["epoch"]),
            )
        self.ledger.set_meta(key, str(poller.next_block))
        return new

    def sync_withdrawal_notices(self) -> int:
        """Record buyers' ``WithdrawalRequested`` notices; returns how many were seen."""
        key = f"notices_block:{self.hub.address}"
        poller = self._poller(
            key, ["WithdrawalRequested", "WithdrawalCancelled", "Withdrawn"], None
        )
        events = poller.poll()
        for ev in events:
            buyer = bytes.fromhex(ev.args["buyer"][2:])
            token = bytes.fromhex(ev.args["token"][2:])
            if ev.name == "WithdrawalRequested":
                self.ledger.record_withdrawal_notice(
                    buyer, token, int(ev.args["amount"]), int(ev.args["unlockAt"]), ev.block_number
                )
            else:
                self.ledger.clear_withdrawal_notice(buyer, token)
        self.ledger.set_meta(key, str(poller.next_block))
        return len(events) + self.sync_unlock_notices()

    def sync_unlock_notices(self) -> int:
        """Record buyers' notices to release money locked for *us* (``UnlockRequested``).

        Such a notice makes the channel due like a withdrawal notice: the lock is what
        covers the vouchers we accepted, so we redeem before it is released.
        """
        key = f"unlock_notices_block:{self.hub.address}"
        topic = b"\x00" * 12 + self.provider
        poller = self._poller(
            key, ["UnlockRequested", "UnlockCancelled", "Unlocked"], [None, topic]
        )
        events = poller.poll()
        for ev in events:
            buyer = bytes.fromhex(ev.args["buyer"][2:])
            token = bytes.fromhex(ev.args["token"][2:])
            if ev.name == "UnlockRequested":
                self.ledger.record_withdrawal_notice(
                    buyer,
                    token,
                    int(ev.args["amount"]),
                    int(ev.args["unlockAt"]),
                    ev.block_number,
                    kind="unlock",
                )
            else:
                self.ledger.clear_withdrawal_notice(buyer, token, kind="unlock")
        self.ledger.set_meta(key, str(poller.next_block))
        return len(events)

    def step(self) -> list[RedemptionResult]:
        """One round of the redemption loop: settle what is pending (without waiting),
        watch notices, redeem what is due, record losses."""
        results = [self._reconcile_one(row, 0) for row in self.pending()]
        self.sync_withdrawal_notices()
        results += self.redeem_due()
        self.review()  # syncs earnings first
        return results
