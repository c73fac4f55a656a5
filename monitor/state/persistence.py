"""Restore the engine's state at start and snapshot it periodically into the durable store.

Two snapshots, written in one transaction:

* ``labelled``: the calibration state every joined label is folded into, with the
  sequence number of the last label folded. Saving it deletes the labels it covers, so a
  restart restores the snapshot and replays exactly the labels joined after it: no
  accepted label is lost or counted twice. It has no maximum age: it is ground truth.
* ``windows``: the detector windows and their alarm history. A window snapshot older
  than ``max_age_seconds`` describes traffic too old to compare with, so it is discarded
  (logged) and the windows start empty.

Snapshots run on the pipeline's worker thread (the engine's only writer), so they need
no lock and never touch the request path.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from silentwatch.monitor.detection.engine import DetectionEngine
from silentwatch.monitor.serving.pipeline import LabelBatch
from silentwatch.monitor.state.snapshots import SnapshotError
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import StoreUnavailable

log = logging.getLogger(__name__)

WINDOWS = "windows"
LABELLED = "labelled"


@dataclass
class RestoreReport:
    """What a start-up restore found; logged and exported."""

    labelled_restored: bool = False
    labels_replayed: int = 0
    windows_restored: bool = False
    windows_discarded: str = ""  # why, when a window snapshot was not used
    snapshot_age_seconds: float = float("nan")


class StatePersister:
    """Owns the engine <-> store round trip.

    Examples
    --------
    >>> # p = StatePersister(store, engine, max_age_seconds=3600); p.restore()
    >>> # pipeline.add_periodic(30.0, p.snapshot)
    """

    def __init__(
        self, store: SqliteStore, engine: DetectionEngine, *, max_age_seconds: float
    ) -> None:
        self.store = store
        self.engine = engine
        self.max_age_seconds = max_age_seconds
        self.snapshots_written = 0
        self.errors = 0
        self.last_snapshot_at: float | None = None
        self.last_error = ""
        self.report = RestoreReport()

    def restore(self) -> RestoreReport:
        """Load both snapshots and replay the labels joined after the labelled one.

        Call before the pipeline starts. Never raises for bad snapshots: each is
        discarded with a log line naming why.
        """
        rep = self.report
        eng = self.engine
        got = self.store.load_snapshot(LABELLED)
        if got is not None:
            try:
                eng.load_labelled_state(got[2])
                rep.labelled_restored = True
            except SnapshotError as exc:
                # The labels it covered are gone from the store: say so loudly.
                log.error(
                    "labelled snapshot in %s is unusable (%s): calibration figures restart "
                    "from the labels still in the store",
                    self.store.path,
                    exc,
                )
        multi = self.store.heads > 1  # as the servicer: heads=None for a one-head bundle
        for scores, labels, seq, heads in self.store.labels_after(eng.labels_seq):
            eng.on_labels(
                LabelBatch(
                    scores, labels, time.time(), last_seq=seq, heads=heads if multi else None
                )
            )
            rep.labels_replayed += int(scores.shape[0])
        got = self.store.load_snapshot(WINDOWS)
        if got is not None:
            taken_at, _, data = got
            age = time.time() - taken_at
            rep.snapshot_age_seconds = age
            if age > self.max_age_seconds:
                rep.windows_discarded = (
                    f"older than snapshot_max_age_seconds "
                    f"({age:.0f} s > {self.max_age_seconds:g} s)"
                )
            else:
                try:
                    eng.load_window_state(data)
                    rep.windows_restored = True
                except SnapshotError as exc:
                    rep.windows_discarded = str(exc)
        if rep.windows_discarded:
            log.warning("detector window snapshot discarded: %s", rep.windows_discarded)
        log.info(
            "restored state from %s: labelled snapshot %s, %d labels replayed, windows %s",
            self.store.path,
            "yes" if rep.labelled_restored else "no",
            rep.labels_replayed,
            "restored" if rep.windows_restored else "empty",
        )
        return rep

    def snapshot(self) -> bool:
        """Write both snapshots (on the engine's thread); False (counted, logged) on failure."""
        eng = self.engine
        try:
            items = {LABELLED: eng.labelled_state(), WINDOWS: eng.window_state()}
            self.store.save_snapshots(items, eng.labels_seq)
        except StoreUnavailable as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.error("state snapshot not written: %s; serving continues", exc)
            return False
        self.snapshots_written += 1
        self.last_snapshot_at = time.time()
        return True
