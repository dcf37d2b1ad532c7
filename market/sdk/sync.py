"""A blocking facade over the async client, for scripts and notebooks.

::

    from market.sdk.sync import generate

    result = generate("hearth.toml", "SmolLM2-135M-Instruct", "Name three rivers.")
    print(result.text, result.cost)

Each call starts a buyer (network host, chain reads), runs one job and stops it
again, so it costs a second or two of start-up: use the async :class:`Client` to
run many jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import trio

from market.sdk.connect import load_buyer, open_buyer_client
from market.sdk.types import Chunk, GenerationParams, Result

__all__ = ["generate"]


def generate(
    config: str | Path,
    model: str,
    prompt: str,
    params: GenerationParams | None = None,
    *,
    chat: bool = True,
    on_chunk: Callable[[Chunk], None] | None = None,
) -> Result:
    """Buy one completion of ``prompt`` (as a user message when ``chat``); block until done."""
    setup = load_buyer(config)

    async def run() -> Result:
        async with open_buyer_client(setup) as client:
            job = client.generate(
                model,
                messages=[{"role": "user", "content": prompt}] if chat else None,
                prompt=None if chat else prompt,
                params=params,
            )
            async for chunk in job:
                if on_chunk is not None:
                    on_chunk(chunk)
            return job.result

    return trio.run(run)
