"""The gate on a multi-head bundle (issue 19): per-head verdicts, intervals, one failing
head fails the gate and is named, "not enough positives to judge" when that is the truth."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.simulate.drift import normalise
from silentwatch.monitor.training import train_bundle
from silentwatch.offline.gate.config import GateConfig
from silentwatch.offline.gate.report import render_markdown
from silentwatch.offline.gate.run import GateError, run_gate

from .test_gate import FakeEmbedder

N, DIM = 1200, 24
HEADS = ("toxicity", "threat", "insult")


def _labels() -> np.ndarray:
    rng = np.random.default_rng(1)
    tox = np.arange(N) % 2
    threat = (rng.random(N) < 0.25).astype(int)
    insult = (rng.random(N) < 0.4).astype(int)
    return np.stack([tox, threat, insult], axis=1)


def _base() -> np.ndarray:
    y = _labels()
    x = np.random.default_rng(0).normal(size=(N, DIM))
    for j in range(3):  # each head reads its own four dimensions
        x[:, 4 * j : 4 * j + 4] += np.where(y[:, j] == 1, 0.7, -0.7)[:, None]
    return normalise(x)


class HeadsEmbedder(FakeEmbedder):
    """Text "row <i>" -> a fixed vector: the old space, a benign update, or an update that
    flips the threat head's dimensions (threat breaks, the other heads do not move).
    ``embed``, ``info`` and ``spec`` are the single-head gate test's."""

    def __init__(self, spec: str) -> None:
        self.name = spec
        base = _base()
        if spec == "old":
            self.table = base
        elif spec == "benign":
            self.table = normalise(base + np.random.default_rng(5).normal(size=base.shape) * 2e-3)
        elif spec == "breaks-threat":
            t = base.copy()
            t[:, 4:8] *= -1.0
            self.table = t
        else:
            raise ValueError(spec)
        self.calls = 0


def _opener(spec: str, **_: object) -> HeadsEmbedder:
    return HeadsEmbedder(spec)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gate_heads") / "eval.csv"
    y = _labels()
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["comment", *HEADS])
        for i in range(N):
            w.writerow([f"row {i}", *(0.8 if v else 0.1 for v in y[i])])
    return path


def _cfg(tmp_path: Path, data: Path, new: str, columns=HEADS, **thresholds) -> GateConfig:
    return GateConfig.model_validate(
        {
            "data": {"path": data, "text_column": "comment", "label_column": list(columns)},
            "old": {"embedder": "old"},
            "new": {"embedder": new},
            "embedding": {"cache_dir": None},
            "stress": {"fine_steps": 4, "kinds": ["rotation"]},
            "thresholds": thresholds,
            "output": {"dir": tmp_path / "out"},
        }
    )


def test_a_benign_update_passes_every_head_and_ships_them_all(tmp_path, data_file):
    report, _ = run_gate(_cfg(tmp_path, data_file, "benign"), open_embedder=_opener)
    assert report.verdict == "pass" and report.route == "frozen"
    assert [h.name for h in report.heads] == list(HEADS)
    assert all(h.verdict == "pass" and h.route == "frozen" for h in report.heads)
    for h in report.heads:
        lo, hi = h.roc_auc_ci["frozen"]
        assert lo <= h.frozen_on_new.roc_auc <= hi
        assert h.frozen_auc_drop_ci[0] <= h.frozen_auc_drop <= h.frozen_auc_drop_ci[1]
    b = load_bundle(report.bundle)
    assert b.head_names == HEADS
    # The issued bundle carries the frozen heads: each scores as the old head did.
    x = HeadsEmbedder("benign").table[:50].astype(np.float32)
    old = HeadsEmbedder("old").table[:50].astype(np.float32)
    assert np.mean((b.head_scorer.predict_proba(x) >= 0.5) == (b.head_scorer.predict_proba(old)
                                                                >= 0.5)) > 0.95  # fmt: skip


def test_one_broken_head_fails_the_gate_and_is_named(tmp_path, data_file):
    report, _ = run_gate(_cfg(tmp_path, data_file, "breaks-threat"), open_embedder=_opener)
    assert report.verdict == "fail" and report.bundle is None
    by = {h.name: h for h in report.heads}
    assert by["threat"].verdict == "fail"
    assert by["threat"].frozen_auc_drop_ci[0] > 0.3  # a real, well-measured collapse
    assert by["toxicity"].verdict == "pass" and by["insult"].verdict == "pass"
    assert "threat" in report.summary and "toxicity" not in report.summary.split(":")[1]
    md = render_markdown(report)
    assert "## Heads" in md and "| threat | **FAIL** |" in md


def test_a_retrained_threat_head_can_ship_when_allowed(tmp_path, data_file):
    cfg = _cfg(tmp_path, data_file, "breaks-threat", allow_retrain=True)
    report, _ = run_gate(cfg, open_embedder=_opener)
    assert report.verdict == "pass" and report.route == "retrained"
    routes = {h.name: h.route for h in report.heads}
    assert routes == {"toxicity": "frozen", "threat": "retrained", "insult": "frozen"}
    b = load_bundle(report.bundle)
    x = HeadsEmbedder("breaks-threat").table.astype(np.float32)
    y = _labels()
    from silentwatch.monitor.evaluation.classification import roc_auc

    assert roc_auc(b.head_scorer.predict_proba(x)[:, 1], y[:, 1]) > 0.9


def test_too_few_positives_is_said_and_fails_unless_warned(tmp_path, data_file):
    cfg = _cfg(tmp_path, data_file, "benign", min_positives=200)
    report, _ = run_gate(cfg, open_embedder=_opener)
    by = {h.name: h for h in report.heads}
    assert by["threat"].verdict == "not_enough_positives"
    assert "not enough positives to judge" in by["threat"].summary
    assert report.verdict == "fail" and "threat" in report.summary
    warn = _cfg(tmp_path, data_file, "benign", min_positives=200, unjudged="warn")
    report, _ = run_gate(warn, open_embedder=_opener)
    assert report.verdict == "pass"
    assert "Unjudged heads ship as they were" in report.summary


def test_every_deployed_head_must_be_judged(tmp_path, data_file):
    old = HeadsEmbedder("old")
    bundle_dir = tmp_path / "deployed"
    train_bundle(
        old.table, _labels(), bundle_dir, embedder=old.spec(), head_names=HEADS,
        reference_size=200, detectors=None,
    )  # fmt: skip
    cfg = _cfg(tmp_path, data_file, "benign", columns=("toxicity", "threat"))
    cfg.old.bundle = bundle_dir
    with pytest.raises(GateError, match="head 'insult' has no label column"):
        run_gate(cfg, open_embedder=_opener)
    cfg = _cfg(tmp_path, data_file, "benign")
    cfg.old.bundle = bundle_dir
    report, _ = run_gate(cfg, open_embedder=_opener)
    assert report.verdict == "pass" and [h.name for h in report.heads] == list(HEADS)


def test_head_names_are_checked_in_the_config(tmp_path, data_file):
    with pytest.raises(ValueError, match="head_names has 1 names for 3 label columns"):
        GateConfig.model_validate(
            {
                "data": {"path": data_file, "label_column": list(HEADS), "head_names": ["a"]},
                "old": {"embedder": "old"},
                "new": {"embedder": "benign"},
            }
        )
