"""`manifest.json`: the pydantic-validated description of a bundle."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A calibration must describe every change-point stream and the whole confidence profile.
from silentwatch.monitor.detection.registry import CONFIDENCE_PROFILE, STREAMS
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE

SCHEMA_VERSION = 1
CLASSIFIER_FILE = "classifier.npz"
REFERENCE_FILE = "reference.npz"
CANARY_FILE = "canaries.npz"  # optional: labelled texts the sidecar re-embeds (text mode)
REQUIRED_FILES = (CLASSIFIER_FILE, REFERENCE_FILE)
MANIFEST_FILE = "manifest.json"

#: A head's name: it becomes a Prometheus label value and a wire identifier, so it is short,
#: lowercase and needs no escaping anywhere.
HEAD_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
#: Heads per bundle, the default included: the bundle bounds the ``head`` label's
#: cardinality in every Prometheus family, never the requests.
MAX_HEADS = 16
DEFAULT_HEAD = "default"
_HEAD_NAME = re.compile(HEAD_NAME_PATTERN)


def check_head_name(name: str) -> str:
    """``name`` when it is a valid head name, else :class:`ValueError` saying why.

    >>> check_head_name("threat")
    'threat'
    >>> try:
    ...     check_head_name("Threat")
    ... except ValueError as exc:
    ...     print(str(exc)[:40])
    head name 'Threat' is invalid: a head na
    """
    if not isinstance(name, str) or not _HEAD_NAME.fullmatch(name):
        raise ValueError(
            f"head name {name!r} is invalid: a head name is a lowercase letter, then up to 31 "
            f"lowercase letters, digits or underscores ({HEAD_NAME_PATTERN})"
        )
    return name


Pooling = Literal["mean", "last_token", "cls", "unknown"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbedderSpec(_Strict):
    """Which embedding model the classifier was trained and validated on."""

    name: str = Field(min_length=1, description="e.g. sentence-transformers/all-MiniLM-L6-v2")
    version: str = Field(min_length=1, description="the version string callers send")
    weights_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    pooling: Pooling = "unknown"
    normalized: bool = Field(default=True, description="embeddings are unit-normalised")
    # Other versions the gate validated this classifier on (a benign update).
    accepted_versions: tuple[str, ...] = ()

    def accepts(self, version: str) -> bool:
        return version == self.version or version in self.accepted_versions


class Thresholds(_Strict):
    flag: float = Field(
        default=FLAG_THRESHOLD, gt=0.0, lt=1.0, description="flag when P(unsafe) >= flag"
    )
    high_confidence: float = Field(
        default=HIGH_CONFIDENCE,
        ge=0.5,
        lt=1.0,
        description="paper A: an error with max(p, 1-p) above this is a silent failure",
    )


class TrainingSummary(_Strict):
    """How the classifier was fitted and what it scored on held-out data."""

    n_train: int = Field(ge=2)
    n_holdout: int = Field(ge=0)
    positive_rate: float = Field(ge=0.0, le=1.0)
    estimator: str = (
        "StandardScaler + LogisticRegression(C=1, class_weight='balanced', max_iter=2000)"
    )
    seed: int = 42
    holdout_metrics: dict[str, float] = Field(default_factory=dict)


class DetectorSettings(_Strict):
    """How the label-free detectors were set up and calibrated (``bundle train`` flags)."""

    false_alarm_rate: float = Field(
        default=0.01,
        gt=0.0,
        lt=0.5,
        description="drift-alarm probability per clean window: any drift detector alarming",
    )
    window_size: int = Field(default=256, ge=8, description="rows per window (count windows)")
    calibration_windows: int = Field(
        default=1000, ge=50, description="held-out windows drawn per window size"
    )
    rff_features: int = Field(default=256, ge=8)
    pca_components: int = Field(default=32, ge=1)
    seed: int = 42


class FamilyCalibration(_Strict):
    """How the drift-alarm family shares ``false_alarm_rate`` (see ``detection/suite.py``).

    Keys of ``levels`` and ``measured_rate`` are the calibrated window sizes, as in
    ``DetectorCalibration.thresholds``.
    """

    detectors: tuple[str, ...] = Field(
        min_length=1, description="the detectors raising the drift alarm, calibrated jointly"
    )
    levels: dict[str, float] = Field(
        description="per window size, the per-detector level alpha_n of every family detector"
    )
    measured_rate: dict[str, float] = Field(
        description="per window size, the share of calibration windows on which some family "
        "detector exceeded the threshold the other windows set (leave-one-out, the rate "
        "expected on fresh clean windows), before the pool widening"
    )


class DetectorCalibration(_Strict):
    """Thresholds calibrated on held-out clean data, as stored in ``manifest.json``.

    ``thresholds[detector][str(n)]`` is a quantile of the detector's statistic over
    ``calibration_windows`` windows of ``n`` held-out rows, widened for the finite pool:
    the ``1 - family.levels[str(n)]`` quantile for the detectors of ``family`` (together
    they alarm on at most ``false_alarm_rate`` of clean windows, given enough
    ``calibration_windows``: ``family.measured_rate`` says), the
    ``1 - false_alarm_rate`` quantile for the others (advisory). ``family`` is None in
    bundles written before the family-wise calibration: every threshold there is at
    ``1 - false_alarm_rate`` on its own, and the drift alarm's rate is up to the number of
    drift detectors times it; ``silentwatch bundle train`` rebuilds it family-wise.
    """

    settings: DetectorSettings
    source: Literal["bundle-train", "startup-split"] = "bundle-train"
    holdout_rows: int = Field(ge=1)
    mmd_sigma: float = Field(gt=0.0)
    thresholds: dict[str, dict[str, float]]
    family: FamilyCalibration | None = None
    reference_confidence: dict[str, float]
    stream_stats: dict[str, tuple[float, float]] = Field(
        description="held-out mean and standard deviation of each per-sample stream"
    )
    null_change_points_per_10k: dict[str, float] = Field(default_factory=dict)
    seconds: float = 0.0

    @model_validator(mode="after")
    def _usable(self) -> DetectorCalibration:
        """What the detection engine relies on, checked at load rather than at first use."""
        if not self.thresholds:
            raise ValueError("thresholds is empty: no detector was calibrated")
        first = ""
        sizes: set[str] = set()
        for name, table in self.thresholds.items():
            bad = [k for k in table if not (k.isascii() and k.isdigit() and int(k) >= 1)]
            if bad or not table:
                raise ValueError(
                    f"thresholds.{name} must map window sizes in rows ('256') to thresholds, "
                    f"found keys {sorted(table)[:5]}"
                )
            if not first:
                first, sizes = name, set(table)
            elif set(table) != sizes:
                raise ValueError(
                    f"thresholds.{name} covers window sizes {sorted(table, key=int)} but "
                    f"thresholds.{first} covers {sorted(sizes, key=int)}; every detector is "
                    "calibrated for the same sizes"
                )
        if self.family is not None:
            self._check_family(self.family, sizes)
        missing = [k for k in STREAMS if k not in self.stream_stats]
        if missing:
            raise ValueError(f"stream_stats lacks {missing}")
        for key, (_, std) in self.stream_stats.items():
            if std < 0:
                raise ValueError(f"stream_stats.{key} has a negative standard deviation {std}")
        if set(self.reference_confidence) != set(CONFIDENCE_PROFILE):
            raise ValueError(
                f"reference_confidence must have exactly the keys {list(CONFIDENCE_PROFILE)}, "
                f"found {sorted(self.reference_confidence)}"
            )
        for key, value in self.reference_confidence.items():
            if not 0.0 <= value <= 1.0 or (key == "mean_confidence" and value < 0.5):
                raise ValueError(f"reference_confidence.{key} is {value}, outside its range")
        return self

    def _check_family(self, family: FamilyCalibration, sizes: set[str]) -> None:
        """The family names calibrated detectors and covers the thresholds' sizes."""
        unknown = [n for n in family.detectors if n not in self.thresholds]
        if unknown:
            raise ValueError(f"family.detectors names {unknown}, which have no thresholds")
        alpha = self.settings.false_alarm_rate
        # A level is k / calibration_windows with k >= 1, so it may exceed alpha when
        # alpha * calibration_windows < 1 (the threshold is then the largest null value).
        # The measured rate is what it is: too few windows cannot hold alpha.
        tops = {
            "levels": max(alpha, 1.0 / self.settings.calibration_windows),
            "measured_rate": 1.0,
        }
        for key, table in (("levels", family.levels), ("measured_rate", family.measured_rate)):
            if set(table) != sizes:
                raise ValueError(
                    f"family.{key} covers window sizes {sorted(table, key=str)} but the "
                    f"thresholds cover {sorted(sizes, key=int)}"
                )
            top = tops[key]
            # The float tolerance is for JSON round trips.
            bad = {n: v for n, v in table.items() if not 0.0 <= v <= top * (1 + 1e-9)}
            if bad:
                raise ValueError(
                    f"family.{key} must lie in [0, {top:g}] (levels: settings.false_alarm_rate "
                    f"or 1 / calibration_windows if larger), found {bad}"
                )


