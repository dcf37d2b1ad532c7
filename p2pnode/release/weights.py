"""What the weights of a model directory are: content address and stored dtype.

The **content address** is the one the serving loader gives the model
(:func:`p2pnode.serving.loader.load_model`: the sha256 of a canonical manifest of its
tensors and tokenizer), the address buyers ask for and providers serve under. The
loader caches it in the directory, keyed by file names, sizes and modification times.
That cache is fine for serving but proves nothing about the bytes (a copy that keeps
modification times, or a planted file, can make it lie), so :func:`load_fresh` drops it
first: the address is always computed from the bytes here. The loader writes the cache
again.

The **dtype** is the precision the tensors are stored in, read from the safetensors
headers (no tensor is loaded): ``"bfloat16"``, ``"float32"``, or several joined by
``+`` (``"bfloat16+float32"``) for a mixed file.

torch is imported only when a model is loaded, so ``import p2pnode.release`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from p2pnode.release.errors import MalformedRelease
from p2pnode.release.files import LOADER_CACHE

if TYPE_CHECKING:
    from p2pnode.serving.loader import LoadedModel

__all__ = ["load_fresh", "stored_dtype"]

_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def load_fresh(directory: Path) -> LoadedModel:
    """The model in ``directory``, its content address computed from its bytes.

    Raises :class:`MalformedRelease` when the directory does not load as a model, or
    when the loader's cached address cannot be removed (a read-only directory).
    """
    from p2pnode.serving.loader import ModelLoadError, load_model

    cache = directory / LOADER_CACHE
    try:
        cache.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise MalformedRelease(
            f"cannot remove {cache} ({e.strerror}): the content address must be computed "
            "from the files, not read from the loader's cache"
        ) from None
    try:
        return load_model(directory)
    except (ModelLoadError, OSError, ValueError, KeyError) as e:
        raise MalformedRelease(f"{directory} does not load as a model: {e}") from None


def stored_dtype(directory: Path) -> str:
    """The dtype(s) the ``*.safetensors`` files of ``directory`` store their tensors in."""
    from safetensors import SafetensorError, safe_open

    kinds: set[str] = set()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MalformedRelease(f"no .safetensors files in {directory}")
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as weights:
                for name in weights.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    code = weights.get_slice(name).get_dtype()
                    kinds.add(_SAFETENSORS_DTYPES.get(code, code.lower()))
        except (OSError, ValueError, SafetensorError) as e:
            raise MalformedRelease(f"{f} is not a readable safetensors file: {e}") from None
    if not kinds:
        raise MalformedRelease(f"the .safetensors files in {directory} hold no tensors")
    return "+".join(sorted(kinds))
