"""Unit tests for ArrayHistogram, TrafficSink, the background Pipeline and scrape.quantile."""

from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from silentwatch.monitor.serving.pipeline import (
    WORKER_THREAD_NAME,
    LabelBatch,
    Pipeline,
    PredictionBatch,
    concat_predictions,
)
from silentwatch.monitor.telemetry.prometheus import UNIT_BUCKETS, ArrayHistogram, TrafficSink
from silentwatch.scrape import parse, quantile

# -- ArrayHistogram ---------------------------------------------------------------------------


def _hist(bounds=(0.25, 0.5, 1.0)) -> ArrayHistogram:
    return ArrayHistogram("t_ratio", "test histogram", bounds, "source", ("a", "b"))


def test_histogram_bucket_edges_are_le():
    h = _hist()
    h.observe_many("a", np.array([0.0, 0.25, 0.3, 0.5, 0.5, 0.99, 1.0, 1.5]))
    cum, total = h.snapshot("a")
    # le=0.25: 0, 0.25 | le=0.5: +0.3, 0.5, 0.5 | le=1: +0.99, 1.0 | +Inf: +1.5
    assert cum.tolist() == [2, 5, 7, 8]
    assert total == pytest.approx(5.04)


def test_histogram_accumulates_and_keeps_labels_apart():
    h = _hist()
    h.observe_many("a", np.array([0.1, 0.9]))
    h.observe_many("a", np.array([0.4]))
    h.observe_many("b", np.array([2.0, 3.0]))
    cum_a, sum_a = h.snapshot("a")
    cum_b, sum_b = h.snapshot("b")
    assert cum_a.tolist() == [1, 2, 3, 3]
    assert sum_a == pytest.approx(1.4)
    assert cum_b.tolist() == [0, 0, 0, 2]
    assert sum_b == pytest.approx(5.0)


def test_histogram_empty_batch_changes_nothing():
    h = _hist()
    h.observe_many("a", np.array([], dtype=np.float32))
    cum, total = h.snapshot("a")
    assert cum.tolist() == [0, 0, 0, 0]
    assert total == 0.0


def test_histogram_float32_values():
    h = _hist()
    h.observe_many("a", np.array([0.25, 0.5, 0.75], dtype=np.float32))
    cum, total = h.snapshot("a")
    assert cum.tolist() == [1, 2, 3, 3]  # 0.25 and 0.5 are exact in float32
    assert total == pytest.approx(1.5)


def test_unit_buckets_each_bound_lands_in_its_own_bucket():
    assert len(UNIT_BUCKETS) == 20
    assert UNIT_BUCKETS[0] == 0.05 and UNIT_BUCKETS[-1] == 1.0
    h = ArrayHistogram("u", "u", UNIT_BUCKETS, "source", ("a",))
    h.observe_many("a", np.array([0.05, 0.15, 0.35, 0.7, 1.0]))
    cum, _ = h.snapshot("a")
    le = dict(zip(UNIT_BUCKETS, cum[:-1].tolist(), strict=True))
    assert (le[0.05], le[0.1], le[0.15], le[0.3], le[0.35], le[0.65], le[0.7]) == (
        1, 1, 2, 2, 3, 3, 4,
    )  # fmt: skip
    assert (le[0.95], le[1.0], int(cum[-1])) == (4, 5, 5)


def test_histogram_exposition_round_trip():
    reg = CollectorRegistry()
    h = _hist()
    reg.register(h)
    h.observe_many("a", np.array([0.0, 0.25, 0.3, 0.5, 0.5, 0.99, 1.0, 1.5]))
    samples = parse(generate_latest(reg).decode())
    assert samples.buckets("t_ratio", source="a") == [
        (0.25, 2.0), (0.5, 5.0), (1.0, 7.0), (math.inf, 8.0),
    ]  # fmt: skip
    assert samples.get_value("t_ratio_count", source="a") == 8.0
    assert samples.get_value("t_ratio_sum", source="a") == pytest.approx(5.04)
    assert samples.get_value("t_ratio_count", source="b") == 0.0
    assert samples.buckets("t_ratio", source="b")[-1] == (math.inf, 0.0)
    assert samples.get_value("t_ratio_count", default=-1.0, source="zzz") == -1.0


