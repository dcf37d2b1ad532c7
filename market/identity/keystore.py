"""The node's keystore: two encrypted keys and their binding statement.

Layout of a keystore directory (mode 0700, files 0600)::

    libp2p-ed25519.json   the 32-byte ed25519 seed in a V3 keyfile (scrypt + AES-128-CTR)
    ethereum.json         the secp256k1 key in a standard V3 keyfile (wallets can import it)
    binding.json          the public binding statement (see market.identity.binding)

Both keyfiles use ``eth-keyfile``'s scrypt keyfiles, which encrypt any 32-byte
secret; the default work factor ``n = 2**18`` (r=8, p=1) is what Ethereum wallets
use (about a second and 256 MiB per unlock). Tests pass a small ``scrypt_n``.

Typical use::

    ident = load_identity(path, resolve_passphrase())
    ident.peer_id, ident.eth_address          # "12D3KooW…", "0xAbC…"
    ident.signing_key()                       # for market.protocol.seal
    ident.libp2p_keypair()                    # for libp2p.new_host(key_pair=…)
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from market.identity.binding import Binding, create_binding, verify_binding
from market.identity.errors import (
    BindingError,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreMissing,
    WrongPassphrase,
)
from market.protocol import SigningKey

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

__all__ = [
    "BINDING_FILE",
    "DEFAULT_SCRYPT_N",
    "ETHEREUM_FILE",
    "LIBP2P_FILE",
    "Identity",
    "PublicIdentity",
    "decrypt_secret",
    "encrypt_secret",
    "generate_identity",
    "identity_from_keys",
    "init_keystore",
    "keystore_exists",
    "load_identity",
    "read_public",
    "write_keystore",
]

LIBP2P_FILE = "libp2p-ed25519.json"
ETHEREUM_FILE = "ethereum.json"
BINDING_FILE = "binding.json"
#: scrypt work factor for real keystores (Ethereum wallets' standard).
DEFAULT_SCRYPT_N = 2**18
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """An unlocked node identity. Secrets are kept out of ``repr``."""

    peer_id: str
    eth_address: str
    ed25519_private_bytes: bytes = field(repr=False)
    eth_private_key: bytes = field(repr=False)
    binding: Binding = field(repr=False)

    @property
    def eth_address_bytes(self) -> bytes:
        """The 20-byte address, as protocol messages carry it."""
        return bytes.fromhex(self.eth_address[2:])

    def signing_key(self) -> SigningKey:
        """The ed25519 key as a :class:`market.protocol.SigningKey` (for ``seal``)."""
        return SigningKey.from_private_bytes(self.ed25519_private_bytes)

    def libp2p_keypair(self) -> KeyPair:
        """A py-libp2p ``KeyPair`` for ``libp2p.new_host(key_pair=...)``."""
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.crypto.keys import KeyPair

        private = Ed25519PrivateKey.from_bytes(self.ed25519_private_bytes)
        return KeyPair(private, private.get_public_key())


@dataclass(frozen=True, slots=True, kw_only=True)
class PublicIdentity:
    """What a keystore tells without its passphrase."""

    path: Path
    peer_id: str
    eth_address: str
    binding: Binding
    binding_error: str | None  # None when the binding statement verifies


def _eth_address(private_key: bytes) -> str:
    from eth_account import Account

    return str(Account.from_key(private_key).address)


def identity_from_keys(ed25519_private: bytes, eth_private_key: bytes) -> Identity:
    """Build an :class:`Identity` (and its binding statement) from two raw keys."""
    if len(ed25519_private) != 32 or len(eth_private_key) != 32:
        raise ValueError("both private keys are 32 bytes")
    if not 0 < int.from_bytes(eth_private_key, "big") < _SECP256K1_N:
        raise ValueError("not a valid secp256k1 private key")
    binding = create_binding(ed25519_private, eth_private_key)
    return Identity(
        peer_id=binding.peer_id,
        eth_address=binding.eth_address,
        ed25519_private_bytes=ed25519_private,
        eth_private_key=eth_private_key,
        binding=binding,
    )


def _draw_secret(rng: Callable[[int], bytes]) -> bytes:
    # Keyfiles (and secp256k1) need 0 < secret < n; a uniform draw fails ~2**-128.
    for _ in range(64):
        secret = rng(32)
        if 0 < int.from_bytes(secret, "big") < _SECP256K1_N:
            return secret
    raise ValueError("rng keeps returning invalid keys")


def generate_identity(rng: Callable[[int], bytes] = os.urandom) -> Identity:
    """Fresh random keys (``rng`` defaults to ``os.urandom``; seed it only in tests)."""
    return identity_from_keys(_draw_secret(rng), _draw_secret(rng))


# ------------------------------------------------------------------ keyfiles


def encrypt_secret(
    secret: bytes, passphrase: str, *, scrypt_n: int = DEFAULT_SCRYPT_N
) -> dict[str, Any]:
    """A V3 scrypt keyfile dict holding the 32-byte ``secret``."""
    from eth_keyfile.keyfile import create_keyfile_json

    if scrypt_n < 2 or scrypt_n & (scrypt_n - 1):
        raise ValueError("scrypt_n must be a power of two >= 2")
    return dict(
        create_keyfile_json(secret, passphrase.encode("utf-8"), kdf="scrypt", iterations=scrypt_n)
    )


def decrypt_secret(keyfile: Any, passphrase: str, *, what: str) -> bytes:
    """Decrypt a keyfile dict; :class:`WrongPassphrase` or :class:`KeystoreCorrupt`."""
    from eth_keyfile.keyfile import decode_keyfile_json

    try:
        secret = bytes(decode_keyfile_json(keyfile, passphrase.encode("utf-8")))
    except ValueError as e:
        if "MAC mismatch" in str(e):
            raise WrongPassphrase(f"wrong passphrase for {what}") from None
        raise KeystoreCorrupt(f"{what}: unreadable keyfile ({e})") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise KeystoreCorrupt(f"{what}: unreadable keyfile ({e!r})") from None
    if len(secret) != 32:
        raise KeystoreCorrupt(f"{what}: expected a 32-byte key")
    return secret


def _write_private(path: Path, data: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def keystore_exists(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` holds (part of) a keystore."""
    p = Path(path)
    return any((p / name).exists() for name in (LIBP2P_FILE, ETHEREUM_FILE, BINDING_FILE))


