"""The sidecar's whole state as one immutable value, read by GetStatus and by Prometheus.

:meth:`~silentwatch.monitor.serving.service.MonitorService.status` builds a
:class:`SidecarStatus` from its owners (store, pipeline, engine, canary, persister) at read
time; :mod:`.status_proto` maps it to the ``GetStatusResponse`` message and
:mod:`silentwatch.monitor.telemetry.prometheus` to metric families. Typed fields mean a
renamed or missing figure fails where it is built, not at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass

from silentwatch.monitor.detection.canary import CanaryStatus
from silentwatch.monitor.detection.heads import HeadStatus
from silentwatch.monitor.detection.paired_canaries import PairedCanaryStatus
from silentwatch.monitor.detection.status import EngineStatus
from silentwatch.monitor.detection.verdict import SilentFailureStatus
from silentwatch.monitor.evaluation.paired import PairedCanaryReading


@dataclass(frozen=True)
class TrafficStatus:
    """Predictions folded into the statistics, by source (classify / observe)."""

    predictions: dict[str, int]
    flagged: dict[str, int]
    version_mismatches: int  # requests whose embedder_version the bundle was not validated for


@dataclass(frozen=True)
class LabelCounts:
    """What SubmitLabels did with the labels it received."""

    received: int
    joined: int
    unknown: int
    expired: int
    already_labelled: int
    joined_carried: int  # of joined: through the score the label carried (stateless path)
    carried_refused: int  # carried scores from another embedder or classifier version


@dataclass(frozen=True)
class StoreStatus:
    """The label-join store and the durable state around it."""

    entries: int
    capacity: int
    ttl_seconds: float
    evicted_capacity: int
    evicted_ttl: int
    durable: bool
    backend: str  # "sqlite" or "memory"
    unfolded_labels: int  # -1: the durable store could not be read
    errors: dict[str, int]  # failed writes by operation (record, join)
    snapshots_written: int
    snapshot_errors: int
    last_snapshot_seconds_ago: float | None
    labels_replayed_at_start: int
    predictions_not_recorded: int
    open_error: str  # why the durable store could not be opened ("" when it was)


@dataclass(frozen=True)
class PipelineStatus:
    """The hand-off from the request threads to the worker."""

    queued: int
    processed_rows: int
    sampled_out_rows: int
    sink_errors: int


@dataclass(frozen=True)
class IdentityStatus:
    """Whether traffic recently carried an embedder version the bundle was not validated for."""

    embedder_version_mismatch: bool
    last_mismatch_seconds_ago: float | None


@dataclass(frozen=True)
class HeadView:
    """One classifier head, everything reported about it (GetStatus ``heads``, metrics with
    a ``head`` label)."""

    name: str
    is_default: bool
    flag_threshold: float
    high_confidence: float
    flagged: dict[str, int]  # predictions this head flagged, by source
    detection: HeadStatus | None  # confidence and labelled metrics; None: detection is off
    paired_canary: PairedCanaryReading | None  # the last submission, scored by this head
    canary_positives: int  # canaries labelled unsafe for this head (0: no canaries)
    silent_failure: SilentFailureStatus


@dataclass(frozen=True)
class SidecarStatus:
    """Everything GetStatus and /metrics report, read at one moment."""

    uptime_seconds: float
    identity: IdentityStatus
    traffic: TrafficStatus
    labels: LabelCounts
    store: StoreStatus
    pipeline: PipelineStatus
    reloads: dict[str, int]  # bundle hot reloads by result (ok, unchanged, refused)
    detection: EngineStatus | None  # None: detection is off (``detection_disabled_reason``)
    detection_disabled_reason: str
    canary: CanaryStatus | None  # None: no canaries run (embedding mode, or none in the bundle)
    paired_canaries: PairedCanaryStatus  # available=False says why not
    silent_failure: SilentFailureStatus  # the page: evidence the classifier got worse
    heads: tuple[HeadView, ...] = ()  # every head, the default first
