"""Every window detector the sidecar knows, declared once.

One :class:`DetectorSpec` per detector says what the rest of the code needs to know
about it: its name (the ``detector`` label on every metric), its kind, how often it
runs, which fitted arrays a bundle stores for it (with their shapes) and how to build
it from a bundle's detector settings. Everything else is derived from this table:
the default detector list, the set whose alarms raise the drift alarm, the bundle
loader's shape checks for ``reference.npz``, the configuration's validation and the
generic ``check_detector`` tests.

Kinds:

* ``"drift"``: compares the window's embeddings with the reference sample;
* ``"score"``: compares the window's classifier scores with the reference's
  (black-box shift detection);
* ``"advisory"``: tracked and exported, but never raises the drift alarm (paper A,
  arXiv 2603.01297, section 5: confidence hardly moves when the classifier collapses).

Cadence ``"periodic"`` means "every ``domain_every``-th window" (a detector that costs
milliseconds per window); ``"every_window"`` means every evaluated window.

Adding a detector: one module in :mod:`silentwatch.monitor.detection.detectors` and one
entry in :data:`DETECTORS`. See docs/architecture.md.

>>> [s.name for s in DETECTORS if s.kind == "advisory"]
['confidence_shift']
>>> persisted_arrays()["det_pca_reconstruction_components"]
('k', 'd')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from silentwatch.monitor.detection.detectors.base import WindowDetector
from silentwatch.monitor.detection.detectors.centroid import CentroidAngleDetector
from silentwatch.monitor.detection.detectors.confidence import (
    ConfidenceProfile,
    ConfidenceShiftDetector,
)
from silentwatch.monitor.detection.detectors.domain import DomainClassifierDetector
from silentwatch.monitor.detection.detectors.mmd import MMDDetector
from silentwatch.monitor.detection.detectors.pca import ReconstructionDetector
from silentwatch.monitor.detection.detectors.rff import RFFMMDDetector
from silentwatch.monitor.detection.detectors.score_shift import ScoreKSDetector
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE

Kind = Literal["drift", "score", "advisory"]
Cadence = Literal["every_window", "periodic"]

#: Prefix of a detector's fitted arrays in ``reference.npz``: ``det_<detector>_<array>``.
ARRAY_PREFIX = "det_"
#: The detector whose latest statistic is also exported as the embedding centroid angle.
CENTROID_ANGLE = "centroid_angle"

#: Per-sample streams the change-point detectors can watch: ``score`` is the classifier's
#: P(unsafe); the others are provided by a registered detector (:attr:`DetectorSpec.streams`).
STREAMS: tuple[str, ...] = ("score", "reconstruction_error")
#: river's change detectors by kind (built in :mod:`.detectors.changepoints`).
CHANGE_KINDS: tuple[str, ...] = ("adwin", "page_hinkley", "kswin")
#: (kind, stream) pairs the sidecar runs by default.
DEFAULT_CHANGE_PAIRS: tuple[tuple[str, str], ...] = (
    ("adwin", "score"),
    ("adwin", "reconstruction_error"),
    ("page_hinkley", "reconstruction_error"),
)
#: Every pair that calibration measures a null rate for, so every pair that may be run.
ALL_CHANGE_PAIRS: tuple[tuple[str, str], ...] = (*DEFAULT_CHANGE_PAIRS, ("kswin", "score"))
#: The keys of the reference confidence profile stored in a calibration.
CONFIDENCE_PROFILE: tuple[str, ...] = tuple(ConfidenceProfile.__dataclass_fields__)


@dataclass(frozen=True)
class BuildContext:
    """What a detector may be built from: the bundle's detector settings and thresholds.

    The first three come from the bundle's ``DetectorSettings`` (their defaults live there).
    """

    seed: int
    rff_features: int
    pca_components: int
    sigma: float | None = None  # the RBF bandwidth shared by mmd and mmd_rff
    flag: float = FLAG_THRESHOLD
    high_confidence: float = HIGH_CONFIDENCE


@dataclass(frozen=True)
class DetectorSpec:
    """One detector's declaration (see the module docstring)."""

    name: str
    kind: Kind
    build: Callable[[BuildContext], WindowDetector]
    summary: str
    cadence: Cadence = "every_window"
    #: Fitted arrays stored in the bundle, by key, with their shape in symbols: ``d`` the
    #: embedding dimension, digits a fixed size, any other letter a size that must agree
    #: across the arrays sharing it.
    arrays: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Per-sample streams this detector provides to the change-point detectors.
    streams: tuple[str, ...] = ()

    @property
    def raises_drift_alarm(self) -> bool:
        return self.kind != "advisory"


