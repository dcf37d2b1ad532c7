"""Typed wrappers for Hearth's contracts: Python names, ``bytes`` addresses, ints.

Each wrapper holds a :class:`~market.chain.client.ChainClient` (whose key signs the
writes) and a contract address. Writes return a :class:`~market.chain.client.Receipt`
or raise :class:`~market.chain.errors.ContractReverted`; reads return plain values.
``as_(client)`` gives the same contract seen by another signer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

from web3 import Web3

from market.chain.client import ChainClient, Receipt, SignedTx
from market.chain.voucher import Voucher, VoucherDomain

__all__ = [
    "Collateral",
    "Erc20",
    "PaymentHub",
    "ProviderInfo",
    "ProviderRegistry",
    "SignedVoucher",
]

Address = bytes | str


def _cs(address: Address) -> str:
    return Web3.to_checksum_address(address)


def _b(address: str) -> bytes:
    return bytes.fromhex(address[2:])


class _Wrapper:
    ARTIFACT = ""

    def __init__(self, client: ChainClient, address: Address) -> None:
        self.client = client
        self.address = _cs(address)
        self.contract = client.contract(self.ARTIFACT, self.address)

    @property
    def address_bytes(self) -> bytes:
        return _b(self.address)

    def as_(self, client: ChainClient) -> Self:
        """The same contract, with writes signed by `client`'s key."""
        return type(self)(client, self.address)

    def _fn(self, name: str, *args: Any) -> Any:
        return getattr(self.contract.functions, name)(*args)


class Erc20(_Wrapper):
    """An ERC-20 token (``HearthTestUSD`` adds a public ``mint`` faucet)."""

    ARTIFACT = "HearthTestUSD"

    def balance_of(self, owner: Address) -> int:
        return int(self.client.call(self._fn("balanceOf", _cs(owner))))

    def allowance(self, owner: Address, spender: Address) -> int:
        return int(self.client.call(self._fn("allowance", _cs(owner), _cs(spender))))

    def decimals(self) -> int:
        return int(self.client.call(self._fn("decimals")))

    def approve(self, spender: Address, amount: int) -> Receipt:
        return self.client.transact(self._fn("approve", _cs(spender), amount))

    def transfer(self, to: Address, amount: int) -> Receipt:
        return self.client.transact(self._fn("transfer", _cs(to), amount))

    def mint(self, to: Address, amount: int) -> Receipt:
        """Faucet mint (test tokens only)."""
        return self.client.transact(self._fn("mint", _cs(to), amount))


@dataclass(frozen=True, slots=True)
class SignedVoucher:
    """A voucher with the buyer's 65-byte signature."""

    voucher: Voucher
    signature: bytes


