"""Verifying bought work through the market: ask another provider to re-score it.

:class:`Verifier` takes one kept :class:`~market.protocol.evidence.Evidence` record,
picks a staked provider that offers the same model (by content address) and is not
the provider being checked (nor any other it is told to avoid), buys one verification
job from it on ``/hearth/score/1`` (see :mod:`p2pnode.node.scoring`), and judges the
claim with :func:`market.protocol.verify.judge` under the shipped calibrated
tolerances. The verifier is paid per scored token like any job: its cover is locked
first, the answer is paid after it arrives.

The tolerances are those calibrated for the coarser of two precisions: the one the
checked provider stated in its signed bid (kept in the record) and the one the
verifier ran. Honest variation between a GPU in bf16 and a CPU in fp32 passes; a
provider that says fp32 is held to fp32's tolerances, so a cheaper substitute (an int8
copy of the weights, closer to fp32 than bf16 is) is caught. A record whose bid states
no precision is judged with the loosest calibrated ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import trio

from market.protocol import cost_of
from market.protocol.evidence import Evidence
from market.protocol.messages import Error, ScoreRequest, ScoreResult
from market.protocol.verify import (
    Claim,
    Params,
    Rescore,
    Tolerances,
    ToleranceTable,
    Verdict,
    judge,
)
from market.streams import SCORE_PROTOCOL, receive_message, send_message
from market.vouchers import record
from p2pnode.net import NetError

if TYPE_CHECKING:
    from market.sdk.client import Client

__all__ = ["Checked", "Verifier", "VerifyError", "shipped_tolerances"]

#: From the coarsest precision to the finest.
_DTYPES = ("bfloat16", "float16", "float32")


def shipped_tolerances() -> ToleranceTable:
    """The calibrated tolerances that ship with Hearth (``market/protocol/tolerances.json``)."""
    text = resources.files("market.protocol").joinpath("tolerances.json").read_text()
    return ToleranceTable.from_json(text)


@dataclass(frozen=True, slots=True)
class Checked:
    """One verification: who verified, what it cost, and the verdict."""

    verifier: str
    cost: int
    verdict: Verdict


class VerifyError(Exception):
    """The record could not be verified (no verifier, no tolerances, transport)."""


class Verifier:
    """Buys verification jobs for one buyer client (see the module docstring)."""

    def __init__(self, client: Client, table: ToleranceTable | None = None) -> None:
        self.client = client
        self.table = table if table is not None else shipped_tolerances()

    def tolerances_for(self, model_id: str, *dtypes: str) -> Tolerances:
        """The tolerances for the coarsest of ``dtypes`` (any unknown one: the loosest)."""
        known = [d for d in dtypes if d in _DTYPES]
        coarsest = min(map(_DTYPES.index, known)) if known and len(known) == len(dtypes) else 0
        for dtype in _DTYPES[coarsest:]:
            tol = self.table.get("sha256:" + model_id, dtype)
            if tol is not None:
                return tol
        raise VerifyError(f"no calibrated tolerances for model {model_id[:12]}…")

    async def check(self, ev: Evidence, *, avoid: set[str]) -> Checked:
        """Verify ``ev`` with a provider not in ``avoid`` (nor ``ev.provider``)."""
        prompt = ev.prompt_message()
        claimed_dtype = ev.claimed_dtype()
        tokens = tuple(prompt.resume_token_ids) + ev.token_ids
        client = self.client
        now = trio.current_time()
        connected = set(client.net.connected_peers())
        # never the provider checked, nor one whose own work failed our checks
        skip = avoid | {ev.provider} | client.audit.distrusted()
        offers = [
            o
            for o in client.catalog.candidates(ev.model_id, now, salt=ev.digest())
            if o.provider not in skip and o.provider in connected
        ]
        last = "no other provider of the model is reachable"
        for offer in offers[:3]:
            if client.stake_check is not None and not await client.stake_check(
                offer.provider, offer.provider_address
            ):
                continue
            price = next(m.price_per_1k for m in offer.models if m.model_id == ev.model_id)
            try:
                with trio.fail_after(60):
                    result, cost = await self._buy(
                        offer.provider, offer.provider_address, ev, tokens, 2 * price
                    )
            except (VerifyError, NetError, trio.TooSlowError) as exc:
                last = f"{offer.provider[-8:]}: {exc}"
                continue
            rescore = _rescore(result, tokens, len(prompt.resume_token_ids))
            tol = self.tolerances_for(ev.model_id, claimed_dtype, result.dtype)
            claim = Claim(
                model_id="sha256:" + ev.model_id,
                params=Params(
                    temperature=prompt.params.temperature,
                    top_p=prompt.params.top_p,
                    top_k=prompt.params.top_k,
                    seed=prompt.params.seed,
                ),
                token_ids=ev.token_ids,
                logprobs=ev.logprobs,
            )
            return Checked(verifier=offer.provider, cost=cost, verdict=judge(claim, rescore, tol))
        raise VerifyError(last)

    async def _buy(
        self, peer: str, address: bytes, ev: Evidence, tokens: tuple[int, ...], ceiling: int
    ) -> tuple[ScoreResult, int]:
        """One verification job from ``peer``: lock its cover, ask, pay what it charged."""
        client = self.client
        wallet = client.wallet
        budget = cost_of(len(tokens), ceiling)
        if not wallet.reserve(budget):
            raise VerifyError(f"deposit cannot cover a verification of {budget}")
        job_id = os.urandom(16)
        wallet.assign(address, budget)
        paid = 0
        try:
            if client.collateral is not None:
                await client.collateral.ensure(address, wallet.cover_needed(address))
            req = ScoreRequest(
                job_id=job_id,
                buyer_address=wallet.buyer_address,
                model_id=ev.model_id,
                prompt=ev.prompt,
                token_ids=tokens,
                max_price_per_1k=ceiling,
            )
            async with client.net.open_stream(peer, SCORE_PROTOCOL, timeout=5) as fs:
                await send_message(fs, req, client.key)
                answer = await receive_message(fs, client._guard, timeout=30)
                if isinstance(answer, Error):
                    raise VerifyError(f"{answer.code.value}: {answer.message}")
                if not isinstance(answer, ScoreResult) or answer.job_id != job_id:
                    raise VerifyError("the verifier did not answer with our ScoreResult")
                if answer.price_per_1k > ceiling or len(answer.logprobs) != len(tokens):
                    raise VerifyError("the verifier's answer breaks our terms")
                owed = cost_of(len(tokens), answer.price_per_1k)
                if owed:
                    voucher = wallet.pay(job_id, address, owed, reserved=budget, job_paid=owed)
                    paid = owed
                    # Recorded, then sent, even if the client is closing meanwhile: a
                    # voucher we signed must reach the provider we owe it to.
                    with trio.CancelScope(shield=True), trio.move_on_after(10):
                        if client.ledger is not None:
                            ledger = client.ledger
                            await trio.to_thread.run_sync(
                                record, ledger, voucher, limiter=client._ledger_limiter
                            )
                        await send_message(fs, voucher, client.key)
                        await fs.send_end()
                return answer, owed
        finally:
            wallet.unassign(address, budget - paid)
            wallet.release(budget - paid)


def _rescore(r: ScoreResult, tokens: tuple[int, ...], skip: int) -> Rescore:
    """The verifier's numbers over the ``tokens`` we sent, as the rule takes them, from
    completion position ``skip`` on (the segment checked; earlier positions were another
    provider's)."""
    return Rescore(
        model_id="sha256:" + r.model_id,
        dtype=r.dtype,
        sampler=r.sampler,
        prompt_tokens=r.prompt_tokens,
        token_ids=tokens[skip:],
        logprobs=r.logprobs[skip:],
        top_ids=r.top_ids[skip:],
        top_logprobs=r.top_logprobs[skip:],
        choice=r.choice[skip:],
        margin=r.margin[skip:],
        outside_k=r.outside_k[skip:],
        outside_p=r.outside_p[skip:],
    )