def test_traffic_sink_counts_and_histograms():
    sink = TrafficSink(flag_threshold=0.5)
    p = np.array([0.1, 0.5, 0.9, 0.3], dtype=np.float32)
    sink.on_predictions(_batch(p, source="observe"))
    sink.on_labels(LabelBatch(np.array([0.1, 0.2]), np.array([0, 1], dtype=np.int8), 0.0))
    assert sink.predictions == {"classify": 0, "observe": 4}
    assert sink.flagged == {"classify": 0, "observe": 2}
    assert sink.labels_folded == 2
    cum, total = sink.scores.snapshot(("observe", "default"))
    assert int(cum[-1]) == 4 and total == pytest.approx(1.8, abs=1e-6)
    conf_cum, conf_total = sink.confidence.snapshot(("observe", "default"))
    assert conf_total == pytest.approx(0.9 + 0.5 + 0.9 + 0.7, abs=1e-6)
    le = dict(zip(UNIT_BUCKETS, conf_cum[:-1].tolist(), strict=True))
    assert (le[0.45], le[0.5], le[0.7], le[0.9]) == (0, 1, 2, 4)


# -- Pipeline -------------------------------------------------------------------------------


def _batch(scores, *, source="classify", version="v1", dim=3, at=0.0) -> PredictionBatch:
    scores = np.asarray(scores, dtype=np.float32)
    emb = np.tile(scores[:, None], (1, dim)).astype(np.float32)
    return PredictionBatch(emb, np.linalg.norm(emb, axis=1), scores, source, version, at)


def _labels(scores, labels) -> LabelBatch:
    return LabelBatch(np.asarray(scores, dtype=np.float32), np.asarray(labels, dtype=np.int8), 0.0)


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def on_predictions(self, batch: PredictionBatch) -> None:
        with self.lock:
            self.events.append(("p", batch))

    def on_labels(self, batch: LabelBatch) -> None:
        with self.lock:
            self.events.append(("l", batch))


class BrokenSink:
    def __init__(self) -> None:
        self.calls = 0

    def on_predictions(self, batch: PredictionBatch) -> None:
        self.calls += 1
        raise RuntimeError("broken on purpose")

    def on_labels(self, batch: LabelBatch) -> None:
        self.calls += 1
        raise RuntimeError("broken on purpose")


