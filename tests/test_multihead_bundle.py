"""Multi-head bundles (issue 19): the format, the loader, HeadScorer and every bad input."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from silentwatch.monitor.bundle import BundleError, EmbedderSpec, load_bundle, write_bundle
from silentwatch.monitor.bundle.manifest import (
    MAX_HEADS,
    HeadManifest,
    Thresholds,
    TrainingSummary,
)
from silentwatch.monitor.scoring import HeadScorer, LinearScorer, row_norms
from silentwatch.monitor.training import train_bundle

from .multihead_data import DIM, sample_xy

HEADS = ("toxicity", "threat", "insult")


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, raw: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(raw, indent=2))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _clf(dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "scaler_mean": rng.normal(size=dim),
        "scaler_scale": rng.uniform(0.5, 2.0, size=dim),
        "coef": rng.normal(size=dim),
        "intercept": np.array([rng.normal()]),
    }


def _fields(dim: int = 4, **kw) -> dict:
    return {
        "classifier_version": "hand-1",
        "created_at": datetime.now(UTC),
        "embedding_dim": dim,
        "embedder": EmbedderSpec(name="test/embedder", version="v1", normalized=False),
        "training": TrainingSummary(n_train=10, n_holdout=0, positive_rate=0.5),
        **kw,
    }


def _ref(dim: int = 4) -> dict[str, np.ndarray]:
    return {
        "embeddings": np.eye(dim, dtype=np.float32),
        "scores": np.full(dim, 0.5, dtype=np.float32),
    }


def _head(name: str, **kw) -> HeadManifest:
    return HeadManifest(
        name=name,
        file=kw.pop("file", f"head-{name}.npz"),
        training=TrainingSummary(n_train=10, n_holdout=0, positive_rate=0.2),
        **kw,
    )


@pytest.fixture(scope="module")
def three_heads(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A bundle with heads toxicity (default), threat, insult, trained on the sample."""
    x, y, texts = sample_xy(HEADS)
    out = tmp_path_factory.mktemp("mh") / "bundle"
    train_bundle(
        x, y, out, head_names=HEADS, texts=texts, detectors=None, seed=3,
        embedder=EmbedderSpec(name="test/hashed", version="h1"),
        thresholds=[Thresholds(), Thresholds(flag=0.3), Thresholds(flag=0.6)],
    )  # fmt: skip
    return out, x, y


@pytest.fixture
def bundle(three_heads, tmp_path) -> Path:
    """A private copy of the three-head bundle that a test may tamper with."""
    dst = tmp_path / "copy"
    shutil.copytree(three_heads[0], dst)
    return dst


# -- round trip ---------------------------------------------------------------------------


def test_three_head_bundle_round_trips(three_heads):
    path, _, y = three_heads
    b = load_bundle(path)
    m = b.manifest
    assert b.head_names == HEADS == m.head_names
    assert m.default_head == "toxicity"
    assert [h.name for h in m.heads] == ["threat", "insult"]
    assert [h.file for h in m.heads] == ["head-threat.npz", "head-insult.npz"]
    for h in m.heads:
        assert m.files[h.file] == hashlib.sha256((path / h.file).read_bytes()).hexdigest()
    # The default head is the top-level classifier, thresholds and training, as ever.
    assert b.heads[0].scorer is b.scorer
    assert b.heads[0].thresholds == m.thresholds
    assert b.heads[0].training == m.training
    assert [h.thresholds.flag for h in b.heads] == [0.5, 0.3, 0.6]
    for j, head in enumerate(b.heads):
        assert head.training.positive_rate == pytest.approx(float(y[:, j].mean()))
        assert head.training.n_holdout == 400
        assert set(head.training.holdout_metrics) >= {"roc_auc", "positives"}
        assert head.scorer.dim == DIM
    assert b.head_scorer.k == 3 and b.head_scorer.dim == DIM
    raw = _manifest(path)
    assert raw["default_head"] == "toxicity" and len(raw["heads"]) == 2


def test_head_index(three_heads):
    b = load_bundle(three_heads[0])
    assert [b.head_index(n) for n in ("", "toxicity", "threat", "insult")] == [0, 0, 1, 2]
    with pytest.raises(KeyError, match="no head 'obscene'; its heads are toxicity, threat"):
        b.head_index("obscene")


