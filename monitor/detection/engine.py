"""The detection engine: a pipeline sink that runs every detector over live windows.

Runs on the pipeline's worker thread, never on the request path. Per prediction batch
it pushes the rows into a bounded ring, feeds the per-sample change-point streams, and
evaluates the window detectors at each window boundary (count windows: every
``stride`` rows over the last ``size`` rows, tumbling when ``stride == size``; time
windows: every ``stride_seconds`` over the rows of the last ``seconds``). Label
batches update the rolling and cumulative calibration metrics.

Readers (``GetStatus``, Prometheus scrapes) only ever see an immutable snapshot that
the worker swaps in after each update, so reads are cheap and need no lock.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from silentwatch.monitor.detection.detectors.base import WindowDetector
from silentwatch.monitor.detection.detectors.changepoints import ChangeTracker
from silentwatch.monitor.detection.detectors.confidence import ConfidenceProfile
from silentwatch.monitor.detection.heads import HeadMonitor, HeadSpec
from silentwatch.monitor.detection.offload import StatisticsProcess
from silentwatch.monitor.detection.registry import (
    CENTROID_ANGLE,
    DEFAULT_CHANGE_PAIRS,
    REGISTRY,
    check_detector_names,
)
from silentwatch.monitor.detection.status import (
    NAN,
    ChangePointStatus,
    ConfidenceStatus,
    DetectorStatus,
    EngineStatus,
    Reading,
)
from silentwatch.monitor.detection.suite import DetectorSuite
from silentwatch.monitor.detection.windows import WindowBuffer, WindowSpec
from silentwatch.monitor.evaluation.confirmation import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIRM_EVERY,
    DEFAULT_MARGIN,
)
from silentwatch.monitor.evaluation.labelled import LabelledWindow
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE
from silentwatch.monitor.serving.pipeline import LabelBatch, PredictionBatch
from silentwatch.monitor.state.snapshots import SnapshotError, decode, encode, expect

# Windows (per detector: evaluations) the k-of-n alert rules look back over.
RECENT_WINDOWS = 10

log = logging.getLogger(__name__)


@dataclass
class EngineOptions:
    window: WindowSpec = field(default_factory=WindowSpec)
    # Registered detector names to run; None: every detector the bundle calibrated.
    detectors: tuple[str, ...] | None = None
    # Run "periodic" detectors (registry cadence; the domain classifier) every k-th window.
    domain_every: int = 4
    max_evaluations_per_second: float = 5.0  # 0: no limit
    # River's detectors are sequential Python loops (~0.5 us per sample each); above this
    # rate their streams are thinned evenly, and the thinning is counted.
    change_max_samples_per_second: float = 5000.0  # 0: no limit
    confidence_band: float = 0.2  # a relative fall of mean confidence up to this is "steady"
    label_window: int = 1000
    change_pairs: tuple[tuple[str, str], ...] = DEFAULT_CHANGE_PAIRS
    flag: float = FLAG_THRESHOLD
    high_confidence: float = HIGH_CONFIDENCE
    # Label confirmation (evaluation/confirmation.py): the bundle's held-out ROC-AUC and
    # class counts (None: not recorded, no confirmation), and the test's settings.
    reference_auc: float | None = None
    reference_positives: int = 0
    reference_negatives: int = 0
    confirmation_margin: float = DEFAULT_MARGIN
    # For the whole bundle: each head's check runs at confirmation_alpha / heads (Bonferroni),
    # so the label-confirmation source pages at most at this rate per check round.
    confirmation_alpha: float = DEFAULT_ALPHA
    confirm_every: int = DEFAULT_CONFIRM_EVERY
    # Multi-head bundles: the default head's name, and the other heads (heads.py). The
    # fields above (flag, high_confidence, reference_*) describe the default head.
    default_head: str = "default"
    extra_heads: tuple[HeadSpec, ...] = ()
    # Window statistics in a child process (offload.py) that restores the detectors from
    # this (bundle path, bundle sha256); None: on the worker thread.
    statistics_process: tuple[str, str] | None = None


class DetectionEngine:
    """Sink for :class:`~silentwatch.monitor.serving.pipeline.Pipeline` (module docstring)."""

    def __init__(
        self, suite: DetectorSuite, options: EngineOptions, *, normalize: bool = True
    ) -> None:
        self.suite = suite
        self.normalize = normalize
        self.names = self._check_detectors(suite, options.detectors)
        self.options = replace(options, detectors=self.names)
        self._drift_names = frozenset(n for n in self.names if REGISTRY[n].raises_drift_alarm)
        self._periodic = frozenset(n for n in self.names if REGISTRY[n].cadence == "periodic")
        w = options.window
        smallest = suite.sizes[0]
        if w.mode == "count" and w.size < smallest:
            raise ValueError(
                f"window size {w.size} is below the smallest calibrated size {smallest}"
            )
        self.buffer = WindowBuffer(w.capacity, suite.dim, heads=1 + len(options.extra_heads))
        stats = suite.calibration.stream_stats
        self._stream_sources: dict[str, WindowDetector] = {}
        for _, stream in options.change_pairs:
            if stream == "score" or stream in self._stream_sources:
                continue
            # The suite holds a stream's source only when the calibration measured it.
            source = suite.stream_source(stream)
            if source is None:
                raise ValueError(
                    f"the change-point stream {stream!r} needs a detector this bundle did not "
                    "calibrate; drop it from change_detectors or rebuild the bundle with "
                    "`silentwatch bundle train`"
                )
            self._stream_sources[stream] = source
        self.trackers = [
            ChangeTracker(kind, stream, *stats[stream]) for kind, stream in options.change_pairs
        ]
        o = options
        default = HeadSpec(
            name=o.default_head,
            flag=o.flag,
            high_confidence=o.high_confidence,
            reference_profile=ConfidenceProfile(**suite.calibration.reference_confidence),
            reference_auc=o.reference_auc,
            reference_positives=o.reference_positives,
            reference_negatives=o.reference_negatives,
        )
        specs = (default, *o.extra_heads)
        self.heads = tuple(
            HeadMonitor(
                spec,
                label_window=o.label_window,
                confidence_band=o.confidence_band,
                margin=o.confirmation_margin,
                alpha=o.confirmation_alpha / len(specs),
                confirm_every=o.confirm_every,
            )
            for spec in specs
        )
        self.readings: dict[str, Reading] = {}
        self.alarms_total = dict.fromkeys(self.names, 0)
        self.evaluations_total = dict.fromkeys(self.names, 0)
        # k-of-n alerting (deploy/prometheus/rules): the last RECENT_WINDOWS outcomes, so an
        # alert counts windows, not minutes, and its false-alarm rate does not depend on traffic.
        self.recent_alarms: dict[str, deque[bool]] = {
            name: deque(maxlen=RECENT_WINDOWS) for name in self.names
        }
        self.recent_input_drift: deque[bool] = deque(maxlen=RECENT_WINDOWS)
        self.windows_evaluated = 0
        self.windows_skipped = 0
        self._pending = 0  # rows since the last count-window boundary
        self._change_budget = 0.0
        self._change_clock: float | None = None
        self.change_thinned_rows = 0
        self._last_eval_wall = 0.0
        self._last_eval_at = float("-inf")  # traffic time of the last time-window evaluation
        self._input_drift = False
        self._input_drift_windows = 0
        self.labels_seq = -1  # the last durable label folded into the heads' windows
        self.offload: StatisticsProcess | None = None
        if options.statistics_process is not None:
            path, sha256 = options.statistics_process
            self.offload = StatisticsProcess(path, sha256, w.capacity, suite.dim)
        self._status = self._build_status()

    def close(self) -> None:
        """Stop the statistics process, if any (the engine keeps working in process)."""
        if self.offload is not None:
            self.offload.close()

    @property
    def labelled(self) -> LabelledWindow:
        """The default head's labelled window."""
        return self.heads[0].labelled

    @staticmethod
    def _check_detectors(suite: DetectorSuite, wanted: tuple[str, ...] | None) -> tuple[str, ...]:
        """The detectors to run: registered, and calibrated by this bundle."""
        if wanted is None:
            return tuple(suite.detectors)
        names = check_detector_names(wanted)
        missing = [n for n in names if n not in suite.detectors]
        if missing:
            raise ValueError(
                f"detector {missing[0]!r} is registered but this bundle did not calibrate it "
                f"(it calibrated {', '.join(suite.detectors)}); drop it from `detectors` or "
                "rebuild the bundle with `silentwatch bundle train`"
            )
        return names

    # -- sink -------------------------------------------------------------------------
    def on_predictions(self, batch: PredictionBatch) -> None:
        x, m = batch.embeddings, batch.rows
        # One column per head (multi-head bundles): the ring keeps every head's scores so
        # each head's window profile covers the same rows as the drift detectors.
        s = batch.scores if batch.head_scores is None else batch.head_scores

        def unit(lo: int, hi: int) -> np.ndarray:
            # Only rows a detector will read are normalised: at high traffic that is a
            # small share of the batch.
            return x[lo:hi] / batch.norms[lo:hi, None] if self.normalize else x[lo:hi]

        if self.trackers:
            keep = self._change_rows(m)
            if keep.size:
                xs = x[keep] / batch.norms[keep, None] if self.normalize else x[keep]
                streams = {"score": batch.scores[keep]}
                for stream, source in self._stream_sources.items():
                    streams[stream] = source.stream(stream, xs)
                for t in self.trackers:
                    t.update(streams[t.stream])
        w = self.options.window
        if w.mode == "count":
            first = w.stride - self._pending  # rows of this batch up to the first boundary
            ends = list(range(first, m + 1, w.stride))
            self._pending = (self._pending + m) % w.stride
            if self.options.max_evaluations_per_second > 0 and len(ends) > 1:
                # Rate-capped: only the newest boundary can run; the rest are counted.
                self.windows_skipped += len(ends) - 1
                ends = ends[-1:]
            for end in ends:
                if self.buffer.total + end < w.size:
                    continue  # not a full window yet
                if not self._evaluation_allowed():
                    continue
                if end >= w.size:
                    xw, sw = unit(end - w.size, end), s[end - w.size : end]
                else:  # the window starts in earlier batches
                    xr, sr = self.buffer.last(w.size - end)
                    xw, sw = np.concatenate([xr, unit(0, end)]), np.concatenate([sr, s[:end]])
                self.evaluate(xw, sw, batch.received_at)
            tail = max(0, m - self.buffer.capacity)
            self.buffer.push(unit(tail, m), s[tail:], batch.received_at)
            self.buffer.total += tail  # rows that went straight past the ring
        else:
            tail = max(0, m - self.buffer.capacity)
            self.buffer.push(unit(tail, m), s[tail:], batch.received_at)
            self.buffer.total += tail  # rows that went straight past the ring
            now = batch.received_at
            if now - self._last_eval_at >= w.stride_seconds:
                self._last_eval_at = now
                xw, sw = self.buffer.since(now - w.seconds)
                if xw.shape[0] >= self.suite.sizes[0] and self._evaluation_allowed():
                    self.evaluate(xw, sw, now)

    def _change_rows(self, n: int) -> np.ndarray:
        """Rows of this batch the change-point streams get (a token bucket on wall time)."""
        rate = self.options.change_max_samples_per_second
        if rate <= 0:
            return np.arange(n)
        now = time.monotonic()
        if self._change_clock is None:
            self._change_budget = rate  # one second's worth to start
        else:
            self._change_budget = min(rate, self._change_budget + rate * (now - self._change_clock))
        self._change_clock = now
        take = min(n, int(self._change_budget))
        self._change_budget -= take
        self.change_thinned_rows += n - take
        if take == n:
            return np.arange(n)
        return np.linspace(0, n - 1, take).astype(np.int64)

    def on_labels(self, batch: LabelBatch) -> None:
        if batch.heads is None:
            self.heads[0].on_labels(batch.scores, batch.labels)
        else:
            # A label for one head never touches another head's window.
            for j in np.unique(batch.heads):
                if not 0 <= j < len(self.heads):
                    log.error("labels for head index %d, which this bundle lacks: dropped", j)
                    continue
                rows = batch.heads == j
                self.heads[j].on_labels(batch.scores[rows], batch.labels[rows])
        self.labels_seq = max(self.labels_seq, batch.last_seq)

    # -- evaluation -------------------------------------------------------------------
    def _evaluation_allowed(self) -> bool:
        rate = self.options.max_evaluations_per_second
        wall = time.monotonic()
        if rate > 0 and wall - self._last_eval_wall < 1.0 / rate:
            self.windows_skipped += 1  # counted and exported: never a silent gap
            return False
        self._last_eval_wall = wall
        return True

    def evaluate(self, x: np.ndarray, s: np.ndarray, at: float) -> dict[str, Reading]:
        """Run every enabled detector on one window (rows already unit-normalised).

        ``s`` holds the default head's scores, (n,), or every head's, (n, heads)."""
        n = x.shape[0]
        suite = self.suite
        heads_s = s if s.ndim == 2 else s[:, None]
        s = heads_s[:, 0]
        skip = self.windows_evaluated % self.options.domain_every != 0
        # Periodic detectors skip windows: the previous reading stands until the next run.
        names = [m for m in self.names if not (skip and m in self._periodic)]
        stats = None if self.offload is None else self.offload.statistics(names, x, s)
        if stats is None:
            stats = {m: suite.detectors[m].statistic(x, s) for m in names}
        for name in names:
            stat = stats[name]
            thr = suite.threshold(name, n)
            alarm = bool(stat > thr)
            self.readings[name] = Reading(stat, thr, alarm, n, at)
            self.alarms_total[name] += alarm
            self.evaluations_total[name] += 1
            self.recent_alarms[name].append(alarm)
        self.windows_evaluated += 1
        for j, head in enumerate(self.heads):
            head.on_window(heads_s[:, j])
        # Input drift: the family alarm the thresholds are calibrated for (suite.py). It says
        # the traffic changed, not that the classifier got worse (verdict.py).
        self._input_drift = any(
            r.alarm for name, r in self.readings.items() if name in self._drift_names
        )
        self._input_drift_windows += self._input_drift
        self.recent_input_drift.append(self._input_drift)
        self._status = self._build_status()
        return dict(self.readings)

    def _confidence_status(self) -> ConfidenceStatus:
        return self.heads[0].confidence_status()

    # -- persistence (monitor/state/persistence.py) ------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        w = self.options.window
        return {
            "detectors": list(self.names),
            "window": [w.mode, w.size, w.stride, w.capacity],
            "dim": int(self.buffer.x.shape[1]),
            "heads": [h.name for h in self.heads],
        }

    def window_state(self) -> bytes:
        """Detector windows and their counters as bytes (river's change trackers excluded:
        they hold Python objects; they restart empty)."""
        readings = {
            k: [r.statistic, r.threshold, r.alarm, r.window_rows, r.at]
            for k, r in self.readings.items()
        }
        header = {
            "fingerprint": self._fingerprint(),
            "readings": readings,
            "alarms_total": self.alarms_total,
            "evaluations_total": self.evaluations_total,
            "recent_alarms": {k: list(v) for k, v in self.recent_alarms.items()},
            "recent_input_drift": list(self.recent_input_drift),
            "windows_evaluated": self.windows_evaluated,
            "windows_skipped": self.windows_skipped,
            "pending": self._pending,
            "change_thinned_rows": self.change_thinned_rows,
            "last_eval_at": self._last_eval_at,
            "window_profile": self.heads[0].window_profile_state(),
            "head_profiles": [h.window_profile_state() for h in self.heads[1:]],
            "input_drift": self._input_drift,
            "input_drift_windows": self._input_drift_windows,
        }
        return encode(self.buffer.state(), header)

    def load_window_state(self, data: bytes) -> None:
        """Restore :meth:`window_state`; raises SnapshotError if it was taken under other
        settings (window, detectors, dimension)."""
        arrays, h = decode(data)
        if h.get("fingerprint") != self._fingerprint():
            raise SnapshotError(
                f"taken with {h.get('fingerprint')}, now {self._fingerprint()} (settings changed)"
            )
        cap, dim = self.buffer.x.shape
        try:
            state = {
                "x": expect(arrays, "x", (cap, dim)),
                "scores": expect(arrays, "scores", self.buffer.scores.shape),
                "times": expect(arrays, "times", (cap,)),
                "counts": expect(arrays, "counts", (3,)),
            }
            self.buffer.load_state(state)
            names = self.names
            self.readings = {
                k: Reading(float(v[0]), float(v[1]), bool(v[2]), int(v[3]), float(v[4]))
                for k, v in h["readings"].items()
                if k in names
            }
            self.alarms_total = {k: int(h["alarms_total"][k]) for k in names}
            self.evaluations_total = {k: int(h["evaluations_total"][k]) for k in names}
            for k in names:
                self.recent_alarms[k].clear()
                self.recent_alarms[k].extend(bool(a) for a in h["recent_alarms"][k])
            self.recent_input_drift.clear()
            # Snapshots from before the input-drift rename carry no ring or count: start them.
            self.recent_input_drift.extend(bool(a) for a in h.get("recent_input_drift", ()))
            self.windows_evaluated = int(h["windows_evaluated"])
            self.windows_skipped = int(h["windows_skipped"])
            self._pending = int(h["pending"]) % self.options.window.stride
            self.change_thinned_rows = int(h["change_thinned_rows"])
            self._last_eval_at = float(h["last_eval_at"])
            self.heads[0].load_window_profile(h["window_profile"])
            for head, prof in zip(self.heads[1:], h.get("head_profiles", ()), strict=False):
                head.load_window_profile(prof)
            self._input_drift = bool(h.get("input_drift", h.get("drift_alarm", False)))
            self._input_drift_windows = int(h.get("input_drift_windows", 0))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SnapshotError(
                f"malformed window snapshot ({type(exc).__name__}: {exc})"
            ) from None
        self._status = self._build_status()

    def labelled_state(self) -> bytes:
        """Every head's labelled state (rolling ring, cumulative sums, confirmation counters)
        as bytes. The default head's sits where one-head snapshots always had it; the others'
        arrays are prefixed ``<head name>/``."""
        arrays, header = self.heads[0].labelled_state()
        header["labels_seq"] = self.labels_seq
        header["heads"] = [h.name for h in self.heads]
        extra = []
        for head in self.heads[1:]:
            a, hh = head.labelled_state()
            arrays.update({f"{head.name}/{k}": v for k, v in a.items()})
            extra.append(hh)
        header["head_states"] = extra
        return encode(arrays, header)

    def load_labelled_state(self, data: bytes) -> None:
        """Restore :meth:`labelled_state`; raises SnapshotError when it does not fit."""
        arrays, h = decode(data)
        names = [head.name for head in self.heads]
        if h.get("heads", names[:1]) != names:
            raise SnapshotError(
                f"labelled snapshot is for heads {h.get('heads', names[:1])}, this bundle has "
                f"{names}"
            )
        try:
            own = {k: v for k, v in arrays.items() if "/" not in k}
            self.heads[0].load_labelled_state(own, h)
            for head, hh in zip(self.heads[1:], h.get("head_states", []), strict=True):
                prefix = f"{head.name}/"
                part = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                head.load_labelled_state(part, hh)
            self.labels_seq = int(h["labels_seq"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"labelled snapshot does not fit ({exc})") from None

    # -- snapshots --------------------------------------------------------------------
    def _build_status(self) -> EngineStatus:
        """The status as of the last evaluation (live counters are filled in by ``snapshot``)."""
        cal = self.suite.calibration
        angle = self.readings.get(CENTROID_ANGLE)
        return EngineStatus(
            calibration_source=cal.source,
            false_alarm_rate=cal.settings.false_alarm_rate,
            window=self.options.window,
            windows_evaluated=self.windows_evaluated,
            windows_skipped=self.windows_skipped,
            rows_seen=self.buffer.total,
            detectors=tuple(
                DetectorStatus(
                    name=name,
                    reading=self.readings.get(name),
                    alarms_total=self.alarms_total[name],
                    evaluations=self.evaluations_total[name],
                    recent_alarms=sum(self.recent_alarms[name]),
                    recent_evaluations=len(self.recent_alarms[name]),
                )
                for name in self.names
            ),
            centroid_angle_degrees=angle.statistic if angle else NAN,
            confidence=self._confidence_status(),
            change_points=self._change_point_status(),
            change_thinned_rows=self.change_thinned_rows,
            input_drift=self._input_drift,
            input_drift_windows=self._input_drift_windows,
            # Family-wise only for bundles calibrated jointly (manifest ``family``).
            input_drift_false_alarm_rate=(
                cal.settings.false_alarm_rate if cal.family is not None else NAN
            ),
            recent_windows=len(self.recent_input_drift),
            recent_input_drift_windows=sum(self.recent_input_drift),
            labelled=self.heads[0].labelled_status(),
            heads=tuple(h.status() for h in self.heads),
        )

    def _change_point_status(self) -> tuple[ChangePointStatus, ...]:
        null = self.suite.calibration.null_change_points_per_10k
        return tuple(
            ChangePointStatus(
                kind=t.kind,
                stream=t.stream,
                change_points=t.change_points,
                last_change_at=t.last_change_at,
                samples=t.samples,
                null_change_points_per_10k=null.get(f"{t.kind}:{t.stream}", NAN),
            )
            for t in self.trackers
        )

    def snapshot(self) -> EngineStatus:
        """The last evaluation's status with the live counters (plain reads, no lock)."""
        return replace(
            self._status,
            windows_skipped=self.windows_skipped,
            rows_seen=self.buffer.total,
            change_points=self._change_point_status(),
            change_thinned_rows=self.change_thinned_rows,
            labelled=self.heads[0].labelled_status(),
            heads=tuple(h.status() for h in self.heads),
        )
