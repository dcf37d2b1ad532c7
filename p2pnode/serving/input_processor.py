"""Input processing: a :class:`GenerationRequest` in, an :class:`EngineRequest` out.

Validates the request, renders the chat template, tokenises, and checks the result
against the model and the engine's limits (context length, KV-cache budget). Pure
Python over the tokenizer, never torch: the engine runs it in a worker thread
(``trio.to_thread``) so that a long prompt's tokenisation never blocks the event loop,
and so that no thread but the core's ever starts an OpenMP team.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from p2pnode.serving.api import BadRequestError, GenerationRequest
from p2pnode.serving.request import EngineRequest, SamplingParams
from p2pnode.serving.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = ["InputProcessor"]


@dataclass(frozen=True, slots=True)
class InputProcessor:
    """Turns requests into token ids for one model and one engine's limits."""

    tokenizer: Tokenizer
    vocab_size: int
    model_id: str
    names: Collection[str]  # what ``request.model`` may say: the id, the name, aliases
    max_positions: int  # the model's context (what scoring may take)
    max_len: int  # longest sequence (prompt + completion) one request may reach
    block_size: int
    num_blocks: int

    def process(self, request: GenerationRequest, *, key: str, request_id: str) -> EngineRequest:
        """Raise :class:`BadRequestError` for anything the engine cannot run."""
        request.validate()
        if request.model is not None and request.model not in self.names:
            raise BadRequestError(
                f"unknown model {request.model!r}; this engine serves {self.model_id}"
            )
        prompt_ids = self.prompt_ids(request)
        resume = [int(t) for t in request.resume_token_ids]
        if not prompt_ids:
            raise BadRequestError("empty prompt")
        if any(not 0 <= t < self.vocab_size for t in (*prompt_ids, *resume)):
            raise BadRequestError("token id out of vocabulary")
        context = len(prompt_ids) + len(resume)
        if context >= self.max_len:
            raise BadRequestError(
                f"prompt is {context} tokens; this engine's context is {self.max_len}"
            )
        if -(-(context + 1) // self.block_size) > self.num_blocks:
            raise BadRequestError(f"prompt of {context} tokens exceeds the KV-cache budget")
        want_logprobs = request.logprobs or request.top_logprobs > 0
        greedy = request.temperature == 0.0 or request.top_k == 1
        seed = None
        if not greedy:
            seed = (
                request.seed
                if request.seed is not None
                else int.from_bytes(os.urandom(8), "little") >> 1
            )
        full = [*prompt_ids, *resume]
        return EngineRequest(
            key=key,
            request_id=request_id,
            prompt_ids=full,
            prompt_tokens=len(prompt_ids),
            resumed_tokens=len(resume),
            max_new_tokens=request.max_tokens - len(resume),
            eos_ids=frozenset() if request.ignore_eos else frozenset(self.tokenizer.eos_token_ids),
            sampling=SamplingParams(
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
                top_logprobs=request.top_logprobs,
                logprobs=want_logprobs,
                seed=seed,
            ),
            stop=tuple(request.stop),
            detok=IncrementalDetokenizer(self.tokenizer, full),
        )

    def check_score(self, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> None:
        """Raise :class:`BadRequestError` unless the pair can be scored."""
        total = len(prompt_ids) + len(completion_ids)
        if not prompt_ids or not completion_ids:
            raise BadRequestError("score needs a non-empty prompt and completion")
        if total > self.max_positions:
            raise BadRequestError(f"{total} tokens exceed the model context")
        if any(not 0 <= t < self.vocab_size for t in (*prompt_ids, *completion_ids)):
            raise BadRequestError("token id out of vocabulary")

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The caller's prompt as generation sees it (chat template applied), no resume."""
        tok = self.tokenizer
        if request.messages is not None:
            try:
                text = tok.apply_chat_template(request.messages)
            except Exception as e:
                raise BadRequestError(f"chat template failed: {e}") from e
            return tok.encode(text, add_special_tokens=False)
        if request.prompt is not None:
            return tok.encode(request.prompt)
        return [int(t) for t in request.prompt_token_ids or ()]
