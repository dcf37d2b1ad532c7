"""A request after input processing: what the engine core takes. Never touches torch.

:class:`~p2pnode.serving.input_processor.InputProcessor` turns a
:class:`~p2pnode.serving.api.GenerationRequest` (text, chat messages or ids, checked
against the model and the KV budget) into an :class:`EngineRequest`: token ids, the
sampling parameters as plain numbers, and the text-side state that output processing
needs. The core turns :class:`SamplingParams` into the runner's per-row sampler
parameters (:mod:`p2pnode.serving.sampler`) on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pnode.serving.tokenizer import IncrementalDetokenizer

__all__ = ["EngineRequest", "SamplingParams"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to choose each next token; ``seed`` is set whenever sampling is random."""

    temperature: float
    top_p: float
    top_k: int
    top_logprobs: int
    logprobs: bool  # report the chosen token's logprob
    seed: int | None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(slots=True)
class EngineRequest:
    """One tokenised, validated request.

    ``key`` names it inside the engine (scheduler, KV cache, outputs) and is unique
    for the engine's life; ``request_id`` is the caller's name, echoed in every chunk.
    ``prompt_ids`` already hold the resumed tokens after the prompt.
    """

    key: str
    request_id: str
    prompt_ids: list[int]
    prompt_tokens: int  # the caller's prompt, without resumed tokens
    resumed_tokens: int
    max_new_tokens: int
    eos_ids: frozenset[int]
    sampling: SamplingParams
    stop: tuple[str, ...]
    detok: IncrementalDetokenizer
