"""Training multi-head bundles (issue 19): train_bundle, canaries, datasets and the CLI."""

from __future__ import annotations

import csv
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from silentwatch.cli import main
from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings, Thresholds
from silentwatch.monitor.training import train_bundle
from silentwatch.monitor.training.datasets import load_labelled_texts
from silentwatch.monitor.training.train import pick_canaries, pick_head_canaries

from .multihead_data import COLUMNS, DIM, hashed_embed, sample_rows, sample_xy

HEADS = ("toxicity", "threat", "insult")
SPEC = EmbedderSpec(name="test/hashed", version="h1")


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    return sample_xy(HEADS)


@pytest.fixture(scope="module")
def pair(data, tmp_path_factory) -> tuple[Path, Path]:
    """The same rows trained as three heads and as the default head alone (calibrated)."""
    x, y, texts = data
    root = tmp_path_factory.mktemp("pair")
    # A small calibration: the same for both, and seconds rather than tens of them.
    cal = DetectorSettings(window_size=32, calibration_windows=100, false_alarm_rate=0.1,
                           rff_features=32, pca_components=8, seed=11)  # fmt: skip
    kw = {"embedder": SPEC, "texts": texts, "seed": 11, "reference_size": 500, "detectors": cal}
    train_bundle(x, y, root / "multi", head_names=HEADS, **kw)
    train_bundle(x, y[:, 0], root / "single", **kw)
    return root / "multi", root / "single"


# -- train_bundle -------------------------------------------------------------------------------


def test_each_head_has_its_own_training_summary(pair, data):
    _, y, _ = data
    b = load_bundle(pair[0])
    assert b.head_names == HEADS
    for j, head in enumerate(b.heads):
        t = head.training
        assert (t.n_train, t.n_holdout) == (1600, 400)
        assert t.positive_rate == pytest.approx(float(y[:, j].mean()))
        assert t.estimator.startswith("StandardScaler + LogisticRegression(C=1")
        m = t.holdout_metrics
        assert set(m) == {"roc_auc", "accuracy", "mean_confidence", "ece_5bin", "positives"}
        # Better than chance on a hashed bag of words (toxicity words carry the signal).
        assert m["roc_auc"] > 0.55, (head.name, m)
    # The class counts label confirmation needs: the stratified split keeps 20% of toxicity.
    assert b.heads[0].training.holdout_metrics["positives"] == 200
    assert 0 < b.heads[1].training.holdout_metrics["positives"] < 116


def test_the_default_head_is_what_one_head_training_gives(pair):
    """Split, classifier, reference, canaries' default labels, calibration: all unchanged."""
    multi, single = (load_bundle(p) for p in pair)
    np.testing.assert_array_equal(multi.scorer.weights, single.scorer.weights)
    assert multi.scorer.bias == single.scorer.bias
    for key in ("embeddings", "scores", "labels"):
        np.testing.assert_array_equal(getattr(multi.reference, key), getattr(single.reference, key))
    mt, st = multi.manifest.training, single.manifest.training
    assert mt == st
    assert multi.manifest.detectors is not None and single.manifest.detectors is not None
    assert multi.manifest.detectors.thresholds == single.manifest.detectors.thresholds
    assert multi.manifest.classifier_version != single.manifest.classifier_version


def test_multi_head_canaries_give_every_head_positives(pair, data):
    _, y, texts = data
    b = load_bundle(pair[0])
    c = b.canaries
    assert c is not None and c.head_labels is not None and len(c.texts) == 256
    rows = [texts.index(t) for t in c.texts]
    np.testing.assert_array_equal(c.head_labels, y[rows])
    quota = 256 // (2 * 3)
    for j, head in enumerate(b.heads):
        held_out_pos = int(head.training.holdout_metrics["positives"])
        assert c.head_labels[:, j].sum() >= min(held_out_pos, quota), head.name
    # The rest is balanced on the default head.
    assert abs(int(c.labels.sum()) - 128) <= quota


