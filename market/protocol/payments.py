"""Payment accounting for cumulative vouchers, on both ends of a channel.

A *channel* is one buyer → provider pair on one payment contract (``token``,
``chain_id``, ``contract``, ``epoch``). The buyer deposits once; during jobs it signs
vouchers whose ``cumulative_amount`` is the total it owes that provider *over the
channel's life*, so the provider only ever needs the latest voucher to redeem.

A buyer may run many jobs on one provider at once. Their vouchers share the channel's
one cumulative total, signed in order, but they travel on different streams and can
arrive in any order, so a lower cumulative is not a voucher going back: it is an
older one, already superseded. Each voucher also says what *its job* has paid in
total (``job_paid``, not part of the signed voucher); the provider credits each job
with that, and checks that all jobs' credits together never exceed what the signed
cumulative added since it began accounting the channel. That sum holds whatever the
arrival order (a job's total at signing time is at most its total when the newest
voucher was signed, and those totals add up to that voucher's cumulative), so an
honest buyer always passes it and a buyer that claims unsigned money is caught.

* :class:`BuyerWallet` (buyer side) reserves each job's worst-case cost from the
  deposit when the job starts, tracks what its open jobs may still owe each provider
  (the *cover* that provider needs), and turns "this job now owes provider P amount
  A" into the next cumulative voucher. It never signs more than the deposit.
* :class:`VoucherBook` (provider side) accepts a voucher only if its terms match, its
  job's total moves forward, the jobs' totals stay within the signed cumulative, and
  a new cumulative has a valid signature (an injected callback: the settlement code
  supplies the real EIP-712 check) and stays within the channel's *cover*: what the
  channel redeemed plus the money the buyer locked for this very provider on chain.
  Money the buyer merely deposited could be taken first by vouchers it signed to
  others, so a provider's unpaid exposure to a buyer is bounded by the credit of its
  open jobs, whatever the buyer does elsewhere. Anything else is the buyer's fault:
  :class:`RemoteProtocolError`.

Both are plain objects, shared by every job machine of one node; they do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from market.protocol.errors import LocalProtocolError, RemoteProtocolError
from market.protocol.messages import Voucher

__all__ = [
    "BuyerWallet",
    "ChannelTerms",
    "VoucherBook",
    "VoucherDraft",
    "VoucherSigner",
    "VoucherVerifier",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelTerms:
    """Which contract and token the vouchers are for (same for every channel of a node)."""

    token: bytes
    chain_id: int
    contract: bytes
    epoch: int = 0

    def __post_init__(self) -> None:
        if len(self.token) != 20 or len(self.contract) != 20:
            raise LocalProtocolError("token and contract must be 20-byte addresses")
        if not 1 <= self.chain_id < 2**64 or not 0 <= self.epoch < 2**64:
            raise LocalProtocolError("chain_id or epoch out of range")


@dataclass(frozen=True, slots=True, kw_only=True)
class VoucherDraft:
    """Everything a voucher states except its signature (what the signer signs)."""

    job_id: bytes
    buyer_address: bytes
    provider_address: bytes
    cumulative_amount: int
    terms: ChannelTerms


#: Signs a draft with the buyer's key; returns the 65-byte signature.
VoucherSigner = Callable[[VoucherDraft], bytes]
#: True when ``voucher.signature`` is the buyer's valid signature over its fields.
VoucherVerifier = Callable[[Voucher], bool]


class BuyerWallet:
    """The buyer's channels: deposit, reservations, and cumulative amount per provider.

    >>> terms = ChannelTerms(token=bytes(20), chain_id=1, contract=bytes(20))
    >>> w = BuyerWallet(buyer_address=b"\\x01" * 20, deposit=1000, terms=terms,
    ...                 signer=lambda d: bytes(65))
    >>> w.reserve(600)
    True
    >>> w.reserve(600)        # would overcommit the deposit
    False
    >>> w.pay(bytes(16), b"\\x02" * 20, 250, reserved=600, job_paid=250).cumulative_amount
    250
    """

    __slots__ = (
        "_cumulative",
        "_open",
        "_reserved",
        "_spent",
        "buyer_address",
        "deposit",
        "signer",
        "terms",
    )

    def __init__(
        self,
        *,
        buyer_address: bytes,
        deposit: int,
        terms: ChannelTerms,
        signer: VoucherSigner,
    ) -> None:
        if len(buyer_address) != 20:
            raise LocalProtocolError("buyer_address must be 20 bytes")
        if deposit < 0:
            raise LocalProtocolError("deposit must be >= 0")
        self.buyer_address = buyer_address
        self.deposit = deposit
        self.terms = terms
        self.signer = signer
        self._cumulative: dict[bytes, int] = {}
        self._open: dict[bytes, int] = {}  # provider → open jobs' budgets still unpaid
        self._reserved = 0  # sum of open jobs' reservations not yet spent
        self._spent = 0  # sum of every cumulative amount signed

    @property
    def spent(self) -> int:
        """Total signed over all channels (what providers can redeem)."""
        return self._spent

    @property
    def available(self) -> int:
        """Deposit neither spent nor reserved by an open job."""
        return self.deposit - self._spent - self._reserved

    def cumulative(self, provider_address: bytes) -> int:
        """The last cumulative amount signed to ``provider_address`` (0 if none)."""
        return self._cumulative.get(provider_address, 0)

    def cover_needed(self, provider_address: bytes) -> int:
        """What ``provider_address`` may redeem at most: signed so far plus the budgets of
        our jobs open with it (its vouchers are refused past what we locked for it)."""
        return self._cumulative.get(provider_address, 0) + self._open.get(provider_address, 0)

    def assign(self, provider_address: bytes, budget: int) -> None:
        """A job's remaining ``budget`` may now be paid to ``provider_address``."""
        if budget < 0:
            raise LocalProtocolError("cannot assign a negative budget")
        self._open[provider_address] = self._open.get(provider_address, 0) + budget

    def unassign(self, provider_address: bytes, budget: int) -> None:
        """A job left ``provider_address`` with ``budget`` of its assignment unpaid."""
        held = self._open.get(provider_address, 0)
        if not 0 <= budget <= held:
            raise LocalProtocolError(f"unassign {budget} > assigned {held}")
        if budget == held:
            self._open.pop(provider_address, None)
        else:
            self._open[provider_address] = held - budget

    def restore(self, provider_address: bytes, cumulative: int) -> None:
        """Resume a channel after a restart: ``cumulative`` was signed in an earlier run.

        Vouchers are cumulative over the channel's life, so a restarted buyer must go
        on from the last amount it signed or providers would refuse it as going
        backwards. ``deposit`` must then count what providers already redeemed.
        """
        if len(provider_address) != 20 or cumulative < 0:
            raise LocalProtocolError("restore needs a 20-byte address and an amount >= 0")
        prev = self._cumulative.get(provider_address, 0)
        if cumulative > prev:
            self._cumulative[provider_address] = cumulative
            self._spent += cumulative - prev

    def reserve(self, amount: int) -> bool:
        """Set ``amount`` aside for a job; ``False`` if the deposit cannot cover it."""
        if amount < 0:
            raise LocalProtocolError("cannot reserve a negative amount")
        if amount > self.available:
            return False
        self._reserved += amount
        return True

    def release(self, amount: int) -> None:
        """Return the unspent part of a job's reservation."""
        if not 0 <= amount <= self._reserved:
            raise LocalProtocolError(f"release {amount} > reserved {self._reserved}")
        self._reserved -= amount

    def pay(
        self, job_id: bytes, provider_address: bytes, amount: int, *, reserved: int, job_paid: int
    ) -> Voucher:
        """Owe ``provider_address`` ``amount`` more, out of a job's ``reserved`` budget.

        Moves ``amount`` from reserved to spent and returns the signed cumulative
        voucher. ``reserved`` is the job's remaining reservation and ``job_paid`` what
        the job will have paid this provider with this voucher (the caller tracks
        both): paying more than reserved is our bug, never the provider's. A budget
        :meth:`assign`-ed to the provider shrinks by ``amount``.
        """
        if amount <= 0:
            raise LocalProtocolError(f"payment must be positive, got {amount}")
        if amount > reserved or amount > self._reserved:
            raise LocalProtocolError(f"payment {amount} exceeds the job's reservation {reserved}")
        if job_paid < amount:
            raise LocalProtocolError(f"job_paid {job_paid} < this payment {amount}")
        cum = self._cumulative.get(provider_address, 0) + amount
        draft = VoucherDraft(
            job_id=job_id,
            buyer_address=self.buyer_address,
            provider_address=provider_address,
            cumulative_amount=cum,
            terms=self.terms,
        )
        voucher = Voucher(
            job_id=job_id,
            buyer_address=self.buyer_address,
            provider_address=provider_address,
            token=self.terms.token,
            cumulative_amount=cum,
            epoch=self.terms.epoch,
            chain_id=self.terms.chain_id,
            contract=self.terms.contract,
            signature=self.signer(draft),
            job_paid=job_paid,
        )
        self._cumulative[provider_address] = cum
        open_ = self._open.get(provider_address, 0)
        if open_:
            self.unassign(provider_address, min(open_, amount))
        self._reserved -= amount
        self._spent += amount
        return voucher


