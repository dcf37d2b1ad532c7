"""From ``hearth.toml`` to what every market process needs, buyer and node alike.

The validated config (:func:`config_at`), the unlocked identity (:func:`identity_of`),
the network settings (:func:`net_config_of`) and the chain deployment
(:func:`deployment_of`). The buyer builds on them in :mod:`market.sdk.connect`, the
node in :mod:`p2pnode.node.setup`; neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from market.chain.deployment import Deployment
    from market.config import HearthConfig
    from market.identity import Identity
    from p2pnode.net import NetConfig

__all__ = ["config_at", "deployment_of", "identity_of", "net_config_of"]


def config_at(path: str | Path, role: str | None = None) -> HearthConfig:
    """The validated config at ``path``; with ``role`` ("node" or "buyer") also ready for
    it (:func:`market.config.check_ready`: the same list ``hearth config check`` prints)."""
    from market.config import check_ready, load_config

    cfg = load_config(Path(path))
    if role is not None:
        check_ready(cfg, role, source=str(Path(path).expanduser()))
    return cfg


def identity_of(cfg: HearthConfig, environ: Mapping[str, str] | None = None) -> Identity:
    """The unlocked identity; a wrong passphrase says which keystore and where it came from."""
    import os

    from market.identity import WrongPassphrase, load_identity
    from market.identity.passphrase import resolve_passphrase

    env_var = cfg.identity.passphrase_env
    passphrase = resolve_passphrase(env_var=env_var, environ=environ)
    keystore = Path(cfg.identity.keystore).expanduser()
    try:
        return load_identity(keystore, passphrase)
    except WrongPassphrase:
        came = f"${env_var}" if (os.environ if environ is None else environ).get(env_var) else None
        raise WrongPassphrase(
            f"wrong passphrase for the keystore at {keystore} "
            + (f"(taken from {came}, named by identity.passphrase_env)" if came else "(typed)")
        ) from None


def net_config_of(cfg: HearthConfig) -> NetConfig:
    """The network settings: [network], with the peer cache in node.data_dir unless set."""
    from p2pnode.net import NetConfig

    data_dir = Path(cfg.node.data_dir).expanduser()
    cache = cfg.network.peer_cache
    return NetConfig(
        listen=tuple(cfg.network.listen),
        announce=tuple(cfg.network.announce),
        bootstrap=tuple(cfg.network.bootstrap),
        peer_cache=Path(cache).expanduser() if cache else data_dir / "peers.json",
    )


def deployment_of(cfg: HearthConfig) -> Deployment:
    """The deployment file named by chain.deployment; a :class:`~market.config.ConfigError`
    says what is wrong with it (missing, not JSON, fields lacking)."""
    from market.chain.deployment import Deployment
    from market.config import ConfigError, ConfigProblem

    path = Path(cfg.chain.deployment).expanduser()
    try:
        return Deployment.load(path)
    except (ValueError, TypeError) as exc:
        why = str(exc) if path.is_file() else "no such file"
        raise ConfigError(
            str(path),
            [
                ConfigProblem(
                    "chain.deployment",
                    cfg.chain.deployment,
                    f"a deployment file written by `hearth chain deploy` ({why})",
                )
            ],
            headline="not a usable deployment file",
        ) from None
