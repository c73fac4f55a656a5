"""Canaries: the bundle's labelled texts, re-embedded and scored on a schedule.

In text mode the sidecar embeds text itself, so it can measure its own accuracy
directly: every ``interval`` seconds a background thread embeds the canary texts with
the live embedder, scores them with the bundle's classifier and computes the labelled
metrics (:func:`~silentwatch.monitor.evaluation.classification.labelled_metrics`). An
embedder that changed under the classifier shows up here without waiting for human labels.
When the bundle carries the canaries' reference embeddings, each run is also a paired
canary submission (:mod:`.paired_canaries`), the same evidence embedding mode gets from
``SubmitCanaryEmbeddings``.

The runner reads the served bundle through ``target`` on every run, so a hot reload
changes what it embeds and scores from the next run on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from silentwatch.monitor.bundle.io import Canaries
from silentwatch.monitor.detection.paired_canaries import SOURCE_SIDECAR, PairedCanaries
from silentwatch.monitor.evaluation.classification import empty_metrics, labelled_metrics
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, LinearScorer

log = logging.getLogger(__name__)
TextEmbedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class CanaryTarget:
    """What one run needs from the served bundle."""

    canaries: Canaries
    scorer: LinearScorer
    paired: PairedCanaries | None  # None: no reference embeddings in the bundle
    embedder_version: str


@dataclass(frozen=True)
class CanaryStatus:
    """The last canary run: when, how long, what it measured, and its error ("" if none)."""

    size: int
    runs: int
    last_run_at: float
    last_run_seconds: float
    metrics: dict[str, float]
    last_error: str


class CanaryRunner:
    """``run_once()`` measures; ``start()`` runs it every ``interval`` seconds."""

    def __init__(
        self,
        target: Callable[[], CanaryTarget],
        embed: TextEmbedder,
        *,
        interval: float = 300.0,
        threshold: float = FLAG_THRESHOLD,
        high_confidence: float = HIGH_CONFIDENCE,
    ) -> None:
        self.target = target
        self.embed = embed
        self.interval = interval
        self.threshold = threshold
        self.high_confidence = high_confidence
        self.runs = 0
        size = len(target().canaries.texts)
        self._status = CanaryStatus(size, 0, 0.0, 0.0, empty_metrics(), "")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> CanaryStatus:
        t0 = time.perf_counter()
        size = self._status.size
        try:
            tg = self.target()
            size = len(tg.canaries.texts)
            x = np.ascontiguousarray(self.embed(tg.canaries.texts), dtype=np.float32)
            p = tg.scorer.predict_proba(x)
            metrics = labelled_metrics(
                p,
                tg.canaries.labels,
                threshold=self.threshold,
                high_confidence=self.high_confidence,
            )
            if tg.paired is not None:
                tg.paired.update(x, source=SOURCE_SIDECAR, embedder_version=tg.embedder_version)
            error = ""
        except Exception as exc:  # a failed run is reported, the sidecar keeps serving
            log.exception("canary run failed")
            metrics, error = self._status.metrics, f"{type(exc).__name__}: {exc}"
        self.runs += 1
        self._status = CanaryStatus(
            size=size,
            runs=self.runs,
            last_run_at=time.time(),
            last_run_seconds=time.perf_counter() - t0,
            metrics=metrics,
            last_error=error,
        )
        return self._status

    def snapshot(self) -> CanaryStatus:
        return self._status

    def start(self) -> CanaryRunner:
        def loop() -> None:
            while not self._stop.is_set():
                self.run_once()
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="silentwatch-canary", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