def write_keystore(
    path: str | os.PathLike[str],
    identity: Identity,
    passphrase: str,
    *,
    force: bool = False,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> Path | None:
    """Write ``identity`` to a keystore at ``path``, encrypted under ``passphrase``.

    Refuses (:class:`KeystoreExists`) if one is there, unless ``force``: then the old
    directory is *moved aside* to ``<path>.replaced-<UTC time>`` (returned), never
    deleted. The new keystore is written to a temporary sibling and renamed into
    place, so a crash leaves either the old keystore or the complete new one.
    """
    target = Path(path).expanduser()
    if not passphrase:
        raise WrongPassphrase("an empty passphrase is not allowed")
    occupied = target.exists() and (not target.is_dir() or any(target.iterdir()))
    if occupied and not force:
        what = "a keystore" if keystore_exists(target) else "something"
        raise KeystoreExists(
            f"{what} already exists at {target} (use --force to replace it; "
            "the old one is then kept beside it)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o700)
        libp2p = encrypt_secret(identity.ed25519_private_bytes, passphrase, scrypt_n=scrypt_n)
        # eth-keyfile adds the secp256k1 address of any secret; for the ed25519 seed
        # that number means nothing, so replace it by what the key really is.
        libp2p.pop("address", None)
        libp2p["hearth"] = {"kind": "libp2p-ed25519", "peer_id": identity.peer_id}
        eth = encrypt_secret(identity.eth_private_key, passphrase, scrypt_n=scrypt_n)
        eth["hearth"] = {"kind": "ethereum-secp256k1", "address": identity.eth_address}
        _write_private(tmp / LIBP2P_FILE, libp2p)
        _write_private(tmp / ETHEREUM_FILE, eth)
        _write_private(tmp / BINDING_FILE, identity.binding.to_json())
        moved: Path | None = None
        if occupied:
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
            moved = target.with_name(f"{target.name}.replaced-{stamp}")
            target.rename(moved)
        elif target.exists():
            target.rmdir()
        tmp.rename(target)
        return moved
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def init_keystore(
    path: str | os.PathLike[str],
    passphrase: str,
    *,
    force: bool = False,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    rng: Callable[[int], bytes] = os.urandom,
) -> Identity:
    """Create a new identity and store it at ``path`` (see :func:`write_keystore`)."""
    target = Path(path).expanduser()
    if keystore_exists(target) and not force:
        raise KeystoreExists(
            f"a keystore already exists at {target} (use --force to replace it; "
            "the old one is then kept beside it)"
        )
    identity = generate_identity(rng)
    write_keystore(target, identity, passphrase, force=force, scrypt_n=scrypt_n)
    return identity


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise KeystoreMissing(
            f"no keystore at {path.parent} ({path.name} missing; run `hearth identity init`)"
        ) from None
    except (OSError, ValueError) as e:
        raise KeystoreCorrupt(f"{path}: {e}") from None


def read_public(path: str | os.PathLike[str]) -> PublicIdentity:
    """Peer id, address and binding of a keystore, without its passphrase."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise KeystoreMissing(f"no keystore at {p} (run `hearth identity init`)")
    binding = Binding.from_json(_read_json(p / BINDING_FILE))
    error: str | None = None
    try:
        verify_binding(binding)
    except BindingError as e:
        error = str(e)
    for name, key, expected in (
        (LIBP2P_FILE, "peer_id", binding.peer_id),
        (ETHEREUM_FILE, "address", binding.eth_address),
    ):
        meta = _read_json(p / name).get("hearth", {})
        if meta.get(key) != expected:
            error = error or f"{name} names {meta.get(key)!r}, binding.json {expected!r}"
    return PublicIdentity(
        path=p,
        peer_id=binding.peer_id,
        eth_address=binding.eth_address,
        binding=binding,
        binding_error=error,
    )


def load_identity(path: str | os.PathLike[str], passphrase: str) -> Identity:
    """Unlock the keystore at ``path``.

    Raises :class:`KeystoreMissing`, :class:`WrongPassphrase` or
    :class:`KeystoreCorrupt` (files unreadable, or keys that do not match the
    binding statement).
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise KeystoreMissing(f"no keystore at {p} (run `hearth identity init`)")
    ed = decrypt_secret(_read_json(p / LIBP2P_FILE), passphrase, what=LIBP2P_FILE)
    eth = decrypt_secret(_read_json(p / ETHEREUM_FILE), passphrase, what=ETHEREUM_FILE)
    stored = Binding.from_json(_read_json(p / BINDING_FILE))
    try:
        verify_binding(stored)
    except BindingError as e:
        raise KeystoreCorrupt(f"{BINDING_FILE}: {e}") from None
    peer_id = SigningKey.from_private_bytes(ed).peer_id
    address = _eth_address(eth)
    if (peer_id, address) != (stored.peer_id, stored.eth_address):
        raise KeystoreCorrupt(
            f"the keys ({peer_id}, {address}) do not match {BINDING_FILE} "
            f"({stored.peer_id}, {stored.eth_address})"
        )
    return Identity(
        peer_id=peer_id,
        eth_address=address,
        ed25519_private_bytes=ed,
        eth_private_key=eth,
        binding=stored,
    )
