"""Canaries: the bundle's labelled texts, re-embedded and scored on a schedule.

In text mode the sidecar embeds text itself, so it can measure its own accuracy
directly: every ``interval`` seconds a background thread embeds the canary texts with
the live embedder, scores them with the bundle's classifier and computes the labelled
metrics (:func:`~.calibration.labelled_metrics`). An embedder that changed under the
classifier shows up here without waiting for human labels.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from silentwatch.monitor.bundle.io import Canaries
from silentwatch.monitor.evaluation.classification import empty_metrics, labelled_metrics
from silentwatch.monitor.scoring import LinearScorer

log = logging.getLogger(__name__)
TextEmbedder = Callable[[list[str]], np.ndarray]


class CanaryMonitor:
    """``run_once()`` measures; ``start()`` runs it every ``interval`` seconds."""

    def __init__(
        self,
        canaries: Canaries,
        embed: TextEmbedder,
        scorer: LinearScorer,
        *,
        interval: float = 300.0,
        threshold: float = 0.5,
        high_confidence: float = 0.8,
    ) -> None:
        self.canaries = canaries
        self.embed = embed
        self.scorer = scorer
        self.interval = interval
        self.threshold = threshold
        self.high_confidence = high_confidence
        self.runs = 0
        self._snapshot: dict[str, Any] = {
            "size": len(canaries.texts),
            "runs": 0,
            "last_run_at": 0.0,
            "last_run_seconds": 0.0,
            "metrics": empty_metrics(),
            "last_error": "",
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> dict[str, Any]:
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
            metrics, error = self._snapshot["metrics"], f"{type(exc).__name__}: {exc}"
        self.runs += 1
        self._snapshot = {
            "size": len(self.canaries.texts),
            "runs": self.runs,
            "last_run_at": time.time(),
            "last_run_seconds": time.perf_counter() - t0,
            "metrics": metrics,
            "last_error": error,
        }
        return self._snapshot

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot

    def start(self) -> CanaryMonitor:
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
