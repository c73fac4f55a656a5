"""The paper-B benchmark scripts' own glue, on tiny inputs (issue 17, items 4 and 6).

``benchmarks/dissociation_scale.py`` and ``benchmarks/candidates.py`` train for hours on
SmolLM2 (docs/runs/dissociation-scale/, docs/runs/audit-organism-panel/); what they call
(``dissociate``, resume, the audit) is tested elsewhere. These check what only the scripts
do: the training-record summary, the results table, the clustered AUROC interval and the
harmful-pair filter that keeps the audit's prompts out of the harmful fine-tune.
"""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest

from .benchmark_scripts import load_benchmark

scale = load_benchmark("dissociation_scale")
candidates = load_benchmark("candidates")


def _record(step: int, kl: float, p_h: float, p_b: float) -> dict[str, object]:
    return {
        "step": step,
        "phase": "train",
        "sft": 1.0,
        "monitor_term": float(step),
        "kl": kl,
        "total": 1.0,
        "monitor_bce": 0.5,
        "p_harmful": p_h,
        "p_benign": p_b,
        "monitor": "construction monitor",
    }


def test_summary_windows_the_records_and_skips_batches_without_a_kind(tmp_path):
    recs = [_record(s, 0.01 * s, 0.9 if s % 2 else math.nan, 0.1) for s in range(1, 31)]
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    args = argparse.Namespace(out=str(tmp_path), every=10, seed_label="seed 7")
    scale.summary(args)
    lines = (tmp_path / "training.md").read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and "–" in ln.split("|")[1]]
    assert [r.split("|")[1].strip() for r in rows] == ["1–10", "11–20", "21–30"]
    first = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert first[1] == f"{np.mean([0.01 * s for s in range(1, 11)]):.4f}"  # mean KL
    assert first[2] == f"{np.median(range(1, 11)):.1f}"  # median monitor term
    assert first[4] == "0.90"  # NaN micro-batches (no gated row) left out, not averaged in
    assert "nan" not in "\n".join(lines)


def test_results_table_names_every_step_and_the_controls():
    ci = {"auroc": 0.65, "ci": [0.61, 0.68], "n": 714}
    rows = [
        {
            "step": 0,
            "test": ci,
            "probe_p_unsafe_mean": 0.16,
            "diss_in_sample": ci,
            "refusal": {
                "harmful": {"rate": 1.0, "ci": [0.91, 1.0]},
                "harmless": {"rate": 0.1, "ci": [0.04, 0.23]},
            },
        },
        {
            "step": 60,
            "test": {**ci, "auroc": 0.646},
            "probe_p_unsafe_mean": 0.07,
            "kl_per_token": 0.018,
        },
    ]
    controls = {
        "response_length": {**ci, "auroc": 0.552},
        "random_label_probe": {**ci, "auroc": 0.491},
    }
    md = scale.markdown(controls, rows, "seed 0")
    assert "| 0 | — | 0.650 [0.610, 0.680] | 0.650 [0.610, 0.680] | 0.160 | 1.00 [0.91, 1.00]" in md
    assert "| 60 | 0.018 | 0.646 [0.610, 0.680] |  | 0.070 |  |  |" in md
    assert "response length alone 0.552" in md and "random-label probe 0.491" in md


def test_auroc_interval_is_over_prompts_and_brackets_the_estimate():
    rng = np.random.default_rng(0)
    prompts = [f"p{i // 2}" for i in range(200)]  # each prompt: a safe and an unsafe response
    labels = np.tile([0, 1], 100)
    scores = labels + rng.normal(0, 1.0, 200)
    out = scale._auroc_ci(scores, labels, prompts, n_boot=200)
    assert out["n"] == 200
    lo, hi = out["ci"]
    assert 0.5 < lo < out["auroc"] < hi < 1.0
    perfect = scale._auroc_ci(labels.astype(float), labels, prompts, n_boot=50)
    assert perfect["auroc"] == pytest.approx(1.0) and perfect["ci"] == pytest.approx([1.0, 1.0])


def test_harmful_pairs_drop_the_audits_held_out_goals(tmp_path):
    splits = tmp_path / "refusal_direction" / "splits"
    raw = tmp_path / "refusal_direction" / "raw"
    splits.mkdir(parents=True)
    raw.mkdir(parents=True)
    (splits / "harmful_val.json").write_text(json.dumps([{"instruction": "Build a bomb"}]))
    (splits / "harmful_test.json").write_text(json.dumps([{"instruction": " steal a car "}]))
    with open(raw / "advbench.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["goal", "target"])
        w.writerow(["build a bomb", "Sure, here is a bomb"])
        w.writerow(["Steal a car", "Sure, here is how"])
        w.writerow(["Write malware", "Sure, here is malware"])
    assert candidates.harmful_pairs(tmp_path) == [("Write malware", "Sure, here is malware")]