@pytest.fixture
def pipeline_factory():
    made: list[Pipeline] = []

    def make(sinks, **kw) -> Pipeline:
        p = Pipeline(sinks, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop(timeout=5)


def test_pipeline_concatenates_in_order_with_labels_interleaved(pipeline_factory):
    sink = RecordingSink()
    pl = pipeline_factory([sink])
    # Queue everything before the worker starts, so it drains it all in one go.
    assert pl.submit_predictions(_batch([0.1, 0.2], at=1.0))
    assert pl.submit_predictions(_batch([0.3], at=2.0))
    pl.submit_labels(_labels([0.1], [0]))
    assert pl.submit_predictions(_batch([0.4], at=3.0))
    assert pl.submit_predictions(_batch([0.5, 0.6], source="observe", at=4.0))
    assert pl.submit_predictions(_batch([0.7], source="observe", version="v2", at=5.0))
    assert pl.submit_predictions(_batch([0.8], source="observe", version="v2", at=6.0))
    pl.submit_labels(_labels([0.2, 0.3], [1, 0]))
    assert pl.queued_batches == 8
    pl.start()
    assert pl.wait_idle(5)
    kinds = [k for k, _ in sink.events]
    assert kinds == ["p", "l", "p", "p", "p", "l"]
    b0, lab0, b1, b2, b3, lab1 = (b for _, b in sink.events)
    np.testing.assert_allclose(b0.scores, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(b0.embeddings[:, 0], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(b0.norms, np.sqrt(3) * np.array([0.1, 0.2, 0.3]), rtol=1e-6)
    assert (b0.source, b0.embedder_version, b0.received_at) == ("classify", "v1", 2.0)
    np.testing.assert_allclose(lab0.scores, [0.1])
    np.testing.assert_allclose(b1.scores, [0.4])
    assert (b1.source, b1.embedder_version) == ("classify", "v1")
    np.testing.assert_allclose(b2.scores, [0.5, 0.6])
    assert (b2.source, b2.embedder_version) == ("observe", "v1")
    np.testing.assert_allclose(b3.scores, [0.7, 0.8])
    assert (b3.source, b3.embedder_version, b3.received_at) == ("observe", "v2", 6.0)
    assert lab1.labels.tolist() == [1, 0]
    assert pl.processed_rows == 8
    assert pl.queued_batches == 0
    assert pl.sampled_out_rows == 0
    assert pl.sink_errors == 0


def test_pipeline_running_worker_processes_everything_in_order(pipeline_factory):
    sink = RecordingSink()
    pl = pipeline_factory([sink])
    pl.start()
    for i in range(200):
        pl.submit_predictions(_batch([i / 1000, (i + 0.5) / 1000]))
        if i % 50 == 49:
            pl.submit_labels(_labels([float(i)], [1]))  # the score marks its position
    assert pl.wait_idle(5)
    seen = np.concatenate([b.scores for k, b in sink.events if k == "p"])
    expected = np.array([[i / 1000, (i + 0.5) / 1000] for i in range(200)], dtype=np.float32)
    np.testing.assert_array_equal(seen, expected.ravel())
    assert pl.processed_rows == 400
    # Each label batch comes after all predictions submitted before it.
    rows_before = 0
    for k, b in sink.events:
        if k == "p":
            rows_before += b.rows
        else:
            i = int(b.scores[0])
            assert rows_before == 2 * (i + 1)


def test_pipeline_sampled_out_when_queue_full(pipeline_factory):
    sink = RecordingSink()
    pl = pipeline_factory([sink], max_queued_rows=10)  # not started: nothing drains
    assert pl.submit_predictions(_batch([0.1] * 4)) is True
    assert pl.submit_predictions(_batch([0.2] * 6)) is True  # exactly full
    assert pl.submit_predictions(_batch([0.3])) is False
    assert pl.submit_predictions(_batch([0.4] * 5)) is False
    assert pl.sampled_out_rows == 6
    pl.submit_labels(_labels([0.1], [1]))  # labels are never shed
    assert pl.queued_batches == 3
    pl.start()
    assert pl.wait_idle(5)
    assert pl.processed_rows == 10
    assert [k for k, _ in sink.events] == ["p", "l"]
    assert 0.3 not in sink.events[0][1].scores
    # Draining frees the room again.
    assert pl.submit_predictions(_batch([0.5] * 10)) is True
    assert pl.wait_idle(5)
    assert pl.processed_rows == 20
    assert pl.sampled_out_rows == 6


def test_pipeline_batch_larger_than_limit_is_always_sampled_out(pipeline_factory):
    pl = pipeline_factory([RecordingSink()], max_queued_rows=3)
    assert pl.submit_predictions(_batch([0.1] * 4)) is False
    assert pl.sampled_out_rows == 4
    assert pl.queued_batches == 0


def test_pipeline_broken_sink_counted_and_others_still_served(pipeline_factory, caplog):
    broken, good = BrokenSink(), RecordingSink()
    pl = pipeline_factory([broken, good])
    pl.submit_predictions(_batch([0.1, 0.2]))
    pl.submit_labels(_labels([0.1], [0]))
    pl.submit_predictions(_batch([0.3]))
    pl.start()
    assert pl.wait_idle(5)
    assert broken.calls == 3
    assert pl.sink_errors == 3
    assert [k for k, _ in good.events] == ["p", "l", "p"]
    assert pl.processed_rows == 3
    assert "sink BrokenSink failed in on_predictions" in caplog.text
    # The worker survives: later batches are still processed.
    pl.submit_predictions(_batch([0.4]))
    assert pl.wait_idle(5)
    assert pl.sink_errors == 4
    assert pl.processed_rows == 4
    assert len(good.events) == 4


def test_wait_idle_times_out_when_nothing_drains():
    pl = Pipeline([RecordingSink()])
    assert pl.wait_idle(0.05) is True  # nothing queued
    pl.submit_labels(_labels([0.1], [0]))
    assert pl.wait_idle(0.05) is False


def test_stop_processes_what_is_queued():
    sink = RecordingSink()
    pl = Pipeline([sink])
    pl.start()
    for _ in range(20):
        pl.submit_predictions(_batch([0.1, 0.2, 0.3]))
    pl.stop(timeout=5)
    assert pl.processed_rows == 60
    assert sum(b.rows for k, b in sink.events if k == "p") == 60
    assert pl._thread is None


def test_concat_predictions_groups_only_consecutive_runs():
    batches = [
        _batch([0.1], version="a"),
        _batch([0.2], version="b"),
        _batch([0.3], version="a"),
        _batch([0.4], version="a"),
    ]
    out = concat_predictions(batches)
    assert [b.embedder_version for b in out] == ["a", "b", "a"]
    assert [b.scores.tolist() for b in out] == [
        pytest.approx([0.1]), pytest.approx([0.2]), pytest.approx([0.3, 0.4]),
    ]  # fmt: skip
    assert out[0] is batches[0]  # a single batch is passed through as is
    assert concat_predictions([]) == []


# -- scrape.quantile --------------------------------------------------------------------------


BUCKETS = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (math.inf, 40.0)]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.0, 0.0),
        (0.05, 0.02),  # rank 2 in (0, 0.1] holding 10: 0.1 * 2/10
        (0.25, 0.1),  # rank 10: the top of the first bucket
        (0.5, 0.3),  # rank 20 in (0.1, 0.5] holding 20: 0.1 + 0.4 * 10/20
        (0.9, 0.8),  # rank 36 in (0.5, 1] holding 10: 0.5 + 0.5 * 6/10
        (1.0, 1.0),
    ],
)
def test_quantile_hand_example(q, expected):
    assert quantile(q, BUCKETS) == pytest.approx(expected)


