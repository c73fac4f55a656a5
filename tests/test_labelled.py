"""Unit tests for silentwatch.monitor.evaluation.labelled.LabelledWindow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from silentwatch.monitor.evaluation import classification as cal
from silentwatch.monitor.evaluation import labelled as labelled_mod
from silentwatch.monitor.evaluation.labelled import LabelledWindow

EXACT = [k for k in cal.METRIC_NAMES if k != "roc_auc"]  # cumulative ROC-AUC is binned


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.7, 0.7, n)
    p[::97] = 0.0  # exact extremes and an exact tie at 0.5
    p[1::97] = 1.0
    p[2::97] = 0.5
    y = (rng.random(n) < p).astype(np.int8)
    return p, y


def _feed(w: LabelledWindow, p: np.ndarray, y: np.ndarray, cuts: list[int]) -> None:
    for a, b in zip([0, *cuts], [*cuts, p.size], strict=True):
        w.update(p[a:b], y[a:b])


def _assert_same(got: dict, want: dict, keys, abs_tol: float = 1e-9) -> None:
    for k in keys:
        assert got[k] == pytest.approx(want[k], abs=abs_tol, nan_ok=True), k


# -- rolling ---------------------------------------------------------------------------------


def test_rolling_and_cumulative_after_uneven_batches_across_the_ring():
    p, y = _data(2300, 7)
    w = LabelledWindow(window_size=500)
    ring_ids = (id(w._p), id(w._y))
    _feed(w, p, y, [7, 480, 1111])  # 7, 473, 631 (> window) and 1189 rows
    assert (id(w._p), id(w._y)) == ring_ids and w._p.shape == w._y.shape == (500,)
    _assert_same(w.rolling(), cal.labelled_metrics(p[-500:], y[-500:]), cal.METRIC_NAMES)
    everything = cal.labelled_metrics(p, y)
    cum = w.cumulative()
    _assert_same(cum, everything, EXACT)
    assert cum["roc_auc"] == pytest.approx(everything["roc_auc"], abs=1e-2)
    assert w.n_seen == cum["n"] == 2300


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 60),
    sizes=st.lists(st.integers(0, 90), min_size=1, max_size=12),
    seed=st.integers(0, 2**31 - 1),
)
def test_rolling_is_the_last_window_whatever_the_batches(window, sizes, seed):
    n = sum(sizes)
    p, y = _data(n, seed)
    w = LabelledWindow(window_size=window, threshold=0.4, high_confidence=0.7, n_bins=10)
    _feed(w, p, y, list(np.cumsum(sizes)[:-1]))
    kw = {"threshold": 0.4, "high_confidence": 0.7, "n_bins": 10}
    last = slice(max(n - window, 0), n)
    _assert_same(w.rolling(), cal.labelled_metrics(p[last], y[last], **kw), cal.METRIC_NAMES)
    _assert_same(w.cumulative(), cal.labelled_metrics(p, y, **kw), EXACT)
    assert w.n_seen == n
    assert w._p.shape == (window,) and w._hist.shape == (2, 1000)


def test_rolling_single_samples_and_oversized_batch():
    p, y = _data(40, 3)
    w = LabelledWindow(window_size=8)
    for i in range(13):  # one at a time, wrapping the ring once and a bit
        w.update(p[i : i + 1], y[i : i + 1])
    _assert_same(w.rolling(), cal.labelled_metrics(p[5:13], y[5:13]), cal.METRIC_NAMES)
    w.update(p[13:], y[13:])  # 27 rows: only the newest 8 stay
    _assert_same(w.rolling(), cal.labelled_metrics(p[-8:], y[-8:]), cal.METRIC_NAMES)
    _assert_same(w.cumulative(), cal.labelled_metrics(p, y), EXACT)


# -- cumulative ------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "high", "n_bins"), [(0.5, 0.8, 5), (0.3, 0.9, 10)])
@pytest.mark.parametrize("seed", [0, 1])
def test_cumulative_exact_fields_and_binned_auc(threshold, high, n_bins, seed):
    p, y = _data(30_000, seed)
    w = LabelledWindow(window_size=100, threshold=threshold, high_confidence=high, n_bins=n_bins)
    _feed(w, p, y, [1, 1000, 1001, 17_000])
    want = cal.labelled_metrics(p, y, threshold=threshold, high_confidence=high, n_bins=n_bins)
    cum = w.cumulative()
    _assert_same(cum, want, EXACT)
    assert cum["n"] == 30_000 and cum["positives"] == int(y.sum())
    exact_auc = skm.roc_auc_score(y, p)
    assert abs(cum["roc_auc"] - exact_auc) <= w.auc_error_bound + 1e-12
    assert abs(cum["roc_auc"] - exact_auc) < 1e-2


@settings(max_examples=40, deadline=None)
@given(
    ps=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=200),
    seed=st.integers(0, 2**31 - 1),
    bins=st.sampled_from([1, 7, 100, 1000]),
)
def test_cumulative_auc_within_its_bound(ps, seed, bins):
    p = np.asarray(ps)
    y = np.random.default_rng(seed).integers(0, 2, p.size)
    w = LabelledWindow(window_size=5, cumulative_bins=bins)
    w.update(p, y)
    if 0 < y.sum() < y.size:
        exact = cal.roc_auc(p, y)
        assert abs(w.cumulative()["roc_auc"] - exact) <= w.auc_error_bound + 1e-12
    else:
        assert math.isnan(w.cumulative()["roc_auc"]) and math.isnan(w.auc_error_bound)


def test_cumulative_auc_resolution():
    # Scores 1/cumulative_bins apart land in different bins: the binned AUC is exact.
    w = LabelledWindow(cumulative_bins=10)
    p, y = np.array([0.05, 0.15, 0.25, 0.95]), np.array([0, 1, 0, 1])
    w.update(p, y)
    assert w.cumulative()["roc_auc"] == cal.roc_auc(p, y) == 0.75 and w.auc_error_bound == 0
    # Closer than the resolution they tie: 0.91 (neg) < 0.99 (pos) counts half, not one.
    w = LabelledWindow(cumulative_bins=10)
    w.update(np.array([0.91, 0.99]), np.array([0, 1]))
    assert w.cumulative()["roc_auc"] == 0.5 and w.auc_error_bound == 0.5
    # p = 1 falls in the last bin, not past it.
    w = LabelledWindow(cumulative_bins=10)
    w.update(np.array([0.0, 1.0]), np.array([0, 1]))
    assert w.cumulative()["roc_auc"] == 1.0


def test_cumulative_with_exact_zero_and_one():
    w = LabelledWindow(window_size=2)
    p, y = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1, 0, 0, 1])
    w.update(p, y)
    cum = w.cumulative()
    assert cum["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=[0, 1]))
    assert cum["log_loss"] == pytest.approx(-np.log(np.finfo(np.float64).eps) / 2, rel=1e-12)
    assert cum["brier"] == 0.5 and cum["accuracy"] == 0.5
    assert cum["silent_failure_ratio"] == 1.0 and cum["high_confidence_error_ratio"] == 0.5
    assert w.rolling()["accuracy"] == 1.0  # the last two are right


# -- edge cases ------------------------------------------------------------------------------


def test_empty_window_reads():
    w = LabelledWindow()
    w.update(np.zeros(0), np.zeros(0))  # no-op
    for m in (w.rolling(), w.cumulative()):
        assert tuple(m) == cal.METRIC_NAMES
        assert m["n"] == 0 and m["positives"] == 0
        assert all(math.isnan(v) for k, v in m.items() if k not in ("n", "positives"))
    assert w.n_seen == 0 and math.isnan(w.auc_error_bound)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_only(label):
    p = np.array([0.1, 0.6, 0.95, 0.3])
    y = np.full(4, label)
    w = LabelledWindow(window_size=3)
    w.update(p, y)
    for m, (pp, yy) in ((w.rolling(), (p[1:], y[1:])), (w.cumulative(), (p, y))):
        assert math.isnan(m["roc_auc"])
        with pytest.warns(Warning):
            assert m["balanced_accuracy"] == pytest.approx(
                skm.balanced_accuracy_score(yy, pp >= 0.5)
            )


def test_invalid_updates_raise_and_leave_state_alone():
    w = LabelledWindow(window_size=4)
    w.update(np.array([0.2, 0.9]), np.array([0, 1]))
    before = w.cumulative(), w.rolling()
    for p, y in (([0.5, 1.5], [0, 1]), ([0.5, 0.5], [0, 3]), ([0.5], [0, 1])):
        with pytest.raises(ValueError):
            w.update(np.asarray(p), np.asarray(y))
    assert (w.cumulative(), w.rolling()) == before and w.n_seen == 2
    with pytest.raises(ValueError):
        LabelledWindow(window_size=0)


# -- memory and caching ----------------------------------------------------------------------


def test_memory_is_bounded():
    w = LabelledWindow(window_size=64, cumulative_bins=50)
    state = {k: v for k, v in vars(w).items() if isinstance(v, np.ndarray)}
    nbytes = {k: v.nbytes for k, v in state.items()}
    rng = np.random.default_rng(0)
    for n in (10, 1000, 100_000, 3):
        w.update(rng.random(n), rng.integers(0, 2, n))
    after = {k: v for k, v in vars(w).items() if isinstance(v, np.ndarray)}
    assert after.keys() == state.keys()
    for k, v in after.items():
        assert v is state[k] and v.nbytes == nbytes[k], k  # updated in place, never grown
    assert w.n_seen == 101_013


def test_reads_are_cached_until_the_next_update(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return cal.labelled_metrics(*args, **kwargs)

    monkeypatch.setattr(labelled_mod, "labelled_metrics", counting)
    w = LabelledWindow(window_size=10)
    w.update(np.array([0.9, 0.2]), np.array([1, 0]))
    first = w.rolling()
    first["accuracy"] = -1.0  # callers get copies: the cache is not theirs to change
    assert w.rolling()["accuracy"] == 1.0 and w.cumulative() == w.cumulative()
    assert len(calls) == 1
    w.update(np.zeros(0), np.zeros(0))  # nothing new: the cache stays
    w.rolling()
    assert len(calls) == 1
    w.update(np.array([0.9]), np.array([0]))
    assert w.rolling()["n"] == 3 and w.cumulative()["n"] == 3
    assert len(calls) == 2
