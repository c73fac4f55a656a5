"""`silentwatch demo` end to end, in a short mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score

from silentwatch.cli import main
from silentwatch.demo.categories import SyntheticCategories, text_normals
from silentwatch.demo.run import (
    BENIGN,
    CLEAN,
    SYNTHETIC_HEADS,
    UPDATE,
    LiveEmbedder,
    _names,
    run_demo,
    topic_axis,
)
from silentwatch.monitor.bundle import load_bundle
from silentwatch.monitor.simulate.drift import directional_drift, gaussian_drift
from silentwatch.monitor.simulate.world import SyntheticWorld


def test_demo_shows_input_drift_and_the_silent_failure(tmp_path):
    console = Console(record=True, width=120)
    res = run_demo(out_dir=tmp_path, requests=1800, console=console)
    clean, benign, update = res.phases
    assert [p.name for p in res.phases] == [CLEAN, BENIGN, UPDATE]
    assert clean.rows == benign.rows == update.rows == 600
    assert all(p.labels_joined > 100 for p in res.phases)

    assert clean.true_auc > 0.78  # near paper A's 0.85 baseline
    assert clean.input_drift_windows <= 1 and not clean.silent_failure

    # Benign: the traffic changed (input drift, a ticket) but the classifier did not get
    # worse, and nothing paged.
    assert benign.input_drift_windows > 0 and 2 * benign.input_drift_windows >= benign.windows
    assert not benign.silent_failure and benign.evidence == () and not benign.canary_failure
    assert benign.label_confirmed_checks == 0
    assert benign.canary_auc == pytest.approx(benign.canary_reference_auc, abs=1e-6)
    # 600 rows a phase: two samples differ by ~0.02 by chance; the update moves it by ~0.3.
    assert abs(benign.true_auc - clean.true_auc) < 0.05

    # The embedder update: the canaries page at its deploy, before labels could.
    assert update.canary_failure and update.silent_failure
    assert "paired_canaries" in update.evidence
    assert update.canary_auc < update.canary_reference_auc - 0.15
    assert 15 < update.canary_angle < 30
    assert update.true_auc < 0.62  # collapsed towards chance
    # ... while confidence does not fall: the failure is silent.
    assert update.mean_confidence >= clean.mean_confidence - 0.05

    text = " ".join(console.export_text().split())
    for phrase in (CLEAN, BENIGN, UPDATE, "PAGE", "Benign shift:", "Embedder update:"):
        assert phrase in text, phrase
    assert f"input drift in {benign.input_drift_windows} of {benign.windows} windows" in text
    assert "paged at its first canary submission" in text
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.canaries is not None and bundle.canaries.embeddings.shape == (256, 384)

    # One head per Civil Comments category over the same embedding, toxicity the default.
    assert bundle.head_names == SYNTHETIC_HEADS == ("toxicity", "threat", "insult")
    for ph in res.phases:
        assert [h.head for h in ph.heads] == list(SYNTHETIC_HEADS) and ph.head == "toxicity"
        # Human review labelled every category of the rows it reviewed: each head joined
        # the same labels, read from that head's own series.
        assert all(h.labels_joined == ph.labels_joined > 100 for h in ph.heads), ph.name
        assert all(h.rows == ph.rows for h in ph.heads)
    by_head = {h.head: h for h in clean.heads}
    assert all(h.true_auc > 0.78 and not h.silent_failure for h in clean.heads)
    assert by_head["toxicity"].true_auc == clean.true_auc
    # The benign shift pages no head; the update breaks every one, and each page names it.
    assert not any(h.silent_failure or h.canary_failure for h in benign.heads)
    assert all(abs(h.true_auc - by_head[h.head].true_auc) < 0.06 for h in benign.heads)
    paged = [h.head for h in update.heads if h.silent_failure]
    assert paged and all(h.true_auc < 0.65 for h in update.heads)
    assert all(h.canary_failure and "paired_canaries" in h.evidence for h in update.heads)
    assert "Per head:" in text and "On the benign shift no head paged" in text
    assert f"the embedder update broke {_names(paged)} (one page per head" in text
    for head in SYNTHETIC_HEADS:
        assert f"{head} 0." in text, head  # the per-head table and the summary name it


def test_the_benign_shift_keeps_the_head_and_the_update_breaks_it():
    """The two shifts on the same rows, judged by the world's own signal direction (a
    linear head that knows the truth): paired, so no sampling noise hides a real change."""
    w = SyntheticWorld(seed=3)
    x, y = w.sample(4000)
    head = w.signal
    before = roc_auc_score(y, x @ head)
    u, sd = topic_axis(x)
    topic = directional_drift(x, sd, u)
    assert 5 < np.degrees(np.arccos(np.clip((x * topic).sum(1), -1, 1))).mean() < 20
    assert abs(roc_auc_score(y, topic @ head) - before) < 0.005
    texts = [f"synthetic text {i}" for i in range(len(x))]
    updated = LiveEmbedder(dict(zip(texts, x, strict=True)), drift=0.02, seed=1)(texts)
    assert before > 0.8 and roc_auc_score(y, updated @ head) < 0.65


def test_the_synthetic_categories_are_learnable_functions_of_the_text():
    """threat and insult: fixed functions of a text's validated embedding (never the live
    one), at their priors, that a linear head learns and the embedder update breaks."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    w = SyntheticWorld(seed=42)
    x, y = w.sample(6000)
    texts = [f"synthetic text {i}" for i in range(len(x))]
    cats = SyntheticCategories.fit(w, texts[:4000], x[:4000])
    assert cats.names == SYNTHETIC_HEADS[1:]
    labels = cats.labels(texts, x)
    assert labels.shape == (6000, 2) and labels.dtype == np.int8
    np.testing.assert_array_equal(cats.labels(texts[::-1], x[::-1]), labels[::-1])  # any order
    assert abs(labels[:, 0].mean() - 0.2) < 0.03 and abs(labels[:, 1].mean() - 0.4) < 0.03
    # Orthogonal to the world's signal and to each other: not a copy of toxicity.
    np.testing.assert_allclose(cats.directions.T @ cats.directions, np.eye(2), atol=1e-9)
    assert np.abs(cats.directions.T @ w.signal).max() < 1e-9
    assert abs(np.corrcoef(labels[:, 0], y)[0, 1]) < 0.1
    updated = LiveEmbedder(dict(zip(texts, x, strict=True)), drift=0.02, seed=1)(texts[4000:])
    scaler = StandardScaler().fit(x[:4000])
    with threadpool_limits(1):
        for j in range(2):
            head = LogisticRegression(class_weight="balanced", max_iter=2000)
            head.fit(scaler.transform(x[:4000]), labels[:4000, j])
            clean = roc_auc_score(
                labels[4000:, j], head.decision_function(scaler.transform(x[4000:]))
            )
            drifted = roc_auc_score(
                labels[4000:, j], head.decision_function(scaler.transform(updated))
            )
            assert clean > 0.8 and drifted < 0.65, (cats.names[j], clean, drifted)
    # The keyed noise is a function of (seed, text) alone.
    a = text_normals(["x", "y"], 3, seed=5)
    assert a.shape == (2, 3) and np.array_equal(a[1], text_normals(["y"], 3, seed=5)[0])