class PaymentHub(_Wrapper):
    """Deposits, voucher redemption, withdrawals with notice, protocol fees."""

    ARTIFACT = "PaymentHub"

    def domain(self) -> VoucherDomain:
        """The EIP-712 domain vouchers for this hub are signed under."""
        return VoucherDomain(chain_id=self.client.chain_id, verifying_contract=self.address_bytes)

    # reads
    def balance_of(self, buyer: Address, token: Address) -> int:
        return int(self.client.call(self._fn("balanceOf", _cs(buyer), _cs(token))))

    def redeemed(
        self, buyer: Address, provider: Address, token: Address, *, block: int | str = "latest"
    ) -> tuple[int, int]:
        """``(amount redeemed in the current epoch, epoch)`` of one channel: the truth
        the ledger reconciles against."""
        amount, epoch = self.client.call(
            self._fn("redeemed", _cs(buyer), _cs(provider), _cs(token)), block=block
        )
        return int(amount), int(epoch)

    def collateral(self, buyer: Address, provider: Address, token: Address) -> Collateral:
        """What ``buyer`` locked for ``provider`` (see :class:`Collateral`)."""
        locked, unlocking, unlock_at = self.client.call(
            self._fn("collateral", _cs(buyer), _cs(provider), _cs(token))
        )
        return Collateral(int(locked), int(unlocking), int(unlock_at))

    def cover(self, buyer: Address, provider: Address, token: Address) -> int:
        """The cumulative voucher amount the channel is sure to pay: what it redeemed in its
        current epoch plus the lock, less the part under notice to be released."""
        redeemed, _epoch = self.redeemed(buyer, provider, token)
        return redeemed + self.collateral(buyer, provider, token).firm

    def pending_withdrawal(self, buyer: Address, token: Address) -> tuple[int, int]:
        """``(amount, unlock_at)`` of the buyer's withdrawal notice; ``(0, 0)`` if none."""
        amount, unlock_at = self.client.call(self._fn("pendingWithdrawal", _cs(buyer), _cs(token)))
        return int(amount), int(unlock_at)

    def accrued_fees(self, token: Address) -> int:
        return int(self.client.call(self._fn("accruedFees", _cs(token))))

    def fee_bps(self) -> int:
        return int(self.client.call(self._fn("feeBps")))

    def treasury(self) -> str:
        return str(self.client.call(self._fn("treasury")))

    def withdrawal_delay(self) -> int:
        return int(self.client.call(self._fn("withdrawalDelay")))

    def onchain_digest(self, voucher: Voucher) -> bytes:
        return bytes(self.client.call(self._fn("voucherDigest", voucher.as_abi_tuple())))

    # buyer writes
    def deposit(self, token: Address, amount: int) -> Receipt:
        """Deposit `amount` (approve the hub on the token first)."""
        return self.client.transact(self._fn("deposit", _cs(token), amount))

    def request_withdrawal(self, token: Address, amount: int) -> Receipt:
        return self.client.transact(self._fn("requestWithdrawal", _cs(token), amount))

    def cancel_withdrawal(self, token: Address) -> Receipt:
        return self.client.transact(self._fn("cancelWithdrawal", _cs(token)))

    def execute_withdrawal(self, token: Address) -> Receipt:
        return self.client.transact(self._fn("executeWithdrawal", _cs(token)))

    def lock(self, provider: Address, token: Address, amount: int) -> Receipt:
        """Lock `amount` of the free balance for `provider` (its vouchers draw on it first)."""
        return self.client.transact(self._fn("lock", _cs(provider), _cs(token), amount))

    def request_unlock(self, provider: Address, token: Address, amount: int) -> Receipt:
        return self.client.transact(self._fn("requestUnlock", _cs(provider), _cs(token), amount))

    def cancel_unlock(self, provider: Address, token: Address) -> Receipt:
        return self.client.transact(self._fn("cancelUnlock", _cs(provider), _cs(token)))

    def execute_unlock(self, provider: Address, token: Address) -> Receipt:
        return self.client.transact(self._fn("executeUnlock", _cs(provider), _cs(token)))

    # provider writes
    def redeem_fn(self, sv: SignedVoucher) -> Any:
        return self._fn("redeem", sv.voucher.as_abi_tuple(), sv.signature)

    def sign_redeem(self, sv: SignedVoucher, *, gas: int | None = None) -> SignedTx:
        """Build and sign (not send) a redemption: lets the ledger record the tx hash first."""
        return self.client.sign(self.redeem_fn(sv), gas=gas)

    def redeem(self, sv: SignedVoucher) -> Receipt:
        return self.client.transact(self.redeem_fn(sv))

    def redeem_many_fn(self, vouchers: Sequence[SignedVoucher]) -> Any:
        return self._fn(
            "redeemMany",
            [sv.voucher.as_abi_tuple() for sv in vouchers],
            [sv.signature for sv in vouchers],
        )

    def redeem_many(self, vouchers: Sequence[SignedVoucher]) -> Receipt:
        """Redeem many buyers' vouchers (same provider and token) in one transaction."""
        return self.client.transact(self.redeem_many_fn(vouchers))

    # treasury / owner
    def withdraw_fees(self, token: Address, to: Address) -> Receipt:
        return self.client.transact(self._fn("withdrawFees", _cs(token), _cs(to)))

    def set_fee_bps(self, fee_bps: int) -> Receipt:
        return self.client.transact(self._fn("setFeeBps", fee_bps))


@dataclass(frozen=True, slots=True)
class Collateral:
    """Money a buyer locked for one provider: only that provider's vouchers draw on it."""

    locked: int
    unlocking: int  # part of `locked` under notice to go back to the buyer
    unlock_at: int  # when that notice ends (0: none)

    @property
    def firm(self) -> int:
        """The part of the lock that stays whatever the buyer does next."""
        return max(0, self.locked - self.unlocking)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    stake: int
    unbonding: int
    unbonding_unlock_at: int
    peer_id: str


class ProviderRegistry(_Wrapper):
    """Provider stake, peer-id registration, unbonding and slashing."""

    ARTIFACT = "ProviderRegistry"
    ARBITER_ROLE = Web3.keccak(text="ARBITER_ROLE")

    def register(self, peer_id: str, amount: int) -> Receipt:
        """Register `peer_id` and bond `amount` (approve the registry on the stake token first)."""
        return self.client.transact(self._fn("register", peer_id, amount))

    def add_stake(self, amount: int) -> Receipt:
        return self.client.transact(self._fn("addStake", amount))

    def begin_unbonding(self, amount: int) -> Receipt:
        return self.client.transact(self._fn("beginUnbonding", amount))

    def withdraw_unbonded(self) -> Receipt:
        return self.client.transact(self._fn("withdrawUnbonded"))

    def slash(self, provider: Address, amount: int, evidence_hash: bytes) -> Receipt:
        """Arbiter only: take up to `amount` of `provider`'s stake, citing `evidence_hash` (32 bytes)."""
        return self.client.transact(self._fn("slash", _cs(provider), amount, evidence_hash))

    def grant_arbiter(self, account: Address) -> Receipt:
        return self.client.transact(self._fn("grantRole", self.ARBITER_ROLE, _cs(account)))

    def provider_info(self, provider: Address) -> ProviderInfo:
        stake, unbonding, unlock_at, peer_id = self.client.call(
            self._fn("providerInfo", _cs(provider))
        )
        return ProviderInfo(int(stake), int(unbonding), int(unlock_at), str(peer_id))

    def is_active(self, provider: Address) -> bool:
        return bool(self.client.call(self._fn("isActive", _cs(provider))))

    def is_active_for(self, provider: Address, peer_id: str) -> bool:
        """Whether `provider` is active *and* registered `peer_id` as the peer id it bids as."""
        return bool(self.client.call(self._fn("isActiveFor", _cs(provider), peer_id)))

    def min_stake(self) -> int:
        return int(self.client.call(self._fn("minStake")))

    def stake_token(self) -> str:
        return str(self.client.call(self._fn("stakeToken")))
