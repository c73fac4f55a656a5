"""What every embedder backend shares: the record of what produced a matrix of embeddings,
the embedder protocol, and the hashing of weight files.

numpy and pydantic only: importing this module never loads a model backend (torch,
transformers, onnxruntime), so the registry, the cache and the tests can use it freely.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from silentwatch.monitor.bundle import EmbedderSpec

Backend = Literal["transformers", "onnxruntime"]

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "POOLINGS",
    "Backend",
    "Embedder",
    "EmbeddingInfo",
    "Pooling",
    "file_sha256",
    "settings_tag",
    "weights_sha256",
]

Pooling = Literal["mean", "cls", "last_token"]
#: Every pooling an embedder accepts (``cls``: the first token, BERT-style encoders).
POOLINGS: tuple[str, ...] = ("mean", "cls", "last_token")
#: Tokens kept per text unless a config says otherwise.
DEFAULT_MAX_LENGTH = 256


class EmbeddingInfo(BaseModel):
    """What produced a matrix of embeddings: enough to tell two runs' vectors apart.

    Attributes
    ----------
    name
        The model's name (hub id or local path).
    weights_sha256
        sha256 of the weight files (for a GGUF or ONNX model: of that one file).
    dtype
        The dtype the forward pass ran in (``float32``, ``bfloat16``, ``float16``);
        pooling and normalisation always run in float32.
    pooling
        ``mean`` (encoders' default), ``cls`` (first token) or ``last_token`` (decoders).
    max_length
        Tokens kept per text (longer texts are truncated).
    dim
        Embedding dimension.
    device
        Where the forward pass ran (``cpu``, ``cuda``, ``cuda:1``...).
    backend
        ``transformers`` or ``onnxruntime``.
    normalized
        Rows are unit-normalised (the default); ``False``: the raw pooled vectors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    dtype: str
    pooling: Pooling
    max_length: int = Field(ge=1)
    dim: int = Field(ge=1)
    device: str
    backend: Backend
    normalized: bool = True


def settings_tag(
    *,
    pooling: str,
    default_pooling: str,
    max_length: int,
    dtype: str,
    normalized: bool,
) -> str:
    """A version suffix naming the settings that differ from the embedder's defaults.

    The same weights run with another pooling, truncation, dtype or without normalisation
    give other vectors, so a bundle validated for them must not carry the default version:
    the sidecar's identity check compares versions only.

    Parameters
    ----------
    pooling, default_pooling
        The pooling used and the one the model uses by default.
    max_length
        Tokens kept per text (default :data:`DEFAULT_MAX_LENGTH`).
    dtype
        The forward pass's dtype (default ``float32``).
    normalized
        Rows are unit-normalised (default ``True``).

    Returns
    -------
    str
        ``""`` for the defaults, else e.g. ``"+len32"`` or ``"+cls,bfloat16"``.

    Examples
    --------
    >>> settings_tag(pooling="mean", default_pooling="mean", max_length=256,
    ...              dtype="float32", normalized=True)
    ''
    >>> settings_tag(pooling="cls", default_pooling="mean", max_length=32,
    ...              dtype="bfloat16", normalized=False)
    '+cls,len32,bfloat16,raw'
    """
    parts = []
    if pooling != default_pooling:
        parts.append(pooling)
    if max_length != DEFAULT_MAX_LENGTH:
        parts.append(f"len{max_length}")
    if dtype != "float32":
        parts.append(dtype)
    if not normalized:
        parts.append("raw")
    return "+" + ",".join(parts) if parts else ""


class Embedder(Protocol):
    """What :func:`silentwatch.offline.embedders.open_embedder` returns (a
    ``TransformerEmbedder`` or an ``OnnxEmbedder``)."""

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def spec(self, version: str | None = None) -> EmbedderSpec: ...

    def info(self) -> EmbeddingInfo: ...


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            # 1 MiB chunks: weight files run to gigabytes and must not be read whole.
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of one file (a GGUF or ONNX checkpoint), read in chunks.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    return _hash_files([Path(path)])


def weights_sha256(model_dir: Path) -> str | None:
    """sha256 over a transformers model's weight files, sorted by name.

    Parameters
    ----------
    model_dir
        The model directory; ``*.safetensors`` files are hashed, else ``*.bin`` files.

    Returns
    -------
    str or None
        64 lowercase hex digits, or None when the directory holds no weight file.
    """
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        return None
    return _hash_files(files)
