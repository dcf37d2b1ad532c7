"""`hearth model seed` and `hearth model fetch`: releases through the swarm.

Both run a libp2p host of their own (a fresh peer id, not the node's: they run beside
it), reach the network through --config's bootstrap peers and any --peer, and keep
releases under ``<data_dir>/releases/``. ``fetch`` serves the chunks it has to
others while it downloads; ``seed`` serves a published folder (or what the data dir
holds) until stopped. Heavy imports stay inside the functions.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from p2pnode.cli.errors import explained, fail
from p2pnode.release.store import RELEASES_DIR

__all__ = ["bench_distribute", "fetch", "seed"]

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="A node's hearth.toml: its bootstrap peers and node.data_dir (default: "
        "./hearth.toml when it exists).",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Where releases are kept (default: node.data_dir)."),
]
PeerOpt = Annotated[
    list[str] | None,
    typer.Option("--peer", help="A peer to dial first (/ip4/…/tcp/…/p2p/<id>); may be repeated."),
]
ListenOpt = Annotated[str, typer.Option("--listen", help="The multiaddr this process listens on.")]
UploadsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-uploads",
        help="Chunks sent to others at once, 1 to 64 (default: release.max_uploads, 4).",
    ),
]
RateOpt = Annotated[
    float | None,
    typer.Option(
        "--upload-mbps",
        help="Upload cap in megabits per second, 0 = none (default: release.upload_mbps).",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON lines (events, progress, summary).")
]


def seed(
    directory: Annotated[
        Path | None,
        typer.Argument(
            help="A published model folder (its *.hearth-release beside the weights); "
            "omit to serve every release under the data dir.",
            metavar="[DIR]",
            show_default=False,
        ),
    ] = None,
    release_file: Annotated[
        Path | None,
        typer.Option("--release", help="The release manifest (default: the one in DIR)."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    peer: PeerOpt = None,
    listen: ListenOpt = "/ip4/0.0.0.0/tcp/0",
    max_uploads: UploadsOpt = None,
    upload_mbps: RateOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Serve releases to the swarm, and announce them, until stopped (Ctrl-C or SIGTERM).

    Nodes that follow the model (release.follow) hear of the release on its
    publisher's topic and update to it. Every chunk is checked against the signed
    manifest before it is offered; peers
    fetch from the seed only what no other peer has yet, so its uplink sends each
    chunk about once.
    """
    import trio

    from p2pnode.release import RELEASE_SUFFIX, read_release
    from p2pnode.release.store import ReleaseStore

    net_cfg, root, cfg = _setup(config, data_dir, peer, listen, need_peer=False)
    limits = _limits(max_uploads, upload_mbps, cfg)
    store = ReleaseStore(root)
    seeded: list[Any] = []
    if directory is not None:
        if not directory.is_dir():
            fail(f"{directory} is not a folder")
        if release_file is None:
            found = sorted(directory.glob(f"*{RELEASE_SUFFIX}"))
            if len(found) != 1:
                fail(
                    f"{directory} holds {len(found)} *{RELEASE_SUFFIX} files: name one "
                    "with --release"
                )
            release_file = found[0]
        with explained():
            release = read_release(release_file)
        local = store.seed(release, directory)
        if not local.complete:
            fail(
                f"{directory} holds {local.held} of the {local.total} chunks of "
                f"{release.manifest.label()}: not the folder it was published from?"
            )
        seeded.append(local)
    elif release_file is not None:
        fail("--release names the manifest of a DIR: give the DIR too")
    seeded += [r for r in store.held() if r not in seeded]
    if not seeded:
        fail(f"nothing to seed: no DIR and no release under {root}")

    async def main() -> None:
        from p2pnode.net import open_node_host
        from p2pnode.release.fetch import announce
        from p2pnode.release.follow import announce_releases
        from p2pnode.release.swarm import ChunkServer

        server = ChunkServer(store, limits)
        async with open_node_host(_keypair(), net_cfg) as net:
            server.install(net)
            await _dial(net, peer or [])
            for local in seeded:
                net.start_soon(announce, net, local.release)
            # and on each publisher's topic: nodes following the model update to it
            net.start_soon(announce_releases, net, [r.release for r in seeded])
            _event(
                as_json,
                {
                    "event": "ready",
                    "peer_id": net.peer_id,
                    "addrs": list(net.addrs),
                    "releases": [
                        {"digest": r.digest, "label": r.manifest.label(), "held": r.held}
                        for r in seeded
                    ],
                },
                f"seeding {', '.join(r.manifest.label() for r in seeded)} as {net.peer_id}",
            )
            while True:
                await trio.sleep(1.0)
                if as_json:
                    _emit({"event": "stats", **server.stats})

    try:
        trio.run(main)
    except KeyboardInterrupt:
        return


