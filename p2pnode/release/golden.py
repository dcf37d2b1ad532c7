"""Golden outputs: a release's greedy completions, and the check of an engine against them.

The publisher runs the real engine (:class:`p2pnode.serving.Engine`) on the CPU in
float32, greedily, on a few fixed prompts (raw text, no chat template), and signs the
token ids with the manifest (:func:`compute_golden`). A node that loads a release runs
:func:`check_golden` before it sends the release any job: the weights may hash right
and still be served wrong (a tokenizer that does not match, a dtype that breaks the
model, a loader bug).

The check is teacher-forced, not a second greedy run: the engine scores the golden
tokens after the prompt (:meth:`Engine.rescore <p2pnode.serving.engine.Engine.rescore>`)
and each must be its top choice, or within :data:`GREEDY_GAP` nats of it. A greedy run
would diverge for good at the first near-tie that another precision breaks the other
way; this judges each position on its own. The gaps are the verification rule's greedy
tolerances (:mod:`market.protocol.verify`, ``market/protocol/tolerances.json``):
honest float32 set-ups agree exactly (0 measured; 0.01 allows for another CPU's
summation order); a bfloat16 or float16 engine may differ by up to 0.51 nats on
SmolLM2, so 0.6.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from p2pnode.release.errors import GoldenMismatch
from p2pnode.release.manifest import GoldenOutput, Manifest

if TYPE_CHECKING:
    from p2pnode.serving.engine import Engine
    from p2pnode.serving.loader import LoadedModel

__all__ = ["GOLDEN_PROMPTS", "GOLDEN_TOKENS", "GREEDY_GAP", "check_golden", "compute_golden"]

#: The prompts a release's golden outputs complete (raw text: no chat template).
GOLDEN_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Water boils at")
#: Tokens per golden output.
GOLDEN_TOKENS = 16
#: How far (nats) below the engine's own top choice a golden token may be, by the
#: engine's dtype; a dtype not listed gets the bfloat16 value.
GREEDY_GAP = {"float32": 0.01, "bfloat16": 0.6, "float16": 0.6}


async def compute_golden(
    loaded: LoadedModel,
    *,
    prompts: Sequence[str] = GOLDEN_PROMPTS,
    max_tokens: int = GOLDEN_TOKENS,
    threads: int | None = None,
) -> tuple[GoldenOutput, ...]:
    """Greedy completions of ``prompts`` by ``loaded`` on the CPU in float32."""
    import torch
    import trio

    from p2pnode.serving import Engine, GenerationRequest

    out: list[GoldenOutput | None] = [None] * len(prompts)
    engine = Engine(
        loaded,
        device="cpu",
        dtype=torch.float32,
        max_batch=max(1, len(prompts)),
        max_model_len=512,
        num_threads=threads,
    )
    async with engine:

        async def one(i: int) -> None:
            request = GenerationRequest(prompt=prompts[i], max_tokens=max_tokens, temperature=0.0)
            done = await engine.complete(request)
            if done.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"golden output {i} failed: {done.error or done.finish_reason}")
            out[i] = GoldenOutput(
                prompt=prompts[i], max_tokens=max_tokens, token_ids=tuple(done.token_ids)
            )

        async with trio.open_nursery() as nursery:
            for i in range(len(prompts)):
                nursery.start_soon(one, i)
    return tuple(g for g in out if g is not None)


async def check_golden(engine: Engine, manifest: Manifest, *, max_gap: float | None = None) -> None:
    """Raise :class:`GoldenMismatch` unless ``engine`` serves ``manifest``'s model and
    ranks every golden token at most ``max_gap`` nats (default :data:`GREEDY_GAP` for
    the engine's dtype) below its own top choice."""
    from p2pnode.serving import GenerationRequest

    label = manifest.label()
    if engine.model_id != manifest.content_address:
        raise GoldenMismatch(
            f"the engine serves {engine.model_id}, not {label} ({manifest.content_address})"
        )
    dtype = engine.dtype
    gap = GREEDY_GAP.get(dtype, GREEDY_GAP["bfloat16"]) if max_gap is None else max_gap
    for n, golden in enumerate(manifest.golden):
        if not golden.token_ids:
            continue
        request = GenerationRequest(
            prompt=golden.prompt, max_tokens=golden.max_tokens, temperature=0.0
        )
        scored = await engine.rescore(request, golden.token_ids, top_n=1)
        for i, margin in enumerate(scored.margin):
            if margin > gap:
                raise GoldenMismatch(
                    f"{label}: golden output {n} ({golden.prompt!r:.40}), token {i}: the "
                    f"engine ({dtype}) ranks the expected token {golden.token_ids[i]} "
                    f"{margin:.3f} nats below its own choice {scored.top_ids[i][0]}; "
                    f"expected at most {gap} (a model that is not the release, or served "
                    "wrong)"
                )
