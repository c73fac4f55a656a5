"""Paired canaries: the bundle's canary texts, embedded by the live embedder, compared
text by text with the embeddings the classifier was validated on.

The bundle carries K labelled canary texts and their reference embeddings. Whoever embeds
the live traffic (the moderation service in embedding mode, :class:`.canary.CanaryRunner`
in text mode) embeds the same texts and submits them; each submission gives one
:class:`~silentwatch.monitor.evaluation.paired.PairedCanaryReading`: how far the map moved
(paired angles, linear CKA) and whether the frozen head got worse on the same texts (a
paired ROC-AUC drop test and a paired Brier-score test). A reading whose tests confirm
harm is silent-failure evidence (:mod:`.verdict`); an angle alone is not.

A multi-head bundle's canaries carry one label per head; each submission is read once per
head (the same angles, each head's own paired tests), and each head's tests run at
``alpha / heads`` (Bonferroni), so the source still raises silent failure at most at
``alpha`` per submission for the whole bundle.

State is river-shaped: :meth:`PairedCanaries.update` folds one submission in,
:meth:`PairedCanaries.snapshot` is a cheap read. One instance per served bundle: a hot
reload builds a new one, and submissions for the old set are refused as stale.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from silentwatch.monitor.bundle.io import LoadedBundle
from silentwatch.monitor.evaluation.paired import (
    DEFAULT_ALPHA,
    DEFAULT_ANGLE_TOLERANCE,
    DEFAULT_BRIER_MARGIN,
    DEFAULT_MARGIN,
    PairedCanaryReading,
    canary_geometry,
    paired_canary_reading,
)

SOURCE_SUBMITTED = "submitted"  # SubmitCanaryEmbeddings
SOURCE_SIDECAR = "sidecar"  # text mode: the sidecar's own canary runs

NO_CANARIES = (
    "the bundle carries no canaries; train it from texts (`silentwatch bundle train --data "
    "...` keeps 256 held-out canaries by default)"
)
NO_EMBEDDINGS = (
    "the bundle's canaries have no reference embeddings (written before paired canaries, or "
    "trained from precomputed embeddings); rebuild it with `silentwatch bundle train --data ...`"
)


@dataclass(frozen=True)
class CanarySubmission:
    """One submission: its readings (one per head) and where it came from."""

    reading: PairedCanaryReading  # the default head's (heads[0])
    at: float  # unix seconds
    source: str  # SOURCE_SUBMITTED or SOURCE_SIDECAR
    embedder_version: str  # as the submitter said; "" unknown
    heads: tuple[PairedCanaryReading, ...] = ()  # every head's, the default first

    @property
    def failure(self) -> bool:
        """Some head's paired tests confirmed it got worse."""
        return any(r.failure for r in self.heads) or self.reading.failure


@dataclass(frozen=True)
class PairedCanaryStatus:
    """What GetStatus and /metrics report about paired canaries."""

    available: bool
    unavailable_reason: str
    canary_set_id: str
    size: int
    submissions: int
    failures: int
    last: CanarySubmission | None  # None before the first submission
    margin: float
    alpha: float  # per submission, all heads together: the false-failure rate
    angle_tolerance: float
    head_names: tuple[str, ...] = ()
    head_positives: tuple[int, ...] = ()  # canaries labelled unsafe, per head

    @property
    def failure(self) -> bool:
        return self.last is not None and self.last.failure

    def head_reading(self, index: int) -> PairedCanaryReading | None:
        """Head ``index``'s reading of the last submission (None before one)."""
        if self.last is None:
            return None
        return self.last.heads[index] if self.last.heads else self.last.reading


def unavailable_status(reason: str) -> PairedCanaryStatus:
    """The status of a sidecar whose bundle cannot do paired canaries, saying why."""
    nan = float("nan")
    return PairedCanaryStatus(False, reason, "", 0, 0, 0, None, nan, nan, nan)


def canary_set_id(bundle: LoadedBundle) -> str:
    """Identifies the canary set: the bundle's manifest hash pins the texts and embeddings."""
    n = 0 if bundle.canaries is None else len(bundle.canaries.texts)
    return f"{bundle.sha256[:16]}-k{n}"


