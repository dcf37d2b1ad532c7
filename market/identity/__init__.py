"""Node identity: the keystore, the binding statement, backups and passphrases.

A node owns two keys — its libp2p ed25519 key (peer id, envelope signatures) and
its Ethereum secp256k1 key (stake, vouchers, redemptions) — kept encrypted in a
keystore directory and tied together by a binding statement anyone can verify.

    from market.identity import load_identity, resolve_passphrase
    ident = load_identity("~/.hearth/keystore", resolve_passphrase())
"""

from market.identity.backup import BACKUP_FORMAT, export_backup, import_backup, read_backup
from market.identity.binding import (
    BINDING_DOMAIN,
    Binding,
    binding_text,
    create_binding,
    verify_binding,
)
from market.identity.errors import (
    BindingError,
    IdentityError,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreMissing,
    PassphraseUnavailable,
    WrongPassphrase,
)
from market.identity.keystore import (
    DEFAULT_SCRYPT_N,
    Identity,
    PublicIdentity,
    generate_identity,
    identity_from_keys,
    init_keystore,
    keystore_exists,
    load_identity,
    read_public,
    write_keystore,
)
from market.identity.passphrase import DEFAULT_PASSPHRASE_ENV, resolve_passphrase

__all__ = [
    "BACKUP_FORMAT",
    "BINDING_DOMAIN",
    "DEFAULT_PASSPHRASE_ENV",
    "DEFAULT_SCRYPT_N",
    "Binding",
    "BindingError",
    "Identity",
    "IdentityError",
    "KeystoreCorrupt",
    "KeystoreExists",
    "KeystoreMissing",
    "PassphraseUnavailable",
    "PublicIdentity",
    "WrongPassphrase",
    "binding_text",
    "create_binding",
    "export_backup",
    "generate_identity",
    "identity_from_keys",
    "import_backup",
    "init_keystore",
    "keystore_exists",
    "load_identity",
    "read_backup",
    "read_public",
    "resolve_passphrase",
    "verify_binding",
    "write_keystore",
]
