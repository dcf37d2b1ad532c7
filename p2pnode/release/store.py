"""Releases on this disk, whole or in part: their files and which chunks are verified.

A node keeps each release it fetches under ``<root>/<digest>/``::

    release.hearth-release   the signed manifest (written first, before any chunk)
    files/<path>             the release's files, each created at its full size
    have.bin                 one byte per chunk, in manifest order: 1 = verified, written

A chunk is checked against the signed manifest before it is written
(:func:`~p2pnode.release.manifest.check_chunk`) and marked in ``have.bin`` only after
its bytes are in the file, so a process killed at any moment (``kill -9``) loses at
most the chunks it was still receiving: a restart reopens the same folder and asks
only for the chunks not marked. (The bytes go through the page cache: a kill of the
process loses nothing written, a power cut may, and the chunk check on the next read
by a peer, or :func:`~p2pnode.release.manifest.check_directory`, finds it.)

A publisher's own folder can be served as a *seed* (:meth:`ReleaseStore.seed`): its
files stay where they are, and every chunk whose hash matches is marked held.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from p2pnode.release.errors import ChunkMismatch, MalformedRelease
from p2pnode.release.files import RELEASE_SUFFIX
from p2pnode.release.manifest import FileEntry, SignedRelease, check_chunk, decode_release

__all__ = ["RELEASES_DIR", "LocalRelease", "ReleaseStore"]

RELEASES_DIR = "releases"  # under a node's data_dir
RELEASE_FILE = "release" + RELEASE_SUFFIX
HAVE_FILE = "have.bin"
FILES_DIR = "files"


@dataclass(frozen=True, slots=True)
class _Slot:
    entry: FileEntry
    index: int  # chunk index within the file
    offset: int  # byte offset within the file
    length: int


class LocalRelease:
    """One release on disk: read held chunks, write verified ones (thread-safe)."""

    def __init__(self, release: SignedRelease, files: Path, have_path: Path | None) -> None:
        self.release = release
        self.manifest = release.manifest
        self.digest = release.digest
        self.files = files
        self._have_path = have_path
        m = self.manifest
        self.slots: list[_Slot] = []
        for entry in m.files:
            for i in range(entry.chunks):
                offset = i * m.chunk_size
                self.slots.append(_Slot(entry, i, offset, min(m.chunk_size, entry.size - offset)))
        self._lock = threading.Lock()
        self.have = bytearray(len(self.slots))
        self.held = 0

    # ------------------------------------------------------------------ state
    @property
    def total(self) -> int:
        """Chunks in the release."""
        return len(self.slots)

    @property
    def complete(self) -> bool:
        return self.held == len(self.slots)

    @property
    def held_bytes(self) -> int:
        return sum(s.length for s, h in zip(self.slots, self.have, strict=True) if h)

    def has(self, i: int) -> bool:
        return 0 <= i < len(self.have) and self.have[i] == 1

    def missing(self) -> list[int]:
        """Chunks not held yet, in manifest order."""
        return [i for i, h in enumerate(self.have) if not h]

    def bitmap(self) -> bytes:
        """Held chunks as bits (chunk ``i`` is bit ``7 - i % 8`` of byte ``i // 8``)."""
        out = bytearray((len(self.have) + 7) // 8)
        for i, h in enumerate(self.have):
            if h:
                out[i >> 3] |= 0x80 >> (i & 7)
        return bytes(out)

    def length(self, i: int) -> int:
        return self.slots[i].length

    # ------------------------------------------------------------------ I/O
    def read(self, i: int) -> bytes:
        """Chunk ``i`` (which must be held)."""
        if not self.has(i):
            raise KeyError(f"chunk {i} of {self.manifest.label()} is not held here")
        s = self.slots[i]
        with (self.files / s.entry.path).open("rb") as f:
            f.seek(s.offset)
            return f.read(s.length)

    def write(self, i: int, data: bytes) -> bool:
        """Check ``data`` as chunk ``i``, write it, then mark it held. ``False``: it was
        held already. Raises :class:`ChunkMismatch` (and writes nothing) for a chunk that
        is not the release's."""
        if not 0 <= i < len(self.slots):
            raise ChunkMismatch(f"{self.manifest.label()} has no chunk {i}")
        s = self.slots[i]
        check_chunk(self.manifest, s.entry.path, s.index, data)
        with self._lock:
            if self.have[i]:
                return False
        path = self.files / s.entry.path
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, s.offset)
        finally:
            os.close(fd)
        with self._lock:
            if self.have[i]:
                return False
            self.have[i] = 1
            self.held += 1
            if self._have_path is not None:
                fd = os.open(self._have_path, os.O_WRONLY)
                try:
                    os.pwrite(fd, b"\x01", i)
                finally:
                    os.close(fd)
        return True


class ReleaseStore:
    """The releases under ``root`` (one folder per release digest)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._open: dict[str, LocalRelease] = {}

    def get(self, digest: str) -> LocalRelease | None:
        """The release ``digest`` if this store holds any of it."""
        if digest in self._open:
            return self._open[digest]
        if not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            return None
        folder = self.root / digest
        if not (folder / RELEASE_FILE).is_file():
            return None
        release = decode_release((folder / RELEASE_FILE).read_bytes())
        if release.digest != digest:
            raise MalformedRelease(f"{folder} holds release {release.digest}, not {digest}")
        return self.open(release)

    def held(self) -> list[LocalRelease]:
        """Every release this store holds any of (the open ones and those on disk)."""
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if folder.name not in self._open:
                    try:
                        self.get(folder.name)
                    except (MalformedRelease, OSError):
                        continue
        return list(self._open.values())

    def open(self, release: SignedRelease) -> LocalRelease:
        """The on-disk state of ``release``, created empty or resumed."""
        digest = release.digest
        if digest in self._open:
            return self._open[digest]
        folder = self.root / digest
        files = folder / FILES_DIR
        files.mkdir(parents=True, exist_ok=True)
        manifest_path = folder / RELEASE_FILE
        if not manifest_path.is_file():
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_bytes(release.encode())
            os.replace(tmp, manifest_path)
        have_path = folder / HAVE_FILE
        local = LocalRelease(release, files, have_path)
        for entry in release.manifest.files:
            path = files / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab") as f:  # created at full size (sparse), never shrunk
                if f.tell() < entry.size:
                    f.truncate(entry.size)
        if have_path.is_file():
            marks = have_path.read_bytes()[: local.total]
            for i, b in enumerate(marks):
                if b == 1:
                    local.have[i] = 1
            local.held = sum(local.have)
        if not have_path.is_file() or have_path.stat().st_size != local.total:
            tmp = have_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(local.have))
            os.replace(tmp, have_path)
        self._open[digest] = local
        return local

    def seed(self, release: SignedRelease, directory: Path) -> LocalRelease:
        """Serve ``release`` from the folder it was published from (files left in
        place): every chunk whose bytes hash as the manifest says is held."""
        local = LocalRelease(release, Path(directory), None)
        for i, s in enumerate(local.slots):
            try:
                with (local.files / s.entry.path).open("rb") as f:
                    f.seek(s.offset)
                    data = f.read(s.length)
            except OSError:
                continue
            if len(data) == s.length and hashlib.sha256(data).digest() == s.entry.chunk_hash(
                s.index
            ):
                local.have[i] = 1
        local.held = sum(local.have)
        self._open[release.digest] = local
        return local