def test_canaries_carry_per_head_labels(three_heads):
    b = load_bundle(three_heads[0])
    c = b.canaries
    assert c is not None and c.head_labels is not None and c.embeddings is not None
    assert c.head_labels.shape == (len(c.texts), 3) and c.head_labels.dtype == np.int8
    np.testing.assert_array_equal(c.head_labels[:, 0], c.labels)
    assert (c.head_labels.sum(axis=0) > 0).all()


# -- HeadScorer -----------------------------------------------------------------------------


def test_head_scorer_equals_each_heads_scorer(three_heads):
    b = load_bundle(three_heads[0])
    rng = np.random.default_rng(0)
    # Reference rows (unit norm) and raw rows of other norms: the normalisation is per row.
    x = np.vstack([b.reference.embeddings[:50], 3.0 * rng.normal(size=(50, DIM))])
    x = x.astype(np.float32)
    p = b.head_scorer.predict_proba(x)
    z = b.head_scorer.logits(x, row_norms(x))
    assert p.shape == (100, 3) and p.dtype == np.float32 and z.dtype == np.float32
    for j, head in enumerate(b.heads):
        np.testing.assert_allclose(p[:, j], head.scorer.predict_proba(x), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z[:, j], head.scorer.logits(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("normalize", [True, False])
# k = 1-4: a matrix-vector product per head; 5-7: weights padded to 8 columns; 8, 11: one
# matrix product (monitor/scoring.py picks the fastest by k).
@pytest.mark.parametrize("k", [1, 3, 5, 7, 8, 11])
def test_head_scorer_stack_of_random_heads(normalize, k):
    scorers = [
        LinearScorer.from_standardized(**_fold(_clf(16, s)), normalize=normalize) for s in range(k)
    ]
    hs = HeadScorer.stack(scorers)
    assert hs.weights.shape == (16, k) and hs.biases.shape == (k,)
    assert hs.weights.dtype == hs.biases.dtype == np.float32
    x = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    p = hs.predict_proba(x)
    assert p.shape == (64, k) and p.dtype == np.float32 and p.flags.c_contiguous
    for j, s in enumerate(scorers):
        np.testing.assert_allclose(p[:, j], s.predict_proba(x), rtol=1e-5, atol=1e-6)
    assert hs.weights.shape == (16, k)  # the padded copy is a cache, not the weights


def _fold(clf: dict[str, np.ndarray]) -> dict:
    return {
        "mean": clf["scaler_mean"],
        "scale": clf["scaler_scale"],
        "coef": clf["coef"],
        "intercept": float(clf["intercept"][0]),
    }


def test_head_scorer_stack_refuses_mixed_heads():
    a = LinearScorer.from_standardized(**_fold(_clf(4, 0)), normalize=True)
    with pytest.raises(ValueError, match="head 1 has dimension 5"):
        HeadScorer.stack([a, LinearScorer.from_standardized(**_fold(_clf(5, 1)), normalize=True)])
    with pytest.raises(ValueError, match="normalize=False"):
        HeadScorer.stack([a, LinearScorer.from_standardized(**_fold(_clf(4, 1)), normalize=False)])
    with pytest.raises(ValueError, match="at least one"):
        HeadScorer.stack([])


# -- legacy bundles -------------------------------------------------------------------------


def test_legacy_bundle_is_one_head_called_default(tmp_path):
    path = write_bundle(tmp_path / "b", _fields(), _clf(4, 0), _ref())
    raw = _manifest(path)
    # A one-head "default" bundle is written exactly as before (an older sidecar loads it).
    assert "heads" not in raw and "default_head" not in raw
    b = load_bundle(path)
    assert b.head_names == ("default",)
    assert b.head_index("") == b.head_index("default") == 0
    assert b.heads[0].scorer is b.scorer and b.head_scorer.k == 1
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    np.testing.assert_allclose(b.head_scorer.predict_proba(x)[:, 0], b.scorer.predict_proba(x))


def test_single_head_training_writes_the_legacy_manifest(tmp_path):
    x, y, texts = sample_xy(("toxicity",), limit=400)
    train_bundle(x, y[:, 0], tmp_path / "b", texts=texts, detectors=None,
                 embedder=EmbedderSpec(name="e", version="1"))  # fmt: skip
    raw = _manifest(tmp_path / "b")
    assert "heads" not in raw and "default_head" not in raw
    b = load_bundle(tmp_path / "b")
    assert b.head_names == ("default",)
    assert b.canaries is not None and b.canaries.head_labels is None


def test_manifest_written_before_heads_still_loads(tmp_path):
    path = write_bundle(tmp_path / "b", _fields(), _clf(4, 0), _ref())
    raw = _manifest(path)
    raw.pop("heads", None), raw.pop("default_head", None)
    _write_manifest(path, raw)
    assert load_bundle(path).head_names == ("default",)


# -- write_bundle ---------------------------------------------------------------------------


def test_write_bundle_writes_head_files(tmp_path):
    heads = (_head("threat"), _head("insult", thresholds=Thresholds(flag=0.7)))
    path = write_bundle(
        tmp_path / "b", _fields(default_head="toxicity", heads=heads), _clf(4, 0), _ref(),
        head_classifiers={"threat": _clf(4, 1), "insult": _clf(4, 2)},
    )  # fmt: skip
    b = load_bundle(path)
    assert b.head_names == ("toxicity", "threat", "insult")
    assert b.heads[2].thresholds.flag == 0.7
    expect = LinearScorer.from_standardized(**_fold(_clf(4, 2)), normalize=False)
    np.testing.assert_allclose(b.heads[2].scorer.weights, expect.weights)


def test_write_bundle_needs_arrays_for_exactly_the_listed_heads(tmp_path):
    fields = _fields(heads=(_head("threat"),))
    with pytest.raises(BundleError, match=r"arrays for heads \[\] but the manifest lists"):
        write_bundle(tmp_path / "b", fields, _clf(4, 0), _ref())
    with pytest.raises(BundleError, match="insult"):
        write_bundle(tmp_path / "b", fields, _clf(4, 0), _ref(),
                     head_classifiers={"threat": _clf(4, 1), "insult": _clf(4, 2)})  # fmt: skip
    assert not (tmp_path / "b").exists()


def test_a_head_of_the_wrong_dimension_never_clobbers_a_good_bundle(tmp_path):
    fields = _fields(heads=(_head("threat"),))
    good = write_bundle(tmp_path / "b", fields, _clf(4, 0), _ref(),
                        head_classifiers={"threat": _clf(4, 1)})  # fmt: skip
    before = (good / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match=r"head 'threat': head-threat.npz:scaler_mean has shape"):
        write_bundle(tmp_path / "b", fields, _clf(4, 0), _ref(),
                     head_classifiers={"threat": _clf(5, 1)}, overwrite=True)  # fmt: skip
    assert (good / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# -- bad input --------------------------------------------------------------------------------


def _edit(bundle: Path, fn) -> None:
    raw = _manifest(bundle)
    fn(raw)
    _write_manifest(bundle, raw)


def _dup_head(raw: dict) -> None:
    raw["heads"].append({**raw["heads"][0], "file": "head-threat2.npz"})
    raw["files"]["head-threat2.npz"] = raw["files"]["head-threat.npz"]


def _too_many(raw: dict) -> None:
    raw["heads"] = [
        {**raw["heads"][0], "name": f"h{i}", "file": "head-threat.npz"} for i in range(MAX_HEADS)
    ]


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_dup_head, r"head name 'threat' is used twice \(heads.2 and heads.0\)"),
        (
            lambda r: r["heads"][0].update(name="toxicity"),
            r"head name 'toxicity' is used twice \(heads.0 and the default head\)",
        ),
        (lambda r: r["heads"][1].update(name="Insult"), r"head name 'Insult' is invalid"),
        (lambda r: r["heads"][1].update(name="in-sult"), r"head name 'in-sult' is invalid"),
        (lambda r: r["heads"][1].update(name="a" * 33), r"head name 'a{33}' is invalid"),
        (lambda r: r["heads"][1].update(name="9lives"), r"head name '9lives' is invalid"),
        (lambda r: r.update(default_head="Toxicity"), r"head name 'Toxicity' is invalid"),
        (_too_many, rf"has {MAX_HEADS + 1} heads .* at most {MAX_HEADS}"),
        (
            lambda r: r["files"].pop("head-insult.npz"),
            r"head 'insult': its file 'head-insult.npz' has no sha256 in files",
        ),
        (
            lambda r: r["heads"][1].update(file="head-threat.npz"),
            r"head 'insult' stores its arrays in 'head-threat.npz', already used by head "
            r"'threat'",
        ),
        (
            lambda r: r["heads"][1].update(file="classifier.npz"),
            r"head 'insult' stores its arrays in 'classifier.npz', already used by the bundle",
        ),
    ],
    ids=[
        "duplicate",
        "same-as-default",
        "uppercase",
        "dash",
        "too-long",
        "digit-first",
        "bad-default",
        "too-many",
        "file-unlisted",
        "file-shared",
        "file-reserved",
    ],
)
def test_bad_head_manifests_are_refused_naming_the_head(bundle, edit, pattern):
    _edit(bundle, edit)
    with pytest.raises(BundleError, match=pattern):
        load_bundle(bundle)


