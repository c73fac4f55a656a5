"""Every embedder the gate compares, behind one door, and an on-disk cache of their outputs.

``open_embedder(spec)`` returns an object with ``embed(texts)``, ``spec()`` and ``info()``
for any spec the registry knows (``minilm``, ``minilm-int8``, ``paraphrase-l3``,
``smollm2``, ``onnx:<file>``, ``hf:<hub id>``, a model directory, a ``.gguf`` file);
``embed_cached`` keys a ``.npy`` file on everything that changes the numbers.

Modules:

* :mod:`~silentwatch.offline.embedders.base`: ``EmbeddingInfo``, the ``Embedder`` protocol,
  weight-file hashing (numpy and pydantic only);
* :mod:`~silentwatch.offline.embedders.packaged`: the shipped models' names and files;
* :mod:`~silentwatch.offline.embedders.registry`: spec -> backend, ``open_embedder``;
* :mod:`~silentwatch.offline.embedders.cache`: ``cache_key``, ``embed_cached``;
* :mod:`~silentwatch.offline.embedders.onnx`: the onnxruntime backend (never imports torch);
* :mod:`~silentwatch.offline.embedders.hf`: the transformers backend (the only one that
  imports torch).

Importing this package imports neither backend: their names (``TransformerEmbedder``,
``load_embedder``, ``resolve_dtype``, ``TORCH_DTYPES``, ``OnnxEmbedder``,
``load_onnx_embedder``) are re-exported lazily, on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from silentwatch.offline.embedders.base import (
    Backend,
    Embedder,
    EmbeddingInfo,
    file_sha256,
    weights_sha256,
)
from silentwatch.offline.embedders.cache import cache_key, embed_cached
from silentwatch.offline.embedders.packaged import (
    MINILM_INT8_NAME,
    MINILM_NAME,
    PARAPHRASE_L3_NAME,
    SMOLLM2_NAME,
    minilm_int8_onnx_path,
    minilm_path,
    paraphrase_l3_onnx_path,
    smollm2_gguf_path,
)
from silentwatch.offline.embedders.registry import (
    NAMED_EMBEDDERS,
    EmbedderRoute,
    LoadOptions,
    named_for_recorded_name,
    open_embedder,
    resolve,
)

if TYPE_CHECKING:
    from silentwatch.offline.dtypes import TORCH_DTYPES, resolve_dtype
    from silentwatch.offline.embedders.hf import TransformerEmbedder, load_embedder
    from silentwatch.offline.embedders.onnx import OnnxEmbedder, load_onnx_embedder

# Backend names served by __getattr__: importing them here would import torch (hf) for
# every user of the registry or the cache.
_LAZY: dict[str, str] = {
    "TORCH_DTYPES": "silentwatch.offline.dtypes",
    "TransformerEmbedder": "silentwatch.offline.embedders.hf",
    "load_embedder": "silentwatch.offline.embedders.hf",
    "resolve_dtype": "silentwatch.offline.dtypes",
    "OnnxEmbedder": "silentwatch.offline.embedders.onnx",
    "load_onnx_embedder": "silentwatch.offline.embedders.onnx",
}

__all__ = [
    "MINILM_INT8_NAME",
    "MINILM_NAME",
    "NAMED_EMBEDDERS",
    "PARAPHRASE_L3_NAME",
    "SMOLLM2_NAME",
    "TORCH_DTYPES",
    "Backend",
    "Embedder",
    "EmbedderRoute",
    "EmbeddingInfo",
    "LoadOptions",
    "OnnxEmbedder",
    "TransformerEmbedder",
    "cache_key",
    "embed_cached",
    "file_sha256",
    "load_embedder",
    "load_onnx_embedder",
    "minilm_int8_onnx_path",
    "minilm_path",
    "named_for_recorded_name",
    "open_embedder",
    "paraphrase_l3_onnx_path",
    "resolve",
    "resolve_dtype",
    "smollm2_gguf_path",
    "weights_sha256",
]


def __getattr__(name: str) -> Any:
    """Import a backend on first access to one of its names (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value
