"""From ``hearth.toml`` to a node's settings (the buyer's side is :mod:`market.sdk.connect`;
what both use is :mod:`market.settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from market.settings import config_at, deployment_of, identity_of, net_config_of

__all__ = ["load_node_settings"]


def load_node_settings(path: str | Path) -> Any:
    """Everything ``hearth node`` needs, from the config file at ``path``."""
    from market.ledger import RedemptionPolicy
    from market.protocol.policy import CostPlusPolicy
    from p2pnode.node.runtime import NodeSettings
    from p2pnode.release.swarm import upload_limits

    cfg = config_at(path, "node")  # what `hearth config check` lists, before any passphrase
    m = cfg.market
    deployment = deployment_of(cfg)
    return NodeSettings(
        identity=identity_of(cfg),
        net=net_config_of(cfg),
        rpc_url=cfg.chain.rpc_url,
        deployment=deployment,
        data_dir=Path(cfg.node.data_dir).expanduser(),
        model_path=cfg.serving.model or None,
        region=cfg.node.region,
        policy=CostPlusPolicy(
            electricity_per_kwh=int(m.electricity_price_per_kwh * 10**deployment.token_decimals),
            power_draw_w=m.power_draw_w,
            margin=m.margin,
            floor_per_1k=m.price_per_1k,
            chunk_tokens=m.chunk_tokens,
            credit_chunks=m.credit_chunks,
        ),
        capacity=cfg.serving.max_batch,
        device=cfg.serving.device,
        kv_cache_mb=cfg.serving.kv_cache_mb or None,
        pack_weights=cfg.serving.pack_weights,
        redemption=RedemptionPolicy(gas_multiple=cfg.chain.redeem_min_gas_multiple),
        power=cfg.power.as_mapping(),
        dashboard_port=cfg.dashboard.port,
        dashboard_token=cfg.dashboard.token,
        release_publishers=tuple(bytes.fromhex(k) for k in cfg.release.publishers),
        release_uploads=upload_limits(cfg.release.max_uploads, cfg.release.upload_mbps),
        release_follow=cfg.release.follow,
    )