class PairedCanaries:
    """The paired-canary state of one served bundle (module docstring)."""

    def __init__(
        self,
        bundle: LoadedBundle,
        *,
        margin: float = DEFAULT_MARGIN,
        alpha: float = DEFAULT_ALPHA,
        angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
        brier_margin: float = DEFAULT_BRIER_MARGIN,
        bootstrap: int = 1000,
    ) -> None:
        can = bundle.canaries
        if can is None or can.embeddings is None:
            raise ValueError(NO_CANARIES if can is None else NO_EMBEDDINGS)
        self.texts = list(can.texts)
        self.labels = can.labels
        heads = bundle.heads
        # (K, heads): column j labels the canaries for head j (one-head bundles: the labels).
        self.head_labels = can.labels[:, None] if can.head_labels is None else can.head_labels
        if self.head_labels.shape[1] != len(heads):
            raise ValueError(
                f"the bundle's canaries carry labels for {self.head_labels.shape[1]} heads but "
                f"it has {len(heads)}; rebuild it with `silentwatch bundle train`"
            )
        self.head_names = tuple(h.name for h in heads)
        self._heads = [
            (h.scorer.predict_proba, h.thresholds.flag, h.thresholds.high_confidence) for h in heads
        ]
        self.reference = can.embeddings
        # Unit rows once, for the order check on every submission.
        self._reference_unit = can.embeddings / np.linalg.norm(
            can.embeddings, axis=1, keepdims=True
        )
        self.set_id = canary_set_id(bundle)
        self.dim = bundle.dim
        self.margin = margin
        self.alpha = alpha
        self.angle_tolerance = angle_tolerance
        self.brier_margin = brier_margin
        self.bootstrap = bootstrap
        self._lock = threading.Lock()  # submissions arrive on several gRPC threads
        self._submissions = 0
        self._failures = 0
        self._last: CanarySubmission | None = None

    @classmethod
    def for_bundle(cls, bundle: LoadedBundle, **settings: float) -> PairedCanaries | str:
        """The state for ``bundle``, or why it cannot have one."""
        try:
            return cls(bundle, **settings)  # type: ignore[arg-type]
        except ValueError as exc:
            return str(exc)

    @property
    def size(self) -> int:
        return len(self.texts)

    def misordered(self, live: np.ndarray) -> str:
        """Why ``live`` looks like the canaries in another order ("" when it does not).

        A client that sorts texts (by length, say) and forgets to restore the order would
        read as a broken classifier and page someone. When most live rows sit much closer
        to another canary's reference row than to their own, and the best matches form a
        near-permutation, the rows were reordered, not re-embedded by another model (a
        different model's space matches no row in particular). Cost: one K x K product.
        """
        b = live / np.linalg.norm(live, axis=1, keepdims=True)  # rows checked non-zero
        sim = b @ self._reference_unit.T  # (K, K): live row i against reference row j
        best = sim.argmax(axis=1)
        own = np.diagonal(sim)
        k = self.size
        moved = best != np.arange(k)
        # Matches that are near-identical (another canary's own embedding) and clearly
        # better than the row's own (duplicate texts tie and are not counted).
        top = sim[np.arange(k), best]
        clear = moved & (top >= 0.98) & (top - own >= 0.01)
        if clear.sum() < max(3, k // 2) or np.unique(best[clear]).size < 0.9 * clear.sum():
            return ""
        i = int(np.flatnonzero(clear)[0])
        return (
            f"{int(clear.sum())} of {k} rows match another canary's reference embedding far "
            f"better than their own (row {i} matches canary {int(best[i])}); send the rows in "
            "GetCanaries order (nothing was recorded)"
        )

    def update(
        self,
        live: np.ndarray,
        *,
        source: str = SOURCE_SUBMITTED,
        embedder_version: str = "",
        at: float | None = None,
    ) -> CanarySubmission:
        """Fold in one submission: ``live`` holds the canary texts' live embeddings, in
        the set's order (checked by the caller: shape, finite)."""
        alpha = self.alpha / len(self._heads)  # Bonferroni over the heads
        # Angles and CKA do not depend on the head: once per submission, not once per head.
        geometry = canary_geometry(self.reference, live)
        readings = tuple(
            paired_canary_reading(
                self.reference,
                live,
                self.head_labels[:, j],
                predict,
                flag=flag,
                high_confidence=high,
                margin=self.margin,
                alpha=alpha,
                angle_tolerance=self.angle_tolerance,
                bootstrap=self.bootstrap,
                brier_margin=self.brier_margin,
                geometry=geometry,
            )
            for j, (predict, flag, high) in enumerate(self._heads)
        )
        sub = CanarySubmission(
            readings[0], time.time() if at is None else at, source, embedder_version, readings
        )
        with self._lock:
            self._submissions += 1
            self._failures += sub.failure
            if self._last is None or sub.at >= self._last.at:
                self._last = sub
        return sub

    def snapshot(self) -> PairedCanaryStatus:
        return PairedCanaryStatus(
            available=True,
            unavailable_reason="",
            canary_set_id=self.set_id,
            size=self.size,
            submissions=self._submissions,
            failures=self._failures,
            last=self._last,
            margin=self.margin,
            alpha=self.alpha,
            angle_tolerance=self.angle_tolerance,
            head_names=self.head_names,
            head_positives=tuple(int(v) for v in self.head_labels.sum(axis=0)),
        )
