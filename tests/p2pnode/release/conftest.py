"""Fixtures: publisher keys and two small releases of a real model (see factory.py)."""

from __future__ import annotations

import pytest

from market.protocol import SigningKey
from tests.p2pnode.release.factory import ModelDirs, key, model_dirs


@pytest.fixture
def publisher() -> SigningKey:
    return key(1)


@pytest.fixture
def stranger() -> SigningKey:
    return key(2)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelDirs:
    return model_dirs(tmp_path_factory.mktemp("releases"))
