"""The engine: a step loop in its own thread, requests in and chunks out through trio.

::

    async with Engine(load_model()) as engine:          # or: await nursery.start(engine.run)
        async for chunk in engine.generate(GenerationRequest(prompt="Hi", max_tokens=8)):
            print(chunk.text, end="")

The loop thread owns the scheduler, the runner and every per-request state; trio
tasks talk to it only through a thread-safe inbox (``queue.SimpleQueue``). Output goes
back with ``TrioToken.run_sync_soon`` — one callback per step carrying the chunks of
every request in the batch — onto per-request unbounded memory channels (a request
can never produce more than ``max_tokens`` chunks, so the buffer is bounded by that).
Back-pressure: at most ``max_pending`` requests are admitted at once; further
``generate`` calls wait for a place.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trio

from p2pnode.serving.api import (
    BadRequestError,
    EngineClosedError,
    EngineError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
)
from p2pnode.serving.device import DevicePlan, plan_device
from p2pnode.serving.kv_manager import KVManager
from p2pnode.serving.loader import LoadedModel
from p2pnode.serving.runner import ModelRunner, SampleOut, SamplingSpec
from p2pnode.serving.scheduler import Scheduler, SeqState, StepResult
from p2pnode.serving.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = ["Engine", "EngineStats"]


@dataclass(slots=True)
class EngineStats:
    """Counters read by benchmarks and the node's metrics."""

    steps: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    preemptions: int = 0
    requests_finished: int = 0


