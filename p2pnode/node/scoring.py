"""Verification jobs on the provider: re-score another provider's completion, for pay.

A buyer that wants to check a job it bought asks a provider holding the same model
(by content address) to re-score the completion in one teacher-forced pass
(:meth:`p2pnode.serving.engine.Engine.rescore`) on ``/hearth/score/1``::

    buyer ──ScoreRequest (prompt, completion, max price)──▶ verifier
          ◀─ScoreResult (per token: logprob, top-n, sampler choice, margin; price)──
          ──Voucher (job_paid = cost_of(scored tokens, price))──▶

The verifier works first and is paid after, on the same channel as its jobs (the
voucher book credits the verification as one more job), so its exposure is one small
scoring pass, and the buyer pays only for an answer it holds. The verdict is the
buyer's (:func:`market.protocol.verify.judge`); the verifier only states numbers, signed
in their envelope like every message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any, Protocol

import trio

from market.protocol import Prompt, RemoteProtocolError, ReplayGuard, Voucher, cost_of
from market.protocol.codec import decode
from market.protocol.messages import Error, ErrorCode, ScoreRequest, ScoreResult
from market.protocol.payments import VoucherBook
from market.protocol.signing import SigningKey
from market.streams import receive_message, send_message
from market.vouchers import record
from p2pnode.net import NetError
from p2pnode.net.framing import FramedStream
from p2pnode.net.ratelimit import PeerRateLimiter
from p2pnode.node.provider import generation_request
from p2pnode.serving import BadRequestError, GenerationRequest

__all__ = ["Rescorer", "ScoringService"]

logger = logging.getLogger(__name__)

_HUGE = 1e9  # margins past any tolerance are sent as this (the wire takes finite floats)


class Rescorer(Protocol):
    """An engine that can re-score a completion (the bundled engine can)."""

    async def rescore(
        self, request: GenerationRequest, completion_ids: Sequence[int], *, top_n: int = 5
    ) -> Any: ...


class ScoringService:
    """Serves ``/hearth/score/1`` for one node (see the module docstring)."""

    def __init__(
        self,
        *,
        engine: Rescorer,
        key: SigningKey,
        model_id: str,
        book: VoucherBook,
        price_per_1k: Callable[[], int],
        in_ledger: Callable[[Callable[[Any], object]], Awaitable[None]],
        fresh_cover: Callable[[Voucher], Awaitable[None]],
        limiter: PeerRateLimiter,
        max_at_once: int = 2,
    ) -> None:
        self.engine = engine
        self.key = key
        self.model_id = model_id
        self.book = book
        self.price_per_1k = price_per_1k
        self.in_ledger = in_ledger
        self.fresh_cover = fresh_cover
        self.limiter = limiter
        self._slots = trio.CapacityLimiter(max_at_once)  # scoring shares the engine
        self._guard = ReplayGuard()
        self.scored = 0  # jobs answered
        self.unpaid = 0  # answered, never paid

    async def handle(self, fs: FramedStream) -> None:
        """One verification job on ``fs`` (a stream handler: errors become error frames)."""
        if not self.limiter.allow(fs.peer_id, trio.current_time()):
            return
        req = await receive_message(fs, self._guard, timeout=10)
        if not isinstance(req, ScoreRequest):
            raise RemoteProtocolError("a score stream must open with a ScoreRequest")
        refusal = self._refusal(req)
        if refusal is not None:
            await self._error(fs, req, *refusal)
            return
        prompt = decode(req.prompt)
        if not isinstance(prompt, Prompt):
            await self._error(fs, req, ErrorCode.BAD_REQUEST, "prompt is not a Prompt")
            return
        price = self.price_per_1k()
        request = generation_request(
            prompt, max(1, len(req.token_ids) - len(prompt.resume_token_ids))
        )
        try:
            async with self._slots:
                r = await self.engine.rescore(request, req.token_ids, top_n=req.top_n)
        except BadRequestError as exc:
            await self._error(fs, req, ErrorCode.BAD_REQUEST, str(exc))
            return
        result = ScoreResult(
            job_id=req.job_id,
            model_id=str(r.model_id).removeprefix("sha256:"),
            dtype=r.dtype,
            sampler=r.sampler,
            prompt_tokens=r.prompt_tokens,
            price_per_1k=price,
            logprobs=tuple(max(-_HUGE, x) for x in r.logprobs),
            top_ids=tuple(tuple(t) for t in r.top_ids),
            top_logprobs=tuple(tuple(max(-_HUGE, x) for x in t) for t in r.top_logprobs),
            choice=tuple(r.choice),
            margin=tuple(min(_HUGE, x) for x in r.margin),
            outside_k=tuple(min(_HUGE, x) for x in r.outside_k),
            outside_p=tuple(min(_HUGE, x) for x in r.outside_p),
        )
        await send_message(fs, result, self.key)
        self.scored += 1
        await self._collect(fs, req, cost_of(len(req.token_ids), price))

    def _refusal(self, req: ScoreRequest) -> tuple[ErrorCode, str] | None:
        if req.model_id != self.model_id:
            return ErrorCode.MODEL_UNAVAILABLE, "we do not hold that model"
        price = self.price_per_1k()
        if price > req.max_price_per_1k:
            return ErrorCode.BAD_REQUEST, f"our price {price} > your ceiling {req.max_price_per_1k}"
        return None

    async def _error(self, fs: FramedStream, req: ScoreRequest, code: ErrorCode, why: str) -> None:
        with suppress(NetError):
            await send_message(fs, Error(job_id=req.job_id, code=code, message=why[:500]), self.key)

    async def _collect(self, fs: FramedStream, req: ScoreRequest, owed: int) -> None:
        """The buyer's voucher for the answer; an unpaid answer is counted and logged."""
        if owed == 0:
            return
        try:
            v = await receive_message(fs, self._guard, timeout=10)
        except (NetError, RemoteProtocolError) as exc:
            v = None
            logger.info("verification %s: no payment (%s)", req.job_id.hex(), exc)
        if not isinstance(v, Voucher) or v.job_id != req.job_id or v.job_paid < owed:
            self.unpaid += 1
            return
        await self.fresh_cover(v)
        try:
            self.book.accept(v, buyer_address=req.buyer_address, job_paid=0)
        except RemoteProtocolError as exc:
            self.unpaid += 1
            logger.info("verification %s: voucher refused: %s", req.job_id.hex(), exc.reason)
            return
        await self.in_ledger(lambda ledger: record(ledger, v))
