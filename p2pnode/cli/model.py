"""`hearth model key new`, `hearth model publish` and `hearth model list`: signed releases.

A publisher makes a key once (``hearth model key new``), then signs each version of a
model folder (``hearth model publish``): the files are hashed in 1 MiB chunks, the
content address is computed from the weights, the real engine computes the golden
outputs, and the signed manifest is written beside the weights. ``hearth model list``
shows the releases a node trusts, or the manifests in a folder. Heavy imports (torch)
stay inside the functions.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from p2pnode.cli.errors import explained, fail
from p2pnode.cli.market import ConfigOpt, _config

model_app = typer.Typer(
    help="Model releases: publisher keys, signed release manifests, and the releases a "
    "node trusts.",
    no_args_is_help=True,
)
key_app = typer.Typer(
    help="Publisher keys: the ed25519 keys that sign releases.", no_args_is_help=True
)
model_app.add_typer(key_app, name="key")

_LIST_LIMIT = 1000  # manifests read from one --dir


@key_app.command("new")
def key_new(
    path: Annotated[
        Path,
        typer.Argument(
            help="Where to write the key file (mode 0600; an existing file is never replaced)."
        ),
    ],
) -> None:
    """Create a publisher key file and print its public key.

    Nodes list the public key to trust your releases; the file (mode 0600) signs them.
    """
    from p2pnode.release import new_key_file

    with explained():
        key = new_key_file(path)
    typer.echo(f"wrote publisher key {path}")
    typer.echo(f"public key  {key.public_bytes.hex()}")
    typer.echo(
        "Nodes that should trust your releases list this public key. Keep the file to "
        "yourself: whoever holds it can publish releases in your name."
    )


@model_app.command("publish")
def publish(
    directory: Annotated[
        Path,
        typer.Argument(
            help="The model folder (Hugging Face layout: config.json, *.safetensors, "
            "tokenizer.json).",
            metavar="DIR",
            show_default=False,
        ),
    ],
    key: Annotated[
        Path, typer.Option("--key", help="Publisher key file (from `hearth model key new`).")
    ],
    name: Annotated[
        str, typer.Option("--name", help="Model name: letters, digits and ._- (up to 64).")
    ],
    version: Annotated[
        int,
        typer.Option(
            "--version", help="Release version (1 or more): above every version published before."
        ),
    ],
    expires_days: Annotated[
        int,
        typer.Option("--expires-days", help="Days until nodes refuse it (1 to 3650)."),
    ] = 90,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Where to write the signed manifest (default: DIR/NAME-vVERSION.hearth-release).",
        ),
    ] = None,
) -> None:
    """Sign a release of a model folder and write its manifest.

    The manifest holds every file's size and 1 MiB chunk hashes, the content address,
    the stored dtype, golden greedy outputs (the real engine, CPU float32) and the
    expiry, signed with the publisher key.
    """
    import trio

    from p2pnode.release import (
        CHUNK_SIZE,
        NAME_PATTERN,
        RELEASE_SUFFIX,
        build_manifest,
        compute_golden,
        load_fresh,
        read_key_file,
        release_files,
        stored_dtype,
    )

    if re.fullmatch(NAME_PATTERN, name) is None:
        fail(
            f"--name {name!r}: expected letters, digits and ._- (up to 64), starting with "
            "a letter or digit"
        )
    if not 1 <= version < 2**63:
        fail(f"--version {version}: expected a whole number of 1 or more")
    if not 1 <= expires_days <= 3650:
        fail(f"--expires-days {expires_days}: expected 1 to 3650")
    if not directory.is_dir():
        fail(f"{directory} is not a folder")
    if not (directory / "config.json").is_file():
        fail(
            f"{directory} is not a model folder: no config.json (expected the Hugging Face "
            "layout: config.json, *.safetensors, tokenizer.json)"
        )
    with explained():
        signing_key = read_key_file(key)
    target = out if out is not None else directory / f"{name}-v{version}{RELEASE_SUFFIX}"
    if target.exists():
        fail(f"{target} already exists: a signed release is never overwritten")
    _refuse_old_version(directory, signing_key.public_bytes, name, version)

    say = _stderr
    with explained():
        files = release_files(directory)
        total = sum(path.stat().st_size for _, path in files)
        dtype = stored_dtype(directory)
        say(f"loading {directory} to compute its content address…")
        loaded = load_fresh(directory)
        address = loaded.model_id
        say("computing the golden outputs (greedy, CPU float32)…")
        golden = trio.run(compute_golden, loaded)
        del loaded
        now = int(time.time())
        with typer.progressbar(
            length=total, label=f"hashing {len(files)} files", file=sys.stderr
        ) as bar:
            manifest = build_manifest(
                directory,
                name=name,
                version=version,
                content_address=address,
                dtype=dtype,
                golden=golden,
                publisher=signing_key.public_bytes,
                created_at=now,
                expires_at=now + expires_days * 86_400,
                chunk_size=CHUNK_SIZE,
                progress=bar.update,
            )
        data = manifest.sign(signing_key).encode()
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    typer.echo(f"published {manifest.label()} → {target} ({len(data):,} bytes)")
    typer.echo(f"content address  {manifest.content_address}")
    typer.echo(
        f"files            {len(manifest.files)}, {_size(manifest.total_size)} in "
        f"{manifest.chunk_count:,} chunks of {_size(manifest.chunk_size)}"
    )
    typer.echo(f"dtype            {manifest.dtype}")
    typer.echo(f"golden outputs   {len(manifest.golden)}")
    typer.echo(f"expires          {_date(manifest.expires_at)}")
    typer.echo(f"publisher        {manifest.publisher.hex()}")


def _refuse_old_version(directory: Path, publisher: bytes, name: str, version: int) -> None:
    """Fail if ``directory`` already holds this publisher's ``name`` at ``version`` or above."""
    from p2pnode.release import RELEASE_SUFFIX, ReleaseError, read_release

    for path in sorted(directory.glob(f"*{RELEASE_SUFFIX}")):
        try:
            m = read_release(path).manifest
        except ReleaseError:
            continue
        if m.publisher == publisher and m.name == name and m.version >= version:
            fail(
                f"{path} is {m.label()} by this key: publish a version above {m.version} "
                "(nodes refuse a version they have seen signed differently, or a lower one)"
            )


