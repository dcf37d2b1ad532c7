"""The engine's async API: requests in and chunks out through trio.

::

    async with Engine(load_model()) as engine:          # or: await nursery.start(engine.run)
        async for chunk in engine.generate(GenerationRequest(prompt="Hi", max_tokens=8)):
            print(chunk.text, end="")

The parts, by role (vLLM v1 is the model):

* **input processing** (:mod:`.input_processor`): validation, chat template,
  tokenisation, limits; run in a worker thread (:mod:`.intake`), never on the event
  loop;
* **the core** (:mod:`.core`): one thread that owns the scheduler, the runner and
  every torch call, and steps: *schedule → execute → update*;
* **output processing** (:mod:`.output_processor`): detokenising, stop strings,
  logprobs, called by the core after each step;
* **this module**: the trio side. It talks to the core only through its thread-safe
  inbox; output comes back (:mod:`.bridge`) with ``TrioToken.run_sync_soon`` — one
  callback per step carrying the chunks of every request in the batch — onto
  per-request unbounded memory channels (a request can never produce more than
  ``max_tokens`` chunks, so the buffer is bounded by that).

Back-pressure: at most ``max_pending`` requests are admitted at once; further
``generate`` calls wait for a place. :meth:`Engine.pause` / :meth:`Engine.resume`
stop and restart the stepping of one request (it keeps its KV cache);
:meth:`Engine.cancel` drops it and frees its cache. The request id names a request
while it runs: a second request under the same id is refused meanwhile.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from p2pnode.serving.api import (
    BadRequestError,
    EngineClosedError,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    Rescore,
    TokenLogprob,
)
from p2pnode.serving.bridge import TrioBridge
from p2pnode.serving.core import EngineCore, EngineStats
from p2pnode.serving.device import DevicePlan
from p2pnode.serving.input_processor import InputProcessor
from p2pnode.serving.intake import Intake
from p2pnode.serving.loader import LoadedModel
from p2pnode.serving.meter import ServingMeter
from p2pnode.serving.sampler import SAMPLER_ID, RowParams
from p2pnode.serving.tokenizer import Tokenizer

__all__ = ["Engine", "EngineStats", "Rescore", "Speed"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Speed:
    """What a new request may expect of this engine now, as measured (see :mod:`.meter`)."""

    batch: int  # the batch it would join (requests in flight + itself)
    tokens_per_s: float | None  # per request, at ``batch`` (None: nothing measured yet)
    ttft_ms: float | None  # median of recent requests (None: none yet)


@dataclass(slots=True)
class _Stream:
    """A request between ``generate`` and its last chunk, as the trio side sees it."""

    key: str  # the core's name for it
    added: bool = False  # the core has it
    paused: bool = False
    cancelled: bool = False  # cancelled before the core had it
    intake: trio.CancelScope = field(default_factory=trio.CancelScope)

    def cancel_intake(self) -> None:
        self.cancelled = True
        self.intake.cancel()


class Engine:
    """Continuous-batching inference on one device. See the module docstring."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        max_batch: int = 32,
        max_model_len: int | None = None,
        kv_cache_mb: float | None = None,
        block_size: int = 16,
        max_step_tokens: int = 512,
        max_pending: int = 256,
        compile: bool = False,
        num_threads: int | None = None,
        aliases: Sequence[str] = (),
        pack_weights: bool | None = None,
        attention_kernel: bool | None = None,
    ) -> None:
        self.loaded = model
        self._bridge = bridge = TrioBridge()
        self.meter = ServingMeter()
        self._max_batch = max_batch
        self._core = EngineCore(
            model,
            plan_args=dict(
                device=device,
                dtype=dtype,
                max_batch=max_batch,
                max_model_len=max_model_len,
                kv_cache_mb=kv_cache_mb,
                block_size=block_size,
                pack_weights=pack_weights,
                attention_kernel=attention_kernel,
            ),
            max_batch=max_batch,
            max_step_tokens=max_step_tokens,
            compile=compile,
            num_threads=num_threads,
            deliver=bridge.deliver,
            reply=bridge.reply,
            meter=self.meter,
        )
        self._names = frozenset({model.model_id, model.name, *aliases})
        self._slots = trio.Semaphore(max_pending)
        self._inputs: InputProcessor | None = None
        self._intake: Intake | None = None
        self._thread: threading.Thread | None = None
        self._closed = True
        self._keys = itertools.count()
        self._streams: dict[str, _Stream] = {}  # by request id

    # ------------------------------------------------------------------ properties
    @property
    def model_id(self) -> str:
        """Content address of the served model (``sha256:…``)."""
        return self.loaded.model_id

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    @property
    def plan(self) -> DevicePlan | None:
        """Device, dtype and cache sizes; None until started."""
        return self._core.plan

    @property
    def stats(self) -> EngineStats:
        return self._core.stats

    @property
    def decode_kernel(self) -> bool:
        """Whether decode attention runs in the CPU kernel (:mod:`.cpu_attention`)."""
        return self._core.decode_kernel

    @property
    def in_flight(self) -> int:
        """Requests between ``generate`` and their last chunk (tokenising, waiting, running)."""
        return len(self._streams)

    def speed(self, *, joining: int = 1) -> Speed:
        """Measured speed for ``joining`` more requests on top of those in flight.

        This is what the node advertises: tokens/s per request at the batch a new job
        would join, and the recent median time to first token.
        """
        batch = max(1, min(self._max_batch, self.in_flight + joining))
        return Speed(
            batch=batch, tokens_per_s=self.meter.tokens_per_s(batch), ttft_ms=self.meter.ttft_ms()
        )

    async def warm_up(self, *, batch: int, tokens: int = 8) -> Speed:
        """Run a few throwaway requests so the first buyer finds figures, not guesses.

        One tiny request first pays the one-off costs (first kernels, allocations) and is
        forgotten; then ``batch`` requests at once measure the speed of a full batch, and
        one request alone the single-job speed and the time to first token of an idle
        engine (the meter interpolates between the two sizes). Returns the speed a first
        job would get.
        """
        if batch < 1 or tokens < 2:
            raise ValueError("warm_up needs batch >= 1 and tokens >= 2")
        await self.complete(GenerationRequest(prompt="Hello", max_tokens=2, temperature=0.0))
        self.meter.reset()
        if batch > 1:
            async with trio.open_nursery() as nursery:
                for i in range(min(batch, self._max_batch)):
                    prompt = f"Count to ten, warm-up {i}:"
                    req = GenerationRequest(prompt=prompt, max_tokens=tokens, temperature=0.0)
                    nursery.start_soon(self.complete, req)
            self.meter.reset_ttft()  # a burst's prefill is not what an idle engine answers
        await self.complete(GenerationRequest(prompt="Hello", max_tokens=tokens, temperature=0.0))
        return self.speed()

    @property
    def dtype(self) -> str:
        """The precision the model computes in ("float32", "bfloat16"…)."""
        assert self.plan is not None, "engine not started"
        return str(self.plan.dtype).removeprefix("torch.")

    @property
    def max_len(self) -> int:
        """Longest sequence (prompt + completion) one request may reach."""
        assert self.plan is not None, "engine not started"
        return self.plan.max_len

    # ------------------------------------------------------------------ life cycle
    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(self, *, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (``await nursery.start(engine.run)``)."""
        await self.start()
        try:
            task_status.started(self)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def start(self) -> None:
        """Start the core's thread; it puts the weights on the device, allocates the cache
        and then steps. Every torch call of an engine runs on that one thread (see
        :mod:`.core` for why).
        """
        if not self._closed:
            return
        self._bridge.token = trio.lowlevel.current_trio_token()
        core, post = self._core, self._bridge.post
        built = trio.Event()
        failed: list[BaseException] = []

        def main() -> None:
            try:
                core.build()
            except BaseException as e:  # reported to start(); the thread ends
                failed.append(e)
                return
            finally:
                post(built.set)
            core.run()

        self._thread = threading.Thread(target=main, name="hearth-engine", daemon=True)
        self._thread.start()
        try:
            await built.wait()
        except BaseException:  # cancelled while building: the loop stops once it starts
            core.stop()
            raise
        if failed:
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None
            raise failed[0]
        plan = core.plan
        assert plan is not None
        self._inputs = InputProcessor(
            tokenizer=self.tokenizer,
            vocab_size=self.loaded.config.vocab_size,
            max_positions=self.loaded.config.max_position_embeddings,
            model_id=self.model_id,
            names=self._names,
            max_len=plan.max_len,
            block_size=plan.block_size,
            num_blocks=plan.num_blocks,
        )
        self._intake = Intake(self._inputs)
        self._closed = False

    async def aclose(self) -> None:
        """Stop the loop; unfinished requests end with ``finish_reason="cancelled"``."""
        if self._closed:
            return
        self._closed = True
        self._core.stop()
        for stream in self._streams.values():  # still in intake: they end too
            if not stream.added:
                stream.cancel_intake()
        if self._thread is not None:
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None

    # ------------------------------------------------------------------ request control
    def cancel(self, request_id: str) -> None:
        """Stop a request and free its cache; its stream ends with ``"cancelled"``.

        Works at any point of its life, also while it is still being tokenised or waits
        for a place. Call from the trio thread; an unknown id is ignored.
        """
        stream = self._streams.get(request_id)
        if stream is None:
            return
        if stream.added:
            self._core.abort(stream.key)
        else:
            stream.cancel_intake()

    def pause(self, request_id: str) -> bool:
        """Stop stepping a request; it keeps its place and its KV cache (unless the cache
        runs out: then a paused request is the first preempted, and recomputed on resume).
        Its stream stays open. False for an unknown id. Call from the trio thread.
        """
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        stream.paused = True
        if stream.added:
            self._core.pause(stream.key)
        return True

    def resume(self, request_id: str) -> bool:
        """Step a paused request again. False for an unknown id."""
        stream = self._streams.get(request_id)
        if stream is None:
            return False
        stream.paused = False
        if stream.added:
            self._core.resume(stream.key)
        return True

    # ------------------------------------------------------------------ requests
    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the chunks of one request; raises :class:`BadRequestError` up front.

        Leaving the ``async for`` early (break, cancellation) cancels the request.
        """
        if self._closed:
            raise EngineClosedError("engine is not running")
        rid = request.request_id or uuid.uuid4().hex
        if rid in self._streams:
            raise BadRequestError(f"request {rid!r} is already running")
        stream = _Stream(key=str(next(self._keys)))
        self._streams[rid] = stream
        submitted = time.perf_counter()
        try:
            assert self._intake is not None
            req = None
            with stream.intake:  # tokenising, then waiting for a place: cancel() ends both
                req = await self._intake.process(request, key=stream.key, request_id=rid)
                await self._slots.acquire()
            if stream.cancelled:  # by cancel() or aclose() before the core had it
                if req is not None and not stream.intake.cancelled_caught:
                    self._slots.release()
                yield GenerationChunk(
                    request_id=rid,
                    finish_reason="cancelled",
                    prompt_tokens=req.prompt_tokens if req is not None else 0,
                    completion_tokens=req.resumed_tokens if req is not None else 0,
                )
                return
            assert req is not None
            try:
                if req.max_new_tokens <= 0:
                    yield GenerationChunk(
                        request_id=rid,
                        finish_reason="length",
                        prompt_tokens=req.prompt_tokens,
                        completion_tokens=req.resumed_tokens,
                    )
                    return
                send, recv = trio.open_memory_channel[GenerationChunk](math.inf)
                self._bridge.sends[stream.key] = send
                stream.added = True
                self._core.add(req, paused=stream.paused)
                finished = False
                first = True
                try:
                    async with recv:
                        async for chunk in recv:
                            if first and chunk.token_ids:
                                first = False
                                self.meter.note_ttft(time.perf_counter() - submitted)
                            yield chunk
                            if chunk.finish_reason is not None:
                                finished = True
                                break
                finally:
                    self._bridge.sends.pop(stream.key, None)
                    if not finished:
                        self._core.abort(stream.key)
            finally:
                self._slots.release()
        finally:
            del self._streams[rid]

    async def complete(self, request: GenerationRequest) -> GenerationChunk:
        """Run a request to the end and return one chunk holding all of it."""
        ids: list[int] = []
        text: list[str] = []
        lps: list[TokenLogprob] = []
        last: GenerationChunk | None = None
        async for c in self.generate(request):
            ids.extend(c.token_ids)
            text.append(c.text)
            lps.extend(c.logprobs)
            last = c
        assert last is not None
        return GenerationChunk(
            request_id=last.request_id,
            token_ids=tuple(ids),
            text="".join(text),
            logprobs=tuple(lps),
            finish_reason=last.finish_reason,
            prompt_tokens=last.prompt_tokens,
            completion_tokens=last.completion_tokens,
            error=last.error,
        )

    async def score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
        """Per-token raw logprobs of ``completion_ids`` after ``prompt_ids`` (teacher forcing)."""
        if self._closed:
            raise EngineClosedError("engine is not running")
        assert self._inputs is not None
        self._inputs.check_score(prompt_ids, completion_ids)
        done = trio.Event()
        box: dict[str, Any] = {}

        def reply(result: Any) -> None:
            box["r"] = result
            done.set()

        self._core.score(prompt_ids, completion_ids, reply)
        await done.wait()
        if isinstance(box["r"], BaseException):
            raise EngineError(f"scoring failed: {box['r']!r}") from box["r"]
        return list(box["r"])

    async def rescore(
        self,
        request: GenerationRequest | Sequence[int],
        completion_ids: Sequence[int],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        top_n: int = 5,
    ) -> Rescore:
        """What a verifier runs: one teacher-forced pass over a claimed completion.

        ``request`` is the job as the provider got it (its prompt is tokenised exactly
        as :meth:`generate` does, chat template included, and its sampling parameters
        are the defaults of the keywords), or the prompt's token ids (then
        ``temperature`` is required). ``completion_ids`` is the whole completion: a
        request's ``resume_token_ids`` must be its start, since the sampler counts
        positions from the first completion token. A seeded (non-greedy) job needs its
        ``seed``. Runs on the core's thread between steps; see :class:`Rescore`.
        """
        if self._closed:
            raise EngineClosedError("engine is not running")
        assert self._inputs is not None and self.plan is not None
        if isinstance(request, GenerationRequest):
            request.validate()
            prompt_ids = await trio.to_thread.run_sync(self._inputs.prompt_ids, request)
            resumed = [int(t) for t in request.resume_token_ids]
            if list(completion_ids[: len(resumed)]) != resumed:
                raise BadRequestError("completion_ids must start with the resumed tokens")
            temperature = request.temperature if temperature is None else temperature
            top_p = request.top_p if top_p is None else top_p
            top_k = request.top_k if top_k is None else top_k
            seed = request.seed if seed is None else seed
        else:
            prompt_ids = [int(t) for t in request]
        if temperature is None:
            raise BadRequestError("rescore of prompt ids needs the job's temperature")
        top_p, top_k = (1.0 if top_p is None else top_p), (0 if top_k is None else top_k)
        rows = [
            RowParams(temperature, top_k, top_p, seed or 0, i) for i in range(len(completion_ids))
        ]
        if rows and not rows[0].greedy and seed is None:
            raise BadRequestError("a sampled job is verifiable only with its seed")
        if not 0 <= top_n <= 20:
            raise BadRequestError(f"top_n must be in [0, 20], got {top_n}")
        self._inputs.check_score(prompt_ids, completion_ids)
        done = trio.Event()
        box: dict[str, Any] = {}

        def reply(result: Any) -> None:
            box["r"] = result
            done.set()

        self._core.rescore(prompt_ids, completion_ids, rows, top_n, reply)
        await done.wait()
        r = box["r"]
        if isinstance(r, BaseException):
            raise EngineError(f"rescoring failed: {r!r}") from r
        return Rescore(
            model_id=self.model_id,
            dtype=self.dtype,
            sampler=SAMPLER_ID,
            prompt_tokens=len(prompt_ids),
            token_ids=tuple(int(t) for t in completion_ids),
            logprobs=tuple(r["logprobs"]),
            top_ids=tuple(r["top_ids"]),
            top_logprobs=tuple(r["top_logprobs"]),
            choice=tuple(r["choice"]),
            margin=tuple(r["margin"]),
            outside_k=tuple(r["outside_k"]),
            outside_p=tuple(r["outside_p"]),
        )
