"""From ``hearth.toml`` to a running buyer: identity, network, chain, resumed wallet.

``hearth submit``, ``hearth gateway``, the demo and SDK users all start a buyer the
same way::

    async with open_buyer_client(load_buyer("hearth.toml")) as client:
        ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from market.settings import config_at, deployment_of, identity_of, net_config_of

__all__ = [
    "BuyerSetup",
    "config_at",
    "deployment_of",
    "identity_of",
    "load_buyer",
    "net_config_of",
    "open_buyer_client",
]


@dataclass
class BuyerSetup:
    """The buyer's identity and chain view, from its config."""

    identity: Any
    net: Any
    rpc_url: str
    deployment: Any
    bid_window_ms: int
    data_dir: Path

    def chain_client(self) -> Any:
        from market.chain.backends import connect
        from market.chain.client import ChainClient

        return ChainClient(connect(self.rpc_url), self.identity.eth_private_key)


def load_buyer(path: str | Path, environ: Mapping[str, str] | None = None) -> BuyerSetup:
    """The buyer side of the config file at ``path`` (passphrase from ``environ``)."""
    cfg = config_at(path, "buyer")
    deployment = deployment_of(cfg)  # cheap checks first: no passphrase asked for nothing
    return BuyerSetup(
        identity=identity_of(cfg, environ),
        net=net_config_of(cfg),
        rpc_url=cfg.chain.rpc_url,
        deployment=deployment,
        bid_window_ms=cfg.market.bid_window_ms,
        data_dir=Path(cfg.node.data_dir).expanduser(),
    )


@asynccontextmanager
async def open_buyer_client(setup: BuyerSetup, **config: Any) -> AsyncIterator[Any]:
    """A running :class:`market.sdk.client.Client` for ``setup`` (its deposit read on chain)."""
    import trio

    from market.chain.aio import TrioChain
    from market.ledger import Ledger
    from market.sdk.client import ClientConfig, open_client
    from market.sdk.collateral import Collateral
    from market.sdk.stake import StakeCheck
    from p2pnode.net import open_node_host

    dep = setup.deployment
    ident = setup.identity
    setup.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(setup.data_dir / "buyer-ledger.sqlite")
    client = await trio.to_thread.run_sync(setup.chain_client)
    held = ledger.vouchers()
    wallet = await trio.to_thread.run_sync(_wallet, client, dep, ident, held)
    cc = ClientConfig(bid_window_ms=setup.bid_window_ms, **config)
    # Only staked providers win (Sybil resistance): the registry is read once per provider.
    stake = StakeCheck.from_registry(dep.registry(client))
    # Each provider's channel is covered by money locked for it before an award.
    collateral = Collateral(
        dep.hub(client), TrioChain(), ident.eth_address_bytes, bytes.fromhex(dep.token[2:])
    )
    async with (
        open_node_host(ident.libp2p_keypair(), setup.net) as net,
        open_client(
            net=net,
            key=ident.signing_key(),
            wallet=wallet,
            config=cc,
            ledger=ledger,
            stake_check=stake,
            collateral=collateral,
        ) as c,
    ):
        yield c


def _wallet(client: Any, dep: Any, ident: Any, held: list[Any]) -> Any:
    """The buyer's wallet, resumed: vouchers signed before count, and so do redemptions.

    Vouchers are cumulative over a channel's life while the hub balance shrinks as
    providers redeem, so the wallet's capacity is the free balance plus, for each
    provider we signed to, what its channel redeemed and what is still locked for it.
    """
    from market.chain.voucher import draft_signer
    from market.protocol.payments import BuyerWallet, ChannelTerms

    hub = dep.hub(client)
    token = bytes.fromhex(dep.token[2:])
    me = ident.eth_address_bytes
    providers = sorted({sv.voucher.provider for sv in held})
    in_channels = sum(
        hub.redeemed(me, p, token)[0] + hub.collateral(me, p, token).locked for p in providers
    )
    wallet = BuyerWallet(
        buyer_address=ident.eth_address_bytes,
        deposit=hub.balance_of(ident.eth_address, dep.token) + in_channels,
        terms=ChannelTerms(
            token=token, chain_id=dep.chain_id, contract=bytes.fromhex(dep.payment_hub[2:])
        ),
        signer=draft_signer(ident.eth_private_key),
    )
    for sv in held:
        wallet.restore(sv.voucher.provider, sv.voucher.cumulative_amount)
    return wallet
