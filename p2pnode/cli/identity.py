"""`hearth identity init|show|export|import` and `hearth config check|example`.

The identity commands manage the node's keystore (its libp2p ed25519 key and its
Ethereum key, encrypted with a passphrase, plus their binding statement). The
passphrase comes from the environment variable named in ``hearth.toml``
(``HEARTH_PASSPHRASE`` by default) or, failing that, a hidden prompt.
Heavy imports stay inside the command functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

identity_app = typer.Typer(
    help=(
        "Manage this node's identity: a keystore holding its libp2p key (peer id) and "
        "its Ethereum key (address), encrypted with a passphrase, plus a statement in "
        "which each key signs the other. Back it up with `export`: losing the machine "
        "must not lose the identity.\n\n"
        "The passphrase is read from $HEARTH_PASSPHRASE (or the variable named by "
        "identity.passphrase_env in hearth.toml), else asked for on the terminal."
    ),
    no_args_is_help=True,
)
config_app = typer.Typer(
    help="Check or generate hearth.toml, the node's one configuration file.",
    no_args_is_help=True,
)

KeystoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--keystore",
        "-k",
        help="Keystore folder (default: identity.keystore of --config, else ~/.hearth/keystore).",
        envvar="HEARTH_KEYSTORE",
        show_default=False,
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="hearth.toml to take the keystore and passphrase_env from."
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Replace an existing keystore (the old one is moved aside, never deleted)."
    ),
]
ScryptOpt = Annotated[
    int | None,
    typer.Option("--scrypt-n", hidden=True, help="scrypt work factor (tests only)."),
]


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _settings(keystore: Path | None, config: Path | None) -> tuple[Path, str]:
    """Keystore path and passphrase variable, from the flags and the config file."""
    from market.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as e:
        _fail(str(e))
    path = keystore if keystore is not None else cfg.path(cfg.identity.keystore)
    return path.expanduser(), cfg.identity.passphrase_env


def _passphrase(env_var: str, *, confirm: bool = False) -> str:
    from market.identity import PassphraseUnavailable, resolve_passphrase

    try:
        return resolve_passphrase(env_var, confirm=confirm)
    except PassphraseUnavailable as e:
        _fail(str(e))
    except (EOFError, KeyboardInterrupt):
        _fail("no passphrase given")


def _scrypt(n: int | None) -> dict[str, Any]:
    if n is None:
        return {}
    if n < 2 or n & (n - 1):
        _fail("--scrypt-n must be a power of two >= 2")
    return {"scrypt_n": n}


@identity_app.command("init")
def identity_init(
    keystore: KeystoreOpt = None,
    config: ConfigOpt = None,
    force: ForceOpt = False,
    scrypt_n: ScryptOpt = None,
) -> None:
    """Create a new identity (libp2p + Ethereum keys) in an encrypted keystore."""
    from market.identity import IdentityError, init_keystore, keystore_exists

    path, env_var = _settings(keystore, config)
    if keystore_exists(path) and not force:
        _fail(f"a keystore already exists at {path} (use --force to replace it)")
    passphrase = _passphrase(env_var, confirm=True)
    try:
        ident = init_keystore(path, passphrase, force=force, **_scrypt(scrypt_n))
    except IdentityError as e:
        _fail(str(e))
    typer.echo(f"created keystore {path}")
    typer.echo(f"peer id      {ident.peer_id}")
    typer.echo(f"eth address  {ident.eth_address}")
    typer.echo("Back it up now: hearth identity export --out hearth-identity.backup.json")


@identity_app.command("show")
def identity_show(
    keystore: KeystoreOpt = None,
    config: ConfigOpt = None,
    unlock: Annotated[
        bool, typer.Option("--unlock", help="Also decrypt the keys and check they match.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print the peer id and Ethereum address, and verify the binding statement."""
    from market.identity import IdentityError, load_identity, read_public

    path, env_var = _settings(keystore, config)
    try:
        pub = read_public(path)
        keys = None
        if unlock:
            ident = load_identity(path, _passphrase(env_var))
            keys = ident.peer_id == pub.peer_id and ident.eth_address == pub.eth_address
    except IdentityError as e:
        _fail(str(e))
    binding = "verified" if pub.binding_error is None else f"INVALID: {pub.binding_error}"
    if as_json:
        doc: dict[str, Any] = {
            "keystore": str(path),
            "peer_id": pub.peer_id,
            "eth_address": pub.eth_address,
            "binding_verified": pub.binding_error is None,
            "binding_error": pub.binding_error,
        }
        if keys is not None:
            doc["keys_unlocked"] = keys
        typer.echo(json.dumps(doc))
    else:
        typer.echo(f"keystore     {path}")
        typer.echo(f"peer id      {pub.peer_id}")
        typer.echo(f"eth address  {pub.eth_address}")
        typer.echo(f"binding      {binding}")
        if keys is not None:
            typer.echo("keys         unlocked, match" if keys else "keys         MISMATCH")
    if pub.binding_error is not None or keys is False:
        raise typer.Exit(1)


