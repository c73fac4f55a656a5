"""Canaries: the bundle's labelled texts, re-embedded and scored on a schedule.

In text mode the sidecar embeds text itself, so it can measure its own accuracy
directly: every ``interval`` seconds a background thread embeds the canary texts with
the live embedder, scores them with the bundle's classifier and computes the labelled
metrics (:func:`~silentwatch.monitor.evaluation.classification.labelled_metrics`). An
embedder that changed under the classifier shows up here without waiting for human labels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from silentwatch.monitor.bundle.io import Canaries
from silentwatch.monitor.evaluation.classification import empty_metrics, labelled_metrics
from silentwatch.monitor.scoring import FLAG_THRESHOLD, HIGH_CONFIDENCE, LinearScorer

log = logging.getLogger(__name__)
TextEmbedder = Callable[[list[str]], np.ndarray]


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
        canaries: Canaries,
        embed: TextEmbedder,
        scorer: LinearScorer,
        *,
        interval: float = 300.0,
        threshold: float = FLAG_THRESHOLD,
        high_confidence: float = HIGH_CONFIDENCE,
    ) -> None:
        self.canaries = canaries
        self.embed = embed
        self.scorer = scorer
        self.interval = interval
        self.threshold = threshold
        self.high_confidence = high_confidence
        self.runs = 0
        self._status = CanaryStatus(len(canaries.texts), 0, 0.0, 0.0, empty_metrics(), "")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> CanaryStatus:
        t0 = time.perf_counter()
        try:
            x = np.ascontiguousarray(self.embed(self.canaries.texts), dtype=np.float32)
            p = self.scorer.predict_proba(x)
            metrics = labelled_metrics(
                p,
                self.canaries.labels,
                threshold=self.threshold,
                high_confidence=self.high_confidence,
            )
            error = ""
        except Exception as exc:  # a failed run is reported, the sidecar keeps serving
            log.exception("canary run failed")
            metrics, error = self._status.metrics, f"{type(exc).__name__}: {exc}"
        self.runs += 1
        self._status = CanaryStatus(
            size=len(self.canaries.texts),
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
