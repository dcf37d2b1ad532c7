"""Deploy Hearth's contracts and describe them in a JSON file nodes and buyers read.

``deploy_all`` deploys (optionally) the HearthTestUSD token, the PaymentHub and the
ProviderRegistry and returns a :class:`Deployment`; ``Deployment.save`` writes e.g.::

    {"chain_id": 31337, "payment_hub": "0x…", "provider_registry": "0x…",
     "token": "0x…", "token_symbol": "hUSD", "token_decimals": 6, "block_number": 3, …}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from market.chain.client import ChainClient
from market.chain.contracts import Erc20, PaymentHub, ProviderRegistry

__all__ = ["DEFAULTS", "Deployment", "deploy_all"]

#: Development defaults: 1 % fee, 1 day withdrawal notice, 100 hUSD stake, 7 day unbonding.
DEFAULTS: dict[str, int] = {
    "fee_bps": 100,
    "withdrawal_delay_s": 24 * 3600,
    "min_stake": 100 * 10**6,
    "unbonding_delay_s": 7 * 24 * 3600,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """Where Hearth lives on one chain (checksummed hex addresses)."""

    chain_id: int
    payment_hub: str
    provider_registry: str
    token: str
    token_symbol: str
    token_decimals: int
    deployer: str
    treasury: str
    arbiter: str
    block_number: int
    fee_bps: int
    withdrawal_delay_s: int
    min_stake: int
    unbonding_delay_s: int
    format: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        names = {f.name for f in fields(cls)}
        missing = names - set(data) - {"format"}
        if missing:
            raise ValueError(f"deployment file lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        """Read a deployment file; ``ValueError`` if it is malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read deployment {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"deployment {path} is not a JSON object")
        return cls.from_dict(data)

    def hub(self, client: ChainClient) -> PaymentHub:
        return PaymentHub(client, self.payment_hub)

    def registry(self, client: ChainClient) -> ProviderRegistry:
        return ProviderRegistry(client, self.provider_registry)

    def erc20(self, client: ChainClient) -> Erc20:
        return Erc20(client, self.token)


def deploy_all(
    client: ChainClient,
    *,
    token: str | None = None,
    treasury: str | None = None,
    arbiter: str | None = None,
    fee_bps: int = DEFAULTS["fee_bps"],
    withdrawal_delay_s: int = DEFAULTS["withdrawal_delay_s"],
    min_stake: int = DEFAULTS["min_stake"],
    unbonding_delay_s: int = DEFAULTS["unbonding_delay_s"],
) -> Deployment:
    """Deploy the contracts with `client`'s key as owner/admin.

    With ``token=None`` a fresh HearthTestUSD (6 decimals, public faucet) is deployed and
    used for both payment and stake. ``treasury`` and ``arbiter`` default to the deployer.
    """
    deployer = client.address
    treasury = treasury or deployer
    arbiter = arbiter or deployer
    if token is None:
        token = client.deploy("HearthTestUSD")
    erc20 = Erc20(client, token)
    hub = client.deploy("PaymentHub", deployer, treasury, fee_bps, withdrawal_delay_s)
    registry = client.deploy(
        "ProviderRegistry", token, min_stake, unbonding_delay_s, deployer, arbiter, treasury
    )
    symbol = str(client.call(erc20.contract.functions.symbol()))
    return Deployment(
        chain_id=client.chain_id,
        payment_hub=hub,
        provider_registry=registry,
        token=erc20.address,
        token_symbol=symbol,
        token_decimals=erc20.decimals(),
        deployer=deployer,
        treasury=treasury,
        arbiter=arbiter,
        block_number=client.block_number(),
        fee_bps=fee_bps,
        withdrawal_delay_s=withdrawal_delay_s,
        min_stake=min_stake,
        unbonding_delay_s=unbonding_delay_s,
    )
