"""Keystore, binding statement and backups, with real scrypt keyfiles (small n)."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest

from market.identity import (
    Binding,
    BindingError,
    IdentityError,
    KeystoreCorrupt,
    KeystoreExists,
    KeystoreMissing,
    PassphraseUnavailable,
    WrongPassphrase,
    export_backup,
    generate_identity,
    import_backup,
    init_keystore,
    load_identity,
    read_public,
    resolve_passphrase,
    verify_binding,
)
from market.identity.keystore import BINDING_FILE, ETHEREUM_FILE, LIBP2P_FILE
from market.protocol import Heartbeat, seal, unseal

N = 2**10  # small scrypt work factor: tests only


@pytest.fixture
def keystore(tmp_path: Path) -> Path:
    path = tmp_path / "ks"
    init_keystore(path, "correct horse", scrypt_n=N, rng=random.Random(5).randbytes)
    return path


def test_round_trip_and_file_layout(keystore: Path) -> None:
    ident = load_identity(keystore, "correct horse")
    assert ident.peer_id.startswith("12D3KooW")
    assert ident.eth_address.startswith("0x") and len(ident.eth_address_bytes) == 20
    assert sorted(p.name for p in keystore.iterdir()) == sorted(
        [LIBP2P_FILE, ETHEREUM_FILE, BINDING_FILE]
    )
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o700
    for p in keystore.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # Secrets are encrypted at rest and hidden from repr.
    raw = b"".join(p.read_bytes() for p in keystore.iterdir())
    assert ident.ed25519_private_bytes.hex().encode() not in raw
    assert ident.eth_private_key.hex().encode() not in raw
    assert ident.eth_private_key.hex() not in repr(ident)
    # The Ethereum keyfile is a standard V3 file with the right address.
    eth = json.loads((keystore / ETHEREUM_FILE).read_text())
    assert eth["version"] == 3 and eth["crypto"]["kdf"] == "scrypt"
    assert "0x" + eth["address"].lower() == ident.eth_address.lower()


def test_identity_signs_envelopes_and_builds_a_libp2p_keypair(keystore: Path) -> None:
    from libp2p.peer.id import ID

    ident = load_identity(keystore, "correct horse")
    frame = seal(
        Heartbeat(job_id=bytes(16), seq=1),
        key=ident.signing_key(),
        now_ms=1000,
        rng=random.Random(1).randbytes,
    )
    assert unseal(frame, now_ms=1001).sender == ident.peer_id
    kp = ident.libp2p_keypair()
    assert ID.from_pubkey(kp.public_key).to_base58() == ident.peer_id


def test_wrong_passphrase(keystore: Path) -> None:
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        load_identity(keystore, "incorrect horse")


def test_missing_keystore(tmp_path: Path) -> None:
    with pytest.raises(KeystoreMissing, match="hearth identity init"):
        load_identity(tmp_path / "nowhere", "x")
    with pytest.raises(KeystoreMissing):
        read_public(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    with pytest.raises(KeystoreMissing, match="missing"):
        load_identity(tmp_path / "half", "x")


def test_existing_keystore_is_not_overwritten(keystore: Path) -> None:
    before = load_identity(keystore, "correct horse")
    with pytest.raises(KeystoreExists, match="--force"):
        init_keystore(keystore, "other", scrypt_n=N)
    assert load_identity(keystore, "correct horse") == before
    # --force replaces it, keeping the old one beside it.
    after = init_keystore(keystore, "other", scrypt_n=N, force=True)
    assert after.peer_id != before.peer_id
    kept = [p for p in keystore.parent.iterdir() if p.name.startswith("ks.replaced-")]
    assert len(kept) == 1
    assert load_identity(kept[0], "correct horse") == before


def test_empty_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(WrongPassphrase, match="empty"):
        init_keystore(tmp_path / "ks", "", scrypt_n=N)
    assert not (tmp_path / "ks").exists()


def test_tampered_keystore_is_detected(keystore: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_keystore(other, "correct horse", scrypt_n=N)
    # Swap in another identity's Ethereum key: keys no longer match the binding.
    (keystore / ETHEREUM_FILE).write_bytes((other / ETHEREUM_FILE).read_bytes())
    with pytest.raises(KeystoreCorrupt, match="do not match"):
        load_identity(keystore, "correct horse")
    assert read_public(keystore).binding_error is not None
    (keystore / LIBP2P_FILE).write_text("{not json")
    with pytest.raises(KeystoreCorrupt):
        load_identity(keystore, "correct horse")


def test_binding_verifies_and_catches_forgery() -> None:
    a = generate_identity(random.Random(1).randbytes)
    b = generate_identity(random.Random(2).randbytes)
    verify_binding(a.binding)
    assert Binding.from_json(json.loads(json.dumps(a.binding.to_json()))) == a.binding
    # a's peer id claiming b's address, with a's signatures: both checks must fail.
    forged = Binding(
        peer_id=a.peer_id,
        eth_address=b.eth_address,
        ed25519_signature=a.binding.ed25519_signature,
        eth_signature=b.binding.eth_signature,
    )
    with pytest.raises(BindingError, match="ed25519"):
        verify_binding(forged)
    half = Binding(
        peer_id=a.peer_id,
        eth_address=a.eth_address,
        ed25519_signature=a.binding.ed25519_signature,
        eth_signature=b.binding.eth_signature,
    )
    with pytest.raises(BindingError, match="Ethereum signature"):
        verify_binding(half)
    with pytest.raises(BindingError, match="malformed"):
        Binding.from_json({"statement": "hearth-identity-binding"})


def test_backup_restores_same_identity(keystore: Path, tmp_path: Path) -> None:
    original = load_identity(keystore, "correct horse")
    backup = tmp_path / "id.backup.json"
    export_backup(keystore, "correct horse", backup, backup_passphrase="backup pw", scrypt_n=N)
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert original.eth_private_key.hex() not in backup.read_text()
    with pytest.raises(IdentityError, match="already exists"):
        export_backup(keystore, "correct horse", backup, scrypt_n=N)
    # "The machine is lost": restore on a fresh path.
    with pytest.raises(WrongPassphrase):
        import_backup(backup, "correct horse", tmp_path / "new", scrypt_n=N)
    restored = import_backup(
        backup, "backup pw", tmp_path / "new", keystore_passphrase="new pw", scrypt_n=N
    )
    assert (restored.peer_id, restored.eth_address) == (original.peer_id, original.eth_address)
    assert load_identity(tmp_path / "new", "new pw") == restored
    with pytest.raises(KeystoreExists):
        import_backup(backup, "backup pw", keystore, scrypt_n=N)


def test_bad_backup_files(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no backup"):
        import_backup(tmp_path / "none.json", "x", tmp_path / "ks", scrypt_n=N)
    (tmp_path / "junk.json").write_text('{"format": "other"}')
    with pytest.raises(KeystoreCorrupt, match="not a Hearth identity backup"):
        import_backup(tmp_path / "junk.json", "x", tmp_path / "ks", scrypt_n=N)


def test_resolve_passphrase_sources() -> None:
    assert resolve_passphrase("HP", environ={"HP": "s3cret"}) == "s3cret"
    with pytest.raises(PassphraseUnavailable, match="HP"):
        resolve_passphrase("HP", environ={}, interactive=False)
    answers = iter(["a", "a"])
    assert (
        resolve_passphrase(
            "HP", environ={}, interactive=True, confirm=True, prompt=lambda _: next(answers)
        )
        == "a"
    )
    answers = iter(["a", "b"])
    with pytest.raises(PassphraseUnavailable, match="differ"):
        resolve_passphrase(
            "HP", environ={}, interactive=True, confirm=True, prompt=lambda _: next(answers)
        )
