"""The two signals: input drift (a ticket) and silent failure (a page).

*Input drift* is the drift detectors' family alarm (:mod:`.engine`): the traffic changed.
Real traffic always changes, and a frozen head's accuracy often does not move with it
(docs/benchmarks.md, "Drift is not harm"), so input drift never pages.

*Silent failure* is evidence that the classifier got worse while it kept answering:

``paired_canaries``
    the latest paired canary submission's paired ROC-AUC drop test or paired Brier-score
    test confirmed the head got worse beyond its margin (:mod:`.paired_canaries`);
``label_confirmation``
    the last label-confirmation check confirmed the rolling labelled ROC-AUC fell below
    the bundle's held-out one by more than the margin
    (:mod:`~silentwatch.monitor.evaluation.confirmation`).

Each source is a one-sided test at its own ``alpha`` per check; the signal is their
union, so per check round its false-alarm rate is at most the sum of the alphas
(Bonferroni), 0.005 + 0.005 = 0.01 by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from silentwatch.monitor.detection.paired_canaries import PairedCanaryStatus
from silentwatch.monitor.detection.status import EngineStatus

PAIRED_CANARIES = "paired_canaries"
LABEL_CONFIRMATION = "label_confirmation"
SOURCES = (PAIRED_CANARIES, LABEL_CONFIRMATION)


@dataclass(frozen=True)
class SilentFailureStatus:
    """The page: which evidence raised it, and which evidence this sidecar can gather."""

    active: bool
    evidence: tuple[str, ...]  # the sources that raised it now
    sources: tuple[str, ...]  # the sources that can raise it on this sidecar
    unavailable: tuple[str, ...]  # "<source>: <why not>"
    false_alarm_rate: float  # per check round, all available sources together
    summary: str


def silent_failure(
    detection: EngineStatus | None,
    canaries: PairedCanaryStatus,
    detection_disabled_reason: str = "",
) -> SilentFailureStatus:
    """Combine the evidence sources into the silent-failure signal (module docstring).

    >>> from silentwatch.monitor.detection.paired_canaries import unavailable_status
    >>> s = silent_failure(None, unavailable_status("no canaries"), "detection off")
    >>> s.active, s.sources, s.unavailable
    (False, (), ('paired_canaries: no canaries', 'label_confirmation: detection off'))
    """
    sources: list[str] = []
    unavailable: list[str] = []
    evidence: list[str] = []
    rate = 0.0
    parts: list[str] = []
    if canaries.available:
        sources.append(PAIRED_CANARIES)
        rate += canaries.alpha
        last = canaries.last
        if last is not None:
            r = last.reading
            if r.failure:
                evidence.append(PAIRED_CANARIES)
                b = r.brier_increase
                parts.append(
                    f"canaries: ROC-AUC {r.reference_auc:.3f} -> {r.live_auc:.3f}, Brier "
                    f"{b.reference_brier:.3f} -> {b.live_brier:.3f} on the same {r.size} texts "
                    f"(AUC drop >= {r.auc_drop.lower_bound:.3f}, Brier rise >= "
                    f"{b.lower_bound:.3f}, each at {1 - r.alpha / 2:.2%} confidence)"
                )
    else:
        unavailable.append(f"{PAIRED_CANARIES}: {canaries.unavailable_reason}")
    conf = None if detection is None else detection.labelled.confirmation
    if conf is not None and conf.enabled:
        sources.append(LABEL_CONFIRMATION)
        rate += conf.alpha
        if conf.confirmed and conf.last is not None:
            evidence.append(LABEL_CONFIRMATION)
            t = conf.last
            parts.append(
                f"labels: ROC-AUC {conf.reference_auc:.3f} -> {t.live_auc:.3f} on "
                f"{t.n_positive + t.n_negative} labelled rows (drop >= "
                f"{t.drop_lower_bound:.3f} at {1 - conf.alpha:.1%} confidence)"
            )
    elif conf is not None:
        unavailable.append(f"{LABEL_CONFIRMATION}: the bundle records no held-out ROC-AUC")
    else:
        unavailable.append(f"{LABEL_CONFIRMATION}: {detection_disabled_reason or 'detection off'}")
    if evidence:
        summary = "the classifier got worse: " + "; ".join(parts)
    elif sources:
        summary = "no evidence that the classifier got worse"
        if canaries.available and canaries.last is None:
            summary += " (no canary submission yet: GetCanaries, then SubmitCanaryEmbeddings)"
    else:
        summary = "no evidence source available: " + "; ".join(unavailable)
    return SilentFailureStatus(
        active=bool(evidence),
        evidence=tuple(evidence),
        sources=tuple(sources),
        unavailable=tuple(unavailable),
        false_alarm_rate=rate,
        summary=summary,
    )
