"""The engine core: one thread that owns the scheduler, the runner and every torch call.

Each turn of :meth:`EngineCore.run` drains the inbox (add, pause, resume, abort, score,
rescore, stop), then takes one engine step, *schedule → execute → update* (vLLM v1), and hands
the step's sampled tokens to the :class:`~p2pnode.serving.output_processor.OutputProcessor`,
which turns them into chunks. The chunks of every request in the step leave in one
call of ``deliver`` (the engine posts them to trio); the core itself knows nothing of
trio and nothing of text.

Every torch call of an engine runs on this one thread (build, steps, scoring). With libgomp, each thread that ever runs a parallel
region keeps its own team of OpenMP workers for life, and once the process has more of
those than CPUs, every worker stops spinning between regions and sleeps instead, so
each of the ~2,000 regions of a step pays a futex wake-up. Building on a second thread
was enough to trigger that: measured on mixed32 (bf16, 2 cores), steps ran at 113-162
tokens/s instead of 183-191.

The inbox is a ``queue.SimpleQueue``: the command methods (:meth:`add`, :meth:`pause`,
…) are safe to call from any thread.
"""

from __future__ import annotations

import ctypes
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from p2pnode.serving.api import FinishReason
from p2pnode.serving.device import DevicePlan, plan_device
from p2pnode.serving.kv_manager import KVManager
from p2pnode.serving.loader import LoadedModel
from p2pnode.serving.meter import ServingMeter
from p2pnode.serving.output_processor import Keyed, OutputProcessor
from p2pnode.serving.request import EngineRequest
from p2pnode.serving.runner import ModelRunner, SamplingSpec
from p2pnode.serving.sampler import RowParams
from p2pnode.serving.scheduler import Scheduler, SeqState

__all__ = ["EngineCore", "EngineStats"]


@dataclass(slots=True)
class EngineStats:
    """Counters read by benchmarks and the node's metrics."""

    steps: int = 0
    tokens_generated: int = 0
    tokens_prefilled: int = 0
    preemptions: int = 0
    requests_finished: int = 0


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc; elsewhere nothing to do).

    glibc keeps freed memory in the arena of the thread that allocated it, and the
    next engine's thread may be given another arena: without this, every engine built
    and closed in one process (``hearth bench serving --repeat``) left ~450 MB resident.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


