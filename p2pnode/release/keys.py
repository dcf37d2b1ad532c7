"""Publisher keys: the ed25519 key that signs releases, in a file only its owner reads.

A key file is one small JSON object::

    {"format": "hearth-release-key-v1", "public_key": "<64 hex>", "private_key": "<64 hex>"}

:func:`new_key_file` creates it with mode 0600 and never replaces an existing file (a
publisher who lost the key they signed with can no longer release a version nodes
accept under it). :func:`read_key_file` refuses a file that others may read, as ssh
does. The key is not encrypted: keep the file on the publisher's machine, and give the
nodes only the public key (``public_key``; they list it as a trusted publisher).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from market.protocol import LocalProtocolError, SigningKey
from p2pnode.release.errors import MalformedRelease, ReleaseError

__all__ = ["KEY_FORMAT", "new_key_file", "parse_publisher_key", "read_key_file"]

KEY_FORMAT = "hearth-release-key-v1"
_MAX_KEY_FILE = 4096


def new_key_file(path: Path, *, rng: Callable[[int], bytes] = os.urandom) -> SigningKey:
    """Create a new publisher key at ``path`` (mode 0600); refuse if anything is there."""
    key = SigningKey.generate(rng)
    text = json.dumps(
        {
            "format": KEY_FORMAT,
            "public_key": key.public_bytes.hex(),
            "private_key": key.private_bytes().hex(),
        },
        indent=1,
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReleaseError(
            f"{path} already exists: a publisher key is never overwritten (choose another path)"
        ) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (text + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def read_key_file(path: Path) -> SigningKey:
    """The publisher key in ``path``; :class:`MalformedRelease` if it is not one, or if
    others may read it."""
    try:
        info = path.stat()
        text = path.read_bytes()[:_MAX_KEY_FILE]
    except OSError as e:
        raise MalformedRelease(f"cannot read {path}: {e.strerror or e}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MalformedRelease(
            f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):o}): "
            f"expected 600 (chmod 600 {path})"
        )
    try:
        doc = json.loads(text.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError both
        raise MalformedRelease(f"{path} is not a publisher key file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT:
        raise MalformedRelease(f"{path} is not a publisher key file (format {KEY_FORMAT})")
    try:
        key = SigningKey.from_private_bytes(bytes.fromhex(str(doc.get("private_key"))))
    except (ValueError, LocalProtocolError):
        raise MalformedRelease(
            f"{path}: private_key is not 64 hex digits (a 32-byte ed25519 key)"
        ) from None
    if doc.get("public_key") != key.public_bytes.hex():
        raise MalformedRelease(f"{path}: public_key does not belong to private_key")
    return key


def parse_publisher_key(value: str | bytes) -> bytes:
    """A trusted publisher's public key: 32 raw bytes, or 64 hex digits as the key file
    and ``hearth model publish`` print it."""
    if isinstance(value, bytes):
        if len(value) != 32:
            raise MalformedRelease(f"a publisher key is 32 bytes, got {len(value)}")
        return value
    text = value.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise MalformedRelease(
            f"{value!r:.80} is not a publisher key: expected 64 hex digits (an ed25519 public key)"
        )
    return raw