def fetch(
    target: Annotated[
        str,
        typer.Argument(
            help="NAME or NAME@VERSION (default: the newest version a trusted publisher "
            "signed that peers offer).",
            metavar="NAME[@VERSION]",
            show_default=False,
        ),
    ],
    publisher: Annotated[
        list[str] | None,
        typer.Option(
            "--publisher",
            help="A trusted publisher's public key (64 hex); may be repeated; added to "
            "release.publishers of --config. Releases signed by anyone else are refused.",
        ),
    ] = None,
    release_file: Annotated[
        Path | None,
        typer.Option("--release", help="Fetch this release manifest instead of asking peers."),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    peer: PeerOpt = None,
    listen: ListenOpt = "/ip4/0.0.0.0/tcp/0",
    max_uploads: UploadsOpt = None,
    upload_mbps: RateOpt = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify",
            help="Load the fetched model and check its content address before trusting it.",
        ),
    ] = True,
    seed_after: Annotated[
        bool, typer.Option("--seed-after", help="Keep serving it once fetched, until stopped.")
    ] = False,
    stall_timeout: Annotated[
        float,
        typer.Option(
            "--stall-timeout",
            help="Give up (resumable) after this many seconds without a new chunk.",
        ),
    ] = 300.0,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a model release from the swarm, resuming any earlier partial fetch.

    Every chunk is checked against the publisher's signed manifest before it is
    written, and what was written survives a crash or kill -9. Peers get the chunks
    this fetch already has while it runs. Progress (and the time left) goes to stderr.
    """
    import trio

    from p2pnode.release import TRUST_STORE_FILE, TrustStore, parse_publisher_key, read_release
    from p2pnode.release.store import ReleaseStore

    if not 1 <= stall_timeout <= 86_400:
        fail(f"--stall-timeout {stall_timeout}: expected 1 to 86400 seconds")
    name, _, ver = target.partition("@")
    version: int | None = None
    if ver:
        if not ver.isdigit() or int(ver) < 1:
            fail(f"{target!r}: expected NAME or NAME@VERSION with VERSION a number from 1")
        version = int(ver)
    net_cfg, root, cfg = _setup(config, data_dir, peer, listen)
    limits = _limits(max_uploads, upload_mbps, cfg)
    keys: list[bytes] = []
    for k in [*(publisher or []), *(cfg.release.publishers if cfg is not None else ())]:
        with explained():
            keys.append(parse_publisher_key(k))
    if not keys:
        fail(
            "name at least one --publisher (or release.publishers in --config): the keys "
            "whose releases this node trusts"
        )
    given = None
    if release_file is not None:
        with explained():
            given = read_release(release_file)
    root.mkdir(parents=True, exist_ok=True)
    trust = TrustStore(root.parent / TRUST_STORE_FILE, trusted=keys)
    store = ReleaseStore(root)
    summary: dict[str, Any] = {}

    async def main() -> None:
        from p2pnode.net import open_node_host
        from p2pnode.release.fetch import Fetcher, announce, holders, resolve
        from p2pnode.release.swarm import ChunkServer, SwarmError, release_key

        async with open_node_host(_keypair(), net_cfg) as net:
            ChunkServer(store, limits).install(net)
            dialed = await _dial(net, peer or [])
            with explained():
                if given is not None:
                    release = trust.check(given.encode())
                else:
                    release = await resolve(net, trust, name, version)
            m = release.manifest
            if given is not None and (m.name != name or version not in (None, m.version)):
                fail(f"--release is {m.label()}, not {target}")
            local = store.open(release)
            net.start_soon(announce, net, release)
            _event(
                as_json,
                {"event": "release", "digest": release.digest, "label": m.label(),
                 "bytes": m.total_size, "chunks": local.total, "held": local.held,
                 "held_bytes": local.held_bytes},
                f"fetching {m.label()} ({_mib(m.total_size)}), {local.held} of "
                f"{local.total} chunks already here",
            )  # fmt: skip
            shown = _Progress(as_json, m.total_size, local.held_bytes)

            async def find() -> list[str]:
                return await holders(net, release_key(release.digest))

            fetcher = Fetcher(net, local, peers=find, progress=shown)
            for p in dialed:
                fetcher.add_peer(p)
            t0 = time.monotonic()
            try:
                stats = await fetcher.run(stall_s=stall_timeout)
            except SwarmError as e:
                shown.finish()
                fail(f"fetching {m.label()} stopped: {e.detail}")
            seconds = time.monotonic() - t0
            shown.finish()
            if verify:
                _event(as_json, {"event": "verifying"}, "checking the model's content address…")
            with explained():
                await trio.to_thread.run_sync(
                    lambda: trust.accept(
                        release.encode(), directory=local.files if verify else None
                    )
                )
            summary.update(
                event="done",
                digest=release.digest,
                label=m.label(),
                path=str(local.files),
                bytes=m.total_size,
                fetched_bytes=stats.fetched_bytes,
                seconds=round(seconds, 3),
                by_peer=stats.by_peer,
                rejected_chunks=stats.rejected_chunks,
                peer_id=net.peer_id,
            )
            _event(
                as_json,
                summary,
                f"fetched {m.label()} into {local.files}: {_mib(stats.fetched_bytes)} in "
                f"{seconds:.1f} s from {len(stats.by_peer)} peer(s)",
            )
            if seed_after:
                while True:
                    await trio.sleep(3600)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except LookupError as e:
        fail(str(e))
    finally:
        trust.close()


def bench_distribute(
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes fetching at once (1 to 32).")] = 8,
    seed_mbps: Annotated[
        float,
        typer.Option("--seed-mbps", help="Cap the seed's uplink, megabits per second (0 = none)."),
    ] = 0.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the run's folder (logs, data) and print it.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """One release (SmolLM2 in bf16, ~257 MiB), one seed, N nodes through the swarm.

    Reports the seed's upload during the swarm phase over the model size (origin
    bytes ratio), the time until all N hold it against one node alone, what a kill -9
    mid-download re-fetches, and the refusal rate of six bad releases.
    """
    from p2pnode.bench_distribute import run_bench_distribute

    if not 1 <= nodes <= 32:
        fail(f"--nodes {nodes}: expected 1 to 32")
    if math.isnan(seed_mbps) or not 0 <= seed_mbps <= 1e6:
        fail(f"--seed-mbps {seed_mbps}: expected 0 (no cap) or a positive number up to 1e6")
    log = (lambda _line: None) if as_json else (lambda line: typer.echo(line, err=True))
    figures = run_bench_distribute(nodes=nodes, seed_mbps=seed_mbps, log=log, keep=keep)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table

    size = figures["model_bytes"]
    table = Table(title=f"hearth bench distribute — {nodes} nodes, {_mib(size)} release")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target")
    rows = [
        ("origin bytes / model size", f"{figures['origin_bytes_ratio']:.3f}", "<= 1.5 (goal 1.05)"),
        ("all nodes hold it (s)", f"{figures['all_nodes_s']:.1f}", ""),
        ("one node alone (s)", f"{figures['single_node_s']:.1f}", ""),
        ("all / alone", f"{figures['all_nodes_vs_single']:.2f}", ""),
        ("N from the seed alone, at least (s)",
         f"{figures['seed_only_bound_s']:.1f}" if figures["seed_only_bound_s"] else "-",
         "seed uplink capped"),
        ("re-fetched after kill -9", _mib(figures["refetched_bytes_after_kill"]),
         f"<= {_mib(figures['refetch_bound_bytes'])}"),
        ("bad releases refused", f"{figures['bad_releases_refused']}/"
         f"{figures['bad_releases_tried']}", "100 %"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    Console(width=120).print(table)


# ---------------------------------------------------------------------- helpers
def _setup(
    config: Path | None,
    data_dir: Path | None,
    peers: list[str] | None,
    listen: str,
    *,
    need_peer: bool = True,
) -> tuple[Any, Path, Any]:
    """The network settings, the releases folder and the config (``None`` without one)
    from --config / --data-dir."""
    import dataclasses

    from p2pnode.net import NetConfig

    cfg = None
    if config is None and Path("hearth.toml").is_file():
        config = Path("hearth.toml")
    if config is not None:
        from market.settings import net_config_of
        from p2pnode.cli.market import _config

        cfg = _config(config)
        net = dataclasses.replace(net_config_of(cfg), peer_cache=None)
    else:
        net = NetConfig()
    # --peer addresses join the bootstrap list: dialled first, kept, asked for peers
    net = dataclasses.replace(
        net, listen=(listen,), announce=(), bootstrap=(*net.bootstrap, *(peers or ()))
    )
    if data_dir is None:
        if cfg is None:
            fail("give --data-dir, or --config with node.data_dir")
        data_dir = Path(cfg.node.data_dir).expanduser()
    if need_peer and not net.bootstrap and not peers:
        fail("no peer to reach: give --peer, or --config with network.bootstrap")
    return net, Path(data_dir) / RELEASES_DIR, cfg


def _limits(max_uploads: int | None, upload_mbps: float | None, cfg: Any) -> Any:
    """The uplink share: the flags, else the config's [release], else its defaults."""
    from market.config import ReleaseSection
    from p2pnode.release.swarm import upload_limits

    section = cfg.release if cfg is not None else ReleaseSection()
    uploads = section.max_uploads if max_uploads is None else max_uploads
    mbps = section.upload_mbps if upload_mbps is None else upload_mbps
    if not 1 <= uploads <= 64:
        fail(f"--max-uploads {uploads}: expected 1 to 64")
    if math.isnan(mbps) or not 0 <= mbps <= 1e6:
        fail(f"--upload-mbps {mbps}: expected 0 (no cap) or a positive number up to 1e6")
    return upload_limits(uploads, mbps)