@identity_app.command("export")
def identity_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Backup file to write (mode 0600).")],
    keystore: KeystoreOpt = None,
    config: ConfigOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing backup file.")
    ] = False,
    scrypt_n: ScryptOpt = None,
) -> None:
    """Write the identity to one encrypted backup file (same passphrase as the keystore)."""
    from market.identity import IdentityError, export_backup

    path, env_var = _settings(keystore, config)
    if not path.is_dir():
        _fail(f"no keystore at {path} (run `hearth identity init`)")
    try:
        ident = export_backup(path, _passphrase(env_var), out, force=force, **_scrypt(scrypt_n))
    except IdentityError as e:
        _fail(str(e))
    typer.echo(f"wrote {out} ({ident.peer_id}, {ident.eth_address})")
    typer.echo("Keep it off this machine; restore with `hearth identity import FILE`.")


@identity_app.command("import")
def identity_import(
    backup: Annotated[
        Path, typer.Argument(help="Backup file written by `hearth identity export`.")
    ],
    keystore: KeystoreOpt = None,
    config: ConfigOpt = None,
    force: ForceOpt = False,
    scrypt_n: ScryptOpt = None,
) -> None:
    """Restore an identity from a backup into a keystore (same peer id and address)."""
    from market.identity import IdentityError, import_backup, keystore_exists

    path, env_var = _settings(keystore, config)
    if keystore_exists(path) and not force:
        _fail(f"a keystore already exists at {path} (use --force to replace it)")
    if not backup.is_file():
        _fail(f"no backup file at {backup}")
    try:
        ident = import_backup(backup, _passphrase(env_var), path, force=force, **_scrypt(scrypt_n))
    except IdentityError as e:
        _fail(str(e))
    typer.echo(f"restored keystore {path}")
    typer.echo(f"peer id      {ident.peer_id}")
    typer.echo(f"eth address  {ident.eth_address}")


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="The hearth.toml to validate.")],
) -> None:
    """Validate a config file; list every problem (key, value, expectation), then what
    `hearth node` and the buyer commands would still refuse to start without."""
    from market.config import ConfigError, load_config, unready

    try:
        cfg = load_config(file)
    except ConfigError as e:
        _fail(str(e))
    node, buyer = unready(cfg, "node"), unready(cfg, "buyer")
    if not node:
        typer.echo(f"ok: {file} is valid and ready for `hearth node` and the buyer commands")
        return
    typer.echo(f"ok: {file} is valid, but not ready yet; `hearth node` needs:")
    for problem in node:
        typer.echo(f"  - {problem}")
    if not buyer:
        typer.echo("(the buyer commands need none of this and can start)")


@config_app.command("example")
def config_example() -> None:
    """Print a complete hearth.toml with every key documented, at its default."""
    from market.config import example_config

    typer.echo(example_config(), nl=False)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `hearth identity …` and `hearth config …` to the root app."""
    app.add_typer(identity_app, name="identity")
    app.add_typer(config_app, name="config")