def test_head_file_missing(bundle):
    (bundle / "head-insult.npz").unlink()
    with pytest.raises(BundleError, match=r"head 'insult': head-insult.npz is missing"):
        load_bundle(bundle)


def test_head_file_with_a_wrong_sha256(bundle):
    f = bundle / "head-threat.npz"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"head 'threat': head-threat.npz .* sha256"):
        load_bundle(bundle)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda c: {**c, "coef": c["coef"][:-1]}, rf"coef has shape \({DIM - 1},\).*={DIM}"),
        (lambda c: {**c, "scaler_scale": -c["scaler_scale"]}, "non-positive"),
        (lambda c: {k: v for k, v in c.items() if k != "intercept"}, "lacks arrays"),
        (lambda c: {**c, "coef": np.full_like(c["coef"], np.nan)}, "NaN"),
    ],
    ids=["dimension", "scale", "missing-array", "nan"],
)
def test_head_arrays_that_disagree_are_refused_naming_the_head(bundle, change, pattern):
    """A consistent forgery (hash fixed): the arrays themselves are checked, per head."""
    with np.load(bundle / "head-insult.npz") as z:
        clf = {k: z[k] for k in z.files}
    data = _npz_bytes(change(clf))
    (bundle / "head-insult.npz").write_bytes(data)
    _edit(bundle, lambda r: r["files"].update({"head-insult.npz": _sha(data)}))
    with pytest.raises(BundleError, match=r"head 'insult': .*" + pattern):
        load_bundle(bundle)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda h: h[:, :2], r"head_labels has shape \(\d+, 2\), expected \(\d+, 3\)"),
        (lambda h: np.where(h == 1, 2, h), "head_labels must be 0 or 1"),
        (lambda h: np.column_stack([1 - h[:, 0], h[:, 1:]]), "column 0 .* differs from labels"),
    ],
    ids=["columns", "values", "default-column"],
)
def test_bad_canary_head_labels(bundle, change, pattern):
    with np.load(bundle / "canaries.npz") as z:
        can = {k: z[k] for k in z.files}
    can["head_labels"] = change(can["head_labels"]).astype(np.int8)
    data = _npz_bytes(can)
    (bundle / "canaries.npz").write_bytes(data)
    _edit(bundle, lambda r: r["files"].update({"canaries.npz": _sha(data)}))
    with pytest.raises(BundleError, match=pattern):
        load_bundle(bundle)


