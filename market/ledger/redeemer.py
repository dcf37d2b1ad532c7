"""Redeem held vouchers on chain when it pays, exactly once across crashes.

Policy (:class:`RedemptionPolicy`): a channel is *due* when what it has accrued (the
held voucher minus what the chain says is redeemed) is worth at least
``gas_multiple`` × the gas cost of a redemption, or — whatever the amount — when the
buyer has given withdrawal notice that ends within ``notice_margin_s`` (we watch the
hub's ``WithdrawalRequested`` events), or when a newer epoch is waiting behind an older
one.

Exactly once (:meth:`Redeemer.redeem`):

1. sign the redemption locally (the tx hash is known before anything is sent);
2. write the intent — tx hash, signed raw tx, nonce — to the ledger as ``pending``;
3. broadcast, wait for the receipt, mark it ``confirmed`` (or ``failed``).

If the process dies anywhere in 3, :meth:`Redeemer.reconcile` on restart looks at each
``pending`` row: a receipt settles it; otherwise the chain's ``redeemed`` counter is the
truth — if it already covers the voucher the row is closed, if not the *same* signed
transaction is re-broadcast (same nonce and hash, so it can land at most once) or,
when its nonce was used by something else, the row is ``dropped`` and the channel is
due again. On top, the contract pays only ``cumulative − redeemed``, so even a
duplicate transaction cannot pay twice; earnings are taken from ``Redeemed`` logs keyed
by ``(tx_hash, log_index)``, so they are counted once too.
"""

from __future__ import annotations

from dataclasses import dataclass

from market.chain.client import ChainClient, Receipt, SignedTx
from market.chain.contracts import PaymentHub, SignedVoucher
from market.chain.errors import ContractReverted
from market.chain.events import LogPoller
from market.ledger.store import CONFIRMED, DROPPED, FAILED, PENDING, Ledger, StoredVoucher

__all__ = ["REJECTED", "Redeemer", "RedemptionPolicy", "RedemptionResult"]

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

    def accrued(self, sv: StoredVoucher) -> int:
        """What redeeming `sv` now would take: the unredeemed part, capped by the buyer's
        deposit (0 if nothing is owed or its epoch is void)."""
        redeemed, epoch = self.onchain(sv)
        if sv.voucher.epoch < epoch:
            return 0
        already = redeemed if sv.voucher.epoch == epoch else 0
        owed = max(0, sv.voucher.cumulative_amount - already)
        if owed == 0:
            return 0
        return min(owed, self.hub.balance_of(sv.voucher.buyer, sv.voucher.token))

    def due(
        self, *, now: int | None = None, gas_price_wei: int | None = None
    ) -> list[StoredVoucher]:
        """Held vouchers the policy says to redeem now (oldest epoch first)."""
        now = self.client.timestamp() if now is None else now
        gas_price = int(self.client.w3.eth.gas_price) if gas_price_wei is None else gas_price_wei
        held = [
            sv
            for sv in self.ledger.vouchers(self.provider)
            if sv.contract == self.hub.address_bytes
        ]
        newest_epoch: dict[tuple[bytes, bytes], int] = {}
        for sv in held:
            k = (sv.voucher.buyer, sv.voucher.token)
            newest_epoch[k] = max(newest_epoch.get(k, 0), sv.voucher.epoch)
        out = []
        for sv in held:
            accrued = self.accrued(sv)
            if accrued == 0:
                continue
            v = sv.voucher
            unlock_at = self.ledger.withdrawal_unlock_at(v.buyer, v.token)
            notice = unlock_at is not None and unlock_at - now <= self.policy.notice_margin_s
            superseded = v.epoch < newest_epoch[(v.buyer, v.token)]
            if notice or superseded or self.policy.worth_it(accrued, gas_price):
                out.append(sv)
        return out

    # ------------------------------------------------------------- actions

    def redeem(self, sv: StoredVoucher) -> RedemptionResult:
        """Redeem one held voucher exactly once (see the module docstring)."""
        signed = self.hub.sign_redeem(SignedVoucher(sv.voucher, sv.signature))
        rid = self.ledger.record_intent(sv.voucher, signed.tx_hash, signed.raw, signed.nonce)
        self.client.broadcast(signed)
        return self._await(rid, signed.tx_hash)

    def _await(self, rid: int, tx_hash: bytes) -> RedemptionResult:
        try:
            receipt = self.client.wait(tx_hash)
        except ContractReverted as exc:
            self.ledger.settle(rid, FAILED, note=str(exc))
            return RedemptionResult(rid, FAILED, None)
        self.ledger.settle(
            rid, CONFIRMED, block_number=receipt.block_number, gas_used=receipt.gas_used
        )
        self.sync_earnings()
        return RedemptionResult(rid, CONFIRMED, receipt)

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
        """Settle every ``pending`` redemption from the chain (call on start-up)."""
        results = []
        for row in self.ledger.redemptions(PENDING):
            receipt = self.client.receipt(row.tx_hash)
            if receipt is not None:
                status = CONFIRMED if receipt.status == 1 else FAILED
                self.ledger.settle(
                    row.id, status, block_number=receipt.block_number, gas_used=receipt.gas_used
                )
                results.append(RedemptionResult(row.id, status, receipt))
                continue
            redeemed, epoch = self.hub.redeemed(row.buyer, row.provider, row.token)
            if epoch > row.epoch or (epoch == row.epoch and redeemed >= row.cumulative_amount):
                self.ledger.settle(row.id, DROPPED, note="chain already covers this voucher")
                results.append(RedemptionResult(row.id, DROPPED, None))
                continue
            try:
                self.client.broadcast(
                    SignedTx(row.raw_tx, row.tx_hash, row.nonce, self.client.address)
                )
                receipt = self.client.wait(row.tx_hash, timeout=wait_s)
            except Exception as exc:  # not mined, nonce reused, node error: ask the chain
                if self.client.receipt(row.tx_hash) is None:
                    self.ledger.settle(row.id, DROPPED, note=f"not mined: {exc}")
                    results.append(RedemptionResult(row.id, DROPPED, None))
                    continue
                receipt = self.client.receipt(row.tx_hash)
            assert receipt is not None
            status = CONFIRMED if receipt.status == 1 else FAILED
            self.ledger.settle(
                row.id, status, block_number=receipt.block_number, gas_used=receipt.gas_used
            )
            results.append(RedemptionResult(row.id, status, receipt))
        self.client.nonces.resync()
        self.sync_earnings()
        return results

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
                self.ledger.db["withdrawal_notices"].delete_where(
                    "buyer = ? and token = ?", ["0x" + buyer.hex(), "0x" + token.hex()]
                )
        self.ledger.set_meta(key, str(poller.next_block))
        return len(events)

    def step(self) -> list[RedemptionResult]:
        """One round of the redemption loop: watch notices, redeem what is due."""
        self.sync_withdrawal_notices()
        results = self.redeem_due()
        self.sync_earnings()
        return results
