"""A job that fails inside the client fails alone: the client and other jobs go on."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from market.sdk.client import Client, ClientConfig
from market.sdk.types import JobFailedError


async def test_an_internal_error_fails_only_its_job(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run(self: Client, model: str, *args: Any) -> Any:
        if model == "broken":
            raise KeyError("a bug")
        raise JobFailedError("no market here")

    monkeypatch.setattr(Client, "_run", run)
    async with trio.open_nursery() as nursery:
        client = Client(
            net=None,  # type: ignore[arg-type]  # _run is replaced: no network is touched
            key=None,  # type: ignore[arg-type]
            wallet=None,  # type: ignore[arg-type]
            config=ClientConfig(),
            nursery=nursery,
        )
        with pytest.raises(JobFailedError, match="internal error: KeyError"):
            await client.generate("broken", prompt="hi").text()
        with pytest.raises(JobFailedError, match="no market here"):  # the client still serves
            await client.generate("other", prompt="hi").text()