@model_app.command("list")
def list_releases(
    config: ConfigOpt = Path("hearth.toml"),
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="List the *.hearth-release manifests in this folder and the folders in it, "
            "instead of the node's trust store.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """List the releases this node trusts, or the manifests in a folder.

    Without --dir: the last trusted release of each model, kept in node.data_dir of
    --config. With --dir: every *.hearth-release file under that folder, its signature
    checked (an unreadable or badly signed one is listed with the reason).
    """
    from p2pnode.release import TRUST_STORE_FILE, TrustStore

    rows: list[dict[str, Any]]
    if directory is not None:
        if not directory.is_dir():
            fail(f"{directory} is not a folder")
        rows = _folder_rows(directory)
        where = str(directory)
    else:
        data_dir = Path(_config(config).node.data_dir).expanduser()
        path = data_dir / TRUST_STORE_FILE
        where = str(path)
        if not path.is_file():
            rows = []
        else:
            with explained(), TrustStore(path, trusted=()) as store:
                rows = [
                    {**_row(t.release.manifest), "accepted_at": t.accepted_at}
                    for t in store.releases()
                ]
    if as_json:
        typer.echo(json.dumps({"source": where, "releases": rows}, indent=2))
        return
    if not rows:
        typer.echo(f"no releases in {where}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"releases in {where}")
    for col in ("name", "version", "content address", "size", "dtype", "expires", "publisher"):
        table.add_column(col)
    if directory is not None:
        table.add_column("file")
    for r in rows:
        if "error" in r:
            table.add_row("?", "", "", "", "", "", "", f"{r['file']}: {r['error']}")
            continue
        cells = [
            r["name"],
            str(r["version"]),
            r["content_address"][:19] + "…",
            _size(r["size"]),
            r["dtype"],
            _date(r["expires_at"]) + (" (expired)" if r["expires_at"] <= time.time() else ""),
            r["publisher"][:16] + "…",
        ]
        table.add_row(*cells, *([r["file"]] if directory is not None else []))
    Console(width=200).print(table)


def _row(m: Any) -> dict[str, Any]:
    return {
        "name": m.name,
        "version": m.version,
        "content_address": m.content_address,
        "size": m.total_size,
        "files": len(m.files),
        "chunks": m.chunk_count,
        "chunk_size": m.chunk_size,
        "dtype": m.dtype,
        "created_at": m.created_at,
        "expires_at": m.expires_at,
        "publisher": m.publisher.hex(),
    }


def _folder_rows(directory: Path) -> list[dict[str, Any]]:
    from p2pnode.release import RELEASE_SUFFIX, ReleaseError, read_release

    rows: list[dict[str, Any]] = []
    for i, path in enumerate(sorted(directory.rglob(f"*{RELEASE_SUFFIX}"))):
        if i >= _LIST_LIMIT:
            _stderr(f"listing the first {_LIST_LIMIT} manifests only")
            break
        try:
            rows.append({**_row(read_release(path).manifest), "file": str(path)})
        except ReleaseError as e:
            rows.append({"file": str(path), "error": str(e).removeprefix(f"{path}: ")})
    return rows


def _stderr(line: str) -> None:
    typer.echo(line, err=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def _date(t: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth model …` (seed and fetch: :mod:`p2pnode.cli.model_swarm`)."""
    from p2pnode.cli.model_swarm import bench_distribute, fetch, seed

    model_app.command("seed")(seed)
    model_app.command("fetch")(fetch)
    app.add_typer(model_app, name="model")
    bench.command("distribute")(bench_distribute)