def test_pick_head_canaries():
    rng = np.random.default_rng(0)
    y0 = (rng.random(500) < 0.5).astype(int)
    rare = np.zeros(500, dtype=int)
    rare[rng.choice(500, 6, replace=False)] = 1
    y = np.column_stack([y0, rare, (rng.random(500) < 0.1).astype(int)])
    # One head: exactly pick_canaries, so single-head bundles keep their canaries.
    np.testing.assert_array_equal(pick_head_canaries(y0, 64, seed=4), pick_canaries(y0, 64, seed=4))
    rows = pick_head_canaries(y, 60, seed=4)
    assert rows.size == 60 and np.all(np.diff(rows) > 0)
    assert y[rows, 1].sum() == 6  # every rare positive: fewer than the quota of 10
    assert y[rows, 2].sum() >= 10
    assert pick_head_canaries(y, 10_000).size == 500
    np.testing.assert_array_equal(pick_head_canaries(y, 60, seed=4), rows)


def test_per_head_thresholds_and_frozen_heads(data, tmp_path):
    x, y, _ = data
    first = train_bundle(x, y, tmp_path / "a", head_names=HEADS, embedder=SPEC, detectors=None)
    a = load_bundle(first.path)
    with np.load(first.path / "head-threat.npz") as z:
        threat = {k: z[k] for k in z.files}
    res = train_bundle(
        x, y, tmp_path / "b", head_names=HEADS, embedder=SPEC, detectors=None,
        classifier=[None, threat, None],
        thresholds=[Thresholds(flag=0.4), Thresholds(flag=0.2), Thresholds()],
    )  # fmt: skip
    b = load_bundle(res.path)
    assert [h.thresholds.flag for h in b.heads] == [0.4, 0.2, 0.5]
    np.testing.assert_array_equal(b.heads[1].scorer.weights, a.heads[1].scorer.weights)
    assert set(res.head_metrics) == set(HEADS)
    assert res.holdout_metrics == res.head_metrics["toxicity"]


def test_a_head_with_one_class_in_the_holdout_has_no_auc(data, tmp_path):
    x, y, _ = data
    ho = np.flatnonzero(y[:, 1] == 0)[:300]  # no threat in the hold-out
    res = train_bundle(x, y, tmp_path / "b", head_names=HEADS, embedder=SPEC, detectors=None,
                       holdout_rows=ho)  # fmt: skip
    assert "roc_auc" not in res.head_metrics["threat"]
    assert res.head_metrics["threat"]["positives"] == 0
    assert "roc_auc" in res.head_metrics["toxicity"]


@pytest.mark.parametrize(
    ("columns", "names", "pattern"),
    [
        (("toxicity", "severe_toxicity"), None, None),
        (HEADS, ("toxicity", "threat", "threat"), r"duplicate head names \['threat'\]"),
        (HEADS, ("toxicity", "Threat", "insult"), r"head name 'Threat' is invalid"),
        (HEADS, ("toxicity", "threat"), r"2 head names .* for 3 label columns"),
        (HEADS, None, r"3 columns \(heads\) but no head names"),
    ],
    ids=["too-few-positives", "duplicate", "bad-name", "count", "unnamed"],
)
def test_bad_heads_are_refused_before_any_fit(data, tmp_path, columns, names, pattern):
    x, _, _ = data
    rows = sample_rows()
    y = np.array([[float(r[c]) >= 0.5 for c in columns] for r in rows], dtype=np.int8)
    if pattern is None:
        names = columns
        # severe_toxicity has 4 rows >= 0.5: named, with its counts and what to do.
        pattern = (
            r"head 'severe_toxicity' has 4 unsafe and 1996 safe rows; need at least 10 "
            r"examples of each class to fit it: drop the head .* lower --label-threshold"
        )
    with pytest.raises(ValueError, match=pattern):
        train_bundle(x, y, tmp_path / "b", head_names=names, embedder=SPEC)
    assert not (tmp_path / "b").exists()