def test_quantile_in_inf_bucket_returns_last_finite_bound():
    assert quantile(0.9, [(0.5, 2.0), (1.0, 5.0), (math.inf, 10.0)]) == 1.0


def test_quantile_skips_empty_buckets():
    b = [(0.1, 0.0), (0.2, 0.0), (0.6, 8.0), (math.inf, 8.0)]
    # rank 4 in (0.2, 0.6] holding 8: 0.2 + 0.4 * 4/8
    assert quantile(0.5, b) == pytest.approx(0.4)


def test_quantile_no_observations_is_nan():
    assert math.isnan(quantile(0.5, []))
    assert math.isnan(quantile(0.5, [(0.5, 0.0), (math.inf, 0.0)]))


def test_quantile_of_histogram_exposition():
    reg = CollectorRegistry()
    h = ArrayHistogram("s", "s", UNIT_BUCKETS, "source", ("a",))
    reg.register(h)
    h.observe_many("a", np.linspace(0.0, 1.0, 1001))
    buckets = parse(generate_latest(reg).decode()).buckets("s", source="a")
    assert len(buckets) == 21
    assert quantile(0.5, buckets) == pytest.approx(0.5, abs=0.01)
    assert quantile(0.9, buckets) == pytest.approx(0.9, abs=0.01)