@dataclass(slots=True)
class _Live:
    """Per-request state kept by the loop thread (text side: detokeniser, stops)."""

    request_id: str
    send: trio.MemorySendChannel[GenerationChunk]
    spec: SamplingSpec
    detok: IncrementalDetokenizer
    stop: tuple[str, ...]
    want_logprobs: bool
    prompt_tokens: int
    completion_tokens: int
    pending_text: str = ""
    hold: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


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
        self._plan_args: dict[str, Any] = dict(
            device=device,
            dtype=dtype,
            max_batch=max_batch,
            max_model_len=max_model_len,
            kv_cache_mb=kv_cache_mb,
            block_size=block_size,
            pack_weights=pack_weights,
            attention_kernel=attention_kernel,
        )
        self._max_batch = max_batch
        self._max_step_tokens = max_step_tokens
        self._compile = compile
        self._num_threads = num_threads
        self._names = {model.model_id, model.name, *aliases}
        self._slots = trio.Semaphore(max_pending)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = True
        self.plan: DevicePlan | None = None
        self.stats = EngineStats()
        self._runner: ModelRunner | None = None
        self._sched: Scheduler | None = None
        self._live: dict[str, _Live] = {}

    # ------------------------------------------------------------------ public
    @property
    def model_id(self) -> str:
        """Content address of the served model (``sha256:…``)."""
        return self.loaded.model_id

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    @property
    def decode_kernel(self) -> bool:
        """Whether decode attention runs in the CPU kernel (:mod:`.cpu_attention`)."""
        return self._runner is not None and self._runner.decode_kernel is not None

    @property
    def max_len(self) -> int:
        """Longest sequence (prompt + completion) one request may reach."""
        assert self.plan is not None, "engine not started"
        return self.plan.max_len

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
        """Start the loop thread; it puts the weights on the device and allocates the cache.

        Every torch call of an engine runs on that one thread (build, steps, scoring).
        With libgomp, each thread that ever runs a parallel region keeps its own team
        of OpenMP workers for life, and once the process has more of those than CPUs,
        every worker stops spinning between regions and sleeps instead, so each of
        the ~2,000 regions of a step pays a futex wake-up. Building on a second
        thread was enough to trigger that: measured on mixed32 (bf16, 2 cores),
        steps ran at 113-162 tokens/s instead of 183-191.
        """
        if not self._closed:
            return
        self._token = trio.lowlevel.current_trio_token()
        built = trio.Event()
        failed: list[BaseException] = []

        def main() -> None:
            try:
                self._build()
            except BaseException as e:  # reported to start(); the thread ends
                failed.append(e)
                return
            finally:
                self._post(built.set)
            self._loop()

        self._thread = threading.Thread(target=main, name="hearth-engine", daemon=True)
        self._thread.start()
        try:
            await built.wait()
        except BaseException:  # cancelled while building: the loop stops once it starts
            self._inbox.put(("stop", None))
            raise
        if failed:
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None
            raise failed[0]
        self._closed = False

    async def aclose(self) -> None:
        """Stop the loop; unfinished requests end with ``finish_reason="cancelled"``."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(("stop", None))
        if self._thread is not None:
            await trio.to_thread.run_sync(self._thread.join)
            self._thread = None

    def cancel(self, request_id: str) -> None:
        """Stop a request; its stream ends with ``finish_reason="cancelled"``."""
        self._inbox.put(("cancel", request_id))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the chunks of one request; raises :class:`BadRequestError` up front.

        Leaving the ``async for`` early (break, cancellation) cancels the request.
        """
        if self._closed:
            raise EngineClosedError("engine is not running")
        prompt_ids, seq, live, recv = self._prepare(request)
        async with self._slots:
            if seq.max_new_tokens <= 0:
                yield GenerationChunk(
                    request_id=live.request_id,
                    finish_reason="length",
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=live.completion_tokens,
                )
                return
            self._inbox.put(("add", (seq, live)))
            finished = False
            try:
                async with recv:
                    async for chunk in recv:
                        yield chunk
                        if chunk.finish_reason is not None:
                            finished = True
                            break
            finally:
                if not finished:
                    self.cancel(live.request_id)

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
        total = len(prompt_ids) + len(completion_ids)
        if not prompt_ids or not completion_ids:
            raise BadRequestError("score needs a non-empty prompt and completion")
        if total > self.loaded.config.max_position_embeddings:
            raise BadRequestError(f"{total} tokens exceed the model context")
        vocab = self.loaded.config.vocab_size
        if any(not 0 <= t < vocab for t in (*prompt_ids, *completion_ids)):
            raise BadRequestError("token id out of vocabulary")
        done = trio.Event()
        box: dict[str, Any] = {}

        def reply(result: Any) -> None:
            box["r"] = result
            done.set()

        self._inbox.put(("score", (list(prompt_ids), list(completion_ids), reply)))
        await done.wait()
        if isinstance(box["r"], BaseException):
            raise EngineError(f"scoring failed: {box['r']!r}") from box["r"]
        return list(box["r"])

    # ------------------------------------------------------------------ request intake
    def _prepare(
        self, request: GenerationRequest
    ) -> tuple[list[int], SeqState, _Live, trio.MemoryReceiveChannel[GenerationChunk]]:
        request.validate()
        if request.model is not None and request.model not in self._names:
            raise BadRequestError(
                f"unknown model {request.model!r}; this engine serves {self.model_id}"
            )
        tok = self.tokenizer
        if request.messages is not None:
            try:
                text = tok.apply_chat_template(request.messages)
            except Exception as e:
                raise BadRequestError(f"chat template failed: {e}") from e
            prompt_ids = tok.encode(text, add_special_tokens=False)
        elif request.prompt is not None:
            prompt_ids = tok.encode(request.prompt)
        else:
            prompt_ids = [int(t) for t in request.prompt_token_ids or ()]
        resume = [int(t) for t in request.resume_token_ids]
        vocab = self.loaded.config.vocab_size
        if not prompt_ids:
            raise BadRequestError("empty prompt")
        if any(not 0 <= t < vocab for t in (*prompt_ids, *resume)):
            raise BadRequestError("token id out of vocabulary")
        assert self.plan is not None
        context = len(prompt_ids) + len(resume)
        if context >= self.plan.max_len:
            raise BadRequestError(
                f"prompt is {context} tokens; this engine's context is {self.plan.max_len}"
            )
        if -(-(context + 1) // self.plan.block_size) > self.plan.num_blocks:
            raise BadRequestError(f"prompt of {context} tokens exceeds the KV-cache budget")
        rid = request.request_id or uuid.uuid4().hex
        gen = None
        if not (request.temperature == 0.0 or request.top_k == 1):
            gen = torch.Generator(
                device="cpu" if self.plan.device.type == "cpu" else self.plan.device
            )
            gen.manual_seed(
                request.seed
                if request.seed is not None
                else int.from_bytes(os.urandom(8), "little") >> 1
            )
        spec = SamplingSpec(
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            top_logprobs=request.top_logprobs,
            generator=gen,
            logprobs=request.logprobs or request.top_logprobs > 0,
        )
        eos = frozenset() if request.ignore_eos else frozenset(tok.eos_token_ids)
        seq = SeqState(
            seq_id=rid,
            prompt_ids=[*prompt_ids, *resume],
            max_new_tokens=request.max_tokens - len(resume),
            eos_ids=eos,
        )
        send, recv = trio.open_memory_channel[GenerationChunk](math.inf)
        live = _Live(
            request_id=rid,
            send=send,
            spec=spec,
            detok=IncrementalDetokenizer(tok, seq.prompt_ids),
            stop=tuple(request.stop),
            want_logprobs=request.logprobs or request.top_logprobs > 0,
            prompt_tokens=len(prompt_ids),
            completion_tokens=len(resume),
            hold=max((len(s) for s in request.stop), default=1) - 1,
        )
        return prompt_ids, seq, live, recv

    # ------------------------------------------------------------------ loop thread
    def _build(self) -> None:
        if self._num_threads:
            torch.set_num_threads(self._num_threads)
        plan = plan_device(self.loaded.config, **self._plan_args)
        self._runner = ModelRunner(self.loaded, plan, compile=self._compile)
        kv = KVManager(plan.slots, plan.max_len, plan.block_size, plan.num_blocks)
        self._sched = Scheduler(
            kv, max_batch=self._max_batch, max_step_tokens=self._max_step_tokens
        )
        self.plan = plan

    def _post(self, fn: Callable[[], None]) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def _deliver(self, chunks: list[tuple[_Live, GenerationChunk]]) -> None:
        def send_all() -> None:
            for live, chunk in chunks:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    live.send.send_nowait(chunk)
                if chunk.finish_reason is not None:
                    live.send.close()

        self._post(send_all)

    def _end(self, live: _Live, reason: FinishReason, error: str | None = None) -> GenerationChunk:
        self._live.pop(live.request_id, None)
        self.stats.requests_finished += 1
        return GenerationChunk(
            request_id=live.request_id,
            text=live.pending_text,
            finish_reason=reason,
            prompt_tokens=live.prompt_tokens,
            completion_tokens=live.completion_tokens,
            error=error,
        )

    def _handle(self, kind: str, arg: Any, out: list[tuple[_Live, GenerationChunk]]) -> bool:
        assert self._sched is not None and self._runner is not None
        if kind == "stop":
            for sid in list(self._sched.drain()):
                live = self._live.get(sid)
                if live is not None:
                    out.append((live, self._end(live, "cancelled")))
            return False
        if kind == "add":
            seq, live = arg
            self._live[live.request_id] = live
            self._sched.add(seq)
        elif kind == "cancel":
            live = self._live.get(arg)
            if live is not None:
                self._sched.abort(arg)
                live.pending_text = ""
                out.append((live, self._end(live, "cancelled")))
        elif kind == "score":
            prompt, completion, reply = arg
            try:
                result: Any = self._runner.score(prompt, completion)
            except Exception as e:
                result = e
            self._post(lambda: reply(result))
        return True

    def _loop(self) -> None:
        assert self._sched is not None and self._runner is not None
        sched, runner = self._sched, self._runner
        running = True
        while running:
            out: list[tuple[_Live, GenerationChunk]] = []
            try:
                cmd = (
                    self._inbox.get(timeout=0.05)
                    if not sched.has_work
                    else self._inbox.get_nowait()
                )
                while True:
                    running = self._handle(*cmd, out) and running
                    cmd = self._inbox.get_nowait()
            except queue.Empty:
                pass
            if running and sched.has_work:
                self._step(sched, runner, out)
            if out:
                self._deliver(out)

    def _step(
        self, sched: Scheduler, runner: ModelRunner, out: list[tuple[_Live, GenerationChunk]]
    ) -> None:
        chunks = sched.schedule()
        if not chunks:
            time.sleep(0.001)
            return
        specs = {c.seq_id: self._live[c.seq_id].spec for c in chunks}
        try:
            sampled = runner.execute(chunks, specs)
        except Exception as e:  # a bug or OOM: fail this batch, keep serving
            for c in chunks:
                sched.abort(c.seq_id)
                live = self._live.get(c.seq_id)
                if live is not None:
                    out.append((live, self._end(live, "error", f"engine step failed: {e!r}")))
            return
        self.stats.steps += 1
        self.stats.tokens_prefilled += sum(len(c.token_ids) for c in chunks if len(c.token_ids) > 1)
        self.stats.preemptions = sched.total_preemptions
        results = sched.update({k: v.token_id for k, v in sampled.items()})
        for r in results:
            live = self._live.get(r.seq_id)
            if live is not None:
                out.append((live, self._emit(live, r, sampled[r.seq_id])))

    def _emit(self, live: _Live, r: StepResult, s: SampleOut) -> GenerationChunk:
        assert self._sched is not None
        self.stats.tokens_generated += 1
        live.completion_tokens += 1
        live.pending_text += live.detok.push(r.token_id)
        lp = (TokenLogprob(s.token_id, s.logprob, s.top),) if live.want_logprobs else ()
        finish: FinishReason | None = r.finished
        text = ""
        if live.stop:
            hit = min(
                (i for i in (live.pending_text.find(x) for x in live.stop) if i >= 0), default=-1
            )
            if hit >= 0:
                text, live.pending_text = live.pending_text[:hit], ""
                if finish is None:
                    self._sched.finish(live.request_id)
                finish = "stop"
        if finish is None:
            cut = len(live.pending_text) - live.hold
            if cut > 0:
                text, live.pending_text = live.pending_text[:cut], live.pending_text[cut:]
            return GenerationChunk(
                request_id=live.request_id, token_ids=(r.token_id,), text=text, logprobs=lp
            )
        end = self._end(live, finish)
        return GenerationChunk(
            request_id=live.request_id,
            token_ids=(r.token_id,),
            text=text + end.text,
            logprobs=lp,
            finish_reason=finish,
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
        )