def test_a_head_starved_by_the_split_is_named(data, tmp_path):
    x, y, _ = data
    threat = np.flatnonzero(y[:, 1] == 1)
    ho = np.concatenate([threat[:-3], np.flatnonzero(y[:, 1] == 0)[:50]])
    with pytest.raises(ValueError, match=r"head 'threat' has 3 unsafe .* in the training split"):
        train_bundle(x, y, tmp_path / "b", head_names=HEADS, embedder=SPEC, holdout_rows=ho)


def test_explicit_canaries_need_a_label_per_head(data, tmp_path):
    x, y, texts = data
    with pytest.raises(ValueError, match=r"canary labels have shape \(5,\) but the bundle has 3"):
        train_bundle(x, y, tmp_path / "b", head_names=HEADS, embedder=SPEC, detectors=None,
                     canaries=(texts[:5], y[:5, 0]))  # fmt: skip
    train_bundle(x, y, tmp_path / "b", head_names=HEADS, embedder=SPEC, detectors=None,
                 canaries=(texts[:5], y[:5], x[:5]))  # fmt: skip
    c = load_bundle(tmp_path / "b").canaries
    assert c is not None and c.head_labels is not None
    np.testing.assert_array_equal(c.head_labels, y[:5])


# -- datasets -------------------------------------------------------------------------------------


