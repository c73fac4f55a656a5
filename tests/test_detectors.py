"""Detector definitions, calibration and window plumbing (no gRPC here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.decomposition import PCA

from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.detection.detectors import ReferenceSample
from silentwatch.monitor.detection.detectors.base import window_means
from silentwatch.monitor.detection.detectors.centroid import centroid_angle_degrees
from silentwatch.monitor.detection.detectors.changepoints import ChangeTracker
from silentwatch.monitor.detection.detectors.mmd import MMDDetector, mmd2_unbiased, rbf_kernel
from silentwatch.monitor.detection.detectors.pca import PCABasis
from silentwatch.monitor.detection.detectors.score_shift import ks_statistic
from silentwatch.monitor.detection.suite import CalibrationError, DetectorSuite, window_grid
from silentwatch.monitor.detection.windows import WindowBuffer
from silentwatch.monitor.simulate import drift
from tests.conftest import unit_rows


def test_mmd_matches_a_direct_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.5, size=(9, 3))
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 0.8**2))  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    kyy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / 72
    kxy = sum(k(a, b) for a in x for b in y) / 63
    assert mmd2_unbiased(x, y, 0.8) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    assert rbf_kernel(x, x, 0.8).diagonal() == pytest.approx(np.ones(7))


def test_mmd_pooled_null_equals_per_window_statistic():
    x = unit_rows(300, 16, seed=1)
    det = MMDDetector(sigma=1.0).fit(ReferenceSample(x[:100], np.zeros(100, np.float32)))
    windows = np.argsort(np.random.default_rng(0).random((5, 200)), axis=1)[:, :20] + 100
    pooled = det.null_statistics(x, np.zeros(300), windows)
    direct = [det.statistic(x[w], None) for w in windows]
    assert pooled == pytest.approx(direct, abs=1e-5)


def test_ks_statistic_equals_scipy_with_ties():
    rng = np.random.default_rng(2)
    a = np.round(rng.normal(size=60), 1)
    b = np.sort(np.round(rng.normal(0.2, size=90), 1))
    assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic)


def test_pca_reconstruction_error_matches_sklearn():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 10)) * np.linspace(3, 0.1, 10)
    basis = PCABasis(4).fit(x)
    p = PCA(4).fit(x)
    recon = p.inverse_transform(p.transform(x))
    expected = ((x - recon) ** 2).sum(axis=1)
    assert basis.reconstruction_error(x) == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_centroid_angle_and_window_means():
    assert centroid_angle_degrees(np.array([1.0, 0.0]), np.array([0.0, 2.0])) == 90.0
    v = np.arange(12.0).reshape(6, 2)
    w = np.array([[0, 5], [1, 2]])
    assert window_means(v, w) == pytest.approx(v[w].mean(axis=1))


def test_rotation_drift_turns_every_row_by_the_angle():
    rng = np.random.default_rng(4)
    x = unit_rows(50, 32, seed=4)
    y = drift.rotation_drift(x, 12.0, drift.rotation_planes(32, rng))
    cos = np.einsum("ij,ij->i", x, y)
    assert np.degrees(np.arccos(np.clip(cos, -1, 1))) == pytest.approx(np.full(50, 12.0), abs=1e-3)
    g = drift.gaussian_drift(x, 0.02, rng, convention="total_norm")
    assert drift.mean_angle_degrees(x, g) < 1.5  # "about 1 degree" holds only in this convention
    with pytest.raises(ValueError, match="per_dimension or total_norm"):
        drift.gaussian_drift(x, 0.02, rng, convention="bogus")  # type: ignore[arg-type]


def test_window_grid_refuses_windows_the_pool_cannot_calibrate():
    assert window_grid(64, 1000) == [16, 32, 64, 128, 250]
    with pytest.raises(CalibrationError, match="needs at least 1024 held-out rows"):
        window_grid(256, 1000)


def test_window_buffer_wraps_and_keeps_the_newest():
    b = WindowBuffer(capacity=5, dim=2)
    for i in range(3):
        rows = np.full((3, 2), i, dtype=np.float32)
        b.push(rows, np.full(3, float(i)), at=float(i))
    _x, s = b.last(5)
    assert s.tolist() == [1.0, 1.0, 2.0, 2.0, 2.0]
    assert b.total == 9 and b.count == 5
    assert b.since(2.0)[1].tolist() == [2.0, 2.0, 2.0]
    b.push(np.zeros((8, 2), np.float32), np.arange(8.0), at=3.0)  # larger than the ring
    assert b.last(5)[1].tolist() == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_change_tracker_finds_a_shift_and_counts_samples():
    rng = np.random.default_rng(5)
    t = ChangeTracker("adwin", "score", mean=0.0, std=1.0)
    t.update(rng.normal(size=2000))
    quiet = t.change_points
    t.update(rng.normal(3.0, size=500))
    assert t.samples == 2500
    assert t.change_points > quiet and t.last_change_at is not None and t.last_change_at >= 2000


def test_calibration_round_trips_through_arrays():
    x = unit_rows(900, 16, seed=6)
    s = np.random.default_rng(6).random(900).astype(np.float32)
    settings = DetectorSettings(window_size=32, calibration_windows=100)
    suite = DetectorSuite.calibrate(
        settings, ReferenceSample(x[:300], s[:300]), ReferenceSample(x[300:], s[300:])
    )
    restored = DetectorSuite.restore(
        suite.calibration, ReferenceSample(x[:300], s[:300]), suite.arrays()
    )
    w = x[:32] * 0 + x[600:632]
    for name in ("mmd", "mmd_rff", "pca_reconstruction", "centroid_angle", "bbsd_ks"):
        assert restored.detectors[name].statistic(w, s[600:632]) == pytest.approx(
            suite.detectors[name].statistic(w, s[600:632]), rel=1e-5
        )
    assert restored.threshold("mmd", 40) == suite.calibration.thresholds["mmd"]["32"]
    assert np.isnan(restored.threshold("mmd", 8))  # smaller than anything calibrated