class HeadManifest(_Strict):
    """One additional classifier head over the bundle's embedding (multi-head bundles).

    ``file`` holds the same four arrays as ``classifier.npz`` (``scaler_mean``,
    ``scaler_scale``, ``coef``, ``intercept``) and is pinned by its sha256 in the
    manifest's ``files``.
    """

    name: str
    file: str = Field(min_length=1, description="e.g. head-threat.npz")
    thresholds: Thresholds = Thresholds()
    training: TrainingSummary

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_head_name(name)


def head_file(name: str) -> str:
    """The file name ``bundle train`` gives head ``name``'s arrays.

    >>> head_file("threat")
    'head-threat.npz'
    """
    return f"head-{check_head_name(name)}.npz"


class BundleManifest(_Strict):
    schema_version: Literal[1] = SCHEMA_VERSION
    classifier_version: str = Field(min_length=1, max_length=128)
    created_at: datetime
    embedding_dim: int = Field(ge=1, le=65536)
    embedder: EmbedderSpec
    thresholds: Thresholds = Thresholds()
    training: TrainingSummary
    # Absent in bundles written before the detection engine: the sidecar then calibrates
    # at start-up on a split of the reference sample and says so in GetStatus.
    detectors: DetectorCalibration | None = None
    # The top-level classifier.npz / thresholds / training are the default head, named
    # here; ``heads`` are the others, in the bundle's fixed order (index 0 is the default).
    # A bundle written before multi-head bundles is one head called "default".
    default_head: str = DEFAULT_HEAD
    heads: tuple[HeadManifest, ...] = ()
    # sha256 of every payload file, by file name.
    files: dict[str, str]

    @field_validator("default_head")
    @classmethod
    def _default_head(cls, name: str) -> str:
        return check_head_name(name)

    @property
    def head_names(self) -> tuple[str, ...]:
        """Every head's name in the bundle's order, the default first."""
        return (self.default_head, *(h.name for h in self.heads))

    def to_json(self) -> str:
        """``manifest.json``'s text. A one-head bundle whose head is called "default" is
        written without ``default_head`` / ``heads``, exactly as before multi-head bundles,
        so that a sidecar rolled back to an older silentwatch still loads it."""
        legacy = self.default_head == DEFAULT_HEAD and not self.heads
        return self.model_dump_json(indent=2, exclude={"default_head", "heads"} if legacy else None)

    @field_validator("files")
    @classmethod
    def _files_complete(cls, files: dict[str, str]) -> dict[str, str]:
        missing = [f for f in REQUIRED_FILES if f not in files]
        if missing:
            raise ValueError(f"manifest lists no sha256 for {missing}")
        for name, digest in files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"file name {name!r} must be a plain name inside the bundle")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"sha256 of {name!r} is not 64 lowercase hex digits")
        return files

    @model_validator(mode="after")
    def _aware_time(self) -> BundleManifest:
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must carry a timezone (UTC)")
        return self

    @model_validator(mode="after")
    def _heads_consistent(self) -> BundleManifest:
        """Unique names, at most MAX_HEADS, each head's own file listed with its sha256."""
        if len(self.heads) + 1 > MAX_HEADS:
            raise ValueError(
                f"the bundle has {len(self.heads) + 1} heads (default {self.default_head!r} "
                f"and {len(self.heads)} more); at most {MAX_HEADS} are allowed"
            )
        seen = {self.default_head: "the default head"}
        # signature.json: bundle/signature.py's, written beside the manifest after the fact.
        reserved = {CLASSIFIER_FILE, REFERENCE_FILE, CANARY_FILE, MANIFEST_FILE, "signature.json"}
        files: dict[str, str] = {}
        for i, head in enumerate(self.heads):
            if head.name in seen:
                raise ValueError(
                    f"head name {head.name!r} is used twice (heads.{i} and {seen[head.name]}); "
                    "head names are unique in a bundle"
                )
            seen[head.name] = f"heads.{i}"
            if head.file in reserved or head.file in files:
                other = files.get(head.file, "the bundle's own files")
                raise ValueError(
                    f"head {head.name!r} stores its arrays in {head.file!r}, already used by "
                    f"{other}; every head has a file of its own"
                )
            files[head.file] = f"head {head.name!r}"
            if head.file not in self.files:
                raise ValueError(
                    f"head {head.name!r}: its file {head.file!r} has no sha256 in files; "
                    "rebuild the bundle with `silentwatch bundle train`"
                )
        return self
