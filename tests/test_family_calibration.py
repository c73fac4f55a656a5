"""The drift alarm's false-alarm rate holds for the family of drift detectors jointly.

The drift alarm fires when *any* detector that raises it alarms, so
``DetectorSettings.false_alarm_rate`` is calibrated as a family-wise rate: one per-detector
level per window size, chosen on the shared null windows (min-p, ``suite.joint_level``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from silentwatch.cli import family_lines
from silentwatch.monitor.bundle.manifest import DetectorCalibration, DetectorSettings
from silentwatch.monitor.detection import suite as suite_module
from silentwatch.monitor.detection.detectors.base import ReferenceSample
from silentwatch.monitor.detection.registry import DRIFT_DETECTORS, REGISTRY
from silentwatch.monitor.detection.suite import DetectorSuite, JointLevel, joint_level

DIM = 16
WINDOW = 16
ALPHA = 0.05  # large enough that a few thousand fresh windows measure the rate to +- 0.5%
CALIBRATION_WINDOWS = 1000
# A held-out pool far larger than a window: each pool's own offset from the population
# (and its own covariance) moves the rate its thresholds hold on live windows; at 4,096
# rows that spread is small next to the calibration's and the fresh windows' own errors.
HOLDOUT = 4096
FRESH_WINDOWS = 2400
CHUNK = 50  # fresh windows per null_statistics call (FRESH_WINDOWS is a multiple)
SETTINGS = DetectorSettings(
    window_size=WINDOW,
    false_alarm_rate=ALPHA,
    calibration_windows=CALIBRATION_WINDOWS,
    rff_features=32,
    pca_components=4,
    seed=3,
)


def _rows(rng: np.random.Generator, n: int) -> ReferenceSample:
    """``n`` unit-normalised isotropic Gaussian rows, scored by one fixed logistic head."""
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = np.random.default_rng(99).standard_normal(DIM) * 2.0
    return ReferenceSample(x, (1.0 / (1.0 + np.exp(-(x @ w)))).astype(np.float32))


def _per_detector_level(null: np.ndarray, alpha: float) -> JointLevel:
    """The calibration before the family-wise change: every detector at ``alpha`` alone."""
    k = int(np.floor(alpha * null.shape[1] + 1e-9))
    return JointLevel(rank=k, level=k / null.shape[1], family_rate=0.0)


@pytest.fixture(scope="module")
def calibrated() -> Iterator[tuple[DetectorSuite, DetectorSuite, np.ndarray]]:
    """(family-wise suite, per-detector suite, drift statistics of fresh clean windows).

    Both suites see the same reference, held-out pool and calibration windows (the
    windows come from ``settings.seed``); only the level chosen per size differs.
    """
    rng = np.random.default_rng(11)
    reference, holdout = _rows(rng, 500), _rows(rng, HOLDOUT)
    with pytest.MonkeyPatch.context() as mp:
        # Speed only: the change-point null rates (KSWIN: seconds) have nothing to do with
        # the thresholds, and each window size is calibrated on its own, so one will do.
        mp.setattr(suite_module, "null_change_rate", lambda *args, **kwargs: {})
        mp.setattr(suite_module, "window_grid", lambda window_size, holdout_rows: [WINDOW])
        family = DetectorSuite.calibrate(SETTINGS, reference, holdout)
        mp.setattr(suite_module, "joint_level", _per_detector_level)
        per_detector = DetectorSuite.calibrate(SETTINGS, reference, holdout)
    fresh = _rows(rng, FRESH_WINDOWS * WINDOW)  # never seen by either calibration
    yield family, per_detector, _fresh_statistics(family, fresh)


def _fresh_statistics(suite: DetectorSuite, fresh: ReferenceSample) -> np.ndarray:
    """(drift detectors, windows): statistics of disjoint windows of ``fresh`` rows.

    Both suites' detectors are fitted alike, so one suite computes them for both.
    """
    # In chunks of CHUNK consecutive windows: mmd's pooled null builds a kernel matrix over
    # all the rows it is given.
    rows = CHUNK * WINDOW
    windows = np.arange(rows).reshape(CHUNK, WINDOW)
    x, s = fresh.embeddings, fresh.scores
    return np.array(
        [
            np.concatenate(
                [
                    suite.detectors[name].null_statistics(x[i : i + rows], s[i : i + rows], windows)
                    for i in range(0, x.shape[0], rows)
                ]
            )
            for name in DRIFT_DETECTORS
        ]
    )


def _family_rate(suite: DetectorSuite, stats: np.ndarray) -> float:
    """Share of the windows on which any drift detector alarms (the drift alarm)."""
    thresholds = np.array([suite.threshold(name, WINDOW) for name in DRIFT_DETECTORS])
    return float((stats > thresholds[:, None]).any(axis=0).mean())


def test_the_family_holds_the_stated_rate_on_fresh_windows(calibrated) -> None:
    """Per-detector thresholds let the drift alarm fire on several times alpha of clean
    windows; the joint calibration holds it to alpha, within the binomial error of the
    fresh windows and that of the calibration's own windows (the family-wise quantile is
    estimated from CALIBRATION_WINDOWS of them), 3 sigma: alpha + 0.025."""
    family, per_detector, stats = calibrated
    sigma = np.sqrt(ALPHA * (1 - ALPHA) * (1 / FRESH_WINDOWS + 1 / CALIBRATION_WINDOWS))
    joint_rate, old_rate = _family_rate(family, stats), _family_rate(per_detector, stats)
    assert joint_rate <= ALPHA + 3 * sigma, joint_rate
    assert old_rate > ALPHA + 3 * sigma, old_rate  # the bug this calibration fixes


def test_levels_lie_between_bonferroni_and_alpha(calibrated) -> None:
    """floor(alpha B / D) / B <= alpha_n <= alpha: never below Bonferroni's alpha / D
    beyond rounding down to the grid of ranks; no family-wise threshold is below the
    per-detector one."""
    family, per_detector, _ = calibrated
    cal = family.calibration
    assert cal.family is not None and per_detector.calibration.family is not None
    assert cal.family.detectors == DRIFT_DETECTORS
    d = len(cal.family.detectors)
    assert set(cal.family.levels) == set(cal.thresholds["mmd"])
    for size, level in cal.family.levels.items():
        assert (ALPHA * CALIBRATION_WINDOWS // d) / CALIBRATION_WINDOWS <= level <= ALPHA
        assert 0.0 <= cal.family.measured_rate[size] <= ALPHA
        # per detector: alpha itself, so a family-wise threshold is never the lower one
        assert per_detector.calibration.family.levels[size] == ALPHA
        for name, table in cal.thresholds.items():
            old = per_detector.calibration.thresholds[name][size]
            if REGISTRY[name].raises_drift_alarm:
                assert table[size] >= old, name
            else:  # advisory: alpha on its own, untouched by the adjustment
                assert table[size] == old, name


def _brute_force(null: np.ndarray, alpha: float) -> tuple[int, float]:
    """The largest rank k <= alpha B at which at most alpha of the windows, each judged as a
    fresh one against the k-th largest values of the *other* windows (alarm when strictly
    above), alarm on some detector; and that share."""
    b = null.shape[1]
    per_window = null.transpose()  # (window, detector)
    others = np.stack([np.sort(np.delete(null, j, axis=1), axis=1) for j in range(b)])
    best = (1, 0.0)
    for k in range(1, int(np.floor(alpha * b + 1e-9)) + 1):
        kth = others[:, :, b - 1 - k]  # (window left out, detector)
        rate = float((per_window > kth).any(axis=1).mean())
        if rate <= alpha:
            best = (k, rate)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_joint_level_matches_a_brute_force_search_with_ties(seed: int) -> None:
    """Correlated detectors, some with few distinct values (KS distances and AUCs tie)."""
    rng = np.random.default_rng(seed)
    b, d = 300, 1 + seed
    common = rng.standard_normal(b)
    null = common * rng.random((d, 1)) + rng.standard_normal((d, b))
    null[::2] = np.round(null[::2] * 2) / 2  # ties
    alpha = (0.01, 0.05, 0.1)[seed % 3]
    got = joint_level(null, alpha)
    k, rate = _brute_force(null, alpha)
    assert (got.rank, got.family_rate) == (k, pytest.approx(rate))
    assert got.level == k / b
    cap = int(np.floor(alpha * b + 1e-9))
    assert max(1, cap // d) <= got.rank <= cap  # Bonferroni's rank is always feasible


def test_joint_level_at_its_extremes() -> None:
    t = np.arange(200.0)
    assert joint_level(t[None, :], 0.05) == JointLevel(rank=10, level=0.05, family_rate=0.05)
    assert joint_level(np.stack([t] * 4), 0.05).level == 0.05  # copies: one test
    # Never alarming on the same window: the rates add up, Bonferroni is exact.
    disjoint = np.stack([np.roll(t, 50 * i) for i in range(4)])
    assert joint_level(disjoint, 0.05) == JointLevel(rank=2, level=0.01, family_rate=0.04)
    # Fewer than one window in alpha: the largest null value, as for one detector.
    assert joint_level(t[None, :], 0.001) == JointLevel(rank=1, level=0.005, family_rate=0.005)
    with pytest.raises(ValueError, match="detectors, windows"):
        joint_level(t, 0.05)


def test_a_calibration_without_the_family_still_loads(calibrated) -> None:
    """Bundles written before the family-wise calibration have no ``family``: they load,
    with per-detector thresholds, and restore a suite."""
    family, _, _ = calibrated
    raw = family.calibration.model_dump(mode="json")
    del raw["family"]
    old = DetectorCalibration.model_validate(raw)
    assert old.family is None and old.thresholds == family.calibration.thresholds
    assert DetectorCalibration.model_validate_json(family.calibration.model_dump_json()) == (
        family.calibration
    )


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda f: f.update(detectors=["mmd", "bogus"]), r"family\.detectors names \['bogus'\]"),
        (lambda f: f["levels"].pop("16"), r"family\.levels covers window sizes"),
        (lambda f: f["levels"].update({"16": 0.5}), r"family\.levels must lie in \[0, 0\.05\]"),
        (lambda f: f["measured_rate"].update({"16": -0.1}), r"family\.measured_rate must lie"),
    ],
    ids=["unknown-detector", "missing-size", "level-above-alpha", "negative-rate"],
)
def test_an_inconsistent_family_is_refused_by_name(calibrated, edit, match: str) -> None:
    raw = calibrated[0].calibration.model_dump(mode="json")
    edit(raw["family"])
    with pytest.raises(ValueError, match=match):
        DetectorCalibration.model_validate(raw)


def test_bundle_inspect_says_how_the_rate_is_shared(calibrated) -> None:
    cal = calibrated[0].calibration
    level = cal.family.levels[str(WINDOW)]
    assert family_lines(cal) == [
        f"  family-wise: any of {', '.join(DRIFT_DETECTORS)} alarms on at most {ALPHA:g} of "
        "clean windows",
        f"  at n={WINDOW} each is set at level {level:.4g} (family rate "
        f"{cal.family.measured_rate[str(WINDOW)]:.4g} on the calibration windows, leave-one-out)",
    ]
    (old,) = family_lines(cal.model_copy(update={"family": None}))
    assert "per-detector thresholds" in old and "silentwatch bundle train" in old


def test_too_few_calibration_windows_are_recorded_and_warned(caplog) -> None:
    """B < D / alpha: even the largest null values let the family alarm more often than
    alpha (a fresh window tops one detector's B values with probability 1 / (B + 1))."""
    rng = np.random.default_rng(5)
    settings = DetectorSettings(
        window_size=WINDOW, calibration_windows=50, rff_features=16, pca_components=2
    )
    with pytest.MonkeyPatch.context() as mp, caplog.at_level("WARNING"):
        mp.setattr(suite_module, "null_change_rate", lambda *args, **kwargs: {})
        suite = DetectorSuite.calibrate(settings, _rows(rng, 200), _rows(rng, 4 * WINDOW))
    fam = suite.calibration.family
    assert fam is not None and fam.levels == {str(WINDOW): 1 / 50}  # the largest of 50
    assert fam.measured_rate[str(WINDOW)] > settings.false_alarm_rate
    assert "50 calibration windows cannot hold" in caplog.text and "at least 600" in caplog.text
    assert "too few windows to hold it" in family_lines(suite.calibration)[1]
