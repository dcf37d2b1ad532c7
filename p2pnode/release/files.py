"""Which files of a model directory make up a release, and their chunk hashes.

A release lists every regular file under the model's directory, by its relative POSIX
path, except what is local to one machine:

* the loader's cache of the content address (``hearth-manifest.json``,
  :mod:`p2pnode.serving.loader`): it holds file modification times, and a manifest
  that shipped one could plant a forged address in every node that fetched it;
* release manifests themselves (``*.hearth-release``), which sit beside the weights;
* anything hidden (a path part starting with ``.``: ``.git``, ``.cache``).

Path parts are ASCII letters, digits and ``._+-``, at most 128 characters, at most 8
deep: nothing that means something else on another OS (``..``, ``\\``, ``:``, spaces).
A name outside that set is refused with its path rather than skipped: the publisher
should know that a file is not in the release.

Files are hashed as they are read, one chunk at a time (:func:`chunk_hashes`): memory
stays at one chunk whatever the file's size. Symbolic links to files are followed (a
Hugging Face cache snapshot is made of them); links to folders are not.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from p2pnode.release.errors import MalformedRelease

__all__ = [
    "LOADER_CACHE",
    "PATH_PATTERN",
    "RELEASE_SUFFIX",
    "chunk_hashes",
    "is_local",
    "release_files",
]

#: The loader's cache of the content address (``p2pnode.serving.loader._MANIFEST_FILE``,
#: a test checks; not imported, so that this package does not load torch): local to a
#: machine, never part of a release.
LOADER_CACHE = "hearth-manifest.json"
#: Suffix of a signed release manifest file.
RELEASE_SUFFIX = ".hearth-release"
#: What a file's relative path in a release must match (``re.fullmatch``).
PATH_PATTERN = r"[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}(/[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}){0,7}"
_PATH_RE = re.compile(PATH_PATTERN)

Progress = Callable[[int], None]
"""Called with the number of bytes just hashed."""


def is_local(relpath: str) -> bool:
    """True for a path that is never part of a release (see the module docstring)."""
    parts = relpath.split("/")
    name = parts[-1]
    return (
        name == LOADER_CACHE
        or name.endswith(RELEASE_SUFFIX)
        or any(p.startswith(".") for p in parts)
    )


def release_files(directory: Path) -> list[tuple[str, Path]]:
    """``(relative path, file)`` of every file of the release in ``directory``, sorted.

    Raises :class:`MalformedRelease` for a missing directory, no files, or a name that a
    release cannot carry.
    """
    if not directory.is_dir():
        raise MalformedRelease(f"{directory} is not a directory")
    found = sorted(_walk(directory, directory))
    if not found:
        raise MalformedRelease(f"{directory} holds no files to release")
    return found


def _walk(root: Path, folder: Path) -> Iterator[tuple[str, Path]]:
    with os.scandir(folder) as entries:
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if is_local(rel):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(root, path)
                continue
            if entry.is_symlink() and path.is_dir():
                continue  # links to folders are not followed
            if not path.is_file():
                raise MalformedRelease(f"{path} is not a regular file (a broken link?)")
            if _PATH_RE.fullmatch(rel) is None:
                raise MalformedRelease(
                    f"{rel!r} cannot be part of a release: path parts are ASCII letters, "
                    "digits and ._+- (not starting with a dot), at most 128 characters, "
                    "at most 8 deep"
                )
            yield rel, path


def chunk_hashes(
    path: Path, chunk_size: int, progress: Progress | None = None
) -> tuple[int, bytes]:
    """``(size, sha256 of each chunk, concatenated)`` of the file at ``path``, streamed.

    The last chunk may be short; an empty file has no chunks. ``size`` is what was read.
    """
    size = 0
    digests = bytearray()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with path.open("rb") as f:
        while True:
            n = _fill(f, view)
            if n == 0:
                break
            digests += hashlib.sha256(view[:n]).digest()
            size += n
            if progress is not None:
                progress(n)
            if n < chunk_size:
                break
    return size, bytes(digests)


def _fill(f: object, view: memoryview) -> int:
    """Read into ``view`` until it is full or the file ends; bytes read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got
