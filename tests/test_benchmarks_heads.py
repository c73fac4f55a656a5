"""The multi-head benchmarks' core functions run (benchmarks/heads.py, heads_update.py; issue 19).

The benchmarks themselves take minutes (docs/benchmarks.md, "Many heads"); this checks, on
tiny inputs, that their timing and per-head evaluation functions still match the product's
API.
"""

from __future__ import annotations

import numpy as np
import pytest

from silentwatch.monitor.bundle import EmbedderSpec
from silentwatch.monitor.training import train_bundle

from .benchmark_scripts import load_benchmark

heads = load_benchmark("heads")
heads_update = load_benchmark("heads_update")


def test_inprocess_timings_cover_every_k():
    out = heads.inprocess_timings(d=16, rows=8, ks=(1, 3), reps=3)
    assert [t["k"] for t in out] == [1, 3]
    assert all(t["heads_us"] > 0 and t["pack_us"] > 0 and t["decode_us"] > 0 for t in out)
    assert out[1]["reply_bytes"] > out[0]["reply_bytes"]


def test_projection_labels_give_every_head_20_to_50_percent_positives():
    x = np.random.default_rng(0).standard_normal((2000, 32))
    rate = heads.projection_labels(x, 8).mean(axis=0)
    assert rate.max() == pytest.approx(0.5, abs=0.01)
    assert rate.min() == pytest.approx(0.2, abs=0.01)


def test_summary_reports_cost_relative_to_one_head_round_by_round():
    def run(per_cpu_s: float) -> dict[str, float]:
        return {"emb_per_cpu_s": per_cpu_s, "emb_per_s": 90.0, "batch_p50_ms": 5,
                "batch_p99_ms": 9, "request_us_per_row": 4.0, "worker_us_per_row": 1.0,
                "sampled_out_share": 0.0}  # fmt: skip

    # Round 2 ran on a machine 2x slower for both k: paired ratios cancel it.
    runs = {1: [run(100.0), run(50.0), run(100.0)], 8: [run(80.0), run(40.0), run(90.0)]}
    s = heads.summarise(runs)
    assert s[0]["cost"] == 0.0 and s[0]["cpu_us"] == pytest.approx(1e4)
    # Ratios 1.25, 1.25, 1.111: median 25% more CPU per row, lowest round +11.1%.
    assert s[1]["cost"] == pytest.approx(0.25)
    assert s[1]["cost_low"] == pytest.approx(100 / 90 - 1)
    assert s[1]["cost_high"] == pytest.approx(0.25)


def test_frozen_head_aucs_see_the_head_a_new_space_broke():
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, 2, 400), (rng.random(400) < 0.1).astype(int)], axis=1)
    p_old = y + rng.normal(0, 0.6, y.shape)
    p_new = p_old.copy()
    p_new[:, 1] = rng.normal(size=400)  # head "b" lost its signal
    a, b = heads_update.frozen_head_aucs(y, p_old, p_new, ["a", "b"])
    assert a.change[0] == pytest.approx(0.0) and a.positives == int(y[:, 0].sum())
    assert b.old[0] > 0.8 and b.change[2] < 0  # the whole 95% interval is a drop
    assert b.old[1] < b.old[0] < b.old[2]


def test_sidecar_signals_report_every_head(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.stack([x[:, 0] > 0, x[:, 1] > np.quantile(x[:, 1], 0.7)], axis=1).astype(np.int8)
    texts = [f"t{i}" for i in range(600)]
    train_bundle(
        x, y, tmp_path / "b", embedder=EmbedderSpec(name="tiny", version="v1"),
        head_names=("a", "b"), texts=texts, canary_count=100, reference_size=200,
    )  # fmt: skip
    index = {t: i for i, t in enumerate(texts)}
    flipped = x.copy()
    flipped[:, 1] *= -1  # head b's direction reversed, head a's kept
    out = heads_update.sidecar_signals(
        tmp_path / "b",
        lambda ts: flipped[[index[t] for t in ts]],
        flipped[:300],
        y[:300],
        new_version="v2",
        state_dir=tmp_path / "state",
    )
    assert set(out["heads"]) == {"a", "b"}
    assert out["heads"]["b"]["canary_failure"] and not out["heads"]["a"]["canary_failure"]
    assert out["failing_heads"] == ["b"]
    assert out["heads"]["b"]["label_positives"] + out["heads"]["b"]["label_negatives"] == 300
    table = heads_update.update_table(
        heads_update.frozen_head_aucs(y, y + 0.0, y + 0.0, ["a", "b"]), out
    )
    assert table.count("\n") == 3  # header, rule, two heads