def test_the_updated_embedder_is_a_function_of_the_text():
    x, _ = SyntheticWorld(dim=64).sample(50)
    texts = [f"t{i}" for i in range(50)]
    known = dict(zip(texts, x, strict=True))
    same = LiveEmbedder(known)
    np.testing.assert_array_equal(same(texts[:3]), x[:3])
    new = LiveEmbedder(known, drift=0.02, seed=7)
    a = new(texts)
    np.testing.assert_allclose(new(texts[::-1][:10]), a[::-1][:10], atol=1e-6)  # any batch
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(a, x) and not np.allclose(a, LiveEmbedder(known, 0.02, 8)(texts))


def test_demo_cli_passes_its_options(monkeypatch):
    seen: list[dict] = []

    def fake_run_demo(**kwargs):
        seen.append(kwargs)
        if kwargs["requests"] == 2:
            raise ValueError("--requests 2 leaves no rows for three phases")

    monkeypatch.setattr("silentwatch.demo.run.run_demo", fake_run_demo)
    assert main(["demo", "--requests", "300", "--seed", "1", "--rate", "50"]) == 0
    assert seen[-1]["requests"] == 300 and seen[-1]["seed"] == 1 and seen[-1]["rate"] == 50
    assert (seen[-1]["port"], seen[-1]["metrics_port"], seen[-1]["keep_serving"]) == (0, 0, False)
    assert "text_column" not in seen[-1]
    assert main(["demo", "--keep-serving"]) == 0
    assert seen[-1]["requests"] == 12000  # a third per phase
    assert (seen[-1]["port"], seen[-1]["metrics_port"]) == (50051, 9464)
    assert main(["demo", "--data", "x.csv", "--label-column", "toxicity"]) == 0
    assert seen[-1]["label_column"] == "toxicity" and seen[-1]["text_column"] == "text"
    # A comma list: one head per column, the first the default (split by the demo itself).
    assert main(["demo", "--data", "x.csv", "--label-column", "toxicity,threat,insult"]) == 0
    assert seen[-1]["label_column"] == "toxicity,threat,insult"
    assert main(["demo", "--requests", "2"]) == 2
    assert main(["demo", "--rate", "-1"]) == 2
    assert len(seen) == 5  # a negative rate is refused before the demo starts


