"""Errors of the identity keystore, each with a message fit to show a user."""

from __future__ import annotations

__all__ = [
    "BindingError",
    "IdentityError",
    "KeystoreCorrupt",
    "KeystoreExists",
    "KeystoreMissing",
    "PassphraseUnavailable",
    "WrongPassphrase",
]


class IdentityError(Exception):
    """Base class: something is wrong with a keystore, backup or passphrase."""


class KeystoreMissing(IdentityError):
    """No keystore at the given path (run ``hearth identity init``)."""


class KeystoreExists(IdentityError):
    """A keystore is already there; refusing to overwrite it without ``force``."""


class WrongPassphrase(IdentityError):
    """The passphrase does not decrypt the key files."""


class KeystoreCorrupt(IdentityError):
    """The files are unreadable, or disagree with each other."""


class BindingError(IdentityError):
    """A binding statement does not verify."""


class PassphraseUnavailable(IdentityError):
    """No passphrase in the environment and no terminal to ask on."""
