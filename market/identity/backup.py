"""One-file encrypted backups of an identity: export, then import elsewhere.

The backup is a JSON file holding both keys as scrypt V3 keyfiles (encrypted under
the backup passphrase, with fresh salts) plus the public binding statement::

    {"format": "hearth-identity-backup", "version": 1,
     "peer_id": "12D3KooW…", "eth_address": "0x…", "binding": {…},
     "libp2p_key": {V3 keyfile}, "ethereum_key": {V3 keyfile}}

Importing it re-creates a keystore with the same peer id and Ethereum address, so
losing the machine does not lose the identity (nor its stake or earnings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from market.identity.binding import Binding, verify_binding
from market.identity.errors import BindingError, IdentityError, KeystoreCorrupt
from market.identity.keystore import (
    DEFAULT_SCRYPT_N,
    Identity,
    decrypt_secret,
    encrypt_secret,
    identity_from_keys,
    load_identity,
    write_keystore,
)

__all__ = ["BACKUP_FORMAT", "export_backup", "import_backup", "read_backup"]

BACKUP_FORMAT = "hearth-identity-backup"


def export_backup(
    keystore: str | os.PathLike[str],
    passphrase: str,
    out_file: str | os.PathLike[str],
    *,
    backup_passphrase: str | None = None,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    force: bool = False,
) -> Identity:
    """Unlock ``keystore`` and write an encrypted backup to ``out_file`` (mode 0600).

    The backup is encrypted under ``backup_passphrase`` (default: the keystore's).
    Refuses to overwrite an existing file unless ``force``.
    """
    identity = load_identity(keystore, passphrase)
    secret = backup_passphrase if backup_passphrase is not None else passphrase
    if not secret:
        raise IdentityError("an empty backup passphrase is not allowed")
    doc: dict[str, Any] = {
        "format": BACKUP_FORMAT,
        "version": 1,
        "peer_id": identity.peer_id,
        "eth_address": identity.eth_address,
        "binding": identity.binding.to_json(),
        "libp2p_key": encrypt_secret(identity.ed25519_private_bytes, secret, scrypt_n=scrypt_n),
        "ethereum_key": encrypt_secret(identity.eth_private_key, secret, scrypt_n=scrypt_n),
    }
    doc["libp2p_key"].pop("address", None)  # meaningless for an ed25519 seed
    out = Path(out_file).expanduser()
    if out.exists() and not force:
        raise IdentityError(f"{out} already exists (choose another name, or --force)")
    tmp = out.with_name(f".{out.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return identity


def read_backup(backup_file: str | os.PathLike[str], passphrase: str) -> Identity:
    """Decrypt and verify a backup file, returning the identity it holds."""
    path = Path(backup_file).expanduser()
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IdentityError(f"no backup file at {path}") from None
    except (OSError, ValueError) as e:
        raise KeystoreCorrupt(f"{path}: not a readable backup ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT:
        raise KeystoreCorrupt(f"{path}: not a Hearth identity backup")
    if doc.get("version") != 1:
        raise KeystoreCorrupt(f"{path}: unsupported backup version {doc.get('version')!r}")
    ed = decrypt_secret(doc.get("libp2p_key"), passphrase, what=f"{path.name} (libp2p key)")
    eth = decrypt_secret(doc.get("ethereum_key"), passphrase, what=f"{path.name} (Ethereum key)")
    identity = identity_from_keys(ed, eth)
    stored = Binding.from_json(doc.get("binding"))
    try:
        verify_binding(stored)
    except BindingError as e:
        raise KeystoreCorrupt(f"{path}: {e}") from None
    if (identity.peer_id, identity.eth_address) != (stored.peer_id, stored.eth_address) or (
        doc.get("peer_id"),
        doc.get("eth_address"),
    ) != (stored.peer_id, stored.eth_address):
        raise KeystoreCorrupt(f"{path}: keys and binding statement disagree")
    return identity


def import_backup(
    backup_file: str | os.PathLike[str],
    passphrase: str,
    keystore: str | os.PathLike[str],
    *,
    keystore_passphrase: str | None = None,
    force: bool = False,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> Identity:
    """Restore a backup into a new keystore (same peer id and address).

    The keystore is encrypted under ``keystore_passphrase`` (default: the backup's).
    Refuses to replace an existing keystore unless ``force`` (which moves it aside).
    """
    identity = read_backup(backup_file, passphrase)
    write_keystore(
        keystore,
        identity,
        keystore_passphrase if keystore_passphrase is not None else passphrase,
        force=force,
        scrypt_n=scrypt_n,
    )
    return identity
