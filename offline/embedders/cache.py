"""An on-disk cache of embeddings, keyed on everything that changes the numbers.

``embed_cached`` keys a ``.npy`` file on the weights, pooling, truncation, dtype,
normalisation, layer and
the texts, so a gate run that re-embeds the same data set with the same model never
touches the model again. numpy only: it works with any backend's embedder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from silentwatch.offline.embedders.base import Embedder, EmbeddingInfo

__all__ = ["cache_key", "embed_cached"]


def cache_key(info: EmbeddingInfo, texts: list[str], layer: int = -1) -> str:
    """sha256 over what changes the vectors: weights, pooling, truncation, dtype,
    normalisation, layer, texts.

    The model's name is left out on purpose: the same weights under another name give
    the same vectors. Models without a weights digest fall back to the name.
    """
    h = hashlib.sha256()
    head: dict[str, object] = {
        "weights_sha256": info.weights_sha256 or f"name:{info.name}",
        "pooling": info.pooling,
        "max_length": info.max_length,
        "dtype": info.dtype,
        "layer": layer,
        "backend": info.backend,
    }
    if not info.normalized:
        # Only when set: keys of unit-normalised runs stay those of earlier releases, so
        # existing caches keep hitting.
        head["normalized"] = False
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
        Anything with ``embed`` and ``info`` (see
        :func:`silentwatch.offline.embedders.registry.open_embedder`).
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
        if layer == -1 and getattr(embedder, "streams_progress", False):
            # An engine that batches and reports progress itself (the Ray actor pool,
            # offline/execution/embedding.py) takes every text at once: one call per chunk
            # would start a pool, and load every replica, per chunk.
            return embedder.embed(texts, progress=progress)  # type: ignore[call-arg]
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
