"""Publisher key files: created private, never overwritten, refused when others can read them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from p2pnode.release import (
    MalformedRelease,
    ReleaseError,
    new_key_file,
    parse_publisher_key,
    read_key_file,
)


def test_a_new_key_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "pub.key"
    key = new_key_file(path, rng=random.Random(1).randbytes)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_key_file(path).public_bytes == key.public_bytes
    assert json.loads(path.read_text())["public_key"] == key.public_bytes.hex()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "pub.key"
    path.write_text("precious")
    with pytest.raises(ReleaseError, match="already exists: a publisher key is never overwritten"):
        new_key_file(path)
    assert path.read_text() == "precious"


BAD_FILES = [
    ("readable by others", None, 0o644, "may be read by others (mode 644): expected 600"),
    ("not JSON", "{", 0o600, "not a publisher key file (not JSON)"),
    ("another format", '{"format": "x"}', 0o600, "not a publisher key file (format"),
    (
        "short private key",
        '{"format": "hearth-release-key-v1", "private_key": "00"}',
        0o600,
        "private_key is not 64 hex digits",
    ),
    ("mismatched public key", "MISMATCH", 0o600, "public_key does not belong to private_key"),
]


@pytest.mark.parametrize(
    ("case", "text", "mode", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES]
)
def test_a_bad_key_file_is_refused(
    tmp_path: Path, case: str, text: str | None, mode: int, message: str
) -> None:
    path = tmp_path / "pub.key"
    new_key_file(path, rng=random.Random(2).randbytes)
    if text == "MISMATCH":
        doc = json.loads(path.read_text())
        doc["public_key"] = "11" * 32
        text = json.dumps(doc)
    if text is not None:
        path.write_text(text)
    path.chmod(mode)
    with pytest.raises(MalformedRelease) as info:
        read_key_file(path)
    assert message in str(info.value)


def test_publisher_keys_from_config_are_64_hex_digits_or_32_bytes() -> None:
    raw = bytes(range(32))
    assert parse_publisher_key(raw.hex().upper()) == raw
    assert parse_publisher_key(raw) == raw
    for bad in ("", "zz" * 32, raw.hex()[:-2], b"\x00" * 31):
        with pytest.raises(MalformedRelease, match="publisher key"):
            parse_publisher_key(bad)
