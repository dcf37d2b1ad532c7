"""A release on disk: only verified chunks are written and marked, what was written
survives a new store on the same folder (as after ``kill -9``), a damaged ``have.bin``
costs re-fetches but never a false mark, and a seed holds only the chunks whose bytes
match."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from market.protocol import SigningKey
from p2pnode.release import ChunkMismatch, MalformedRelease, SignedRelease
from p2pnode.release.store import HAVE_FILE, RELEASE_FILE, LocalRelease, ReleaseStore
from tests.p2pnode.release.factory import file_tree, release_of

CHUNK = 4096
SIZES = {"model.safetensors": 10 * CHUNK + 123, "sub/tokenizer.json": 3 * CHUNK}
N_CHUNKS = 11 + 3


def _source(root: Path, seed: int = 7) -> Path:
    return file_tree(root, seed, SIZES)


def _chunk(folder: Path, local: LocalRelease, i: int) -> bytes:
    """Chunk ``i`` of ``local``'s release as the files in ``folder`` hold it."""
    s = local.slots[i]
    with (folder / s.entry.path).open("rb") as f:
        f.seek(s.offset)
        return f.read(s.length)


def _fresh(tmp_path: Path, publisher: SigningKey) -> tuple[Path, SignedRelease, LocalRelease]:
    src = _source(tmp_path / "src")
    release = release_of(src, publisher, 1)
    return src, release, ReleaseStore(tmp_path / "store").open(release)


def _disk_state(local: LocalRelease) -> dict[str, bytes]:
    folder = local.files.parent
    out = {rel: (local.files / rel).read_bytes() for rel in SIZES}
    out[HAVE_FILE] = (folder / HAVE_FILE).read_bytes()
    return out


def test_a_new_release_is_empty_at_full_size(tmp_path: Path, publisher: SigningKey) -> None:
    _, release, local = _fresh(tmp_path, publisher)
    assert local.total == N_CHUNKS and local.held == 0 and not local.complete
    assert local.missing() == list(range(N_CHUNKS))
    for rel, size in SIZES.items():
        assert (local.files / rel).stat().st_size == size
    folder = tmp_path / "store" / release.digest
    assert (folder / RELEASE_FILE).read_bytes() == release.encode()
    assert (folder / HAVE_FILE).read_bytes() == bytes(N_CHUNKS)
    with pytest.raises(KeyError):
        local.read(0)


def test_a_wrong_chunk_is_refused_and_nothing_is_written(
    tmp_path: Path, publisher: SigningKey
) -> None:
    src, _, local = _fresh(tmp_path, publisher)
    before = _disk_state(local)
    good = _chunk(src, local, 2)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    last = N_CHUNKS - 1
    bad = [
        (2, flipped),  # one bit off
        (2, good[:-1]),  # short
        (2, good + b"\0"),  # long
        (3, good),  # the right bytes at the wrong index
        (2, b""),
        (last, _chunk(src, local, last) + b"x"),  # the short last chunk, padded
        (N_CHUNKS, good),  # no such chunk
        (-1, good),
    ]
    for i, data in bad:
        with pytest.raises(ChunkMismatch):
            local.write(i, data)
    assert local.held == 0 and local.missing() == list(range(N_CHUNKS))
    assert _disk_state(local) == before
    assert local.write(2, good) is True  # and the right one is taken afterwards
    assert local.missing() == [i for i in range(N_CHUNKS) if i != 2]


def test_a_chunk_of_another_release_with_the_same_paths_is_refused(
    tmp_path: Path, publisher: SigningKey
) -> None:
    _, release, local = _fresh(tmp_path, publisher)
    other_src = _source(tmp_path / "other", seed=8)
    other = release_of(other_src, publisher, 2)
    assert [f.path for f in other.manifest.files] == [f.path for f in release.manifest.files]
    other_local = ReleaseStore(tmp_path / "other-store").open(other)
    before = _disk_state(local)
    for i in range(N_CHUNKS):
        data = _chunk(other_src, other_local, i)
        assert len(data) == local.length(i)
        with pytest.raises(ChunkMismatch):
            local.write(i, data)
    assert local.held == 0 and _disk_state(local) == before


