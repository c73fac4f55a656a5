"""Change points on per-sample streams, with river's detectors.

Window tests answer "is this window different from the reference?"; change-point
detectors answer "when did the stream change?". Streams are standardised with the
held-out mean and standard deviation so one parameter set fits every bundle:

* ``ADWIN`` (Bifet & Gavalda 2007) on the score and on the reconstruction error:
  ``delta`` bounds the false-positive probability of each cut;
* ``PageHinkley`` (Page 1954) on the reconstruction error: a cumulative-sum test,
  ``threshold`` in standard deviations;
* ``KSWIN`` (Raab et al. 2020) on the score, off by default: ~220 us per sample here.

These are not calibrated by permutation like the window detectors: their nominal
parameters bound false positives, and calibration *measures* their change points per
10,000 clean held-out samples (stored in the bundle, shown in ``GetStatus``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from river import base, drift

from silentwatch.monitor.detection.registry import CHANGE_KINDS


def make_detector(kind: str, seed: int = 0) -> base.DriftDetector:
    """The river detector of ``kind`` (one of the registry's ``CHANGE_KINDS``)."""
    if kind == "adwin":
        return drift.ADWIN(delta=0.002)
    if kind == "page_hinkley":
        return drift.PageHinkley(min_instances=30, delta=0.05, threshold=50.0)
    if kind == "kswin":
        return drift.KSWIN(alpha=0.005, window_size=100, stat_size=30, seed=seed)
    raise ValueError(f"unknown change detector {kind!r}; choose from {', '.join(CHANGE_KINDS)}")


@dataclass
class ChangeTracker:
    """One river detector on one standardised stream; ``update`` takes a batch."""

    kind: str
    stream: str
    mean: float
    std: float
    seed: int = 0
    change_points: int = 0
    samples: int = 0
    last_change_at: int | None = None  # sample index in the stream
    _det: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._det = make_detector(self.kind, self.seed)
        self.std = self.std if self.std > 0 else 1.0

    def update(self, values: np.ndarray) -> int:
        """Feed a batch; returns how many change points it produced."""
        z = ((np.asarray(values, dtype=np.float64) - self.mean) / self.std).tolist()
        det, found = self._det, 0
        update = det.update  # bound method: the loop is the hot path
        for i, v in enumerate(z):
            update(v)
            if det.drift_detected:
                found += 1
                self.last_change_at = self.samples + i
        self.samples += len(z)
        self.change_points += found
        return found


# KSWIN runs a scipy KS test per sample (~0.9 ms here, 17 s for 20,000 samples, most of a
# bundle's calibration time); its null rate is measured on fewer samples.
NULL_LENGTH = {"kswin": 4_000}


def null_change_rate(
    pairs: Iterable[tuple[str, str]],
    streams: dict[str, np.ndarray],
    stats: dict[str, tuple[float, float]],
    *,
    length: int = 20_000,
    seed: int = 0,
) -> dict[str, float]:
    """Change points per 10,000 samples on clean held-out streams, resampled to ``length``
    (at most :data:`NULL_LENGTH` for the slow kinds)."""
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for kind, stream in pairs:
        values = streams[stream]
        n = min(length, NULL_LENGTH.get(kind, length))
        sample = values[rng.integers(0, values.size, n)]
        t = ChangeTracker(kind, stream, *stats[stream], seed=seed)
        t.update(sample)
        out[f"{kind}:{stream}"] = t.change_points * 10_000 / n
    return out
