"""``check_detector``: the contract every registered window detector must keep.

In the manner of scikit-learn's ``check_estimator``: the tests are parametrised over the
detector registry, so a detector added there is checked without writing a test for it.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from silentwatch.monitor.bundle.io import REFERENCE_EXTRA_SHAPES
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector
from silentwatch.monitor.detection.engine import DetectionEngine, EngineOptions
from silentwatch.monitor.detection.registry import (
    ALL_DETECTORS,
    ARRAY_PREFIX,
    DETECTORS,
    DRIFT_DETECTORS,
    REGISTRY,
    BuildContext,
    DetectorSpec,
    persisted_arrays,
    stream_providers,
)
from silentwatch.monitor.detection.suite import DetectorSuite
from silentwatch.monitor.detection.windows import WindowSpec
from silentwatch.monitor.serving.pipeline import PredictionBatch
from silentwatch.monitor.simulate.drift import directional_drift, random_direction
from silentwatch.monitor.simulate.world import SyntheticWorld

DIM = 24
WINDOW = 32
SPECS = pytest.mark.parametrize("spec", DETECTORS, ids=[s.name for s in DETECTORS])


def _scores(x: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(3).standard_normal(x.shape[1])
    return (1.0 / (1.0 + np.exp(-(x @ w) * 4.0))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    world = SyntheticWorld(dim=DIM, seed=5)
    ref, _ = world.sample(300)
    hold, _ = world.sample(400)
    return {"ref": ref, "hold": hold, "ref_s": _scores(ref), "hold_s": _scores(hold)}


def _reference(data: dict[str, np.ndarray]) -> ReferenceSample:
    return ReferenceSample(data["ref"], data["ref_s"])


def _build(spec: DetectorSpec, seed: int = 7) -> WindowDetector:
    return spec.build(BuildContext(seed=seed, rff_features=64, pca_components=4, sigma=None))


def _fitted(spec: DetectorSpec, data: dict[str, np.ndarray], seed: int = 7) -> WindowDetector:
    det = _build(spec, seed).fit(_reference(data))
    det.fit_holdout(data["hold"], data["hold_s"])
    return det


def _batch(x: np.ndarray, s: np.ndarray) -> PredictionBatch:
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    return PredictionBatch(x, norms, s, "classify", "v1", 0.0)


def _windows(n_pool: int, count: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.argsort(rng.random((count, n_pool)), axis=1)[:, :WINDOW]


@SPECS
def test_name_matches_the_registry(spec: DetectorSpec) -> None:
    assert _build(spec).name == spec.name
    assert REGISTRY[spec.name] is spec


@SPECS
def test_fit_returns_self_and_leaves_parameters_alone(spec, data) -> None:
    det = _build(spec)
    before = det.get_params()
    attrs_before = set(vars(det))
    assert det.fit(_reference(data)) is det
    assert det.get_params() == before, "fit changed a constructor parameter"
    learned = set(vars(det)) - attrs_before
    assert learned, "fit learned nothing"
    assert all(a.endswith("_") and not a.startswith("_") for a in learned), sorted(learned)


@SPECS
def test_statistic_is_a_finite_number_and_deterministic(spec, data) -> None:
    a, b = _fitted(spec, data), _fitted(spec, data)
    x, s = data["hold"][:WINDOW], data["hold_s"][:WINDOW]
    first = a.statistic(x, s)
    assert isinstance(first, float) and np.isfinite(first)
    # Neither a second read nor another instance built from the same seed may differ.
    assert a.statistic(x, s) == first
    assert b.statistic(x, s) == first


@SPECS
def test_null_statistics_agree_with_statistic(spec, data) -> None:
    det = _fitted(spec, data)
    hx, hs = data["hold"], data["hold_s"]
    windows = _windows(hx.shape[0])
    null = det.null_statistics(hx, hs, windows)
    assert null.shape == (windows.shape[0],)
    one_by_one = [det.statistic(hx[w], hs[w]) for w in windows]
    np.testing.assert_allclose(null, one_by_one, rtol=1e-4, atol=1e-6)


@SPECS
def test_arrays_match_the_declared_shapes_and_round_trip(spec, data) -> None:
    det = _fitted(spec, data)
    arrays = det.arrays()
    assert set(arrays) == set(spec.arrays)
    sizes: dict[str, int] = {"d": DIM}
    for key, shape in spec.arrays.items():
        arr = arrays[key]
        assert arr.ndim == len(shape), key
        for symbol, n in zip(shape, arr.shape, strict=True):
            assert (int(symbol) if symbol.isdigit() else sizes.setdefault(symbol, n)) == n, key
        # Every declared array is validated by the bundle loader.
        assert REFERENCE_EXTRA_SHAPES[f"{ARRAY_PREFIX}{spec.name}_{key}"] == shape
    # Through the bytes a bundle holds, into a detector fitted on other data: what the
    # bundle stored wins, and the statistic comes back exactly.
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}
    other = _build(spec).fit(_reference(data))
    if spec.arrays:
        other.load_arrays(loaded)
    other.fit_holdout(data["hold"], data["hold_s"])
    x, s = data["hold"][-WINDOW:], data["hold_s"][-WINDOW:]
    assert other.statistic(x, s) == pytest.approx(det.statistic(x, s), rel=1e-6, abs=1e-9)


@SPECS
def test_the_statistic_sees_the_shift_its_kind_promises(spec, data) -> None:
    """A detector that cannot tell a gross shift from clean data is not a detector."""
    det = _fitted(spec, data)
    hx, hs = data["hold"], data["hold_s"]
    null = det.null_statistics(hx, hs, _windows(hx.shape[0], count=40, seed=1))
    x, s = hx[:WINDOW], hs[:WINDOW]
    if spec.kind == "drift":
        u = random_direction(DIM, np.random.default_rng(9))
        x = directional_drift(x, 1.0, u)
    else:  # score and advisory detectors read the scores: push them to one extreme
        s = np.full_like(s, 0.999)
    assert det.statistic(x, s) > null.max()


def test_derived_lists_follow_the_registry() -> None:
    assert tuple(s.name for s in DETECTORS) == ALL_DETECTORS
    assert set(DRIFT_DETECTORS) == {s.name for s in DETECTORS if s.kind != "advisory"}
    assert set(persisted_arrays()) <= set(REFERENCE_EXTRA_SHAPES)
    for stream, provider in stream_providers().items():
        assert stream in REGISTRY[provider].streams


@pytest.mark.parametrize("dropped", ["centroid_angle", "pca_reconstruction"])
def test_a_detector_the_bundle_did_not_calibrate_is_not_restored(data, dropped: str) -> None:
    """Bundles written before a detector existed restore (and run) without it; a change-point
    stream the calibration measured keeps its provider even without its window thresholds."""
    suite = DetectorSuite.calibrate(
        DetectorSettings(window_size=WINDOW, calibration_windows=50, rff_features=16, seed=1),
        _reference(data),
        ReferenceSample(data["hold"], data["hold_s"]),
    )
    thresholds = {k: v for k, v in suite.calibration.thresholds.items() if k != dropped}
    old = suite.calibration.model_copy(update={"thresholds": thresholds})
    restored = DetectorSuite.restore(old, _reference(data), suite.arrays())
    assert dropped not in restored.detectors and len(restored.detectors) == len(DETECTORS) - 1
    engine = DetectionEngine(restored, EngineOptions(window=WindowSpec(size=WINDOW, stride=WINDOW)))
    readings = engine.evaluate(data["hold"][:WINDOW], data["hold_s"][:WINDOW], 0.0)
    assert dropped not in readings and "mmd" in readings
    # The default change-point pairs still run, reconstruction error included.
    engine.on_predictions(_batch(data["hold"][: 2 * WINDOW], data["hold_s"][: 2 * WINDOW]))
    assert {(t.stream, t.samples) for t in engine.trackers} == {
        ("score", 2 * WINDOW),
        ("reconstruction_error", 2 * WINDOW),
    }
    with pytest.raises(ValueError, match=f"{dropped!r} is registered but this bundle did not"):
        DetectionEngine(
            restored, EngineOptions(window=WindowSpec(size=WINDOW), detectors=(dropped,))
        )


def test_restored_suite_reads_the_same_statistics(data) -> None:
    suite = DetectorSuite.calibrate(
        DetectorSettings(window_size=WINDOW, calibration_windows=50, rff_features=16, seed=1),
        _reference(data),
        ReferenceSample(data["hold"], data["hold_s"]),
    )
    restored = DetectorSuite.restore(suite.calibration, _reference(data), suite.arrays())
    x, s = data["hold"][:WINDOW], data["hold_s"][:WINDOW]
    for name, det in suite.detectors.items():
        assert restored.detectors[name].statistic(x, s) == pytest.approx(
            det.statistic(x, s), rel=1e-6, abs=1e-9
        ), name