def test_what_was_written_survives_a_new_store_on_the_same_root(
    tmp_path: Path, publisher: SigningKey
) -> None:
    src, release, local = _fresh(tmp_path, publisher)
    written = [0, 3, 10, 11, N_CHUNKS - 1]  # first, middle, both files' last (short) ones
    for i in written:
        assert local.write(i, _chunk(src, local, i)) is True
    assert local.write(3, _chunk(src, local, 3)) is False  # held already

    again = ReleaseStore(tmp_path / "store")  # as after kill -9: nothing in memory
    resumed = again.get(release.digest)
    assert resumed is not None and resumed is not local
    assert resumed.held == len(written)
    assert resumed.missing() == [i for i in range(N_CHUNKS) if i not in written]
    assert resumed.held_bytes == sum(local.length(i) for i in written)
    for i in written:
        assert resumed.read(i) == _chunk(src, local, i)
        assert _chunk(resumed.files, resumed, i) == _chunk(src, local, i)
    assert [r.digest for r in again.held()] == [release.digest]
    for i in resumed.missing():  # the rest completes it, byte for byte
        assert resumed.write(i, _chunk(src, resumed, i)) is True
    assert resumed.complete
    for rel in SIZES:
        assert (resumed.files / rel).read_bytes() == (src / rel).read_bytes()
    assert ReleaseStore(tmp_path / "store").open(release).complete


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage", "too_long"])
def test_a_damaged_have_file_costs_refetches_never_a_false_mark(
    tmp_path: Path, publisher: SigningKey, damage: str
) -> None:
    src, release, local = _fresh(tmp_path, publisher)
    for i in range(N_CHUNKS):
        local.write(i, _chunk(src, local, i))
    assert local.complete
    have = tmp_path / "store" / release.digest / HAVE_FILE
    kept = {"truncated": 5, "missing": 0, "garbage": 0, "too_long": N_CHUNKS}[damage]
    if damage == "truncated":
        have.write_bytes(have.read_bytes()[:kept])
    elif damage == "missing":
        have.unlink()
    elif damage == "garbage":
        have.write_bytes(b"\xff\x02" * N_CHUNKS)
    else:
        have.write_bytes(have.read_bytes() + b"\x01" * 9)

    resumed = ReleaseStore(tmp_path / "store").get(release.digest)
    assert resumed is not None
    assert resumed.held == kept and resumed.missing() == list(range(kept, N_CHUNKS))
    assert have.read_bytes() == b"\x01" * kept + bytes(N_CHUNKS - kept)  # rebuilt in full
    for i in resumed.missing():  # fetched again: taken as new chunks
        assert resumed.write(i, _chunk(src, resumed, i)) is True
    assert resumed.complete and have.read_bytes() == b"\x01" * N_CHUNKS
    for rel in SIZES:
        assert (resumed.files / rel).read_bytes() == (src / rel).read_bytes()


def test_two_threads_writing_one_chunk_mark_it_once(tmp_path: Path, publisher: SigningKey) -> None:
    src, release, local = _fresh(tmp_path, publisher)
    data = _chunk(src, local, 4)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(local.write(4, data))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert local.held == 1
    assert (tmp_path / "store" / release.digest / HAVE_FILE).read_bytes()[4] == 1


def test_a_seed_holds_only_the_chunks_whose_bytes_match(
    tmp_path: Path, publisher: SigningKey
) -> None:
    src = _source(tmp_path / "src")
    release = release_of(src, publisher, 1)
    whole = ReleaseStore(tmp_path / "a").seed(release, src)
    assert whole.complete and whole.files == src
    assert all(whole.read(i) == _chunk(src, whole, i) for i in range(N_CHUNKS))

    model = src / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[5 * CHUNK + 17] ^= 0x40  # one byte of chunk 5
    model.write_bytes(bytes(data))
    (src / "sub" / "tokenizer.json").write_bytes(b"short")  # all 3 chunks of it gone
    store = ReleaseStore(tmp_path / "b")
    local = store.seed(release, src)
    assert not local.complete
    assert local.missing() == [5, 11, 12, 13]
    assert store.get(release.digest) is local
    assert not (tmp_path / "b").exists()  # a seed's folder is the publisher's, left alone

    (src / "sub" / "tokenizer.json").unlink()
    assert ReleaseStore(tmp_path / "c").seed(release, src).missing() == [5, 11, 12, 13]


def test_get_refuses_what_is_not_a_digest_it_holds(tmp_path: Path, publisher: SigningKey) -> None:
    _, release, _ = _fresh(tmp_path, publisher)
    store = ReleaseStore(tmp_path / "store")  # a new one: nothing open yet
    d = release.digest
    for bad in ["", "abc", d[:-1], d + "0", d.upper(), "g" * 64, "../" + d[3:], "/" * 64]:
        assert store.get(bad) is None, bad
    assert store.get("0" * 64) is None  # well formed, not held
    assert store.get(f"../store/{d}") is None  # the right folder, by a path: not a digest
    assert ReleaseStore(tmp_path / "nowhere").get(d) is None
    assert store.get(d) is not None


def test_a_folder_holding_another_release_is_malformed(
    tmp_path: Path, publisher: SigningKey
) -> None:
    _, release, _ = _fresh(tmp_path, publisher)
    other = release_of(_source(tmp_path / "other", seed=8), publisher, 2)
    (tmp_path / "store" / release.digest / RELEASE_FILE).write_bytes(other.encode())
    store = ReleaseStore(tmp_path / "store")
    with pytest.raises(MalformedRelease):
        store.get(release.digest)
    assert store.held() == []  # skipped, not served