def _keypair() -> Any:
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair()


async def _dial(net: Any, addrs: list[str]) -> list[str]:
    """Dial each --peer; the peer ids reached (a failure is reported, not fatal)."""
    out = []
    for addr in addrs:
        try:
            out.append(await net.connect(addr, timeout=10))
        except Exception as e:
            typer.echo(f"warning: could not reach --peer {addr}: {e}", err=True)
    return out


class _Progress:
    """Progress with a rate and the time left: a line on stderr every 2 s (in place on a
    terminal), or a JSON line on stdout every 0.5 s with --json."""

    def __init__(self, as_json: bool, total: int, start: int) -> None:
        self.as_json, self.total, self.start = as_json, total, start
        self.t0 = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.held = start

    def __call__(self, stats: Any, local: Any) -> None:
        self.held = self.start + stats.fetched_bytes
        now = time.monotonic()
        if now - self.last < (0.5 if self.as_json or self.tty else 2.0):
            return
        self.last = now
        rate = stats.fetched_bytes / max(1e-6, now - self.t0)
        left = (self.total - self.held) / rate if rate > 0 else math.inf
        if self.as_json:
            _emit(
                {"event": "progress", "held_bytes": self.held, "bytes": self.total,
                 "rate_bytes_per_s": round(rate), "eta_s": round(left, 1),
                 "peers": len(stats.by_peer)}
            )  # fmt: skip
            return
        line = (
            f"{_mib(self.held)} of {_mib(self.total)} ({100 * self.held / self.total:.0f} %)"
            f" from {len(stats.by_peer)} peer(s), {_mib(rate)}/s, about "
            f"{_duration(left)} left"
        )
        typer.echo(("\r" + line + "   ") if self.tty else line, err=True, nl=not self.tty)

    def finish(self) -> None:
        if self.tty and not self.as_json:
            typer.echo("", err=True)


def _event(as_json: bool, obj: dict[str, Any], line: str) -> None:
    if as_json:
        _emit(obj)
    else:
        typer.echo(line, err=obj.get("event") not in ("done",))


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "? s"
    if s < 90:
        return f"{s:.0f} s"
    return f"{s / 60:.0f} min"
