"""Random deposit / voucher / redeem / withdraw / stake / slash sequences on anvil.

Invariants after every step: the hub holds exactly the sum of buyers' balances plus
accrued fees; no channel has redeemed more than its buyer signed; every provider's
token balance is exactly what the model says (so nobody was paid twice or more than
signed); the registry holds exactly the stake it accounts for. At the end of each run
every buyer withdraws and must recover everything not paid to providers.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from market.chain.backends import ANVIL_DEV_KEY, connect, fund_native
from market.chain.client import ChainClient
from market.chain.contracts import SignedVoucher
from market.chain.deployment import deploy_all
from market.chain.errors import ContractReverted
from market.chain.voucher import Voucher, sign_voucher

BUYERS, PROVIDERS = 2, 2


def test_settlement_state_machine(anvil_rpc_url: str) -> None:
    w3 = connect(anvil_rpc_url)

    class Settlement(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.admin = ChainClient(w3, ANVIL_DEV_KEY)
            self.d = deploy_all(
                self.admin, min_stake=1_000, withdrawal_delay_s=100, unbonding_delay_s=100
            )
            self.token = self.d.erc20(self.admin)
            self.bps = self.d.fee_bps
            self.buyer_keys = [os.urandom(32) for _ in range(BUYERS)]
            self.buyers = [self.admin.with_key(k) for k in self.buyer_keys]
            self.providers = [self.admin.with_key(os.urandom(32)) for _ in range(PROVIDERS)]
            for c in [*self.buyers, *self.providers]:
                fund_native(self.admin, c.address, 10**18)
            self.bal = [0] * BUYERS
            self.deposited = [0] * BUYERS
            self.withdrawn = [0] * BUYERS
            self.signed: dict[tuple[int, int], list[SignedVoucher]] = {}
            self.redeemed: dict[tuple[int, int], int] = {}
            self.fees = 0
            self.prov_tokens = [0] * PROVIDERS
            self.stake = [0] * PROVIDERS
            self.unbonding = [0] * PROVIDERS
            self.registry_held = 0
            for i in range(BUYERS):  # everyone starts with a deposit
                self.deposit(i, 10**6)

        def _cum(self, i: int, j: int) -> int:
            vs = self.signed.get((i, j))
            return vs[-1].voucher.cumulative_amount if vs else 0

        @rule(i=st.integers(0, BUYERS - 1), amount=st.integers(1, 10**6))
        def deposit(self, i: int, amount: int) -> None:
            b = self.buyers[i]
            self.d.erc20(b).mint(b.address, amount)
            self.d.erc20(b).approve(self.d.payment_hub, amount)
            self.d.hub(b).deposit(self.d.token, amount)
            self.bal[i] += amount
            self.deposited[i] += amount

        @rule(
            i=st.integers(0, BUYERS - 1),
            j=st.integers(0, PROVIDERS - 1),
            inc=st.integers(1, 400_000),
        )
        def sign(self, i: int, j: int, inc: int) -> None:
            v = Voucher(
                buyer=self.buyers[i].address_bytes,
                provider=self.providers[j].address_bytes,
                token=bytes.fromhex(self.d.token[2:]),
                cumulative_amount=self._cum(i, j) + inc,
            )
            hub = self.d.hub(self.admin)
            self.signed.setdefault((i, j), []).append(
                SignedVoucher(v, sign_voucher(self.buyer_keys[i], hub.domain(), v))
            )

        @rule(
            i=st.integers(0, BUYERS - 1),
            j=st.integers(0, PROVIDERS - 1),
            inc=st.integers(1, 400_000),
        )
        def job_then_redeem(self, i: int, j: int, inc: int) -> None:
            """The common path: a job's voucher, redeemed at once."""
            self.sign(i, j, inc)
            self._redeem(i, j, self.signed[(i, j)][-1])

        @precondition(lambda self: bool(self.signed))
        @rule(data=st.data(), old=st.booleans())
        def redeem(self, data: st.DataObject, old: bool) -> None:
            i, j = data.draw(st.sampled_from(sorted(self.signed)))
            vs = self.signed[(i, j)]
            self._redeem(i, j, data.draw(st.sampled_from(vs)) if old else vs[-1])

        def _redeem(self, i: int, j: int, sv: SignedVoucher) -> None:
            already = self.redeemed.get((i, j), 0)
            owed = min(max(0, sv.voucher.cumulative_amount - already), self.bal[i])
            try:
                self.d.hub(self.providers[j]).redeem(sv)
            except ContractReverted as exc:
                assert owed == 0, f"unexpected revert {exc}"
                assert exc.name in ("PaymentHubNothingToRedeem", "PaymentHubBuyerBalanceEmpty")
                return
            assert owed > 0
            fee = owed * self.bps // 10_000
            self.redeemed[(i, j)] = already + owed
            self.bal[i] -= owed
            self.fees += fee
            self.prov_tokens[j] += owed - fee

        @rule(i=st.integers(0, BUYERS - 1), amount=st.integers(1, 2 * 10**6))
        def request_withdrawal(self, i: int, amount: int) -> None:
            self.d.hub(self.buyers[i]).request_withdrawal(self.d.token, amount)

        @rule(i=st.integers(0, BUYERS - 1), wait=st.booleans())
        def execute_withdrawal(self, i: int, wait: bool) -> None:
            hub = self.d.hub(self.buyers[i])
            amount, unlock_at = hub.pending_withdrawal(self.buyers[i].address, self.d.token)
            if wait:
                self.admin.advance_time(101)
            ready = unlock_at != 0 and self.admin.timestamp() + 1 >= unlock_at
            try:
                hub.execute_withdrawal(self.d.token)
            except ContractReverted as exc:
                assert exc.name in (
                    "PaymentHubNoWithdrawalPending",
                    "PaymentHubWithdrawalNotReady",
                ), str(exc)
                assert not (ready and wait)
                return
            assert unlock_at != 0
            paid = min(amount, self.bal[i])
            self.bal[i] -= paid
            self.withdrawn[i] += paid

        @rule(j=st.integers(0, PROVIDERS - 1), extra=st.integers(0, 5_000))
        def stake_up(self, j: int, extra: int) -> None:
            p = self.providers[j]
            amount = max(0, 1_000 - self.stake[j]) + extra
            if amount == 0:
                return
            self.d.erc20(p).mint(p.address, amount)
            self.d.erc20(p).approve(self.d.provider_registry, amount)
            self.d.registry(p).register(f"peer-{j}-{p.address}", amount)
            self.stake[j] += amount
            self.registry_held += amount

        @rule(j=st.integers(0, PROVIDERS - 1), amount=st.integers(1, 3_000))
        def unbond(self, j: int, amount: int) -> None:
            if amount > self.stake[j]:
                return
            self.d.registry(self.providers[j]).begin_unbonding(amount)
            self.stake[j] -= amount
            self.unbonding[j] += amount

        @rule(j=st.integers(0, PROVIDERS - 1), amount=st.integers(1, 4_000))
        def slash(self, j: int, amount: int) -> None:
            if self.stake[j] + self.unbonding[j] == 0:
                return
            self.d.registry(self.admin).slash(self.providers[j].address, amount, os.urandom(32))
            from_stake = min(amount, self.stake[j])
            from_unb = min(amount - from_stake, self.unbonding[j])
            self.stake[j] -= from_stake
            self.unbonding[j] -= from_unb
            self.registry_held -= from_stake + from_unb

        @invariant()
        def books_balance(self) -> None:
            if not hasattr(self, "d"):
                return
            hub = self.d.hub(self.admin)
            for i, b in enumerate(self.buyers):
                assert hub.balance_of(b.address, self.d.token) == self.bal[i]
            assert hub.accrued_fees(self.d.token) == self.fees
            assert self.token.balance_of(self.d.payment_hub) == sum(self.bal) + self.fees
            for (i, j), amount in self.redeemed.items():
                onchain, _ = hub.redeemed(
                    self.buyers[i].address, self.providers[j].address, self.d.token
                )
                assert onchain == amount <= self._cum(i, j)
            for j, p in enumerate(self.providers):
                assert self.token.balance_of(p.address) == self.prov_tokens[j]
            assert (
                self.token.balance_of(self.d.provider_registry)
                == self.registry_held
                == sum(self.stake) + sum(self.unbonding)
            )

        def teardown(self) -> None:
            if not hasattr(self, "d"):
                return
            self.admin.advance_time(101)  # let earlier notices lapse before asking anew
            for i, b in enumerate(self.buyers):
                if self.bal[i] == 0:
                    continue
                hub = self.d.hub(b)
                hub.request_withdrawal(self.d.token, self.bal[i])
                self.admin.advance_time(101)
                hub.execute_withdrawal(self.d.token)
                self.withdrawn[i] += self.bal[i]
                self.bal[i] = 0
            for i, b in enumerate(self.buyers):
                paid = sum(a for (bi, _), a in self.redeemed.items() if bi == i)
                assert (
                    self.token.balance_of(b.address)
                    == self.withdrawn[i]
                    == self.deposited[i] - paid
                )
            assert self.token.balance_of(self.d.payment_hub) == self.fees

    run_state_machine_as_test(
        Settlement,
        settings=settings(
            max_examples=8,
            stateful_step_count=20,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
