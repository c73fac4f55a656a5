"""The detector set, its calibration on held-out data, and its storage in the bundle.

Calibration (at ``bundle train`` time, never on live traffic): for each window size
``n`` on a grid, draw ``B`` windows of ``n`` rows *without replacement* from held-out
clean data the classifier never trained on, compute every detector's statistic against
the reference sample, and take an empirical quantile (``method="higher"``, so the rate is
not undershot by interpolation) as the threshold. A window of ``n`` live rows is judged
against the threshold of the largest calibrated size ``<= n``: every statistic's null
spread shrinks with ``n``, so this errs towards fewer false alarms.

``alpha`` (``false_alarm_rate``) is the rate of the drift alarm, which fires when *any*
detector that raises it alarms, so it is held by the family of those detectors jointly
(a max-statistic, Westfall & Young 1993 min-p calibration on the shared null windows):
every family detector is set at its ``1 - alpha_n`` quantile, with one per-detector
level ``alpha_n`` per size, the largest on the grid of achievable quantile ranks at which
at most ``alpha`` of the calibration windows, each judged against the thresholds the
other windows set, see any family detector exceed its threshold (:func:`joint_level`).
The detectors see the same window, so their alarms are correlated and ``alpha_n`` lies
between Bonferroni's ``alpha / D`` (rounded down to the grid) and ``alpha``. Advisory
detectors do not raise the drift alarm and keep ``1 - alpha`` on their own.

Windows are drawn from a finite pool, so sizes are capped at a quarter of the held-out
rows, and the quantile's distance from the null median is widened by
``sqrt(1 + n / pool)``: every window from one pool shares the pool's own offset from the
population (variance ~ sigma^2 / pool) on top of its own (sigma^2 / n), and live windows
do not share it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from silentwatch.monitor.bundle.io import LoadedBundle
from silentwatch.monitor.bundle.manifest import (
    DetectorCalibration,
    DetectorSettings,
    FamilyCalibration,
)
from silentwatch.monitor.detection.detectors.base import ReferenceSample, WindowDetector
from silentwatch.monitor.detection.detectors.changepoints import null_change_rate
from silentwatch.monitor.detection.detectors.confidence import confidence_profile
from silentwatch.monitor.detection.detectors.mmd import median_bandwidth
from silentwatch.monitor.detection.registry import (
    ALL_CHANGE_PAIRS,
    ALL_DETECTORS,
    ARRAY_PREFIX,
    REGISTRY,
    BuildContext,
    stream_providers,
)
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE

MIN_WINDOW = 16
POOL_FRACTION = 4  # window sizes up to held-out rows / 4

log = logging.getLogger(__name__)


class CalibrationError(ValueError):
    """Not enough held-out data for the requested windows; the message says what to do."""


def max_window_size(holdout_rows: int) -> int:
    """The largest window ``holdout_rows`` held-out rows can calibrate: a quarter of them.

    Below :data:`MIN_WINDOW` no window can be calibrated at all.

    >>> max_window_size(2000)
    500
    """
    return holdout_rows // POOL_FRACTION


def window_grid(window_size: int, holdout_rows: int) -> list[int]:
    """Calibrated sizes: powers of two from 16 up to the cap, plus ``window_size``.

    >>> window_grid(256, 2000)
    [16, 32, 64, 128, 256, 500]
    """
    cap = max_window_size(holdout_rows)
    if window_size > cap:
        raise CalibrationError(
            f"window size {window_size} needs at least {window_size * POOL_FRACTION} held-out "
            f"rows to calibrate its thresholds, but only {holdout_rows} are available; lower "
            "the window size or train on more data"
        )
    sizes = {window_size, cap}
    n = MIN_WINDOW
    while n < cap:
        sizes.add(n)
        n *= 2
    return sorted(s for s in sizes if s >= MIN_WINDOW)


@dataclass(frozen=True)
class JointLevel:
    """One window size's joint calibration of the drift-alarm family (:func:`joint_level`).

    Attributes
    ----------
    rank : int
        ``k``: every family detector's threshold is its ``k``-th largest null statistic
        (its ``1 - k / B`` quantile, ``method="higher"``).
    level : float
        ``k / B``, the per-detector level ``alpha_n``: a fresh clean window exceeds one
        detector's threshold with probability ``k / (B + 1)``.
    family_rate : float
        Share of the ``B`` null windows on which some family detector exceeds the ``k``-th
        largest of the *other* windows' values (leave-one-out: what each would do as a
        fresh window), before the pool widening, which only lowers it.
    """

    rank: int
    level: float
    family_rate: float


def joint_level(null: np.ndarray, alpha: float) -> JointLevel:
    """The largest common per-detector level holding the family-wise null rate to ``alpha``.

    Parameters
    ----------
    null : numpy.ndarray, shape (D, B)
        Null statistics of ``D`` detectors on the *same* ``B`` windows: column ``b`` is
        window ``b`` for every detector.
    alpha : float
        The family-wise rate: the share of clean windows on which *any* detector may
        exceed its threshold.

    Returns
    -------
    JointLevel
        The rank ``k`` (each detector's threshold is its ``k``-th largest null value),
        the level ``k / B`` and the family-wise rate it holds on these windows.

    Notes
    -----
    The min-p form of Westfall & Young's (1993) max-statistic calibration. Let
    ``c[d, b] = #{b' : T[d, b'] >= T[d, b]}``, window ``b`` counted (``B`` times its
    empirical p-value, ties counted as extreme). Window ``b`` exceeds the ``k``-th largest
    of the *other* windows' values of detector ``d`` (strictly, as the engine's
    ``stat > threshold``) exactly when ``c[d, b] <= k``. Counting that, rather than
    exceedances of thresholds the window helped set, estimates the rate on fresh windows
    without bias: a fresh window exceeds one detector's ``k``-th largest with probability
    ``k / (B + 1)``, not ``(k - 1) / B``, and the difference adds up over ``D`` detectors.

    With ``P[b] = min_d c[d, b]``, the family-wise rate at rank ``k`` is
    ``#{b : P[b] <= k} / B``, non-decreasing in ``k``; the largest ``k`` keeping it within
    ``K = floor(alpha * B)`` windows is one less than the ``(K + 1)``-th smallest ``P``:
    no search needed. It is capped at ``K``, the rank ``alpha`` gives one detector on its
    own, so no detector is ever set looser than ``alpha``. Since
    ``#{b : c[d, b] <= k} <= k`` for each ``d``, Bonferroni's rank ``floor(K / D)`` is
    always feasible when it is at least 1: ``level >= floor(K / D) / B``, ``alpha / D``
    rounded down to the grid of ranks. With fewer than ``D / alpha`` windows not even
    rank 1 (the largest null value) may fit; the rank is then 1 and ``family_rate``
    (above ``alpha``) says what it holds.

    Examples
    --------
    Two copies of one detector are one test: the level is ``alpha``. Two detectors that
    never alarm on the same window split it, as Bonferroni does.

    >>> t = np.arange(100.0)
    >>> joint_level(np.stack([t, t]), 0.05)
    JointLevel(rank=5, level=0.05, family_rate=0.05)
    >>> joint_level(np.stack([t, t[::-1]]), 0.05)
    JointLevel(rank=2, level=0.02, family_rate=0.04)
    """
    t = np.asarray(null, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"null statistics must be (detectors, windows), got shape {t.shape}")
    windows = t.shape[1]
    ordered = np.sort(t, axis=1)
    # Rank each detector's row once: the count of its null values at least as large.
    at_least = np.stack(
        [
            windows - np.searchsorted(row, values, side="left")
            for row, values in zip(ordered, t, strict=True)
        ]
    )
    min_count = np.sort(at_least.min(axis=0))
    cap = int(np.floor(alpha * windows + 1e-9))  # 0.29 * 100 is 28.999999999999996
    rank = min(cap, int(min_count[cap]) - 1) if cap < windows else cap
    rank = max(rank, 1)
    rate = float(np.count_nonzero(min_count <= rank)) / windows
    return JointLevel(rank=rank, level=rank / windows, family_rate=rate)


def build_detectors(
    names: tuple[str, ...],
    settings: DetectorSettings,
    reference: ReferenceSample,
    *,
    sigma: float,
    flag: float = FLAG_THRESHOLD,
    high_confidence: float = HIGH_CONFIDENCE,
) -> dict[str, WindowDetector]:
    """The registered detectors ``names``, built from ``settings`` and fitted on ``reference``."""
    ctx = BuildContext(
        seed=settings.seed,
        rff_features=settings.rff_features,
        pca_components=settings.pca_components,
        sigma=sigma,
        flag=flag,
        high_confidence=high_confidence,
    )
    return {name: REGISTRY[name].build(ctx).fit(reference) for name in names}


@dataclass
class DetectorSuite:
    """Fitted detectors plus their thresholds: everything the engine needs.

    ``detectors`` are the window detectors the calibration has thresholds for;
    ``streams`` maps each calibrated change-point stream (but ``score``) to the fitted
    detector computing it, which need not be a window detector of this bundle.
    """

    detectors: dict[str, WindowDetector]
    calibration: DetectorCalibration
    dim: int
    streams: dict[str, WindowDetector]

    # -- building ---------------------------------------------------------------------
    @classmethod
    def calibrate(
        cls,
        settings: DetectorSettings,
        reference: ReferenceSample,
        holdout: ReferenceSample,
        *,
        source: str = "bundle-train",
        flag: float = FLAG_THRESHOLD,
        high_confidence: float = HIGH_CONFIDENCE,
    ) -> DetectorSuite:
        """Fit every registered detector on ``reference``; set thresholds from ``holdout``.

        The detectors raising the drift alarm share ``settings.false_alarm_rate`` (one
        :func:`joint_level` per window size, recorded in ``calibration.family``); advisory
        ones are held to it alone.
        """
        t0 = time.perf_counter()
        sizes = window_grid(settings.window_size, holdout.size)
        sigma = median_bandwidth(reference.embeddings, seed=settings.seed)
        dets = build_detectors(
            ALL_DETECTORS,
            settings,
            reference,
            sigma=sigma,
            flag=flag,
            high_confidence=high_confidence,
        )
        hx, hs = holdout.embeddings, holdout.scores
        for d in dets.values():
            d.fit_holdout(hx, hs)
        rng = np.random.default_rng(settings.seed)
        thresholds: dict[str, dict[str, float]] = {name: {} for name in dets}
        alpha = settings.false_alarm_rate
        # The drift alarm is "any of these alarmed": they share alpha (periodic ones too,
        # counted as if they ran on every window, which can only overstate the rate).
        family = tuple(name for name in dets if REGISTRY[name].raises_drift_alarm)
        levels: dict[str, float] = {}
        family_rates: dict[str, float] = {}
        for n in sizes:
            windows = np.argsort(rng.random((settings.calibration_windows, holdout.size)), axis=1)
            windows = windows[:, :n]
            null = {name: d.null_statistics(hx, hs, windows) for name, d in dets.items()}
            joint = joint_level(np.stack([null[name] for name in family]), alpha)
            levels[str(n)], family_rates[str(n)] = joint.level, joint.family_rate
            # Windows from one finite pool share its offset from the population; live
            # windows do not. Widen the null around its median by sqrt(1 + n / pool) (the
            # pool mean's variance sigma^2 / pool added to the window's sigma^2 / n).
            widen = np.sqrt(1.0 + n / holdout.size)
            for name, stats in null.items():
                mid = float(np.median(stats))
                if name in family:
                    top = float(np.sort(stats)[stats.size - joint.rank])
                else:  # advisory: alone at alpha
                    top = float(np.quantile(stats, 1.0 - alpha, method="higher"))
                thresholds[name][str(n)] = mid + (top - mid) * widen
        over = {size: rate for size, rate in family_rates.items() if rate > alpha}
        if over:
            # Even the largest null values cannot hold alpha: a fresh window exceeds one
            # detector's largest of B with probability 1 / (B + 1), so D detectors need
            # B >= D / alpha windows (then rank 1 always fits).
            log.warning(
                "%d calibration windows cannot hold the drift alarm's false-alarm rate %g "
                "for %d detectors (measured by window size: %s); use at least %d",
                settings.calibration_windows,
                alpha,
                len(family),
                ", ".join(f"{size}: {rate:.3g}" for size, rate in over.items()),
                int(np.ceil(len(family) / alpha - 1e-9)),
            )
        sources = {stream: dets[provider] for stream, provider in stream_providers().items()}
        streams = {"score": hs.astype(np.float64)}
        for stream, provider in sources.items():
            streams[stream] = provider.stream(stream, hx)
        stream_stats = {k: (float(v.mean()), float(v.std())) for k, v in streams.items()}
        calibration = DetectorCalibration(
            settings=settings,
            source=source,  # type: ignore[arg-type]
            holdout_rows=holdout.size,
            mmd_sigma=sigma,
            thresholds=thresholds,
            family=FamilyCalibration(detectors=family, levels=levels, measured_rate=family_rates),
            reference_confidence=confidence_profile(
                hs, flag=flag, high_confidence=high_confidence
            ).as_dict(),
            stream_stats=stream_stats,
            null_change_points_per_10k=null_change_rate(
                ALL_CHANGE_PAIRS, streams, stream_stats, seed=settings.seed
            ),
            seconds=time.perf_counter() - t0,
        )
        return cls(dets, calibration, reference.dim, sources)

    @classmethod
    def restore(
        cls,
        calibration: DetectorCalibration,
        reference: ReferenceSample,
        arrays: dict[str, np.ndarray],
        *,
        flag: float = FLAG_THRESHOLD,
        high_confidence: float = HIGH_CONFIDENCE,
    ) -> DetectorSuite:
        """Rebuild from a bundle: refit the deterministic parts, load the stored ones.

        Only the detectors the bundle calibrated are restored (a detector registered after
        the bundle was written has no thresholds in it); one this version does not know is
        skipped with a log line.
        """
        names = tuple(n for n in ALL_DETECTORS if n in calibration.thresholds)
        # Change-point streams the calibration measured need their provider even when the
        # bundle has no window thresholds for it.
        providers = stream_providers()
        stream_only = tuple(
            dict.fromkeys(
                p for s, p in providers.items() if s in calibration.stream_stats and p not in names
            )
        )
        unknown = sorted(set(calibration.thresholds) - set(REGISTRY))
        if unknown:
            log.warning(
                "the bundle calibrated detectors %s that this silentwatch does not know; they "
                "are not run (upgrade silentwatch to run them)",
                unknown,
            )
        dets = build_detectors(
            names + stream_only,
            calibration.settings,
            reference,
            sigma=calibration.mmd_sigma,
            flag=flag,
            high_confidence=high_confidence,
        )
        for name, d in dets.items():
            prefix = f"{ARRAY_PREFIX}{name}_"
            declared = REGISTRY[name].arrays
            missing = [k for k in declared if prefix + k not in arrays]
            if missing:
                raise CalibrationError(
                    f"the bundle's reference.npz lacks the fitted state of detector {name!r} "
                    f"({', '.join(prefix + k for k in missing)}); rebuild the bundle with "
                    "`silentwatch bundle train`"
                )
            if declared:
                d.load_arrays({k: arrays[prefix + k] for k in declared})
        sources = {s: dets[p] for s, p in providers.items() if s in calibration.stream_stats}
        return cls({n: dets[n] for n in names}, calibration, reference.dim, sources)

    def arrays(self) -> dict[str, np.ndarray]:
        """Fitted state to write into ``reference.npz`` (prefixed ``det_<name>_``)."""
        return {
            f"{ARRAY_PREFIX}{name}_{k}": v
            for name, d in self.detectors.items()
            for k, v in d.arrays().items()
        }

    # -- use --------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        return sorted(int(k) for k in next(iter(self.calibration.thresholds.values())))

    def threshold(self, name: str, n: int) -> float:
        """Threshold for a window of ``n`` rows: that of the largest calibrated size ``<= n``."""
        table = self.calibration.thresholds[name]
        usable = [s for s in self.sizes if s <= n]
        if not usable:
            return float("nan")
        return table[str(usable[-1])]

    def stream_source(self, stream: str) -> WindowDetector | None:
        """The fitted detector computing a change-point ``stream`` (None: not in this suite)."""
        return self.streams.get(stream)


def suite_for_bundle(bundle: LoadedBundle, *, min_window: int = 256) -> DetectorSuite:
    """The bundle's calibrated detectors, or a start-up calibration when it has none.

    Bundles written before the detection engine carry no thresholds: the reference
    sample is then split in half (a seeded permutation), one half the reference and
    the other the held-out pool, and ``calibration.source`` says ``"startup-split"``.
    Raises :class:`CalibrationError` when the reference is too small even for that.
    """
    m = bundle.manifest
    ref = bundle.reference
    flag, high = m.thresholds.flag, m.thresholds.high_confidence
    if m.detectors is not None:
        sample = ReferenceSample(ref.embeddings, ref.scores)
        return DetectorSuite.restore(
            m.detectors, sample, ref.extra, flag=flag, high_confidence=high
        )
    perm = np.random.default_rng(0).permutation(ref.embeddings.shape[0])
    half = perm.size // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half:])
    size = min(min_window, max_window_size(b.size))
    if size < MIN_WINDOW:
        raise CalibrationError(
            f"bundle {bundle.path} has no calibrated detector thresholds and its reference "
            f"sample ({ref.embeddings.shape[0]} rows) is too small to calibrate at start-up "
            f"(need {2 * POOL_FRACTION * MIN_WINDOW}); rebuild it with `silentwatch bundle train`"
        )
    return DetectorSuite.calibrate(
        DetectorSettings(window_size=size),
        ReferenceSample(ref.embeddings[a], ref.scores[a]),
        ReferenceSample(ref.embeddings[b], ref.scores[b]),
        source="startup-split",
        flag=flag,
        high_confidence=high,
    )