def test_paired_canaries_compute_the_geometry_once_for_all_heads(three_heads, monkeypatch):
    """Angles and CKA do not depend on the head: a three-head submission computes them
    once, and each head's reading equals one computed for that head alone."""
    from silentwatch.monitor.detection import paired_canaries as pc
    from silentwatch.monitor.evaluation import paired

    b = load_bundle(three_heads[0])
    canaries = pc.PairedCanaries(b)
    ref = np.asarray(b.canaries.embeddings, dtype=np.float32)
    rng = np.random.default_rng(5)
    live = ref + 0.05 * rng.normal(size=ref.shape).astype(np.float32)
    live /= np.linalg.norm(live, axis=1, keepdims=True)
    calls: list[int] = []
    real = paired.canary_geometry
    monkeypatch.setattr(pc, "canary_geometry", lambda a, c: calls.append(1) or real(a, c))
    sub = canaries.update(live)
    assert len(calls) == 1 and len(sub.heads) == len(b.heads) == 3
    for j, (head, r) in enumerate(zip(b.heads, sub.heads, strict=True)):
        alone = paired.paired_canary_reading(
            ref, live, canaries.head_labels[:, j], head.scorer.predict_proba,
            flag=head.thresholds.flag, high_confidence=head.thresholds.high_confidence,
            margin=canaries.margin, alpha=canaries.alpha / 3,
            angle_tolerance=canaries.angle_tolerance, bootstrap=canaries.bootstrap,
            brier_margin=canaries.brier_margin,
        )  # fmt: skip
        assert r.as_dict() == alone.as_dict()
