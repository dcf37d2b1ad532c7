"""Continuous-batching scheduler. Decides, each step, which sequences run and how many
tokens each computes. Never touches torch (an import-linter contract checks it).

One engine step is *schedule → execute → update* (vLLM v1):

1. :meth:`Scheduler.schedule` gives every running sequence its next tokens first —
   one token for a decoding sequence, a chunk of at most the remaining budget for one
   still prefilling — then admits waiting sequences, in arrival order, while the
   per-step token budget, the slots and the KV blocks last. A long prompt is thereby
   cut into chunks (chunked prefill) and never stalls the running decodes for more
   than one budget's worth of compute.
2. The runner executes the returned :class:`ScheduledChunk` list in one forward pass.
3. :meth:`Scheduler.update` records what was computed and the sampled tokens, and
   reports finished sequences (``max_tokens`` reached, end-of-sequence, or the slot is
   full).

When a running sequence needs a block and none is free, a running sequence is
**preempted** — the most recently admitted paused one if any, else the most recently
admitted one: its blocks are released and it goes back to the front of the queue to be
recomputed from its prompt plus everything it generated so far (recompute
preemption), so its output is unchanged — only later.

A **paused** sequence (:meth:`Scheduler.pause`) is never scheduled: a running one
keeps its slot and its blocks (unless preempted as above) and computes nothing; a
waiting one is passed over by admission. :meth:`Scheduler.resume` lets it run again
from where it stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from p2pnode.serving.kv_manager import KVManager

__all__ = ["ScheduledChunk", "Scheduler", "SeqState", "StepResult"]

FinishKind = Literal["stop", "length"]


@dataclass(slots=True)
class SeqState:
    """Scheduler-side state of one sequence (token ids only, no text, no tensors)."""

    seq_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    eos_ids: frozenset[int] = frozenset()
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # positions whose K/V are in the cache
    preemptions: int = 0
    paused: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_at(self, i: int) -> int:
        p = len(self.prompt_ids)
        return self.prompt_ids[i] if i < p else self.output_ids[i - p]


@dataclass(frozen=True, slots=True)
class ScheduledChunk:
    """Compute positions ``start .. start+len(token_ids)`` of ``seq_id`` in ``slot``.

    ``sample`` is True when the chunk reaches the end of the known tokens, so the
    logits of its last position choose the next token.
    """

    seq_id: str
    slot: int
    start: int
    token_ids: tuple[int, ...]
    sample: bool


@dataclass(frozen=True, slots=True)
class StepResult:
    """A token appended to a sequence, and whether that finished it."""

    seq_id: str
    token_id: int
    finished: FinishKind | None


class Scheduler:
    """Waiting queue + running set over a :class:`KVManager`."""

    def __init__(self, kv: KVManager, *, max_batch: int, max_step_tokens: int) -> None:
        if max_step_tokens < 1 or max_batch < 1:
            raise ValueError("max_batch and max_step_tokens must be positive")
        self.kv = kv
        self.max_batch = min(max_batch, kv.slots)
        self.max_step_tokens = max_step_tokens
        self.waiting: deque[SeqState] = deque()
        self.running: list[SeqState] = []
        self._scheduled: dict[str, int] = {}
        self.total_preemptions = 0

    # ------------------------------------------------------------------ queries
    @property
    def has_work(self) -> bool:
        """Whether some sequence may run (paused ones wait for :meth:`resume`)."""
        return any(not s.paused for s in self.running) or any(not s.paused for s in self.waiting)

    def get(self, seq_id: str) -> SeqState | None:
        for s in self.running:
            if s.seq_id == seq_id:
                return s
        for s in self.waiting:
            if s.seq_id == seq_id:
                return s
        return None

    # ------------------------------------------------------------------ requests in/out
    def add(self, seq: SeqState) -> None:
        """Queue a new sequence (its prompt must fit one slot: the engine checks)."""
        self.waiting.append(seq)

    def abort(self, seq_id: str) -> bool:
        """Drop a sequence wherever it is and free its cache; False if unknown."""
        for s in self.running:
            if s.seq_id == seq_id:
                self.running.remove(s)
                self.kv.release(seq_id)
                return True
        for s in self.waiting:
            if s.seq_id == seq_id:
                self.waiting.remove(s)
                return True
        return False

    def pause(self, seq_id: str) -> bool:
        """Stop scheduling a sequence; it keeps its place and its cache. False if unknown."""
        seq = self.get(seq_id)
        if seq is None:
            return False
        seq.paused = True
        return True

    def resume(self, seq_id: str) -> bool:
        """Schedule a paused sequence again. False if unknown."""
        seq = self.get(seq_id)
        if seq is None:
            return False
        seq.paused = False
        return True

    def finish(self, seq_id: str) -> None:
        """Retire a sequence the engine decided is done (a stop string matched)."""
        self.abort(seq_id)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> list[ScheduledChunk]:
        """Choose this step's work; may preempt. Empty list when nothing can run."""
        budget = self.max_step_tokens
        plan: list[tuple[SeqState, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.paused:
                i += 1
                continue
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self.kv.grow(seq.seq_id, seq.num_computed + n):
                if seq.num_computed + n > self.kv.max_len:
                    break  # slot full: update() finishes it with "length"
                victim = self._victim()
                if self.running.index(victim) < i:
                    i -= 1  # a paused one before seq: seq moves down one place
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            if seq not in self.running:
                continue  # preempted itself; index i now points at the next one
            if seq.num_computed + n > self.kv.max_len:
                n = self.kv.max_len - seq.num_computed
            if n > 0:
                plan.append((seq, n))
                budget -= n
            i += 1
        if not preempted:
            for seq in [s for s in self.waiting if not s.paused]:
                if budget <= 0 or len(self.running) >= self.max_batch:
                    break
                n = min(seq.num_tokens, budget)
                if not self.kv.can_admit(n):
                    break
                self.waiting.remove(seq)
                self.kv.admit(seq.seq_id, n)
                self.running.append(seq)
                plan.append((seq, n))
                budget -= n
        chunks = []
        self._scheduled = {}
        for seq, n in plan:
            start = seq.num_computed
            ids = tuple(seq.token_at(j) for j in range(start, start + n))
            chunks.append(
                ScheduledChunk(
                    seq_id=seq.seq_id,
                    slot=self.kv.slot_of(seq.seq_id),
                    start=start,
                    token_ids=ids,
                    sample=start + n == seq.num_tokens,
                )
            )
            self._scheduled[seq.seq_id] = n
        return chunks

    def _victim(self) -> SeqState:
        """Whom to preempt: the latest admitted paused sequence, else the latest admitted."""
        for s in reversed(self.running):
            if s.paused:
                return s
        return self.running[-1]

    def _preempt(self, seq: SeqState) -> None:
        self.running.remove(seq)
        self.kv.release(seq.seq_id)
        seq.num_computed = 0
        seq.preemptions += 1
        self.total_preemptions += 1
        self.waiting.appendleft(seq)

    def update(self, sampled: dict[str, int]) -> list[StepResult]:
        """Record the step just executed; ``sampled`` maps seq_id → new token id."""
        results = []
        for seq_id, n in self._scheduled.items():
            seq = self.get(seq_id)
            if seq is None:
                continue  # aborted while the step ran
            seq.num_computed += n
            tok = sampled.get(seq_id)
            if tok is None:
                continue
            seq.output_ids.append(tok)
            finished: FinishKind | None = None
            if tok in seq.eos_ids:
                finished = "stop"
            elif len(seq.output_ids) >= seq.max_new_tokens or seq.num_tokens >= self.kv.max_len:
                finished = "length"
            results.append(StepResult(seq_id, tok, finished))
            if finished:
                self.abort(seq_id)
        self._scheduled = {}
        return results

    def drain(self) -> Iterable[str]:
        """Abort everything (engine shutdown); yields the dropped ids."""
        ids: Sequence[str] = [s.seq_id for s in (*self.running, *self.waiting)]
        for sid in ids:
            self.abort(sid)
        return ids