@pytest.fixture
def small_csv(tmp_path) -> Path:
    """600 rows of the sample, all seven rater-fraction columns (about 35 threat positives)."""
    path = tmp_path / "civil600.csv"
    rows = sample_rows(600)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["text", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
    return path


def test_load_labelled_texts_reads_several_columns(small_csv):
    one = load_labelled_texts(small_csv, label_column="toxicity")
    many = load_labelled_texts(small_csv, label_column=["toxicity", "threat", "insult"])
    assert one.labels.shape == (600,)
    assert many.labels.shape == (600, 3) and many.labels.dtype == np.int8
    assert many.label_columns == ("toxicity", "threat", "insult")
    np.testing.assert_array_equal(many.labels[:, 0], one.labels)
    rows = sample_rows(600)
    assert many.labels[:, 1].tolist() == [int(float(r["threat"]) >= 0.5) for r in rows]
    low = load_labelled_texts(small_csv, label_column=["threat"], label_threshold=0.2)
    assert low.labels.shape == (600, 1) and low.labels.sum() > many.labels[:, 1].sum()


def test_load_labelled_texts_names_a_missing_column(small_csv):
    with pytest.raises(ValueError, match=r"no column\(s\) \['threats'\]; its columns are: text, "
                       r"toxicity, severe_toxicity, obscene, threat, insult"):  # fmt: skip
        load_labelled_texts(small_csv, label_column=["toxicity", "threats"])
    with pytest.raises(ValueError, match=r"\['threat'\] given twice"):
        load_labelled_texts(small_csv, label_column=["threat", "threat"])


def test_load_labelled_texts_names_the_bad_column(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,toxicity,threat\na,0.1,0.2\nb,0.9,oops\n")
    with pytest.raises(ValueError, match=r"data row 2, column 'threat': label 'oops'"):
        load_labelled_texts(p, label_column=["toxicity", "threat"])


# -- CLI ----------------------------------------------------------------------------------------


class _FakeEmbedder:
    """Stands in for the packaged MiniLM: the hashed embedding, no model loaded."""

    name = "test/hashed"
    pooling = "mean"
    calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        type(self).calls += 1
        return hashed_embed(list(texts))

    def spec(self, version: str | None = None) -> EmbedderSpec:
        return EmbedderSpec(name=self.name, version=version or "h1", pooling="mean")


@pytest.fixture
def fake_embedder(monkeypatch) -> type[_FakeEmbedder]:
    module = types.ModuleType("silentwatch.offline.embedders")
    module.load_embedder = lambda name: _FakeEmbedder()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "silentwatch.offline.embedders", module)
    _FakeEmbedder.calls = 0
    return _FakeEmbedder


def test_cli_trains_one_head_per_label_column(small_csv, tmp_path, capsys, fake_embedder):
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--data", str(small_csv), "--label-column",
               "toxicity,threat,insult", "--no-calibration", "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "embedding 600 texts with test/hashed" in captured.out
    for name in HEADS:
        assert f"  head {name}: held-out roc_auc " in captured.out
    assert "unsafe canaries per head: toxicity " in captured.out
    b = load_bundle(out)
    assert b.head_names == HEADS and b.dim == DIM

    rc = main(["bundle", "inspect", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "heads             3 (default toxicity)" in text
    for head in b.heads:
        auc = head.training.holdout_metrics["roc_auc"]
        assert f"  {head.name:<8}  {head.training.positive_rate:6.1%} unsafe  held-out " \
               f"roc_auc {auc:.4f}" in text  # fmt: skip
    assert "file              head-threat.npz  sha256 " in text


def test_cli_head_names_rename_the_columns(small_csv, tmp_path, capsys, fake_embedder):
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--data", str(small_csv), "--label-column", "toxicity,threat",
               "--head-names", "tox,violence", "--label-threshold", "0.4", "--no-calibration",
               "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    b = load_bundle(out)
    assert b.head_names == ("tox", "violence")
    rows = sample_rows(600)
    assert b.heads[1].training.positive_rate == pytest.approx(
        np.mean([float(r["threat"]) >= 0.4 for r in rows])
    )


def test_cli_one_column_keeps_the_default_head(small_csv, tmp_path, capsys, fake_embedder):
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--data", str(small_csv), "--label-column", "toxicity",
               "--no-calibration", "--out", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert load_bundle(out).head_names == ("default",)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (
            ["--label-column", "toxicity,threats"],
            r"has no column\(s\) \['threats'\]; its columns are: text, toxicity, "
            r"severe_toxicity, obscene, threat, insult, identity_attack, sexual_explicit",
        ),
        (
            ["--label-column", "toxicity,severe_toxicity"],
            r"head 'severe_toxicity' has \d unsafe and \d+ safe rows; need at least 10 "
            r"examples of each class to fit it: drop the head",
        ),
        (["--label-column", "toxicity,threat", "--head-names", "a,a"], "duplicate head names"),
        (["--label-column", "toxicity,toxicity"], r"\['toxicity'\] given twice"),
        (["--label-column", "toxicity,threat", "--head-names", "a"], "1 names for 2 label"),
        (["--label-column", "toxicity,,threat"], "--label-column .* has an empty item"),
        (
            ["--label-column", "toxicity,threat", "--head-names", "Tox,threat"],
            r"head name 'Tox' is invalid",
        ),
    ],
    ids=["missing-column", "too-few", "duplicate-names", "duplicate-columns", "count", "empty",
         "bad-name"],
)  # fmt: skip
def test_cli_bad_heads_are_one_line_errors(small_csv, tmp_path, capsys, fake_embedder, extra,
                                           pattern):  # fmt: skip
    out = tmp_path / "b"
    rc = main(["bundle", "train", "--data", str(small_csv), *extra, "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.startswith("silentwatch: error: ")
    assert captured.err.count("\n") == 1, captured.err
    assert __import__("re").search(pattern, captured.err), captured.err
    assert fake_embedder.calls == 0  # refused before a single text was embedded
    assert not out.exists()


def test_cli_npy_labels_with_head_names(data, tmp_path, capsys):
    x, y, _ = data
    xe, ye = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xe, x[:800])
    np.save(ye, y[:800])
    base = ["bundle", "train", "--embeddings", str(xe), "--labels", str(ye), "--embedder-name",
            "e", "--embedder-version", "1", "--no-calibration"]  # fmt: skip
    rc = main([*base, "--head-names", "toxicity,threat,insult", "--out", str(tmp_path / "b")])
    assert rc == 0, capsys.readouterr().err
    assert load_bundle(tmp_path / "b").head_names == HEADS
    rc = main([*base, "--out", str(tmp_path / "c")])
    assert rc == 2
    assert "labels have 3 columns (heads) but no head names" in capsys.readouterr().err
