"""Repo-wide pytest fixtures: development chains.

Chains
------
``anvil_rpc_url`` (session)
    URL of one anvil node (from ``contracts/node_modules``) on 127.0.0.1 and a free port,
    started lazily the first time a test asks for it, its output in a file under the
    session's temp dir, stopped by PID when the session ends. Tests sharing it stay
    independent by deploying their own contracts and using fresh keys
    (``new_account``).
``anvil_process`` (session)
    The :class:`market.chain.backends.AnvilProcess` behind ``anvil_rpc_url``.
``embedded_chain`` (function)
    A fresh in-process eth-tester/py-evm chain (``EmbeddedChain``: ``.w3``,
    ``.funded_keys``, ``.client(i)``).
``chain_client`` (function, parametrised ``embedded`` / ``anvil``)
    A funded, signing :class:`market.chain.client.ChainClient` on each backend in turn:
    a test that takes it runs twice.
``hearth_deployment`` (function)
    ``deploy_all(chain_client)`` with development defaults: a
    :class:`market.chain.deployment.Deployment` on the same chain (``chain_client``'s
    key is owner, treasury and arbiter).
``new_account`` (function)
    ``new_account(client, eth=10**18) -> ChainClient``: a fresh random key on the same
    chain, funded with native coin.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from market.chain.backends import AnvilProcess, EmbeddedChain
    from market.chain.client import ChainClient
    from market.chain.deployment import Deployment


@pytest.fixture(scope="session")
def anvil_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnvilProcess]:
    from market.chain.backends import AnvilProcess, find_anvil

    if find_anvil() is None:
        pytest.fail("anvil binary missing: run `cd contracts && npm ci` (make setup does it)")
    log = tmp_path_factory.mktemp("anvil") / "anvil.log"
    proc = AnvilProcess(log_path=log).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def anvil_rpc_url(anvil_process: AnvilProcess) -> str:
    return anvil_process.url


@pytest.fixture
def embedded_chain() -> EmbeddedChain:
    from market.chain.backends import start_embedded_chain

    return start_embedded_chain()


@pytest.fixture(params=["embedded", "anvil"])
def chain_client(request: pytest.FixtureRequest) -> ChainClient:
    from market.chain.backends import ANVIL_DEV_KEY, connect
    from market.chain.client import ChainClient

    if request.param == "embedded":
        chain: EmbeddedChain = request.getfixturevalue("embedded_chain")
        return chain.client(0)
    url: str = request.getfixturevalue("anvil_rpc_url")
    return ChainClient(connect(url), ANVIL_DEV_KEY)


@pytest.fixture
def hearth_deployment(chain_client: ChainClient) -> Deployment:
    from market.chain.deployment import deploy_all

    return deploy_all(chain_client)


@pytest.fixture
def new_account() -> Callable[..., ChainClient]:
    from market.chain.backends import fund_native

    def make(client: ChainClient, eth: int = 10**18, **_: Any) -> ChainClient:
        other = client.with_key(os.urandom(32))
        fund_native(client, other.address, eth)
        return other

    return make
