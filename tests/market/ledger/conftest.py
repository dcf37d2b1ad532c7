"""Ledger fixtures: a provider with a ledger holding a buyer's vouchers."""

from __future__ import annotations

from pathlib import Path

import pytest

from market.ledger import Ledger
from tests.market.chain.conftest import market  # noqa: F401 - re-exported fixture


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    db = Ledger(tmp_path / "ledger.db")
    yield db
    db.close()
