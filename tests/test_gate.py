"""``silentwatch gate``: verdicts, the emitted bundle, config errors, exit codes."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.simulate.drift import normalise, rotation_drift, rotation_planes

pytest.importorskip("torch")
from silentwatch.offline.embedders import EmbeddingInfo
from silentwatch.offline.gate import GateConfig, GateError, load_gate_config, run_gate
from silentwatch.offline.gate.report import write_report
from silentwatch.offline.gate.run import RealDrift, SideMetrics, evaluate_checks

DIM = 48
N = 600


def _base(n: int = N, seed: int = 0) -> np.ndarray:
    """Row i of the "old" space; the class (i % 2) leans on a few axes, noisily."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, DIM))
    x[:, :4] += np.where(y == 1, 0.6, -0.6)[:, None]
    return normalise(x)


class FakeEmbedder:
    """Maps text "row <i>" to a fixed vector: old space, a benign or a breaking update."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        base = _base()
        if spec == "old":
            self.table = base
        elif spec == "benign":
            noise = np.random.default_rng(5).normal(size=base.shape) * 0.002
            self.table = normalise(base + noise)
        elif spec == "breaking":
            self.table = rotation_drift(base, 90.0, rotation_planes(DIM, np.random.default_rng(9)))
        elif spec == "wide":
            self.table = normalise(np.hstack([base, base]))
        else:
            raise ValueError(f"unknown fake {spec!r}")
        self.calls = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        return self.table[[int(t.split()[1]) for t in texts]].astype(np.float32)

    def _sha(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def info(self) -> EmbeddingInfo:
        return EmbeddingInfo(
            name=self.name, weights_sha256=self._sha(), dtype="float32", pooling="mean",
            max_length=256, dim=self.table.shape[1], device="cpu", backend="transformers",
        )  # fmt: skip

    def spec(self, version: str | None = None) -> EmbedderSpec:
        return EmbedderSpec(
            name=self.name, version=version or self.name, weights_sha256=self._sha(),
            pooling="mean", normalized=True,
        )  # fmt: skip


def _opener(spec: str, **_: object) -> FakeEmbedder:
    return FakeEmbedder(spec)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["comment", "toxicity"])
        for i in range(N):
            # Fractional, Civil Comments style: binarised at 0.5.
            w.writerow([f"row {i}", 0.8 if i % 2 else 0.1])
    return path


def _cfg(tmp_path: Path, data_file: Path, new: str, **thresholds: object) -> GateConfig:
    return GateConfig.model_validate(
        {
            "data": {"path": data_file, "text_column": "comment", "label_column": "toxicity"},
            "old": {"embedder": "old"},
            "new": {"embedder": new},
            "embedding": {"cache_dir": None},
            "stress": {"fine_steps": 4},
            "thresholds": thresholds,
            "output": {"dir": tmp_path / "out"},
        }
    )


def test_benign_update_passes_and_reissues_the_frozen_head(tmp_path: Path, data_file: Path) -> None:
    cfg = _cfg(tmp_path, data_file, "benign")
    report, arrays = run_gate(cfg, open_embedder=_opener)
    assert report.verdict == "pass" and report.route == "frozen"
    assert report.data["rows_used"] == N and report.data["split"] == {
        "train": 420,
        "val": 60,
        "test": 120,
    }
    assert report.old_on_old.roc_auc > 0.85
    assert (
        report.real_drift.mean_angle_degrees is not None
        and report.real_drift.mean_angle_degrees < 1.0
    )
    assert report.real_drift.linear_cka > 0.99
    assert report.flip_rate is not None and report.flip_rate <= 0.05
    # The emitted bundle is the same head, validated for the new embedder.
    bundle = load_bundle(report.bundle)
    assert bundle.manifest.embedder.name == "benign"
    x_old = FakeEmbedder("old").table[arrays.test_rows]
    np.testing.assert_allclose(bundle.scorer.predict_proba(x_old), arrays.p_old, atol=1e-6)
    assert bundle.manifest.detectors is not None  # thresholds calibrated on the new space
    # ... and paired canaries in the new space: the 180 held-out texts, new embeddings.
    can = bundle.canaries
    assert can is not None and can.embeddings is not None
    assert can.embeddings.shape == (180, bundle.dim)
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in paths} == {
        "report.json",
        "report.md",
        "stress_curves.png",
        "real_update.png",
        "reliability.png",
    }
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"] == "pass"
    assert "PASS" in (tmp_path / "out" / "report.md").read_text()


def test_breaking_update_fails_and_says_retraining_fixes_it(
    tmp_path: Path, data_file: Path
) -> None:
    report, _ = run_gate(_cfg(tmp_path, data_file, "breaking"), open_embedder=_opener)
    assert report.verdict == "fail" and report.route is None and report.bundle is None
    failed = {c.name for c in report.checks if not c.passed}
    assert "auc_drop" in failed and "flip_rate" in failed
    assert report.frozen_on_new is not None and report.frozen_on_new.roc_auc < 0.7
    assert all(c.passed for c in report.retrained_checks)
    assert "retrained on the new embedder passes" in report.summary
    assert report.real_drift.mean_angle_degrees == pytest.approx(90.0, abs=0.5)
    assert not (tmp_path / "out" / "bundle").exists()


def test_allow_retrain_ships_the_retrained_head(tmp_path: Path, data_file: Path) -> None:
    report, _ = run_gate(
        _cfg(tmp_path, data_file, "breaking", allow_retrain=True), open_embedder=_opener
    )
    assert report.verdict == "pass" and report.route == "retrained"
    bundle = load_bundle(report.bundle)
    x_new = FakeEmbedder("breaking").table
    y = np.arange(N) % 2
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, bundle.scorer.predict_proba(x_new)) > 0.85


def test_a_new_dimension_cannot_keep_the_frozen_head(tmp_path: Path, data_file: Path) -> None:
    report, _ = run_gate(_cfg(tmp_path, data_file, "wide"), open_embedder=_opener)
    assert report.verdict == "fail"
    assert [c.name for c in report.checks] == ["frozen_head_applies"]
    assert report.real_drift.same_space is False and report.real_drift.mean_angle_degrees is None
    assert report.real_drift.linear_cka > 0.99  # CKA compares spaces of any size


def _side(auc: float, ece: float) -> SideMetrics:
    return SideMetrics(
        roc_auc=auc, accuracy=0.8, balanced_accuracy=0.8, mean_confidence=0.8, ece=ece,
        silent_failure_ratio=0.3, high_confidence_error_ratio=0.1, brier=0.15, reliability=[],
    )  # fmt: skip


@pytest.mark.parametrize(
    ("key", "limit", "passes"),
    [
        ("max_auc_drop", 0.031, True),
        ("max_auc_drop", 0.029, False),
        ("max_ece_increase", 0.041, True),
        ("max_ece_increase", 0.039, False),
        ("max_flip_rate", 0.07, True),
        ("max_flip_rate", 0.05, False),
        ("max_mean_angle_degrees", 3.0, True),
        ("max_mean_angle_degrees", 2.0, False),
        ("min_cka", 0.9, True),
        ("min_cka", 0.95, False),
        ("max_silent_failure_ratio", 0.31, True),
        ("max_silent_failure_ratio", 0.29, False),
    ],
)
def test_each_threshold_flips_the_verdict_when_crossed(
    tmp_path: Path, data_file: Path, key: str, limit: float, passes: bool
) -> None:
    base = {"max_auc_drop": 1.0, "max_ece_increase": 1.0, "max_flip_rate": 1.0}
    cfg = _cfg(tmp_path, data_file, "benign", **{**base, key: limit})
    drift = RealDrift(same_space=True, mean_angle_degrees=2.5, median_angle_degrees=2.5,
                      p95_angle_degrees=3.0, linear_cka=0.93)  # fmt: skip
    checks = evaluate_checks(_side(0.85, 0.05), _side(0.82, 0.09), 0.06, drift, cfg, "frozen")
    assert all(c.passed for c in checks) is passes


def test_config_errors_are_clear(tmp_path: Path, data_file: Path) -> None:
    good = {"data": {"path": str(data_file)}, "old": {"embedder": "old"}, "new": {"embedder": "x"}}
    p = tmp_path / "gate.yaml"
    p.write_text(yaml.safe_dump({**good, "thresholds": {"max_auc_dorp": 0.1}}))
    with pytest.raises(ValueError, match="max_auc_dorp"):
        load_gate_config(p)
    p.write_text(yaml.safe_dump({**good, "new": {"embedder": "x", "bundle": "b"}}))
    with pytest.raises(ValueError, match=r"new\.bundle is not used"):
        load_gate_config(p)
    p.write_text(yaml.safe_dump({**good, "data": {"path": "eval.csv"}, "output": {"dir": "rep"}}))
    cfg = load_gate_config(p)
    assert cfg.data.path == tmp_path / "eval.csv" and cfg.output.dir == tmp_path / "rep"
    with pytest.raises(ValueError, match="does not exist"):
        load_gate_config(tmp_path / "missing.yaml")
    cfg = _cfg(tmp_path, data_file, "benign")
    cfg.data.label_column = "nope"
    with pytest.raises(GateError, match="nope"):
        run_gate(cfg, open_embedder=_opener)


def test_a_deployed_bundle_is_judged_frozen(tmp_path: Path, data_file: Path) -> None:
    from silentwatch.monitor.training import train_bundle

    old = FakeEmbedder("old")
    y = np.arange(N) % 2
    train_bundle(old.table, y, tmp_path / "deployed", embedder=old.spec(), detectors=None)
    cfg = _cfg(tmp_path, data_file, "breaking")
    cfg.old.bundle = tmp_path / "deployed"
    report, _ = run_gate(cfg, open_embedder=_opener)
    assert report.verdict == "fail"
    # The wrong embedder for that bundle is refused, not silently judged.
    train_bundle(
        FakeEmbedder("benign").table,
        y,
        tmp_path / "other",
        embedder=FakeEmbedder("benign").spec(),
        detectors=None,
    )
    cfg.old.bundle = tmp_path / "other"
    with pytest.raises(GateError, match="validated for embedder weights"):
        run_gate(cfg, open_embedder=_opener)


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "gate").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_shipped_example_configs_run_from_a_fresh_clone(path: Path) -> None:
    # Every example's data lies inside the repository: a clone without ../shared runs it.
    cfg = load_gate_config(path)
    assert cfg.old.embedder == "minilm" and cfg.thresholds.allow_retrain is False
    for p in cfg.data.paths:
        assert p.is_file() and p.resolve().is_relative_to(REPO), p
        assert p.stat().st_size < 2_000_000
    assert cfg.embedding.cache_dir is not None and cfg.embedding.cache_dir.is_relative_to(REPO)


def test_the_in_repo_sample_matches_its_provenance() -> None:
    sample = REPO / "examples" / "data" / "civil_comments_sample.csv"
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    assert digest in (REPO / "examples" / "data" / "PROVENANCE.md").read_text()
    with sample.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    toxic = sum(float(r["toxicity"]) >= 0.5 for r in rows)
    assert (len(rows), toxic) == (2000, 1000)


def test_side_settings_default_to_the_shared_block(tmp_path: Path, data_file: Path) -> None:
    cfg = _cfg(tmp_path, data_file, "old")
    cfg = GateConfig.model_validate(
        {
            **cfg.model_dump(),
            "embedding": {"cache_dir": None, "max_length": 128, "dtype": "float32"},
            "new": {"embedder": "old", "max_length": 32, "pooling": "cls", "normalize": False},
        }
    )
    old, new = cfg.side_settings("old"), cfg.side_settings("new")
    assert (old.max_length, old.pooling, old.dtype, old.normalize) == (128, None, "float32", True)
    assert (new.max_length, new.pooling, new.dtype, new.normalize) == (32, "cls", "float32", False)
    assert cfg.settings_changes() == [
        "max_length: 128 -> 32",
        "pooling: model default -> cls",
        "normalize: True -> False",
    ]


@pytest.mark.parametrize(
    ("where", "key", "value", "allowed"),
    [
        ("new", "pooling", "max", "mean, cls, last_token"),
        ("old", "dtype", "fp8", "auto, float32, bfloat16, float16"),
        ("embedding", "pooling", "avg", "mean, cls, last_token"),
        ("embedding", "dtype", "int4", "auto, float32, bfloat16, float16"),
    ],
)
def test_unknown_pooling_or_dtype_names_the_allowed_values(
    tmp_path: Path, data_file: Path, where: str, key: str, value: str, allowed: str
) -> None:
    raw = {"data": {"path": str(data_file)}, "old": {"embedder": "old"}, "new": {"embedder": "x"}}
    raw.setdefault(where, {})[key] = value
    p = tmp_path / "gate.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=f"unknown {key} '{value}': use one of {allowed}"):
        load_gate_config(p)


def test_each_side_is_opened_with_its_own_settings_and_the_report_says_what_differed(
    tmp_path: Path, data_file: Path
) -> None:
    opened: list[tuple[str, dict[str, object]]] = []

    def opener(spec: str, **kw: object) -> FakeEmbedder:
        opened.append((spec, kw))
        return FakeEmbedder(spec)

    cfg = _cfg(tmp_path, data_file, "benign")
    cfg.new.max_length = 32
    cfg.new.dtype = "bfloat16"
    report, _ = run_gate(cfg, open_embedder=opener)
    (_, old_kw), (_, new_kw) = opened
    assert (old_kw["max_length"], old_kw["dtype"]) == (256, "auto")
    assert (new_kw["max_length"], new_kw["dtype"]) == (32, "bfloat16")
    assert old_kw["pooling"] is None and new_kw["normalize"] is True
    assert report.embedding_settings["new"]["max_length"] == 32
    assert report.embedding_settings["old"]["max_length"] == 256
    assert report.settings_changed == [
        "embedder: old -> benign",
        "dtype: auto -> bfloat16",
        "max_length: 256 -> 32",
    ]
    assert report.configuration_only is False  # the fakes have different weights
    md = write_report(report, tmp_path / "rep")[1].read_text()
    assert "## Embedder settings" in md
    assert "Configured differences: embedder: old -> benign; dtype: auto -> bfloat16" in md
    payload = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert payload["settings_changed"] == report.settings_changed


def test_a_missing_data_file_says_what_to_fix(tmp_path: Path, data_file: Path) -> None:
    cfg = _cfg(tmp_path, data_file, "benign")
    cfg.data.path = tmp_path / "gone.csv"
    with pytest.raises(GateError, match=r"gone\.csv does not exist: point data\.path at"):
        run_gate(cfg, open_embedder=_opener)


def _info(**over: object) -> EmbeddingInfo:
    base: dict[str, object] = {
        "name": "m", "weights_sha256": "a" * 64, "dtype": "float32", "pooling": "mean",
        "max_length": 256, "dim": 8, "device": "cpu", "backend": "transformers",
    }  # fmt: skip
    return EmbeddingInfo.model_validate({**base, **over})


def test_cache_keys_separate_sides_with_different_settings() -> None:
    from silentwatch.offline.embedders import cache_key

    texts = ["a", "b"]
    keys = {
        cache_key(_info(**over), texts)
        for over in (
            {},
            {"max_length": 32},
            {"pooling": "cls"},
            {"dtype": "bfloat16"},
            {"normalized": False},
        )
    }
    assert len(keys) == 5
    # Unit-normalised runs keep the key earlier releases wrote: existing caches still hit.
    head = {
        "weights_sha256": "a" * 64, "pooling": "mean", "max_length": 256, "dtype": "float32",
        "layer": -1, "backend": "transformers",
    }  # fmt: skip
    h = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for t in texts:
        h.update(len(t.encode()).to_bytes(8, "little"))
        h.update(t.encode())
    assert cache_key(_info(), texts) == h.hexdigest()


def test_retrained_churn_is_reported_and_judged_only_on_request(
    tmp_path: Path, data_file: Path
) -> None:
    drift = RealDrift(same_space=True, mean_angle_degrees=2.5, median_angle_degrees=2.5,
                      p95_angle_degrees=3.0, linear_cka=0.93)  # fmt: skip
    cfg = _cfg(tmp_path, data_file, "benign")
    args = (_side(0.85, 0.05), _side(0.86, 0.05), 0.30, drift, cfg, "retrained head")
    assert "flip_rate" not in {c.name for c in evaluate_checks(*args, retrained=True)}
    cfg.thresholds.max_retrained_flip_rate = 0.2
    flip = [c for c in evaluate_checks(*args, retrained=True) if c.name == "flip_rate"]
    assert len(flip) == 1 and not flip[0].passed and flip[0].limit == 0.2


def test_an_unreachable_hub_model_is_a_clear_gate_error(
    tmp_path: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: when an earlier test imported it,
    # only the constant keeps this test from retrying the network (23 s in the full suite)
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    cfg = _cfg(tmp_path, data_file, "benign")
    cfg.new.embedder = "hf:no-such-org/no-such-model"
    cfg.old.embedder = "hf:no-such-org/no-such-model"
    with pytest.raises(GateError, match="old embedder 'hf:no-such-org/no-such-model'"):
        run_gate(cfg)