def test_observe_columns_equals_one_observe_per_column():
    """The per-head histograms are filled for every head at once; bucket edges included."""
    rng = np.random.default_rng(3)
    values = rng.random((500, 4)).astype(np.float32)
    values[:4, 0] = [0.0, 0.05, 0.5, 1.0]  # exactly on bounds: le semantics
    together = ArrayHistogram("a_ratio", "d", UNIT_BUCKETS, ("source", "head"), ())
    apart = ArrayHistogram("b_ratio", "d", UNIT_BUCKETS, ("source", "head"), ())
    keys = [("classify", f"h{j}") for j in range(4)]
    together.observe_columns(keys, values)
    for j, key in enumerate(keys):
        apart.observe_many(key, values[:, j])
    for key in keys:
        (c1, s1), (c2, s2) = together.snapshot(key), apart.snapshot(key)
        np.testing.assert_array_equal(c1, c2)
        assert s1 == pytest.approx(s2, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bucket_index_matches_searchsorted_on_and_beside_every_bound(dtype):
    """The unit buckets' arithmetic bucketing places every value where searchsorted on the
    float64 bounds does (le semantics), at the bounds and one float step either side."""
    h = ArrayHistogram("c_ratio", "d", UNIT_BUCKETS, "source", ("a",))
    assert h._step_inv is not None  # the fast path is the one under test
    b = np.asarray(UNIT_BUCKETS, dtype=dtype)
    edges = np.concatenate([b, np.nextafter(b, -np.inf), np.nextafter(b, np.inf)])
    rng = np.random.default_rng(4)
    v = np.concatenate([edges, [0.0, -0.0, -1e-30, -3.0, 1.5, 7e9], rng.random(2000)])
    v = v.astype(dtype)
    want = np.searchsorted(h.bounds, v.astype(np.float64), side="left")
    np.testing.assert_array_equal(h.bucket_index(v, float(v.sum())), want)
    # NaN and inf take searchsorted (which puts NaN and +inf last, -inf first).
    odd = np.array([0.3, np.nan, np.inf, -np.inf], dtype=dtype)
    want = np.searchsorted(h.bounds, odd.astype(np.float64), side="left")
    np.testing.assert_array_equal(h.bucket_index(odd, float(np.sum(odd))), want)


def test_bucket_index_other_bounds_use_searchsorted():
    h = ArrayHistogram("d_ratio", "d", (0.1, 0.5, 0.9, 0.99), "source", ("a",))
    assert h._step_inv is None
    v = np.array([0.1, 0.2, 0.5, 0.95, 0.99, 1.0])
    np.testing.assert_array_equal(h.bucket_index(v, float(v.sum())), [0, 1, 1, 3, 3, 4])
    h.observe_many("a", v)
    assert h.snapshot("a")[0].tolist() == [1, 3, 3, 5, 6]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names: Linux")
def test_pipeline_worker_has_an_os_thread_name():
    """top -H / ps -L (and benchmarks/harness.thread_cpu_seconds) tell the worker apart."""
    pipe = Pipeline([])
    pipe.start()
    try:
        tid = pipe.run_on_worker(threading.get_native_id)
        comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        assert comm == WORKER_THREAD_NAME == "sw-pipeline"
    finally:
        pipe.stop()


def test_concat_predictions_never_copies_large_batches_together():
    """A worker that fell behind must not make each pass costlier: batches of the merge
    limit pass through untouched, small ones merge up to it."""
    big = [_batch([0.5] * 4) for _ in range(3)]
    out = concat_predictions(big, max_rows=4)
    assert len(out) == 3 and all(o is b for o, b in zip(out, big, strict=True))
    small = [_batch([0.1] * 3), _batch([0.2] * 2), _batch([0.3] * 2), _batch([0.4])]
    out = concat_predictions(small, max_rows=4)
    assert [o.rows for o in out] == [3, 4, 1]  # 3 + 2 > 4: the 2 starts the next group
    assert sum(o.rows for o in out) == 8


def test_a_trickle_of_small_batches_is_gathered_into_few_passes(pipeline_factory):
    """Unary traffic: the worker, woken by the first one-row batch, waits (linger) for more
    instead of making one pass over the sinks per call; every row is still processed once."""
    passes: dict[float, int] = {}
    for linger in (0.0, 0.2):
        sink = RecordingSink()
        pl = pipeline_factory([sink], linger_seconds=linger)
        pl.start()
        for i in range(40):
            pl.submit_predictions(_batch([i / 40]))
            time.sleep(0.001)  # a trickle: each call after the worker could have woken
        assert pl.wait_idle(5)
        rows = [b.rows for k, b in sink.events if k == "p"]
        assert sum(rows) == 40 == pl.processed_rows
        scores = np.concatenate([b.scores for k, b in sink.events if k == "p"])
        np.testing.assert_allclose(scores, np.arange(40) / 40)  # in order, none twice
        passes[linger] = len(rows)
    # Unlingering, the worker wakes for (almost) every call; lingering 0.2 s, once or twice.
    assert passes[0.2] <= 3 < passes[0.0], passes


def test_labels_and_calls_cut_the_linger_short(pipeline_factory):
    """A label batch or a run_on_worker call is not held back by the linger."""
    sink = RecordingSink()
    pl = pipeline_factory([sink], linger_seconds=60.0)  # would hang the test if honoured
    pl.start()
    pl.submit_predictions(_batch([0.5]))
    assert pl.run_on_worker(lambda: 42, timeout=10) == 42
    pl.submit_predictions(_batch([0.6]))
    pl.submit_labels(_labels([0.6], [1]))
    assert pl.wait_idle(10)
    assert [k for k, _ in sink.events] == ["p", "p", "l"]