class EngineCore:
    """The step loop and what it owns. Build and run it on the same thread.

    ``deliver`` gets each turn's ``(key, chunk)`` list, ``reply`` a scoring result
    (list of floats or the exception) with its callback; both are called on the core's
    thread and must hand the work to the caller's thread themselves. ``meter`` is told
    the duration of every decode step (what the node advertises as its speed).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        plan_args: dict[str, Any],
        max_batch: int,
        max_step_tokens: int,
        compile: bool,
        num_threads: int | None,
        deliver: Callable[[list[Keyed]], None],
        reply: Callable[[Callable[[Any], None], Any], None],
        meter: ServingMeter | None = None,
    ) -> None:
        self.loaded = loaded
        self._plan_args = plan_args
        self._max_batch = max_batch
        self._max_step_tokens = max_step_tokens
        self._compile = compile
        self._num_threads = num_threads
        self._deliver = deliver
        self._reply = reply
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.stats = EngineStats()
        self.meter = meter if meter is not None else ServingMeter()
        self.plan: DevicePlan | None = None
        self.runner: ModelRunner | None = None  # from build() until run() ends
        self.decode_kernel = False  # whether decode attention runs in the CPU kernel
        self.sched: Scheduler | None = None
        self.outputs = OutputProcessor()
        self._specs: dict[str, SamplingSpec] = {}

    # ------------------------------------------------------------------ commands (any thread)
    def add(self, req: EngineRequest, *, paused: bool = False) -> None:
        self._inbox.put(("add", (req, paused)))

    def abort(self, key: str) -> None:
        """Drop ``key`` and free its cache; its stream ends with ``"cancelled"``."""
        self._inbox.put(("abort", key))

    def pause(self, key: str) -> None:
        self._inbox.put(("pause", key))

    def resume(self, key: str) -> None:
        self._inbox.put(("resume", key))

    def score(
        self, prompt: Sequence[int], completion: Sequence[int], done: Callable[[Any], None]
    ) -> None:
        self._inbox.put(("score", (list(prompt), list(completion), done)))

    def rescore(
        self,
        prompt: Sequence[int],
        completion: Sequence[int],
        rows: Sequence[RowParams],
        top_n: int,
        done: Callable[[Any], None],
    ) -> None:
        """Teacher-forced re-scoring for verification (:meth:`ModelRunner.rescore`)."""
        self._inbox.put(("rescore", (list(prompt), list(completion), list(rows), top_n, done)))

    def stop(self) -> None:
        """End :meth:`run`; every unfinished request ends with ``"cancelled"``."""
        self._inbox.put(("stop", None))

    # ------------------------------------------------------------------ the core's thread
    def build(self) -> DevicePlan:
        """Weights onto the device, the KV cache allocated, the scheduler made."""
        if self._num_threads:
            torch.set_num_threads(self._num_threads)
        plan = plan_device(self.loaded.config, **self._plan_args)
        self.runner = ModelRunner(self.loaded, plan, compile=self._compile)
        self.decode_kernel = self.runner.decode_kernel is not None
        kv = KVManager(plan.slots, plan.max_len, plan.block_size, plan.num_blocks)
        self.sched = Scheduler(kv, max_batch=self._max_batch, max_step_tokens=self._max_step_tokens)
        self.plan = plan
        return plan

    def run(self) -> None:
        """Serve the inbox and step until :meth:`stop`; then free the runner."""
        assert self.sched is not None
        sched = self.sched
        running = True
        while running:
            out: list[Keyed] = []
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
                self._step(out)
            if out:
                self._deliver(out)
        self.runner = None  # packed weights and KV cache, freed on this thread
        _trim_heap()

    def _end(
        self,
        key: str,
        reason: FinishReason,
        out: list[Keyed],
        *,
        error: str | None = None,
        flush: bool = True,
    ) -> None:
        self._specs.pop(key, None)
        chunk = self.outputs.end(key, reason, error, flush=flush)
        if chunk is not None:
            self.stats.requests_finished += 1
            out.append((key, chunk))

    def _handle(self, kind: str, arg: Any, out: list[Keyed]) -> bool:
        assert self.sched is not None and self.runner is not None
        sched = self.sched
        if kind == "stop":
            for key in list(sched.drain()):
                self._end(key, "cancelled", out)
            return False
        if kind == "add":
            req, paused = arg
            self._specs[req.key] = self._spec(req)
            self.outputs.add(req)
            sched.add(
                SeqState(
                    seq_id=req.key,
                    prompt_ids=req.prompt_ids,
                    max_new_tokens=req.max_new_tokens,
                    eos_ids=req.eos_ids,
                    paused=paused,
                )
            )
        elif kind == "abort":
            if arg in self.outputs:
                sched.abort(arg)
                self._end(arg, "cancelled", out, flush=False)
        elif kind == "pause":
            sched.pause(arg)
        elif kind == "resume":
            sched.resume(arg)
        elif kind == "score":
            prompt, completion, done = arg
            try:
                result: Any = self.runner.score(prompt, completion)
            except Exception as e:
                result = e
            self._reply(done, result)
        elif kind == "rescore":
            prompt, completion, rows, top_n, done = arg
            try:
                result = self.runner.rescore(prompt, completion, rows, top_n)
            except Exception as e:
                result = e
            self._reply(done, result)
        return True

    def _spec(self, req: EngineRequest) -> SamplingSpec:
        p = req.sampling
        return SamplingSpec(
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k,
            top_logprobs=p.top_logprobs,
            seed=p.seed or 0,
            origin=req.prompt_tokens,
            logprobs=p.logprobs,
        )

    def _step(self, out: list[Keyed]) -> None:
        assert self.sched is not None and self.runner is not None
        sched = self.sched
        started = time.perf_counter()
        chunks = sched.schedule()
        if not chunks:
            time.sleep(0.001)
            return
        specs = {c.seq_id: self._specs[c.seq_id] for c in chunks}
        try:
            sampled = self.runner.execute(chunks, specs)
        except Exception as e:  # a bug or OOM: fail this batch, keep serving
            for c in chunks:
                sched.abort(c.seq_id)
                self._end(c.seq_id, "error", out, error=f"engine step failed: {e!r}")
            return
        self.stats.steps += 1
        self.stats.tokens_prefilled += sum(len(c.token_ids) for c in chunks if len(c.token_ids) > 1)
        self.stats.preemptions = sched.total_preemptions
        results = sched.update({k: v.token_id for k, v in sampled.items()})
        emitted, stopped = self.outputs.step(results, sampled)
        if all(len(c.token_ids) == 1 for c in chunks):  # a decode step: one token each
            self.meter.note_step(batch=len(chunks), seconds=time.perf_counter() - started)
        for key in stopped:
            sched.finish(key)
        for key, chunk in emitted:
            self.stats.tokens_generated += 1
            if chunk.finish_reason is not None:
                self._specs.pop(key, None)
                self.stats.requests_finished += 1
        out.extend(emitted)
