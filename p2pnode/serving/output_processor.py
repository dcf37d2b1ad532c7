"""Output processing: sampled token ids in, :class:`GenerationChunk` diffs out.

Per request it keeps the text side: the incremental detokeniser, the stop strings and
the text held back because it might be the start of one, and the counts reported on
the last chunk. Each chunk carries only what is new (vLLM v1's "outputs carry only the
diff"). Never touches torch: the core hands it plain token ids and logprobs.

Stop strings: the text is searched after every token; on a match the text before the
stop string is emitted, the rest dropped, the request finished with ``"stop"``, and
the core told to retire the sequence. Until then the last ``len(longest stop) - 1``
characters are held back, so a stop string split across tokens is never streamed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from p2pnode.serving.api import FinishReason, GenerationChunk, TokenLogprob
from p2pnode.serving.request import EngineRequest
from p2pnode.serving.scheduler import StepResult
from p2pnode.serving.tokenizer import IncrementalDetokenizer

__all__ = ["Keyed", "OutputProcessor", "Sampled"]

Keyed = tuple[str, GenerationChunk]  # (engine key, chunk): the key routes it to its stream


class Sampled(Protocol):
    """What the runner reports for one sampled token (``runner.SampleOut``)."""

    @property
    def token_id(self) -> int: ...
    @property
    def logprob(self) -> float: ...
    @property
    def top(self) -> tuple[tuple[int, float], ...]: ...


@dataclass(slots=True)
class _TextState:
    request_id: str
    detok: IncrementalDetokenizer
    stop: tuple[str, ...]
    hold: int  # characters held back: a stop string may be starting there
    want_logprobs: bool
    prompt_tokens: int
    completion_tokens: int
    pending_text: str = ""


class OutputProcessor:
    """Text state of every live request, keyed by :attr:`EngineRequest.key`."""

    def __init__(self) -> None:
        self._live: dict[str, _TextState] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def add(self, req: EngineRequest) -> None:
        self._live[req.key] = _TextState(
            request_id=req.request_id,
            detok=req.detok,
            stop=req.stop,
            hold=max((len(s) for s in req.stop), default=1) - 1,
            want_logprobs=req.sampling.logprobs,
            prompt_tokens=req.prompt_tokens,
            completion_tokens=req.resumed_tokens,
        )

    def end(
        self, key: str, reason: FinishReason, error: str | None = None, *, flush: bool = True
    ) -> GenerationChunk | None:
        """The last chunk of ``key`` (None if it already ended); ``flush`` sends held text."""
        live = self._live.pop(key, None)
        if live is None:
            return None
        return GenerationChunk(
            request_id=live.request_id,
            text=live.pending_text if flush else "",
            finish_reason=reason,
            prompt_tokens=live.prompt_tokens,
            completion_tokens=live.completion_tokens,
            error=error,
        )

    def step(
        self, results: Iterable[StepResult], sampled: Mapping[str, Sampled]
    ) -> tuple[list[Keyed], list[str]]:
        """Chunks for one step's tokens, and the keys a stop string has just finished.

        The core retires those keys in the scheduler (the scheduler does not know text).
        """
        chunks: list[Keyed] = []
        stopped: list[str] = []
        for r in results:
            live = self._live.get(r.seq_id)
            if live is None:
                continue
            chunk, stop_hit = self._emit(r.seq_id, live, r, sampled[r.seq_id])
            chunks.append((r.seq_id, chunk))
            if stop_hit and r.finished is None:
                stopped.append(r.seq_id)
        return chunks, stopped

    def _emit(
        self, key: str, live: _TextState, r: StepResult, s: Sampled
    ) -> tuple[GenerationChunk, bool]:
        live.completion_tokens += 1
        live.pending_text += live.detok.push(r.token_id)
        lp = (TokenLogprob(s.token_id, s.logprob, s.top),) if live.want_logprobs else ()
        finish: FinishReason | None = r.finished
        text = ""
        stop_hit = False
        if live.stop:
            hit = min(
                (i for i in (live.pending_text.find(x) for x in live.stop) if i >= 0), default=-1
            )
            if hit >= 0:
                text, live.pending_text = live.pending_text[:hit], ""
                finish = "stop"
                stop_hit = True
        if finish is None:
            cut = len(live.pending_text) - live.hold
            if cut > 0:
                text, live.pending_text = live.pending_text[:cut], live.pending_text[cut:]
            chunk = GenerationChunk(
                request_id=live.request_id, token_ids=(r.token_id,), text=text, logprobs=lp
            )
            return chunk, stop_hit
        end = self.end(key, finish)
        assert end is not None
        chunk = GenerationChunk(
            request_id=live.request_id,
            token_ids=(r.token_id,),
            text=text + end.text,
            logprobs=lp,
            finish_reason=finish,
            prompt_tokens=end.prompt_tokens,
            completion_tokens=end.completion_tokens,
        )
        return chunk, stop_hit
