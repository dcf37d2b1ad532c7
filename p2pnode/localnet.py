"""A whole Hearth market on one machine: chain, bootstrap, homeowner nodes, a buyer.

The demo, ``hearth bench market`` and the end-to-end tests all stand up the market
the same way, through :class:`LocalMarket`: anvil on 127.0.0.1 with the contracts
deployed, encrypted keystores for every party, a bootstrap process and one process
per homeowner node (``hearth node --config …``), each writing ``status.json`` and its
ledger into its own directory. Every process is started and stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalMarket", "NodeProc", "read_status"]

PASSPHRASE_ENV = "HEARTH_LOCAL_PASSPHRASE"
_PASSPHRASE = "hearth-local-market"


@dataclass
class NodeProc:
    """One process of the local market (a node or the bootstrap)."""

    name: str
    popen: subprocess.Popen[bytes]
    data_dir: Path
    peer_id: str = ""
    address: str = ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def status(self) -> dict[str, Any]:
        return read_status(self.data_dir)


def read_status(data_dir: Path) -> dict[str, Any]:
    """A node's last ``status.json`` ({} when there is none yet)."""
    try:
        return dict(json.loads((data_dir / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def hearth_cmd(*args: str) -> list[str]:
    """The ``hearth`` CLI as a subprocess command line (same interpreter)."""
    return [sys.executable, "-m", "p2pnode.cli.app", *args]


class LocalMarket:
    """Stand up and tear down a local market (see the module docstring).

    ``say`` receives one line per step (progress for humans); ``node_extra`` is TOML
    appended to every node's config (e.g. market or serving settings); ``power_extra`` goes
    into its ``[power]`` section, whose override file :meth:`override_power` writes.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        say: Callable[[str], None] = lambda _: None,
        deposit: int = 50 * 10**6,
        node_extra: str = "",
        power_extra: str = "",
    ) -> None:
        self.dir = workdir
        self.say = say
        self.deposit = deposit
        self.node_extra = node_extra
        self.power_extra = power_extra
        self.procs: list[NodeProc] = []
        self.ids: dict[str, Any] = {}
        self.anvil: Any = None
        self.bootstrap = ""
        # Several engines share this machine's cores: one torch thread each, or they
        # wait on each other at every matrix multiply (measured 5–10× slower).
        self.env = dict(
            os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **{PASSPHRASE_ENV: _PASSPHRASE}
        )
        workdir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ chain
    def start_chain(self) -> None:
        """Start anvil and deploy the contracts (min stake 10 hUSD, 1 h withdrawal notice)."""
        from market.chain.backends import ANVIL_DEV_KEY, AnvilProcess, connect, find_anvil
        from market.chain.client import ChainClient
        from market.chain.deployment import deploy_all

        if find_anvil() is None:
            raise RuntimeError("anvil is not installed: run `make setup` (installs it from npm)")
        self.anvil = AnvilProcess(log_path=self.dir / "anvil.log").start()
        self.admin = ChainClient(connect(self.anvil.url), ANVIL_DEV_KEY)
        self.deployment = deploy_all(self.admin, withdrawal_delay_s=3600, min_stake=10 * 10**6)
        self.deployment.save(self.dir / "deployment.json")

    def add_identity(self, name: str, *, provider: bool) -> Any:
        """Create ``name``'s keystore and fund it: providers stake, the buyer deposits."""
        from market.chain.backends import fund_native
        from market.identity.keystore import generate_identity, write_keystore

        ident = generate_identity()
        write_keystore(self.dir / name / "keystore", ident, _PASSPHRASE, scrypt_n=2**12)
        fund_native(self.admin, ident.eth_address, 10**18)
        dep = self.deployment
        client = self.admin.with_key(ident.eth_private_key)
        token = dep.erc20(client)
        if provider:
            token.mint(client.address, dep.min_stake)
            token.approve(dep.provider_registry, dep.min_stake)
            dep.registry(client).register(ident.peer_id, dep.min_stake)
        else:
            token.mint(client.address, self.deposit)
            token.approve(dep.payment_hub, self.deposit)
            dep.hub(client).deposit(dep.token, self.deposit)
        self.ids[name] = ident
        return ident

    # ------------------------------------------------------------------ processes
    def start_bootstrap(self) -> str:
        """Start the bootstrap process; returns its multiaddr."""
        log = open(self.dir / "bootstrap.log", "wb")  # noqa: SIM115 - lives with the process
        popen = subprocess.Popen(
            hearth_cmd("bootstrap", "--listen", "/ip4/127.0.0.1/tcp/0", "--http-port", "0"),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.PIPE,
            env=self.env,
        )
        self.procs.append(NodeProc("bootstrap", popen, self.dir))
        assert popen.stdout is not None
        info = json.loads(popen.stdout.readline() or b"{}")
        if "addrs" not in info:
            raise RuntimeError(f"bootstrap did not start; see {self.dir / 'bootstrap.log'}")
        self.bootstrap = info["addrs"][0]
        return self.bootstrap

    def config_for(self, name: str) -> Path:
        """Write ``name``'s hearth.toml (nodes and the buyer share the format)."""
        path = self.dir / name / "hearth.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""# written by p2pnode.localnet
[node]
data_dir = "{self.dir / name}"
name = "{name}"
region = "local"

[identity]
keystore = "{self.dir / name / "keystore"}"
passphrase_env = "{PASSPHRASE_ENV}"

[network]
listen = ["/ip4/127.0.0.1/tcp/0"]
bootstrap = ["{self.bootstrap}"]

[chain]
rpc_url = "{self.anvil.url}"
deployment = "{self.dir / "deployment.json"}"
redeem_min_gas_multiple = 10.0

[power]
override = {{ file = "{self.dir / name / "power-override"}" }}
{self.power_extra}

[dashboard]
port = 0
{self.node_extra}"""
        )
        return path

    def start_node(self, name: str) -> NodeProc:
        """Start ``hearth node`` for ``name`` (its identity must exist)."""
        cfg = self.config_for(name)
        log = open(self.dir / name / "node.log", "ab")  # noqa: SIM115 - lives with the process
        popen = subprocess.Popen(
            hearth_cmd("node", "--config", str(cfg)), stdout=log, stderr=log, env=self.env
        )
        proc = NodeProc(name, popen, self.dir / name)
        self.procs.append(proc)
        return proc

    def wait_serving(self, procs: list[NodeProc], timeout_s: float = 180.0) -> None:
        """Block until every node in ``procs`` reports ``serving``; raise if one dies."""
        t0 = time.monotonic()
        pending = list(procs)
        while pending:
            for p in list(pending):
                st = p.status()
                if st.get("state") == "serving" and st.get("pid") == p.popen.pid:
                    p.peer_id, p.address = st["peer_id"], st["address"]
                    pending.remove(p)
                    self.say(
                        f"{p.name} is serving as …{p.peer_id[-8:]} ({time.monotonic() - t0:.1f} s)"
                    )
                elif not p.alive():
                    raise RuntimeError(f"node {p.name} exited; see {p.data_dir / 'node.log'}")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"nodes {[p.name for p in pending]} did not start in time")
            time.sleep(0.2)

    def stand_up(self, homeowners: list[str] | tuple[str, ...], timeout_s: float = 180.0) -> None:
        """Chain, a funded buyer ("buyer"), a bootstrap and ``homeowners`` serving."""
        self.start_chain()
        self.add_identity("buyer", provider=False)
        self.start_bootstrap()
        for name in homeowners:
            self.add_identity(name, provider=True)
        self.wait_serving([self.start_node(n) for n in homeowners], timeout_s=timeout_s)

    def node(self, name: str) -> NodeProc:
        return next(p for p in self.procs if p.name == name)

    def name_of(self, peer_id: str) -> str:
        """The local name of a node's peer id (its last 8 characters if unknown)."""
        for p in self.procs:
            if p.peer_id == peer_id:
                return p.name
        return peer_id[-8:]

    def override_power(self, name: str, state: str) -> None:
        """Write ``name``'s power override file (normal|throttled|draining|off|auto)."""
        (self.dir / name / "power-override").write_text(state + "\n")

    def kill(self, peer_id: str) -> str:
        """SIGKILL the node with ``peer_id``; returns its name ("" if not found)."""
        for p in self.procs:
            if p.peer_id == peer_id and p.alive():
                p.popen.kill()
                p.popen.wait()
                return p.name
        return ""

    def drain(self, timeout_s: float = 90.0) -> None:
        """SIGTERM every live node and wait: each drains and redeems what it holds."""
        nodes = [p for p in self.procs if p.name != "bootstrap"]
        for p in nodes:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        for p in nodes:
            p.popen.wait(timeout=timeout_s)

    def redeem_offline(self, name: str) -> None:
        """``hearth node redeem`` for a node that is not running (e.g. one that was killed)."""
        subprocess.run(
            hearth_cmd("node", "redeem", "--config", str(self.dir / name / "hearth.toml")),
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop every process this market started (by PID) and the chain."""
        for p in self.procs:
            if p.alive():
                p.popen.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None
