"""The buyer's SDK: an async (trio) client that buys inference on the Hearth market.

Quick start (inside ``trio.run``)::

    from market.sdk import GenerationParams, load_buyer, open_buyer_client

    async with open_buyer_client(load_buyer("hearth.toml")) as client:
        job = client.generate(
            "SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "Hello!"}],
            params=GenerationParams(max_tokens=64),
        )
        async for chunk in job:          # tokens as they arrive, from whichever provider
            print(chunk.text, end="")
        print(job.result.cost, job.result.provider, job.result.failovers)

The auction, the award, a voucher per chunk and the failover to a runner-up when a
provider dies mid-stream all happen inside ``generate``. When nobody bids,
:class:`NoBidsError` lists each provider's reason. :mod:`market.sdk.sync` offers the
same in a blocking facade.
"""

from market.sdk.client import Client, ClientConfig, JobHandle, open_client
from market.sdk.connect import BuyerSetup, load_buyer, open_buyer_client
from market.sdk.types import (
    BadRequestError,
    Chunk,
    GenerationParams,
    HearthError,
    InsufficientFundsError,
    JobFailedError,
    MarketBusyError,
    NoBidsError,
    ProviderShare,
    Result,
)

__all__ = [
    "BadRequestError",
    "BuyerSetup",
    "Chunk",
    "Client",
    "ClientConfig",
    "GenerationParams",
    "HearthError",
    "InsufficientFundsError",
    "JobFailedError",
    "JobHandle",
    "MarketBusyError",
    "NoBidsError",
    "ProviderShare",
    "Result",
    "load_buyer",
    "open_buyer_client",
    "open_client",
]