def test_world_drift_keeps_vectors_on_the_sphere():
    w = SyntheticWorld(dim=64)
    x, y = w.sample(500)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert 0.3 < y.mean() < 0.7
    xd = gaussian_drift(x, 0.02, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(xd, axis=1), 1.0, atol=1e-5)
    angle = np.degrees(np.arccos(np.clip((x * xd).sum(1), -1, 1))).mean()
    # Per-dimension s in d dims moves a unit vector by about atan(s * sqrt(d)).
    assert abs(angle - np.degrees(np.arctan(0.02 * 8))) < 1.5


def test_keep_serving_stays_up_for_prometheus_and_stops_on_ctrl_c(tmp_path):
    """The real CLI in a subprocess: it replays, keeps serving, and exits 0 on Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    import grpc

    from silentwatch.scrape import scrape
    from silentwatch.v1 import monitor_pb2 as pb
    from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

    proc = subprocess.Popen(
        [sys.executable, "-m", "silentwatch", "demo", "--out", str(tmp_path), "--requests", "300",
         "--keep-serving", "--port", "0", "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = target = None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if "metrics http" in line:
                url = line.split("metrics ")[-1].strip()
                target = line.split("gRPC ")[-1].split(",")[0].strip()
            if "keeping the sidecar up" in line or time.monotonic() > deadline:
                break
        assert url, "the demo never reported its metrics URL"
        m = scrape(url)  # still up after the replay
        default = SYNTHETIC_HEADS[0]  # the bundle's default head: toxicity
        assert (
            m.get_value("silentwatch_prediction_score_count", source="classify", head=default)
            == 300
        )
        # One canary submission per phase; the update's paged, and the page is still up.
        assert m.get_value("silentwatch_paired_canary_submissions_total") == 3
        assert m.get_value("silentwatch_paired_canary_failures_total") == 1
        assert m.get_value("silentwatch_silent_failure", head=default) == 1
        assert (
            m.get_value(
                "silentwatch_silent_failure_evidence", source="paired_canaries", head=default
            )
            == 1
        )
        # Per head: the page names each head that failed, on /metrics and in GetStatus.
        with grpc.insecure_channel(target) as channel:
            st = pb_grpc.MonitorStub(channel).GetStatus(pb.GetStatusRequest())
        assert [h.name for h in st.heads] == list(SYNTHETIC_HEADS)
        failing = [h.name for h in st.heads if h.silent_failure.active]
        assert failing and st.silent_failure.active
        for head in SYNTHETIC_HEADS:
            paged = m.get_value("silentwatch_silent_failure", head=head) == 1
            assert paged == (head in failing), head
        for head in failing:
            assert head in st.silent_failure.summary, (head, st.silent_failure.summary)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_table_fits_80_columns_without_ellipses():
    """Piped output (rich assumes 80 columns) shows every cell whole: on one line at ten times
    the default traffic, folded (never cut) beyond that."""
    import io

    from silentwatch.demo.run import PhaseResult, _head_table, _table

    def render(rows: int, labels: int, windows: int) -> str:
        common = dict(rows=rows, mean_score=0.5, high_confidence_share=0.4, flagged_rate=0.4,
                      labels_joined=labels, latency_p99_ms=1.0, windows=windows,
                      canary_reference_auc=0.857)  # fmt: skip
        phases = [
            PhaseResult(CLEAN, mean_confidence=0.757, true_auc=0.854, true_accuracy=0.776,
                        canary_auc=0.857, labelled_auc=0.865, **common),
            PhaseResult(BENIGN, mean_confidence=0.751, true_auc=0.846, true_accuracy=0.765,
                        input_drift_windows=windows, canary_auc=0.857, labelled_auc=0.851,
                        **common),
            PhaseResult(UPDATE, mean_confidence=0.973, true_auc=0.532, true_accuracy=0.527,
                        input_drift_windows=windows, canary_auc=0.572, silent_failure=True,
                        evidence=("paired_canaries", "label_confirmation"), labelled_auc=0.546,
                        **common),
        ]  # fmt: skip
        for ph in phases:  # three heads a phase, as the synthetic bundle has
            ph.heads = [
                PhaseResult(**{**vars(ph), "head": h, "heads": []}) for h in SYNTHETIC_HEADS
            ]
        out = io.StringIO()
        console = Console(file=out, width=80, color_system=None)
        console.print(_table(phases))
        console.print(_head_table(phases))
        return out.getvalue()

    text = render(40_000, 12_345, 160)
    for cell in ("40,000", "12,345", "0/160", "160/160", "0.86/0.86", "0.57/0.86", "PAGE"):
        assert cell in text, (cell, text)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    # The page names its evidence; the benign shift's ticket is not a page.
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert " no " in rows["clean"] and " no " in rows["benign"], text
    assert " PAGE " in rows["embedder"] and "canary" in text and "+labels" in text, text
    # The per-head table: a row per head and phase, each page naming its evidence.
    assert text.count("PAGE canary+labels") == 3 and text.count("threat ") == 3, text
    huge = render(4_000_000, 1_234_567, 16_000)
    assert "…" not in huge and max(len(line) for line in huge.splitlines()) <= 80, huge


def test_demo_on_labelled_texts_trains_one_head_per_label_column(tmp_path, monkeypatch):
    """--data with --label-column a,b,c: one head per column (the first the default), each
    labelled in every phase; one column keeps the one-head bundle. The embedder is a stand-in
    (fixed vectors per text), so no model loads."""
    import hashlib
    import sys
    import types

    from silentwatch.monitor.bundle import EmbedderSpec

    class FakeEmbedder:
        def embed(self, texts):
            seeds = [
                int.from_bytes(hashlib.blake2b(t.encode()).digest()[:8], "little") for t in texts
            ]
            return np.stack([np.random.default_rng(s).standard_normal(32) for s in seeds])

        def spec(self):
            return EmbedderSpec(name="test/fake", version="t1", pooling="mean")

    fake = types.ModuleType("silentwatch.offline.embedders")
    fake.load_embedder = FakeEmbedder
    monkeypatch.setitem(sys.modules, "silentwatch.offline.embedders", fake)
    data = Path(__file__).resolve().parents[1] / "examples/data/civil_comments_sample.csv"
    console = Console(record=True, width=120)
    res = run_demo(
        out_dir=tmp_path / "heads",
        data=data,
        requests=300,
        console=console,
        label_column="toxicity,threat,insult",
        text_column="text",
        limit=1000,
    )
    assert load_bundle(res.bundle_dir).head_names == ("toxicity", "threat", "insult")
    for ph in res.phases:
        assert [h.head for h in ph.heads] == ["toxicity", "threat", "insult"]
        assert all(h.labels_joined == ph.labels_joined > 0 for h in ph.heads)
    assert "Per head (moderation category)" in console.export_text()

    quiet = Console(quiet=True)
    one = run_demo(
        out_dir=tmp_path / "one", data=data, requests=300, console=quiet, label_column="toxicity"
    )
    assert load_bundle(one.bundle_dir).head_names == ("default",)
    assert [h.head for h in one.phases[0].heads] == ["default"]
    assert all(ph.labels_joined > 0 for ph in one.phases)
    with pytest.raises(ValueError, match="empty item"):
        run_demo(out_dir=tmp_path / "bad", data=data, label_column="toxicity,,threat")
