"""Fixtures for settlement tests: a deployed hub with a funded buyer and a provider."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from market.chain.client import ChainClient
from market.chain.contracts import Erc20, PaymentHub, ProviderRegistry, SignedVoucher
from market.chain.deployment import Deployment
from market.chain.voucher import Voucher, sign_voucher

DEPOSIT = 1_000 * 10**6  # 1,000 hUSD


@dataclass
class Market:
    """One deployment seen from its admin, a buyer (with a deposit) and a provider."""

    deployment: Deployment
    admin: ChainClient
    buyer: ChainClient
    buyer_key: bytes
    provider: ChainClient
    new_account: Callable[..., ChainClient]

    @property
    def token(self) -> Erc20:
        return self.deployment.erc20(self.admin)

    def hub(self, who: ChainClient | None = None) -> PaymentHub:
        return self.deployment.hub(who or self.admin)

    def registry(self, who: ChainClient | None = None) -> ProviderRegistry:
        return self.deployment.registry(who or self.admin)

    def voucher(
        self, cumulative: int, epoch: int = 0, provider: ChainClient | None = None
    ) -> Voucher:
        return Voucher(
            buyer=self.buyer.address_bytes,
            provider=(provider or self.provider).address_bytes,
            token=bytes.fromhex(self.deployment.token[2:]),
            cumulative_amount=cumulative,
            epoch=epoch,
        )

    def signed(
        self, cumulative: int, epoch: int = 0, provider: ChainClient | None = None
    ) -> SignedVoucher:
        v = self.voucher(cumulative, epoch, provider)
        return SignedVoucher(v, sign_voucher(self.buyer_key, self.hub().domain(), v))

    def fund_buyer(self, client: ChainClient, amount: int) -> None:
        tok = self.deployment.erc20(client)
        tok.mint(client.address, amount)
        tok.approve(self.deployment.payment_hub, amount)
        self.deployment.hub(client).deposit(self.deployment.token, amount)


@pytest.fixture
def market(
    chain_client: ChainClient,
    hearth_deployment: Deployment,
    new_account: Callable[..., ChainClient],
) -> Market:
    buyer_key = os.urandom(32)
    buyer = chain_client.with_key(buyer_key)
    from market.chain.backends import fund_native

    fund_native(chain_client, buyer.address, 10**18)
    m = Market(
        deployment=hearth_deployment,
        admin=chain_client,
        buyer=buyer,
        buyer_key=buyer_key,
        provider=new_account(chain_client),
        new_account=new_account,
    )
    m.fund_buyer(buyer, DEPOSIT)
    return m