DETECTORS: tuple[DetectorSpec, ...] = (
    DetectorSpec(
        "mmd",
        "drift",
        lambda c: MMDDetector(sigma=c.sigma, seed=c.seed),
        "unbiased RBF-kernel MMD^2 against the reference sample (Gretton et al. 2012)",
    ),
    DetectorSpec(
        "mmd_rff",
        "drift",
        lambda c: RFFMMDDetector(c.rff_features, sigma=c.sigma, seed=c.seed),
        "linear-time MMD^2 with random Fourier features (Rahimi & Recht 2007)",
        arrays={"w": ("m", "d"), "b": ("m",), "ref_mean": ("m",)},
    ),
    DetectorSpec(
        "bbsd_ks",
        "score",
        lambda c: ScoreKSDetector(),
        "KS distance between window and reference scores (BBSD, Lipton et al. 2018)",
    ),
    DetectorSpec(
        "domain_auc",
        "drift",
        lambda c: DomainClassifierDetector(c.pca_components, seed=c.seed),
        "out-of-fold AUC of a reference-vs-window classifier (Rabanser et al. 2019)",
        cadence="periodic",
    ),
    DetectorSpec(
        "pca_reconstruction",
        "drift",
        lambda c: ReconstructionDetector(c.pca_components),
        "mean PCA reconstruction error on the reference basis",
        arrays={"mean": ("d",), "components": ("k", "d")},
        streams=("reconstruction_error",),
    ),
    DetectorSpec(
        CENTROID_ANGLE,
        "drift",
        lambda c: CentroidAngleDetector(),
        "angle between the window's and the reference's mean embedding, in degrees",
    ),
    DetectorSpec(
        "confidence_shift",
        "advisory",
        lambda c: ConfidenceShiftDetector(flag=c.flag, high_confidence=c.high_confidence),
        "|window - reference| mean top-label confidence (advisory: paper A, section 5)",
        arrays={"profile": ("3",)},
    ),
)

REGISTRY: dict[str, DetectorSpec] = {s.name: s for s in DETECTORS}
#: Every registered detector, in the order they run and are reported.
ALL_DETECTORS: tuple[str, ...] = tuple(REGISTRY)
#: Detectors whose alarm raises the drift alarm (every kind but advisory).
DRIFT_DETECTORS: tuple[str, ...] = tuple(s.name for s in DETECTORS if s.raises_drift_alarm)

if len(REGISTRY) != len(DETECTORS):  # pragma: no cover - a mistake in the table above
    raise RuntimeError("two detectors share a name in the registry")
if not set(STREAMS[1:]) <= {st for s in DETECTORS for st in s.streams}:  # pragma: no cover
    raise RuntimeError("a change-point stream has no detector providing it")


class UnknownDetectorError(ValueError):
    """A detector or change-point pair name the registry does not know."""


def spec(name: str) -> DetectorSpec:
    """The registered detector ``name``; :class:`UnknownDetectorError` naming the choices."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownDetectorError(
            f"unknown detector {name!r}; choose from {', '.join(ALL_DETECTORS)}"
        ) from None


def check_detector_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` as a tuple, each registered and none twice.

    >>> check_detector_names(["mmd", "bbsd_ks"])
    ('mmd', 'bbsd_ks')
    """
    out = tuple(names)
    for name in out:
        spec(name)
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise UnknownDetectorError(f"detector {dup[0]!r} is listed twice")
    return out


def parse_change_pair(item: str) -> tuple[str, str]:
    """``"kind:stream"`` -> ``(kind, stream)``, one of :data:`ALL_CHANGE_PAIRS`.

    >>> parse_change_pair("adwin:score")
    ('adwin', 'score')
    """
    kind, _, stream = item.partition(":")
    pair = (kind, stream)
    if pair not in ALL_CHANGE_PAIRS:
        choices = ", ".join(f"{k}:{s}" for k, s in ALL_CHANGE_PAIRS)
        raise UnknownDetectorError(
            f"change detector {item!r} is not a kind:stream pair the sidecar calibrates; "
            f"choose from {choices}"
        )
    return pair


def stream_providers() -> dict[str, str]:
    """Stream name -> the detector that computes it (``score`` needs none)."""
    return {st: s.name for s in DETECTORS for st in s.streams}


def persisted_arrays() -> dict[str, tuple[str, ...]]:
    """Every detector array a bundle may store, ``det_<detector>_<key>`` -> shape symbols."""
    return {
        f"{ARRAY_PREFIX}{s.name}_{key}": shape for s in DETECTORS for key, shape in s.arrays.items()
    }