class VoucherBook:
    """The provider's channels: the latest accepted voucher per buyer, and what its jobs
    were credited.

    ``cover_of(buyer_address)`` returns the cumulative amount the channel is sure to pay
    (redeemed + locked for us − under notice to unlock), as the provider last saw it on
    chain; ``verifier(voucher)`` checks the signature.
    """

    __slots__ = (
        "_credited",
        "_latest",
        "_since",
        "_suspended",
        "cover_of",
        "provider_address",
        "terms",
        "verifier",
    )

    def __init__(
        self,
        *,
        provider_address: bytes,
        terms: ChannelTerms,
        verifier: VoucherVerifier,
        cover_of: Callable[[bytes], int],
    ) -> None:
        self.provider_address = provider_address
        self.terms = terms
        self.verifier = verifier
        self.cover_of = cover_of
        self._latest: dict[bytes, Voucher] = {}
        # Per buyer: the cumulative when we began accounting its jobs (what an earlier
        # run accepted), and the sum of what its jobs were credited since.
        self._since: dict[bytes, int] = {}
        self._credited: dict[bytes, int] = {}
        self._suspended: dict[bytes, str] = {}

    def cumulative(self, buyer_address: bytes) -> int:
        """The highest cumulative amount accepted from ``buyer_address`` (0 if none)."""
        v = self._latest.get(buyer_address)
        return 0 if v is None else v.cumulative_amount

    def credited(self, buyer_address: bytes) -> int:
        """What ``buyer_address``'s jobs were credited in this run (their ``job_paid`` summed)."""
        return self._credited.get(buyer_address, 0)

    def restore(self, voucher: Voucher) -> None:
        """Take back a voucher accepted in an earlier run (from the node's ledger).

        Without it a restarted node would credit a buyer's next vouchers with the
        whole channel history instead of the increase.
        """
        buyer = voucher.buyer_address
        held = self._latest.get(buyer)
        if held is None or voucher.cumulative_amount > held.cumulative_amount:
            self._latest[buyer] = voucher
            self._since[buyer] = voucher.cumulative_amount - self._credited.get(buyer, 0)

    def suspend(self, buyer_address: bytes, cause: str) -> None:
        """Serve ``buyer_address`` no more: its channel changed under us (``cause``).

        The settlement side calls this when the chain shows a loss on the channel (an
        epoch moved past vouchers we hold, or money that no longer covers them). What
        we hold stays redeemable; new jobs from that buyer are declined.
        """
        if len(buyer_address) != 20 or not cause:
            raise LocalProtocolError("suspend needs a 20-byte address and a cause")
        self._suspended[buyer_address] = cause

    def suspended(self, buyer_address: bytes) -> str | None:
        """Why ``buyer_address`` is no longer served, or ``None``."""
        return self._suspended.get(buyer_address)

    def latest(self, buyer_address: bytes) -> Voucher | None:
        """The voucher to redeem for ``buyer_address`` (the highest accepted)."""
        return self._latest.get(buyer_address)

    def accept(self, voucher: Voucher, *, buyer_address: bytes, job_paid: int) -> int:
        """Credit ``voucher`` to its job, which was credited ``job_paid`` so far; return
        how much more the job is paid (``voucher.job_paid − job_paid``).

        A voucher whose cumulative is not above the one held is older (another of the
        buyer's jobs overtook it on the way): it is kept for nothing, but its job is
        still credited. Raises :class:`RemoteProtocolError` (and records nothing) when
        the voucher names another channel or contract, its job's total does not move
        forward, the jobs' totals would exceed what the signed cumulatives added, or a
        new cumulative exceeds the channel's cover or its signature does not verify.
        """
        t = self.terms
        if voucher.buyer_address != buyer_address:
            raise RemoteProtocolError("voucher names another buyer")
        if voucher.provider_address != self.provider_address:
            raise RemoteProtocolError("voucher names another provider")
        if (voucher.token, voucher.chain_id, voucher.contract, voucher.epoch) != (
            t.token,
            t.chain_id,
            t.contract,
            t.epoch,
        ):
            raise RemoteProtocolError("voucher is for another token, chain, contract or epoch")
        gain = voucher.job_paid - job_paid
        if gain <= 0:
            raise RemoteProtocolError(
                f"voucher does not move its job forward: job_paid {voucher.job_paid}"
                f" <= {job_paid} already credited"
            )
        held = self.cumulative(buyer_address)
        newer = voucher.cumulative_amount > held
        signed = voucher.cumulative_amount if newer else held
        since = self._since.get(buyer_address, 0)
        credited = self._credited.get(buyer_address, 0) + gain
        if credited > signed - since:
            raise RemoteProtocolError(
                f"jobs claim {credited} paid but the buyer's vouchers add {signed - since}"
            )
        if newer:
            cover = self.cover_of(buyer_address)
            if voucher.cumulative_amount > cover:
                raise RemoteProtocolError(
                    f"voucher {voucher.cumulative_amount} exceeds what the buyer locked for us"
                    f" ({cover}, redeemed included)"
                )
            if not self.verifier(voucher):
                raise RemoteProtocolError("voucher signature does not verify")
            self._latest[buyer_address] = voucher
        self._since.setdefault(buyer_address, since)
        self._credited[buyer_address] = credited
        return gain
